"""Layer selection and losses of the distillation objectives (pure functions)."""

import pytest
import torch

from tests.helpers import tiny_model
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


def _tiny_supernet(seed: int):
    return tiny_model(num_labels=3, levels=(40, 70, 90), seed=seed)


@pytest.mark.parametrize("padding", [False, True])
def test_sandwich_shares_embeddings_without_changing_losses_or_gradients(padding):
    """One embedding backward per batch (the sandwich) == one per width (independent passes), dropout on."""
    from utils.objectives import DistillObjective, SandwichObjective

    teacher, student = _tiny_supernet(0).eval(), _tiny_supernet(1).train()
    generator = torch.Generator().manual_seed(2)
    input_ids = torch.randint(5, 80, (3, 10), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    if padding:
        attention_mask[0, 6:] = 0
        attention_mask[2, 3:] = 0
    batch = {"input_ids": input_ids * attention_mask, "attention_mask": attention_mask,
             "token_type_ids": torch.zeros_like(input_ids)}
    sparsities = [0, 40, 70, 90]

    def run(shared: bool):
        student.zero_grad(set_to_none=True)
        torch.manual_seed(3)
        objective = SandwichObjective(DistillObjective(teacher), sparsities, rest_sparsity=0)
        objective.prepare(batch)
        losses = []
        for p in range(objective.num_passes):
            if shared:
                loss = objective.loss(student, student, batch, p)
            else:
                student.sparsify(objective.sparsities[p])
                loss = objective.base.loss(student, student, batch, p) / objective.num_passes
            loss.backward()
            losses.append(loss.item())
        objective.finish(student)
        return losses, {name: param.grad.clone() for name, param in student.named_parameters()}

    shared_losses, shared_grads = run(shared=True)
    plain_losses, plain_grads = run(shared=False)
    assert shared_losses == pytest.approx(plain_losses, rel=1e-6)
    assert shared_grads.keys() == plain_grads.keys()
    for name, grad in plain_grads.items():
        torch.testing.assert_close(shared_grads[name], grad, atol=1e-6, rtol=1e-5, msg=name)
    assert shared_grads["bert.embeddings.word_embeddings.weight"].abs().sum() > 0


def test_embedding_output_of_the_wrong_shape_is_refused():
    model = _tiny_supernet(0)
    input_ids = torch.randint(5, 80, (2, 7))
    with pytest.raises(ValueError, match="embedding_output must be what embed"):
        model(input_ids, embedding_output=torch.zeros(2, 6, model.config.hidden_size))
