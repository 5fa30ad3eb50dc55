"""The CPU training dropout of SparseBERT: its distribution, gradient, seeding, and the attention path."""

import pytest
import torch
import torch.nn.functional as F

import models.fast_ops as fast_ops
from models import SparseBertModel
from tests.helpers import make_tiny_config


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_keep_mask_has_the_asked_rate_and_an_unbiased_scale(p):
    torch.manual_seed(0)
    keep, scale = fast_ops.keep_mask(torch.Size([400, 1000]), p)
    assert keep.dtype == torch.bool and keep.shape == (400, 1000)
    n = keep.numel()
    rate = keep.float().mean().item()
    # five standard deviations of a binomial proportion
    assert abs(rate - (1 - p)) < 5 * (p * (1 - p) / n) ** 0.5
    # the scale inverts the kept probability after rounding p to 2^-16, which is within 2^-17 of 1 - p
    assert abs(1 / scale - (1 - p)) <= 2**-17
    assert scale * (1 - round(p * 65536) / 65536) == pytest.approx(1.0, abs=1e-12)


def test_keep_mask_lanes_are_not_correlated():
    """Four elements share one 64-bit draw; neighbouring lanes must still be independent."""
    torch.manual_seed(1)
    keep, _ = fast_ops.keep_mask(torch.Size([4 * 200_000]), 0.5)
    lanes = keep.view(-1, 4).float()
    for a in range(4):
        for b in range(a + 1, 4):
            both = (lanes[:, a] * lanes[:, b]).mean().item()
            assert abs(both - 0.25) < 5 * (0.25 * 0.75 / lanes.shape[0]) ** 0.5, (a, b)


def test_dropout_zeroes_and_scales_and_its_gradient_matches():
    torch.manual_seed(2)
    x = torch.randn(3, 17, 29, requires_grad=True)
    out = fast_ops.dropout(x, 0.3, training=True)
    dropped = out == 0
    assert 0.2 < dropped.float().mean().item() < 0.4
    scale = 65536 / (65536 - round(0.3 * 65536))
    torch.testing.assert_close(out[~dropped], x[~dropped] * scale)
    grad = torch.randn_like(x)
    out.backward(grad)
    torch.testing.assert_close(x.grad, grad * scale * (~dropped))


def test_dropout_is_seeded_and_off_outside_training():
    x = torch.randn(5, 7)
    torch.manual_seed(3)
    a = fast_ops.dropout(x, 0.5, training=True)
    torch.manual_seed(3)
    b = fast_ops.dropout(x, 0.5, training=True)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert fast_ops.dropout(x, 0.5, training=False) is x
    assert torch.equal(fast_ops.dropout(x, 0.0, training=True), x)


def test_attention_with_dropout_is_sdpa_math_with_the_mask(monkeypatch):
    """With every probability kept (scale 1), the CPU dropout path equals SDPA without dropout, padding included."""
    generator = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(2, 3, 6, 5, generator=generator) for _ in range(3))
    attn_mask = torch.ones(2, 1, 1, 6, dtype=torch.bool)
    attn_mask[1, ..., 4:] = False
    monkeypatch.setattr(fast_ops, "keep_mask", lambda shape, p: (torch.ones(shape, dtype=torch.bool), 1.0))
    ours = fast_ops.attention(q, k, v, attn_mask, 0.1)
    torch.testing.assert_close(ours, F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask), atol=1e-6, rtol=0)


def test_attention_dropout_zeroes_probabilities(monkeypatch):
    """A dropped probability removes that key's value from the context: dropping every key gives zeros."""
    q, k, v = (torch.randn(1, 2, 4, 3) for _ in range(3))
    monkeypatch.setattr(fast_ops, "keep_mask", lambda shape, p: (torch.zeros(shape, dtype=torch.bool), 2.0))
    assert torch.equal(fast_ops.attention(q, k, v, None, 0.5), torch.zeros(1, 2, 4, 3))


def test_training_model_uses_dropout_and_eval_does_not():
    torch.manual_seed(5)
    model = SparseBertModel(make_tiny_config())
    input_ids = torch.randint(5, 80, (2, 9))
    model.eval()
    reference = model(input_ids)[-1]
    assert torch.equal(model(input_ids)[-1], reference)
    model.train()
    torch.manual_seed(6)
    first = model(input_ids)[-1]
    torch.manual_seed(6)
    assert torch.equal(model(input_ids)[-1], first)
    assert not torch.allclose(first, reference)
