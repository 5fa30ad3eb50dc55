"""EncT5: parity with HF T5, checkpoint loading, the relative-position bias under pruning, the
cross-attention guard, gradients through slices, and all five scripts on a tiny T5 (no --model_type).

The verbs' invariants (masks, reorder, masked == sliced == densified, round trips, layer dropping) are
checked for every family in ``test_model_pruning.py``.
"""

import copy
import json

import pytest
import torch
from transformers import T5EncoderModel, T5ForConditionalGeneration, T5Model

import run_distillation
import run_finetuning
import run_maxidisc
import run_minidisc
import run_sparsification
from models import SparseEncT5Cls
from tests.helpers import (
    distill_args,
    finetune_args,
    make_tiny_t5_config,
    read_jsonl,
    save_tiny_t5_pretrained,
    schedule_args,
    sparsify_args,
    tiny_model,
)
from utils.artifacts.model_io import load_model
from utils.errors import StageError
from utils.maths.importance import build_sparsity_map


def t5_batch(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, 100, (3, 11), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 7:] = 0
    attention_mask[2, 4:] = 0
    return {"input_ids": input_ids * attention_mask, "attention_mask": attention_mask}


@pytest.mark.parametrize("gated", [False, True], ids=["relu", "gated-gelu"])
def test_full_width_equals_hf_t5(gated):
    config = make_tiny_t5_config(gated, num_labels=3, dropout_rate=0.0, num_decoder_layers=1)
    torch.manual_seed(0)
    hf = T5Model(copy.deepcopy(config)).eval()
    hf_encoder = T5EncoderModel(copy.deepcopy(config)).eval()
    hf_encoder.load_state_dict(hf.state_dict(), strict=False)
    ours = SparseEncT5Cls(copy.deepcopy(config)).eval()
    missing, unexpected = ours.load_state_dict(hf.state_dict(), strict=False)
    assert sorted(missing) == sorted(["decoder_input", "classifier.weight", "classifier.bias"]
                                     + [k for k in ours.state_dict() if k.endswith("head_ids")])
    assert all(k.endswith("embed_tokens.weight") for k in unexpected)
    inputs = t5_batch()
    real = inputs["attention_mask"].bool()[:, :, None]
    with torch.no_grad():
        theirs = hf_encoder(**inputs, output_hidden_states=True)
        out = ours(**inputs)
        decoded = hf(**inputs, decoder_inputs_embeds=ours.decoder_input.expand(3, 1, -1)).last_hidden_state
        our_decoded = ours.decode(out.hidden_states[-1], ours.encode(**inputs)[1])
    assert len(out.hidden_states) == len(theirs.hidden_states) == config.num_layers + 1
    for mine, reference in zip(out.hidden_states, theirs.hidden_states, strict=True):
        torch.testing.assert_close(mine, reference.masked_fill(~real, 0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.hidden_states[-1], theirs.last_hidden_state.masked_fill(~real, 0),
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(our_decoded, decoded[:, 0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.logits, ours.classifier(our_decoded))


def test_hf_checkpoints_load_and_an_encoder_alone_is_refused(tmp_path):
    pretrained = save_tiny_t5_pretrained(tmp_path / "t5")
    reference = T5ForConditionalGeneration.from_pretrained(pretrained).state_dict()
    model = load_model("sparseenct5_cls", str(pretrained), new_head=True, num_labels=2)
    for key, value in model.state_dict().items():
        if key in reference:
            assert torch.equal(value, reference[key]), key
    assert all(torch.equal(b, torch.arange(6)) for k, b in model.state_dict().items() if k.endswith("head_ids"))
    assert model.unit_shape() == {"head": (5, 6), "neuron": (4, 37)}
    ner = load_model("sparseenct5_ner", str(pretrained), new_head=True, num_labels=4)
    assert ner.unit_shape() == {"head": (3, 6), "neuron": (3, 37)} and not hasattr(ner, "decoder")
    T5EncoderModel(make_tiny_t5_config()).save_pretrained(tmp_path / "encoder")
    with pytest.raises(StageError, match=r"missing \(decoder\.block\.0\."):
        load_model("sparseenct5_cls", str(tmp_path / "encoder"), new_head=True, num_labels=2)


def test_each_layer_adds_the_position_bias_of_its_own_heads(tmp_path):
    """Reorder, prune and reload: head_ids follow the heads, and a model whose surviving heads are moved
    to the front by hand (in any layer, including the one owning the table) computes the same."""
    model = tiny_model("sparseenct5_cls", 3, seed=1).eval()
    inputs = t5_batch()
    orders = torch.stack([torch.randperm(6, generator=torch.Generator().manual_seed(i)) for i in range(5)])
    with torch.no_grad():
        before = model(**inputs).logits
    model.reorder(head_order=orders)
    blocks = model.blocks("head")
    assert [b.head_ids.tolist() for b in blocks] == orders.tolist()
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, before, atol=1e-5, rtol=0)
    # Without the bias index the reordered layers would add the wrong heads' bias.
    for block in blocks:
        block.head_ids.copy_(torch.arange(6))
    with torch.no_grad():
        assert not torch.allclose(model(**inputs).logits, before, atol=1e-4)
    for block, order in zip(blocks, orders, strict=True):
        block.head_ids.copy_(order)
    model.config.sparsity_map = {50: {"head": {0: 3, 1: 2}, "neuron": {}}}
    model.sparsify(50)
    model.densify()
    assert blocks[0].head_ids.tolist() == orders[0, :3].tolist()
    model.save_pretrained(tmp_path)
    reloaded = SparseEncT5Cls.from_pretrained(tmp_path).eval()
    assert [b.head_ids.tolist() for b in reloaded.blocks("head")] == [b.head_ids.tolist() for b in blocks]
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, model(**inputs).logits, atol=0, rtol=0)


def test_the_cross_attention_always_keeps_a_head():
    model = tiny_model("sparseenct5_cls", 2)
    assert model.min_kept() == {"head": [0, 0, 0, 0, 1], "neuron": [0, 0, 0, 0]}
    heads = torch.rand(5, 6, generator=torch.Generator().manual_seed(0)) + 1
    heads[4] = torch.tensor([0.01, 0.02, 0.03, 0.04, 0.05, 0.5])  # the cross-attention: least important
    neurons = torch.rand(4, 37, generator=torch.Generator().manual_seed(1))
    guarded = build_sparsity_map(heads, neurons, (10, 50, 95), 1, model.min_kept())
    unguarded = build_sparsity_map(heads, neurons, (10, 50, 95), 1)
    assert unguarded[95]["head"][4] == 6
    assert guarded[10]["head"] == {4: 3}
    for level in (10, 50, 95):
        assert guarded[level]["head"].get(4, 0) <= 5
        assert sum(guarded[level]["head"].values()) == sum(unguarded[level]["head"].values())
    assert guarded[95]["head"][4] == 5
    model.config.sparsity_map = guarded
    model.sparsify(95)
    assert model.kept_widths()["head"][4] == 1


def test_gradients_reach_masks_and_full_parameters_through_slices():
    model = tiny_model("sparseenct5_cls", 3, gated=True, levels=(60,), seed=2)
    model.train()
    masks = {f"{kind}_mask": torch.ones(shape, requires_grad=True) for kind, shape in model.mask_shape().items()}
    model.sparsify(60)
    widths = model.kept_widths()
    model(**t5_batch(), labels=torch.tensor([0, 2, 1]), **masks).loss.backward()
    for kind in ("head", "neuron"):
        grad = masks[f"{kind}_mask"].grad
        for row, (block, kept) in enumerate(zip(model.blocks(kind), widths[kind], strict=True)):
            assert torch.all(grad[row, kept:] == 0)
            assert kept == 0 or grad[row, :kept].abs().sum() > 0
            weight = block.get_submodule(block.unit_rows[-1]).weight
            width = kept * block.unit_size
            assert torch.all(weight.grad[width:] == 0) and (kept == 0 or weight.grad[:width].abs().sum() > 0)


def test_five_scripts_on_a_tiny_t5_checkpoint(make_sst2_task, tmp_path):
    """A user's T5 checkpoint (T5ForConditionalGeneration, sentencepiece tokenizer) through every script,
    with neither --model_type nor --data_type."""
    task = make_sst2_task(n_train=24, n_dev=8, n_test=4)
    pretrained = save_tiny_t5_pretrained(tmp_path / "t5-tiny", gated=True)
    finetuned = run_finetuning.main(finetune_args(pretrained, task, tmp_path / "ft", "--num_train_epochs", "1"))
    args = json.loads((tmp_path / "ft" / "args.json").read_text())["args"]
    assert (args["model_type"], args["data_type"]) == ("sparseenct5_cls", "enct5_cls")
    assert finetuned["model"]["heads_kept"] == 5 * 6
    teacher = tmp_path / "ft" / "best"
    sparsified = run_sparsification.main(sparsify_args(teacher, task, tmp_path / "sp", sparsities="30,60,90,95"))
    sparse = tmp_path / "sp" / "model"
    top = sparsified["sparsity_map"]["95"]["head"]
    assert int(top.get("4", 0)) <= 5  # the cross-attention keeps a head
    distilled = run_distillation.main(distill_args(sparse, task, tmp_path / "kd", "90S", "--use_bf16"))
    assert distilled["model"]["sparsity"] == 90
    assert len(read_jsonl(tmp_path / "kd" / "metrics.jsonl")) == 2
    shallow = run_distillation.main(distill_args(sparse, task, tmp_path / "kd2", "2L"))
    assert shallow["model"]["num_layers"] == 2
    maxi = run_maxidisc.main(schedule_args(sparse, task, tmp_path / "maxi", "--layer_or_sparsity_path", "60,90S"))
    assert maxi["model"]["sparsity"] == 90
    mini = run_minidisc.main(schedule_args(sparse, task, tmp_path / "mini", "--lam", "0.05",
                                           "--target_sparsity", "90", "--max_steps", "3"))
    assert mini["model"]["sparsity"] == 90
    student = SparseEncT5Cls.from_pretrained(tmp_path / "mini" / mini_best(tmp_path / "mini"))
    assert student.config.sparsity == 90


def mini_best(folder) -> str:
    """The folder of MiniDisc's final student, relative to its output folder."""
    last = sorted(p for p in folder.iterdir() if p.name.startswith("iter_"))[-1]
    return f"{last.name}/best"
