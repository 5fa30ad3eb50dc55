"""Layer selection and losses of the distillation objectives (pure functions)."""

import pytest
import torch

from utils.objectives import hidden_mse, layer_pairs, select_hidden_layers, soft_cross_entropy


@pytest.mark.parametrize("layers,expected", [
    (12, [0, 2, 4, 6, 8, 10, 12]),
    (24, [0, 4, 8, 12, 16, 20, 24]),
    (6, [0, 1, 2, 3, 4, 5, 6]),
    (4, [0, 1, 2, 3, 4]),
    (1, [0, 1]),
    (13, [0, 2, 4, 6, 8, 10, 12, 13]),
])
def test_select_hidden_layers(layers, expected):
    assert select_hidden_layers(layers) == expected


def test_layer_pairs_map_students_uniformly():
    assert layer_pairs(6, 12) == [(i, 2 * i) for i in range(7)]
    assert layer_pairs(12, 12) == [(i, i) for i in range(0, 13, 2)]
    assert layer_pairs(3, 12) == [(0, 0), (1, 4), (2, 8), (3, 12)]
    with pytest.raises(ValueError):
        layer_pairs(13, 12)


def test_soft_cross_entropy_known_values():
    # identical uniform logits over 2 classes: -Σ ½ log ½ = log 2
    z = torch.zeros(3, 2)
    assert soft_cross_entropy(z, z).item() == pytest.approx(torch.log(torch.tensor(2.0)).item())
    # T² scaling: at T = 2 the same inputs give 4 · log 2
    assert soft_cross_entropy(z, z, 2.0).item() == pytest.approx(4 * torch.log(torch.tensor(2.0)).item())
    # its gradient equals KL's: zero when the student matches the teacher
    zs = torch.tensor([[1.0, -1.0]], requires_grad=True)
    soft_cross_entropy(zs, torch.tensor([[1.0, -1.0]])).backward()
    assert zs.grad.abs().max().item() < 1e-6


def test_hidden_mse_ignores_padding():
    mask = torch.tensor([[1, 1, 0]])
    student = tuple(torch.zeros(1, 3, 2) for _ in range(3))
    teacher = tuple(torch.zeros(1, 3, 2) for _ in range(3))
    teacher[2][0, 2] = 100.0  # padding position: must not count
    teacher[2][0, 0] = 2.0  # a real token in a paired layer: 2 values of 4 over 2 pairs × 2 tokens × 2 units
    loss = hidden_mse(student, teacher, [(0, 0), (2, 2)], mask)
    assert loss.item() == pytest.approx(2 * 4.0 / 8)
