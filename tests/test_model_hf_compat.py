"""Our encoder against HF ``BertModel``: same weights, same outputs; HF checkpoints load cleanly."""

import os
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, BertForSequenceClassification, BertModel

from models import SparseBertCls, SparseBertModel, SparseBertNer
from tests.helpers import make_tiny_config, padded_batch

ENCODER_PREFIXES = ("bert.embeddings.", "bert.encoder.")


def batch():
    """Four rows of 13 tokens, two of them padded (from 7 and from 2)."""
    return padded_batch(torch.Generator().manual_seed(0), 4, 13, {0: 7, 2: 2})


def assert_matches_hf(ours, hf_model, inputs, atol):
    """Equal hidden states at every real token; ours are zero at padding (HF's are meaningless there)."""
    with torch.no_grad():
        expected = hf_model(**inputs, output_hidden_states=True)
        got = ours(**inputs)
    states = got.hidden_states if hasattr(got, "hidden_states") else got
    assert len(states) == len(expected.hidden_states)
    real = inputs.get("attention_mask", torch.ones_like(inputs["input_ids"])).bool()
    torch.testing.assert_close(states[-1][real], expected.last_hidden_state[real], atol=atol, rtol=0)
    for x, y in zip(states, expected.hidden_states, strict=True):
        torch.testing.assert_close(x[real], y[real], atol=atol, rtol=0)
        assert not x[~real].any()


@pytest.mark.parametrize("hidden_act", ["gelu", "gelu_new"])
def test_full_width_equals_hf_bert(hidden_act):
    config = make_tiny_config(hidden_act=hidden_act)
    hf_model = BertModel(config).eval()
    ours = SparseBertModel(make_tiny_config(hidden_act=hidden_act)).eval()
    result = ours.load_state_dict(hf_model.state_dict(), strict=False)
    assert not result.missing_keys
    # HF BertModel has a pooler (and buffers) that our model does not hold: everything else matches
    assert all(k.startswith("pooler.") or "position_ids" in k or "token_type_ids" in k for k in result.unexpected_keys)
    assert_matches_hf(ours, hf_model, batch(), atol=1e-5)


def test_without_attention_mask_or_token_types():
    hf_model = BertModel(make_tiny_config()).eval()
    ours = SparseBertModel(make_tiny_config()).eval()
    ours.load_state_dict(hf_model.state_dict(), strict=False)
    assert_matches_hf(ours, hf_model, {"input_ids": batch()["input_ids"]}, atol=1e-5)


@pytest.mark.parametrize("model_class", [SparseBertCls, SparseBertNer])
def test_hf_base_checkpoint_loads_without_missing_encoder_keys(model_class, tmp_path):
    hf_model = BertModel(make_tiny_config()).eval()
    hf_model.save_pretrained(tmp_path)
    model, info = model_class.from_pretrained(tmp_path, output_loading_info=True)
    assert not [key for key in info["missing_keys"] if not key.startswith("cls.")]
    assert not info["unexpected_keys"]
    assert_matches_hf(model.eval().bert, hf_model, batch(), atol=1e-5)


def test_hf_task_checkpoint_loads_encoder(tmp_path):
    hf_model = BertForSequenceClassification(make_tiny_config(num_labels=3)).eval()
    hf_model.save_pretrained(tmp_path)
    model, info = SparseBertCls.from_pretrained(tmp_path, output_loading_info=True)
    assert not [key for key in info["missing_keys"] if key.startswith(ENCODER_PREFIXES)]
    assert not [key for key in info["unexpected_keys"] if key.startswith(ENCODER_PREFIXES)]
    assert_matches_hf(model.eval(), hf_model.bert, batch(), atol=1e-5)


def test_parameter_names_match_hf():
    ours = set(SparseBertModel(make_tiny_config()).state_dict())
    theirs = {key for key in BertModel(make_tiny_config()).state_dict()
              if not key.endswith("_ids") and not key.startswith("pooler.")}
    assert ours == theirs
    cls_keys = {key for key in SparseBertCls(make_tiny_config()).state_dict() if key.startswith("cls.")}
    assert cls_keys == {"cls.0.weight", "cls.0.bias", "cls.3.weight", "cls.3.bias"}


def minilm_dir() -> Path | None:
    path = os.environ.get("MINIDISC_MINILM_DIR")
    if path and (Path(path) / "model.safetensors").is_file():
        return Path(path)
    return None


@pytest.mark.slow
@pytest.mark.skipif(
    minilm_dir() is None, reason="set MINIDISC_MINILM_DIR to the all-MiniLM-L6-v2 model folder"
)
def test_real_minilm_equals_hf():
    path = minilm_dir()
    tokenizer = AutoTokenizer.from_pretrained(path)
    inputs = tokenizer(
        [
            "a short sentence.",
            "a much longer sentence, with some punctuation, to force padding in the batch.",
        ],
        ["second segment", "another one"],
        padding=True,
        return_tensors="pt",
    )
    inputs = {key: inputs[key] for key in ("input_ids", "attention_mask", "token_type_ids")}
    hf_model = BertModel.from_pretrained(path).eval()
    model, info = SparseBertCls.from_pretrained(path, output_loading_info=True)
    assert not [key for key in info["missing_keys"] if not key.startswith("cls.")]
    assert not info["unexpected_keys"]
    assert_matches_hf(model.eval(), hf_model, inputs, atol=1e-4)


def test_plain_teacher_fixtures_load(plain_teacher, ner_teacher):
    tokenizer = AutoTokenizer.from_pretrained(plain_teacher)
    inputs = tokenizer(["the film was not bad ."], return_tensors="pt")
    teacher = SparseBertCls.from_pretrained(plain_teacher).eval()
    assert teacher(inputs["input_ids"], inputs["attention_mask"]).logits.shape == (1, 2)
    tagger = SparseBertNer.from_pretrained(ner_teacher).eval()
    assert tagger(inputs["input_ids"]).logits.shape == (1, inputs["input_ids"].shape[1], 9)


@pytest.mark.parametrize("train_mode", [False, True])
def test_gradients_equal_hf(train_mode):
    """Backward through our (fused, dropout-free) path gives HF's parameter gradients."""
    config = make_tiny_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    hf_model = BertModel(config).train(train_mode)
    ours = SparseBertModel(make_tiny_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    ours.load_state_dict(hf_model.state_dict(), strict=False)
    ours.train(train_mode)
    inputs = batch()
    real = inputs["attention_mask"].bool()
    hf_model(**inputs).last_hidden_state[real].square().mean().backward()
    ours(**inputs)[-1][real].square().mean().backward()
    theirs = dict(hf_model.named_parameters())
    for name, param in ours.named_parameters():
        torch.testing.assert_close(param.grad, theirs[name].grad, atol=1e-6, rtol=1e-4, msg=name)
