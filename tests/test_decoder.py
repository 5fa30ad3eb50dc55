"""Decoder LLMs (Llama, Mistral, Qwen2, Qwen3, Phi-3): parity with HF on either padding side, grouped-query head
units (whole KV groups, or query heads within groups), their importance and reordering, checkpoints,
tokenizers without a pad token, and all five scripts on tiny decoders with no --model_type; token tagging
from tiny decoders and T5s.

The verbs' invariants (masks, reorder, masked == sliced == densified, round trips, layer dropping) are
checked for every family and both head units in ``test_model_pruning.py``.
"""

import copy
import json
import os
from pathlib import Path

import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM, LlamaForSequenceClassification

import run_distillation
import run_finetuning
import run_maxidisc
import run_minidisc
import run_sparsification
from models import SparseDecoderCls, get_model_class
from tests.helpers import (
    distill_args,
    finetune_args,
    make_tiny_decoder_config,
    read_jsonl,
    save_tiny_decoder_pretrained,
    save_tiny_decoder_tokenizer,
    save_tiny_t5_pretrained,
    schedule_args,
    sparsify_args,
    tiny_model,
)
from utils.artifacts.model_io import load_model, load_tokenizer
from utils.command.cli import cli

FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "phi3")


def decoder_batch(side: str, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, 100, (3, 9), generator=generator)
    mask = torch.ones_like(input_ids)
    if side == "right":
        mask[1, 6:], mask[2, 3:] = 0, 0
    else:
        mask[1, :3], mask[2, :6] = 0, 0
    return {"input_ids": input_ids * mask, "attention_mask": mask}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("side", ["right", "left"])
def test_full_width_equals_the_hf_model(family, side):
    config = make_tiny_decoder_config(family, num_labels=3)
    torch.manual_seed(0)
    hf = AutoModel.from_config(copy.deepcopy(config)).eval()
    ours = SparseDecoderCls(copy.deepcopy(config)).eval()
    missing, unexpected = ours.load_state_dict({f"model.{k}": v for k, v in hf.state_dict().items()}, strict=False)
    assert missing == ["score.weight"] and unexpected == []
    inputs = decoder_batch(side)
    real = inputs["attention_mask"].bool()[:, :, None]
    positions = (inputs["attention_mask"].cumsum(-1) - 1).clamp(min=0)  # HF counts positions from the first token
    with torch.no_grad():
        theirs = hf(**inputs, position_ids=positions, output_hidden_states=True)
        out = ours(**inputs)
    assert len(out.hidden_states) == len(theirs.hidden_states) == config.num_hidden_layers + 1
    for mine, reference in zip(out.hidden_states, theirs.hidden_states, strict=True):
        torch.testing.assert_close(mine, reference.masked_fill(~real, 0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.hidden_states[-1], theirs.last_hidden_state.masked_fill(~real, 0),
                               atol=1e-5, rtol=1e-5)


def test_sequence_logits_equal_hf_sequence_classification():
    config = make_tiny_decoder_config("llama", num_labels=3)
    torch.manual_seed(1)
    hf = LlamaForSequenceClassification(copy.deepcopy(config)).eval()
    ours = SparseDecoderCls(copy.deepcopy(config)).eval()
    ours.load_state_dict(hf.state_dict())
    inputs = decoder_batch("right")
    inputs["input_ids"] = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, config.pad_token_id)
    with torch.no_grad():
        torch.testing.assert_close(ours(**inputs).logits, hf(**inputs).logits, atol=1e-5, rtol=1e-5)
        # left padding reads the same last real token, at the same positions
        left = decoder_batch("left")
        assert ours(**left).logits.shape == (3, 3)


def marked_model(head_unit: str):
    """A tiny Llama whose query head h has Q rows equal to h (and K/V rows of group j equal to j)."""
    model = tiny_model("sparsedecoder_cls", 2, head_unit=head_unit)
    attention = model.model.layers[0].self_attn
    with torch.no_grad():
        attention.q_proj.weight.copy_(torch.arange(6).repeat_interleave(8)[:, None].float().expand(-1, 48))
        attention.k_proj.weight.copy_(torch.arange(2).repeat_interleave(8)[:, None].float().expand(-1, 48))
    return model, attention


@pytest.mark.parametrize("head_unit", ["group", "query"])
def test_gqa_units_keep_valid_layouts(head_unit):
    model, attention = marked_model(head_unit)
    shape = model.unit_shape()["head"]
    assert shape == ((3, 2) if head_unit == "group" else (3, 3)) and model.mask_shape()["head"] == (3, 6)
    # group units: KV group 1 (query heads 3, 4, 5) goes; query units: the last head of each group goes
    model.config.sparsity_map = {50: {"head": {0: 1}, "neuron": {}}}
    model.sparsify(50)
    model.densify()
    heads = attention.q_proj.weight[::8, 0].tolist()
    groups = attention.k_proj.weight[::8, 0].tolist()
    if head_unit == "group":
        assert heads == [0, 1, 2] and groups == [0]
    else:
        assert heads == [0, 1, 3, 4] and groups == [0, 1]
    assert attention.q_proj.out_features % attention.k_proj.out_features == 0
    assert model.heads_in_use() == len(heads) + 2 * 6


def test_reorder_moves_whole_groups_and_refuses_to_mix_them():
    model, attention = marked_model("group")
    order = torch.tensor([[4, 3, 5, 1, 0, 2]] + [list(range(6))] * 2)
    model.reorder(head_order=order)
    assert attention.q_proj.weight[::8, 0].tolist() == [4, 3, 5, 1, 0, 2]
    assert attention.k_proj.weight[::8, 0].tolist() == [1, 0]
    with pytest.raises(ValueError, match="mixes heads of different groups"):
        model.reorder(head_order=torch.tensor([[0, 3, 1, 2, 4, 5]] + [list(range(6))] * 2))


def test_group_and_slot_scores():
    model, attention = marked_model("group")
    scores = torch.tensor([0.1, 0.5, 0.2, 0.9, 0.0, 0.3])  # group 0: 0.8, group 1: 1.2
    assert attention.order_from_scores(scores).tolist() == [3, 5, 4, 1, 2, 0]
    torch.testing.assert_close(attention.unit_scores(scores), torch.tensor([1.2, 0.8]))
    query, q_attention = marked_model("query")
    # slots: best heads 0.9 + 0.5, second 0.3 + 0.2, third 0.0 + 0.1
    torch.testing.assert_close(q_attention.unit_scores(scores), torch.tensor([1.4, 0.5, 0.1]))


def test_a_tokenizer_without_pad_token_pads_with_eos(tmp_path):
    tokenizer = load_tokenizer(str(save_tiny_decoder_tokenizer(tmp_path)))
    assert tokenizer.pad_token == tokenizer.eos_token == "</s>"


def test_hf_causal_lm_checkpoints_load(tmp_path):
    for family in ("llama", "qwen3"):
        pretrained = save_tiny_decoder_pretrained(tmp_path / family, family)
        reference = AutoModelForCausalLM.from_pretrained(pretrained).state_dict()
        model = load_model("sparsedecoder_cls", str(pretrained), new_head=True, num_labels=2)
        assert model.config.model_type == family
        for key, value in model.state_dict().items():
            if key in reference:
                assert torch.equal(value, reference[key]), key
        assert sum(key in reference for key in model.state_dict()) == len(reference) - 1  # all but the LM head


@pytest.mark.parametrize(("family", "head_unit"), [("llama", "group"), ("qwen3", "query"), ("phi3", "query")])
def test_five_scripts_on_a_tiny_decoder(family, head_unit, make_sst2_task, tmp_path):
    task = make_sst2_task(n_train=24, n_dev=8, n_test=4)
    pretrained = save_tiny_decoder_pretrained(tmp_path / family, family)
    run_finetuning.main(finetune_args(pretrained, task, tmp_path / "ft", "--num_train_epochs", "1"))
    args = json.loads((tmp_path / "ft" / "args.json").read_text())["args"]
    assert (args["model_type"], args["data_type"]) == ("sparsedecoder_cls", "decoder_cls")
    result = run_sparsification.main(sparsify_args(tmp_path / "ft" / "best", task, tmp_path / "sp", "--head_unit",
                                                   head_unit, sparsities="30,60,90"))
    sparse = tmp_path / "sp" / "model"
    assert json.loads((sparse / "config.json").read_text())["head_unit"] == head_unit
    assert [row["heads_kept"] for row in result["pruning_curve"]][0] == 3 * 6
    distilled = run_distillation.main(distill_args(sparse, task, tmp_path / "kd", "90S", "--use_bf16"))
    assert distilled["model"]["sparsity"] == 90 and len(read_jsonl(tmp_path / "kd" / "metrics.jsonl")) == 2
    assert run_distillation.main(distill_args(sparse, task, tmp_path / "kd2", "2L"))["model"]["num_layers"] == 2
    assert run_maxidisc.main(schedule_args(sparse, task, tmp_path / "maxi", "--layer_or_sparsity_path",
                                           "60,90S"))["model"]["sparsity"] == 90
    mini = run_minidisc.main(schedule_args(sparse, task, tmp_path / "mini", "--lam", "0.05", "--target_sparsity",
                                           "90", "--max_steps", "3", "--gradient_checkpointing"))
    assert mini["model"]["sparsity"] == 90
    student = SparseDecoderCls.from_pretrained(tmp_path / "kd" / "best")
    for layer in student.model.layers:  # a valid grouped-query layout: whole query heads per KV head
        assert layer.self_attn.query_heads % max(layer.self_attn.kv_heads, 1) == 0


@pytest.mark.parametrize(("save_pretrained", "model_type"), [(save_tiny_decoder_pretrained, "sparsedecoder_ner"),
                                                               (save_tiny_t5_pretrained, "sparseenct5_ner")])
def test_token_tagging_on_tiny_decoders_and_t5s(save_pretrained, model_type, make_conll_task, tmp_path):
    """CoNLL from a user's pretrained checkpoint of each new family: fine-tune, sparsify, distil."""
    task = make_conll_task()
    pretrained = save_pretrained(tmp_path / "pretrained")
    run_finetuning.main(finetune_args(pretrained, task, tmp_path / "ft", "--task_name", "conll",
                                      "--num_train_epochs", "1", "--do_test"))
    assert json.loads((tmp_path / "ft" / "args.json").read_text())["args"]["model_type"] == model_type
    run_sparsification.main(sparsify_args(tmp_path / "ft" / "best", task, tmp_path / "sp", task="conll",
                                          sparsities="50,90"))
    result = run_distillation.main(distill_args(tmp_path / "sp" / "model", task, tmp_path / "kd", "50S",
                                                "--task_name", "conll"))
    assert set(result["best_dev"]) >= {"f1", "precision", "recall"}
    assert get_model_class(model_type).from_pretrained(tmp_path / "kd" / "best").config.sparsity == 50


def test_head_unit_is_refused_for_families_without_gqa(sparse_teacher, sst2_task, tmp_path, capsys):
    assert cli(run_sparsification.main, sparsify_args(sparse_teacher, sst2_task, tmp_path / "x", "--head_unit",
                                                      "query")) == 2
    assert "has no grouped-query attention" in capsys.readouterr().err


SMOLLM2 = os.environ.get("MINIDISC_SMOLLM2_DIR")


@pytest.mark.slow
@pytest.mark.skipif(not SMOLLM2 or not Path(SMOLLM2 or ".").is_dir(),
                    reason="set MINIDISC_SMOLLM2_DIR to the folder python -m tools.assets smollm2 writes")
def test_the_real_smollm2_equals_hf_and_its_gguf_file_loads(tmp_path):
    model = load_model("sparsedecoder_cls", SMOLLM2, new_head=True, num_labels=2).eval()
    hf = AutoModel.from_pretrained(SMOLLM2).eval()
    ids = torch.randint(5, 40000, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(model.model(ids)[-1], hf(ids).last_hidden_state, atol=1e-4, rtol=1e-4)
    assert model.count_parameters()["total"] == 134_515_008 + 2 * 576
    gguf = Path(SMOLLM2) / "gguf" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    from_file = load_model("sparsedecoder_cls", str(gguf), new_head=True, num_labels=2).eval()
    assert load_tokenizer(str(gguf)).pad_token is not None
    with torch.no_grad():
        torch.testing.assert_close(from_file.model(ids)[-1], hf(ids).last_hidden_state, atol=1e-4, rtol=1e-4)
    from_file.save_pretrained(tmp_path)  # dequantised on load: saves like any model
    direct = SparseDecoderCls.from_pretrained(gguf.parent, gguf_file=gguf.name, num_labels=2)
    assert direct.config.num_labels == 2 and direct.depth == 30
