"""Layer selection and losses of the distillation objectives (pure functions)."""

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import tiny_model
from utils.engine.objectives import (
    DistillObjective,
    first_token_mask,
    hidden_cosine,
    hidden_mse,
    layer_pairs,
    resolve_objective,
    select_hidden_layers,
    soft_cross_entropy,
)
from utils.engine.teacher_cache import TeacherCache


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
    from utils.engine.objectives import DistillObjective, SandwichObjective

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
        objective = SandwichObjective(DistillObjective(teacher), sparsities)
        objective.prepare(batch)
        losses = []
        for p in range(objective.num_passes):
            with student.at_sparsity(objective.width(p)):
                if shared:
                    loss = objective.loss(student, student, batch, p)
                else:
                    loss = objective.base.loss(student, student, batch, p) / objective.num_passes
                loss.backward()
            losses.append(loss.item())
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


# ---- the scale-free objectives and the teacher cache ---------------------------------------------


def _batch(generator, size=3, length=9, pad_from=None, left=False):
    input_ids = torch.randint(5, 80, (size, length), generator=generator)
    mask = torch.ones_like(input_ids)
    for row, start in (pad_from or {}).items():
        if left:
            mask[row, :length - start] = 0
        else:
            mask[row, start:] = 0
    return {"input_ids": input_ids * mask, "attention_mask": mask, "token_type_ids": torch.zeros_like(input_ids)}


def test_hidden_cosine_is_scale_free_and_zero_when_aligned():
    generator = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 5, 7, generator=generator), torch.randn(2, 5, 7, generator=generator)
    assert hidden_cosine(s, s).item() == pytest.approx(0.0, abs=1e-6)
    assert hidden_cosine(s, 1e4 * t).item() == pytest.approx(hidden_cosine(s, t).item(), rel=1e-5)
    # one token per row scaled a thousandfold moves a plain MSE by orders of magnitude, the cosine not at all
    t_massive = t.clone()
    t_massive[:, 0] *= 1e3
    assert hidden_cosine(s, t_massive).item() == pytest.approx(hidden_cosine(s, t).item(), rel=1e-5)
    assert F.mse_loss(s, t_massive).item() > 100 * F.mse_loss(s, t).item()


def test_first_token_mask_finds_the_first_real_token_on_either_side():
    mask = torch.tensor([[1, 1, 1, 0], [0, 0, 1, 1], [0, 0, 0, 0]])
    assert first_token_mask(mask).long().tolist() == [[1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]


@pytest.mark.parametrize("model_type", ["sparsebert_cls", "sparsedecoder_cls"])
def test_hidden_cos_weighs_the_state_term_as_the_logit_term(model_type):
    """α = L_logit / L_hidden: the loss's value is twice the logit term, and its gradient is the logit
    term's plus α times the state term's."""
    teacher = tiny_model(model_type, 3, seed=0).eval()
    student = tiny_model(model_type, 3, seed=1).eval()  # no dropout: the passes below are comparable
    batch = _batch(torch.Generator().manual_seed(4), pad_from={1: 5}, left=model_type == "sparsedecoder_cls")
    objective = DistillObjective(teacher, "hidden_cos", skip_first_token=teacher.sink_first_token)
    objective.prepare(batch)
    total = objective.loss(student, student, batch, 0)
    logits = DistillObjective(teacher, "logit_kd")
    logits.prepare(batch)
    logit_loss = logits.loss(student, student, batch, 0)
    assert total.item() == pytest.approx(2 * logit_loss.item(), rel=1e-5)
    student.zero_grad()
    total.backward()
    combined = [p.grad.clone() for p in student.parameters() if p.grad is not None]
    student.zero_grad()
    logits.loss(student, student, batch, 0).backward()
    only_logits = [p.grad.clone() for p in student.parameters() if p.grad is not None]
    assert any(not torch.allclose(a, b) for a, b in zip(combined, only_logits, strict=False))


def test_decoder_hidden_cos_leaves_out_the_first_token():
    """A decoder's first position (its attention sink) does not count: changing the teacher's state there
    leaves the gradient alone, while the same change at another position moves it."""
    teacher = tiny_model("sparsedecoder_cls", 2, seed=0).eval()
    student = tiny_model("sparsedecoder_cls", 2, seed=1).eval()
    batch = _batch(torch.Generator().manual_seed(5), pad_from={0: 6}, left=True)

    def gradient_with(position):
        objective = DistillObjective(teacher, "hidden_cos", skip_first_token=True)
        objective.prepare(batch)
        key = tuple(j for _, j in layer_pairs(student.depth, teacher.depth))
        states = objective._teacher_hidden(key, batch).clone()
        if position is not None:
            states[:, position] *= -1  # flip the token's direction in every paired layer
        objective._teacher_states[key] = states
        student.zero_grad()
        objective.loss(student, student, batch, 0).backward()
        return torch.cat([p.grad.flatten() for p in student.parameters() if p.grad is not None])

    # packed rows follow the mask row by row: row 0 (left-padded) starts with its first real token
    base = gradient_with(None)
    assert torch.allclose(gradient_with(0), base, rtol=1e-5, atol=1e-7)
    assert not torch.allclose(gradient_with(1), base, rtol=1e-3, atol=1e-6)


def test_auto_objective_is_the_family_default():
    assert resolve_objective("auto", tiny_model("sparsebert_cls")) == "hidden_kd"
    assert resolve_objective("auto", tiny_model("sparsedecoder_cls")) == "hidden_cos"
    assert resolve_objective("logit_kd", tiny_model("sparsedecoder_cls")) == "logit_kd"


class _CountingTeacher:
    """Counts the teacher's forward passes."""

    def __init__(self, model):
        self.model, self.calls = model, 0
        self.original = model.forward

        def forward(*args, **kwargs):
            self.calls += 1
            return self.original(*args, **kwargs)

        model.forward = forward


@pytest.mark.parametrize("kind", ["hidden_kd", "hidden_cos", "logit_kd"])
def test_teacher_cache_serves_later_batches_without_a_forward(kind):
    teacher = tiny_model("sparsebert_cls", 2, seed=0).eval()
    student = tiny_model("sparsebert_cls", 2, seed=1).eval()
    generator = torch.Generator().manual_seed(6)
    batches = [_batch(generator, pad_from={0: 4}) for _ in range(2)]
    for i, b in enumerate(batches):
        b["example_index"] = torch.arange(3 * i, 3 * i + 3)
    counter = _CountingTeacher(teacher)
    cached = DistillObjective(teacher, kind, cache=TeacherCache(2**30))
    plain = DistillObjective(teacher, kind)
    first = []
    for b in batches:  # epoch 1: every batch runs the teacher and fills the cache
        cached.prepare(b)
        first.append(cached.loss(student, student, b, 0).item())
    assert counter.calls == 2
    for b, expected in zip(batches, first, strict=True):  # epoch 2: served from the cache
        cached.prepare(b)
        assert cached.loss(student, student, b, 0).item() == pytest.approx(expected, rel=1e-6)
    assert counter.calls == 2 and cached.cache.hits == 2
    # a batch mixing both earlier batches' examples is served too, and equals a recomputation
    mixed = {k: torch.cat([batches[0][k][:2], batches[1][k][1:]]) for k in batches[0]}
    cached.prepare(mixed)
    plain.prepare(mixed)
    assert cached.loss(student, student, mixed, 0).item() == pytest.approx(
        plain.loss(student, student, mixed, 0).item(), rel=1e-5)
    assert counter.calls == 3  # the plain objective's forward only


def test_teacher_cache_stops_at_its_budget():
    teacher = tiny_model("sparsebert_cls", 2, seed=0).eval()
    student = tiny_model("sparsebert_cls", 2, seed=1).eval()
    batch = _batch(torch.Generator().manual_seed(7))
    batch["example_index"] = torch.arange(3)
    objective = DistillObjective(teacher, "hidden_kd", cache=TeacherCache(100))  # bytes: room for logits only
    objective.prepare(batch)
    objective.loss(student, student, batch, 0)
    assert objective.cache.used <= 100 and len(objective.cache.logits) == 3
    assert not any(objective.cache.states.values())
    objective.prepare(batch)
    assert objective._teacher_out is not None  # the states are missing, so the teacher ran again
