"""Phi-3: Q, K and V fused in one ``qkv_proj``, gate and up in one ``gate_up_proj``. Its units are index sets at
three (and two) offsets of the fused tensors, so the weights keep HF's names and layout: a checkpoint loads as
it is, a full-width model saves into the stock class, and no split or join is needed. Parity at full width on
either padding side, and every verb's invariant, are in ``test_decoder.py`` and ``test_model_pruning.py``."""

import copy

import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM, Phi3ForSequenceClassification

from models import SparseDecoderCls
from tests.helpers import make_tiny_decoder_config, save_tiny_decoder_pretrained
from tests.test_decoder import decoder_batch
from utils.artifacts.model_io import load_model


def marked_phi3(head_unit: str):
    """A tiny Phi-3 whose fused Q rows of query head h hold h, K rows of group j hold 10 + j, V rows 20 + j."""
    model = SparseDecoderCls(make_tiny_decoder_config("phi3", num_labels=2, head_unit=head_unit)).eval()
    qkv = model.model.layers[0].self_attn.qkv_proj
    marks = torch.cat([torch.arange(6), 10 + torch.arange(2), 20 + torch.arange(2)]).repeat_interleave(8)
    with torch.no_grad():
        qkv.weight.copy_(marks[:, None].float().expand(-1, 48))
    return model, qkv


@pytest.mark.parametrize(("head_unit", "heads", "groups"), [("group", [0, 1, 2], [0]),
                                                             ("query", [0, 1, 3, 4], [0, 1])])
def test_fused_units_keep_each_part_of_qkv(head_unit, heads, groups):
    model, qkv = marked_phi3(head_unit)
    model.config.sparsity_map = {50: {"head": {0: 1}, "neuron": {1: 30}}}
    inputs = decoder_batch("right")
    with torch.no_grad():
        model.sparsify(50)
        sliced = model(**inputs).logits
        model.densify()
        densified = model(**inputs).logits
    torch.testing.assert_close(densified, sliced)
    marks = qkv.weight[::8, 0].tolist()
    assert marks == heads + [10 + g for g in groups] + [20 + g for g in groups]
    assert model.model.layers[1].mlp.gate_up_proj.out_features == 2 * 7


def test_reorder_moves_the_fused_parts_together():
    model, qkv = marked_phi3("group")
    inputs = decoder_batch("left")
    with torch.no_grad():
        before = model(**inputs).logits
        model.reorder(head_order=torch.tensor([[4, 3, 5, 1, 0, 2]] + [list(range(6))] * 2),
                      neuron_order=torch.stack([torch.randperm(37, generator=torch.Generator().manual_seed(i))
                                                for i in range(3)]))
        torch.testing.assert_close(model(**inputs).logits, before, atol=1e-5, rtol=1e-5)
    assert qkv.weight[::8, 0].tolist() == [4, 3, 5, 1, 0, 2, 11, 10, 21, 20]


def test_partial_rotary_and_residual_dropout_follow_hf():
    config = make_tiny_decoder_config("phi3", num_labels=3, resid_pdrop=0.3)
    config.rope_parameters = {**(getattr(config, "rope_parameters", None) or {}), "partial_rotary_factor": 0.5}
    config.partial_rotary_factor = 0.5
    torch.manual_seed(0)
    hf = AutoModel.from_config(copy.deepcopy(config)).eval()
    assert hf.rotary_emb(torch.zeros(1), torch.arange(3)[None])[0].shape[-1] == 4  # half of head_dim 8 rotates
    ours = SparseDecoderCls(copy.deepcopy(config)).eval()
    ours.load_state_dict({f"model.{k}": v for k, v in hf.state_dict().items()}, strict=False)
    inputs = decoder_batch("right")
    with torch.no_grad():
        reference = hf(**inputs).last_hidden_state.masked_fill(~inputs["attention_mask"].bool()[:, :, None], 0)
        torch.testing.assert_close(ours(**inputs).hidden_states[-1], reference, atol=1e-5, rtol=1e-5)
    ours.train()
    torch.manual_seed(1)
    first = ours(**inputs).hidden_states[-1]
    assert not torch.equal(first, ours(**inputs).hidden_states[-1])  # the residual dropout draws


def test_a_phi3_checkpoint_loads_and_a_full_width_model_saves_into_the_stock_class(tmp_path):
    pretrained = save_tiny_decoder_pretrained(tmp_path / "phi3", "phi3")
    reference = AutoModelForCausalLM.from_pretrained(pretrained).state_dict()
    model = load_model("sparsedecoder_cls", str(pretrained), new_head=True, num_labels=2).eval()
    assert torch.equal(model.model.layers[2].self_attn.qkv_proj.weight, reference["model.layers.2.self_attn.qkv_proj.weight"])
    assert torch.equal(model.model.layers[2].mlp.gate_up_proj.weight, reference["model.layers.2.mlp.gate_up_proj.weight"])
    model.save_pretrained(tmp_path / "ours")
    stock = Phi3ForSequenceClassification.from_pretrained(tmp_path / "ours").eval()
    inputs = decoder_batch("right")
    inputs["input_ids"] = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, model.config.pad_token_id)
    with torch.no_grad():
        torch.testing.assert_close(stock(**inputs).logits, model(**inputs).logits, atol=1e-5, rtol=1e-5)
