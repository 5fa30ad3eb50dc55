"""Uniform widths (``run_sparsification.py --uniform_widths``): every layer keeps as many units at each level, and
a decoder so pruned is saved as its family's stock architecture, which transformers' own classes load without
``trust_remote_code`` and with our logits, and which this project reads back whole (its map included)."""

import json

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

import run_distillation
import run_finetuning
import run_sparsification
from models.standalone import MODELING_FILE
from tests.helpers import distill_args, finetune_args, save_tiny_decoder_pretrained, sparsify_args, tiny_model
from tests.test_decoder import decoder_batch
from utils.artifacts.model_io import load_model
from utils.engine.checkpoint import save_model_atomic
from utils.maths.importance import build_sparsity_map, removed_per_layer


def test_every_row_loses_as_many_units_at_each_level():
    scores = torch.rand(3, 37, generator=torch.Generator().manual_seed(0))
    heads = torch.rand(3, 2, generator=torch.Generator().manual_seed(1))
    result = build_sparsity_map(heads, scores, (10, 50, 90), neuron_multiple=8, uniform=True,
                                min_kept={"head": [0, 1, 0], "neuron": [0, 0, 0]})
    # 50% of 37 is 18.5 -> 18 (half to even) -> 16 (a multiple of 8); 90%: 33.3 -> 33 -> 32; 10%: 3.7 -> 4 -> 0
    assert result[50]["neuron"] == {0: 16, 1: 16, 2: 16} and result[90]["neuron"] == {0: 32, 1: 32, 2: 32}
    assert result[10]["neuron"] == {}
    assert result[50]["head"] == {0: 1, 1: 1, 2: 1}  # min_kept caps every row at what row 1 must keep
    assert result[90]["head"] == {0: 1, 1: 1, 2: 1}
    assert removed_per_layer(scores, 50, 8) != result[50]["neuron"]  # the global ranking spreads them unevenly


def uniform_model(model_type: str, **overrides):
    model = tiny_model(model_type, 3, seed=5, **overrides).eval()
    shape = model.mask_shape()
    scores = {kind: torch.rand(*shape[kind], generator=torch.Generator().manual_seed(i))
              for i, kind in enumerate(("head", "neuron"))}
    model.reorder(model.unit_orders("head", scores["head"]), model.unit_orders("neuron", scores["neuron"]))
    model.config.sparsity_map = build_sparsity_map(model.unit_scores("head", scores["head"].sort(1, True)[0]),
                                                   scores["neuron"], (50, 90), uniform=True)
    return model


@pytest.mark.parametrize(("model_type", "overrides"), [
    ("sparsedecoder_cls", {}), ("sparsedecoder_cls", {"family": "qwen3", "head_unit": "query"}),
    ("sparsedecoder_cls", {"family": "phi3", "head_unit": "query"}), ("sparsedecoder_ner", {"family": "phi3"}),
    ("sparsedecoder_cls", {"family": "qwen2"}), ("sparsedecoder_ner", {"family": "mistral", "head_unit": "query"})])
def test_a_uniform_student_is_a_stock_checkpoint(model_type, overrides, tmp_path):
    model = uniform_model(model_type, **overrides)
    inputs = decoder_batch("right")
    inputs["input_ids"] = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, model.config.pad_token_id)
    with torch.no_grad():
        model.sparsify(50)
        model.densify()
        logits = model(**inputs).logits
        save_model_atomic(model, None, tmp_path / "student")
        config = json.loads((tmp_path / "student" / "config.json").read_text())
        assert "auto_map" not in config and not (tmp_path / "student" / MODELING_FILE).exists()
        attention = model.model.layers[0].self_attn
        assert config["num_attention_heads"] == attention.query_heads < config["pruned_from"]["num_attention_heads"]
        auto = AutoModelForTokenClassification if model_type.endswith("_ner") else AutoModelForSequenceClassification
        stock = auto.from_pretrained(tmp_path / "student").eval()
        assert type(stock).__name__ == config["architectures"][0] and type(stock).__module__.startswith("transformers.")
        theirs = stock(**inputs).logits
        if theirs.dim() == 3:  # tagging: compare at the real tokens (ours are zero states at padding, HF's are not)
            real = inputs["attention_mask"].bool()
            theirs, logits = theirs[real], logits[real]
        torch.testing.assert_close(theirs, logits, atol=1e-5, rtol=1e-5)
        ours = load_model(model_type, str(tmp_path / "student")).eval()
        torch.testing.assert_close(ours(**inputs).logits, model(**inputs).logits, atol=1e-5, rtol=1e-5)
        model.sparsify(90)
        ours.sparsify(90)  # the map came back with the full sizes: slicing further works
        torch.testing.assert_close(ours(**inputs).logits, model(**inputs).logits, atol=1e-5, rtol=1e-5)


def test_uniform_widths_through_the_scripts(make_sst2_task, tmp_path):
    task = make_sst2_task(n_train=24, n_dev=8, n_test=4)
    pretrained = save_tiny_decoder_pretrained(tmp_path / "llama", "llama")
    run_finetuning.main(finetune_args(pretrained, task, tmp_path / "ft", "--max_steps", "2"))
    result = run_sparsification.main(sparsify_args(tmp_path / "ft" / "best", task, tmp_path / "sp", "--uniform_widths",
                                                   sparsities="50,90"))
    assert result["uniform_widths"] and len({n for n in result["sparsity_map"]["50"]["neuron"].values()}) == 1
    run_distillation.main(distill_args(tmp_path / "sp" / "model", task, tmp_path / "kd", "50S", "--max_steps", "2"))
    stock = AutoModelForSequenceClassification.from_pretrained(tmp_path / "kd" / "best")
    assert type(stock).__name__ == "LlamaForSequenceClassification"
    assert stock.config.intermediate_size < stock.config.pruned_from["intermediate_size"]
