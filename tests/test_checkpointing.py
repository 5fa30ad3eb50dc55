"""--gradient_checkpointing: a MiniDisc sandwich step gives the same gradients with layers recomputed in
backward as without, for every family, dropout on, with each width's recomputation at its own width."""

import pytest
import torch

from tests.helpers import padded_batch, tiny_model

FAMILIES = [("sparsebert_cls", {}), ("sparseenct5_cls", {"gated": True}),
            ("sparsedecoder_cls", {"head_unit": "query", "attention_dropout": 0.1})]


def sandwich_gradients(model_type, overrides, checkpointing: bool):
    """Gradients of one sandwich step (widths 0, 60, 90: forward and backward per width, as the loop runs
    them) and how many times the first layer ran."""
    model = tiny_model(model_type, 3, levels=(60, 90), seed=4, **overrides).train()
    model.set_gradient_checkpointing(checkpointing)
    first = model.base_model.blocks("neuron")[0]
    calls = []
    # a pre-hook: recomputation stops early once it has what backward needs, so a forward hook may not run
    first.register_forward_pre_hook(lambda *_: calls.append(model.current_sparsity))
    batch = padded_batch(torch.Generator().manual_seed(2), 3, 10, {1: 6, 2: 4})
    torch.manual_seed(11)
    for level in (0, 60, 90):
        with model.at_sparsity(level):  # as utils.engine.step.backward_batch holds each pass's width
            model(**batch, labels=torch.tensor([0, 2, 1])).loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}, calls


@pytest.mark.parametrize(("model_type", "overrides"), FAMILIES, ids=[t for t, _ in FAMILIES])
def test_checkpointed_sandwich_gradients_equal_plain_ones(model_type, overrides):
    plain, plain_calls = sandwich_gradients(model_type, overrides, False)
    recomputed, calls = sandwich_gradients(model_type, overrides, True)
    assert plain_calls == [0, 60, 90]
    assert calls == [0, 0, 60, 60, 90, 90]  # each width's forward, then its recomputation at the same width
    assert plain.keys() == recomputed.keys()
    for name, grad in plain.items():
        torch.testing.assert_close(recomputed[name], grad, atol=1e-6, rtol=1e-5, msg=name)
