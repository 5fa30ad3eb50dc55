"""--torch_compile: a sandwich step with every transformer layer compiled (dynamic shapes, widths left
unspecialised) gives the eager step's losses and gradients, for every family, and a compiled run trains."""

import pytest
import torch

from tests.helpers import padded_batch, tiny_model

FAMILIES = [("sparsebert_cls", {}), ("sparseenct5_cls", {"gated": True}),
            ("sparsedecoder_cls", {"head_unit": "query"})]
NO_DROPOUT = {"sparsebert_cls": {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0},
              "sparseenct5_cls": {"dropout_rate": 0.0}, "sparsedecoder_cls": {"attention_dropout": 0.0}}


def sandwich_step(model_type, overrides, compiled: bool):
    """Losses and gradients of one sandwich step over widths 0, 60 and 90, on two batch shapes (so a
    compiled layer meets new lengths and token counts as well as new widths), without dropout."""
    model = tiny_model(model_type, 3, levels=(60, 90), seed=4, **overrides, **NO_DROPOUT[model_type]).train()
    if compiled:
        model.compile_layers()
    losses = []
    for length, pads in ((10, {1: 6, 2: 4}), (7, {0: 5})):
        batch = padded_batch(torch.Generator().manual_seed(length), 3, length, pads)
        for level in (0, 60, 90):
            model.sparsify(level)
            loss = model(**batch, labels=torch.tensor([0, 2, 1])).loss
            loss.backward()
            losses.append(loss.item())
    model.sparsify(0)
    return losses, {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.slow
@pytest.mark.parametrize(("model_type", "overrides"), FAMILIES, ids=[t for t, _ in FAMILIES])
def test_compiled_sandwich_step_equals_eager(model_type, overrides):
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    eager_losses, eager = sandwich_step(model_type, overrides, compiled=False)
    assert counters["stats"]["unique_graphs"] == 0
    compiled_losses, compiled = sandwich_step(model_type, overrides, compiled=True)
    assert counters["stats"]["unique_graphs"] > 0  # the layers really ran compiled
    assert compiled_losses == pytest.approx(eager_losses, rel=1e-5, abs=1e-6)
    assert compiled.keys() == eager.keys()
    for name, grad in eager.items():
        torch.testing.assert_close(compiled[name], grad, atol=1e-5, rtol=1e-4, msg=name)


def test_compiling_the_layers_leaves_the_process_compiler_settings_alone():
    import torch._dynamo

    before = (torch._dynamo.config.allow_unspec_int_on_nn_module, torch._dynamo.config.recompile_limit)
    model = tiny_model("sparsebert_cls", 3, levels=(60, 90), seed=4)
    model.compile_layers()
    assert model.base_model.compiled_layers
    assert (torch._dynamo.config.allow_unspec_int_on_nn_module, torch._dynamo.config.recompile_limit) == before
