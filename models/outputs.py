"""What every family's task models share: the output type :class:`TaskOutput` and the task losses (a language
model's next-token cross-entropy and its distillation KL, chunked over tokens)."""

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.utils import ModelOutput

from .fast_ops import low_precision


@dataclass
class TaskOutput(ModelOutput):
    """What every task model returns; a transformers ``ModelOutput``, so pipelines and code written for
    HF models read it too (``out["logits"]``, ``out[0]``: the loss when given, else the logits).

    Attributes:
        loss: scalar task loss when ``labels`` were given, else None.
        logits: ``[B, C]`` (cls; ``[B, 1]`` for regression) or ``[B, T, C]`` (ner).
        hidden_states: L + 1 tensors ``[B, T, hidden]``: the embedding output, then each layer's output
            (zero at padding positions); a :class:`~models.packing.HiddenStates` sequence or a tuple.
        distill_loss: a language model given its teacher's outputs: the mean per-token KL from them.
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    hidden_states: Sequence[torch.Tensor] | None = None
    distill_loss: torch.Tensor | None = None


def sequence_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of ``logits [B, C]`` against ``labels [B]``; MSE on the squeezed ``[B, 1]`` for regression."""
    if logits.shape[-1] == 1:
        # In fp32 even under autocast: bf16 would round the gold scores (3.7 -> 3.703125).
        return F.mse_loss(logits.squeeze(-1).float(), labels.float())
    return F.cross_entropy(logits, labels)


def token_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Token cross-entropy of ``logits [B, T, C]`` over the positions where ``labels [B, T]`` is not -100."""
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)


def task_loss(logits: torch.Tensor, labels: torch.Tensor, token_level: bool) -> torch.Tensor:
    """:func:`token_loss` for a tagging model (``token_level``), else :func:`sequence_loss`."""
    return token_loss(logits, labels) if token_level else sequence_loss(logits, labels)


def _chunks(count: int, chunk: int):
    return [(start, min(start + chunk, count)) for start in range(0, count, chunk)]


class _ChunkedHeadLoss(torch.autograd.Function):
    """The sum over rows of a per-row loss of the logits ``hidden @ weight.T``, computed a chunk of rows at a time
    together with its gradient: no chunk's logits are kept for backward, and ``weight`` receives one gradient in
    one autograd node (DistributedDataParallel's hooks fire once per parameter and backward).

    ``row_losses(logits [n, V] fp32, start, end, *context) -> (loss sum, d loss / d logits)``.
    """

    @staticmethod
    def forward(ctx, hidden, weight, chunk, row_losses, *context):
        wanted = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        grad_hidden = torch.zeros(hidden.shape, dtype=torch.float32, device=hidden.device) if wanted else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if wanted else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        weight_dtype, weight = weight.dtype, low_precision(weight)
        for start, end in _chunks(hidden.shape[0], chunk):
            rows = hidden[start:end]
            loss, grad_logits = row_losses(F.linear(rows, weight).float(), start, end, *context)
            total += loss
            if wanted:  # the products run as the forward's did (in bf16 under autocast)
                grad_hidden[start:end] += F.linear(grad_logits, weight.t()).float()
                grad_weight += F.linear(grad_logits.t(), rows.t()).float()
        ctx.grads = (grad_hidden, grad_weight, hidden.dtype, weight_dtype)
        ctx.extra = 2 + len(context)
        return total

    @staticmethod
    def backward(ctx, grad_output):
        grad_hidden, grad_weight, hidden_dtype, weight_dtype = ctx.grads
        ctx.grads = None
        return ((grad_hidden * grad_output).to(hidden_dtype), (grad_weight * grad_output).to(weight_dtype),
                *[None] * ctx.extra)


def _next_token_rows(logits: torch.Tensor, start: int, end: int, targets: torch.Tensor):
    target = targets[start:end]
    grad = F.softmax(logits, dim=-1)
    grad[torch.arange(len(target), device=grad.device), target] -= 1
    return F.cross_entropy(logits, target, reduction="sum"), grad


def _kl_rows(logits: torch.Tensor, start: int, end: int, teacher: torch.Tensor, teacher_weight: torch.Tensor):
    target = F.log_softmax(F.linear(teacher[start:end], low_precision(teacher_weight)).float(), dim=-1)
    log_probs = F.log_softmax(logits, dim=-1)
    return (target.exp() * (target - log_probs)).sum(), log_probs.exp() - target.exp()


def next_token_nll(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                   chunk: int = 1024) -> tuple[torch.Tensor, int]:
    """The summed cross-entropy of the next token and the number of tokens scored: position ``t`` of ``hidden
    [B, T, d]`` predicts ``labels[:, t + 1]`` (-100: not scored) through the output ``weight [V, d]``. The
    ``[tokens, V]`` logits exist ``chunk`` rows at a time, their gradient computed with them."""
    targets = labels[:, 1:]
    keep = targets != -100
    rows, targets = hidden[:, :-1][keep], targets[keep]
    return _ChunkedHeadLoss.apply(rows, weight, chunk, _next_token_rows, targets), int(targets.numel())


def token_kl(student: torch.Tensor, student_weight: torch.Tensor, teacher: torch.Tensor,
             teacher_weight: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """The summed forward KL(teacher ‖ student) of the next-token distributions at temperature 1, over the rows of
    ``student``/``teacher [N, d]`` (hidden states at the same tokens) through each model's output weight ``[V, d]``;
    the logits exist ``chunk`` rows at a time (the teacher's are not differentiated)."""
    # the teacher's weight goes in as it is (its stored low-precision copy is found by the tensor), and gets no gradient
    return _ChunkedHeadLoss.apply(student, student_weight, chunk, _kl_rows, teacher.detach(), teacher_weight)
