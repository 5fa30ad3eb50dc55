"""What every family's task models share: the output type :class:`TaskOutput` and the task losses (a language
model's next-token cross-entropy and its distillation KL, chunked over tokens)."""

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from transformers.utils import ModelOutput


@dataclass
class TaskOutput(ModelOutput):
    """What every task model returns; a transformers ``ModelOutput``, so pipelines and code written for
    HF models read it too (``out["logits"]``, ``out[0]``: the loss when given, else the logits).

    Attributes:
        loss: scalar task loss when ``labels`` were given, else None.
        logits: ``[B, C]`` (cls; ``[B, 1]`` for regression) or ``[B, T, C]`` (ner).
        hidden_states: L + 1 tensors ``[B, T, hidden]``: the embedding output, then each layer's output
            (zero at padding positions); a :class:`~models.packing.HiddenStates` sequence or a tuple.
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    hidden_states: Sequence[torch.Tensor] | None = None


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


def next_token_nll(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                   chunk: int = 1024) -> tuple[torch.Tensor, int]:
    """The summed cross-entropy of the next token and the number of tokens scored: position ``t`` of ``hidden
    [B, T, d]`` predicts ``labels[:, t + 1]`` (-100: not scored) through the output ``weight [V, d]``. The
    ``[tokens, V]`` logits exist ``chunk`` rows at a time (recomputed in backward, not kept)."""
    targets = labels[:, 1:]
    keep = targets != -100
    rows, targets = hidden[:, :-1][keep], targets[keep]

    def part(h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(F.linear(h, weight).float(), t, reduction="sum")

    total = hidden.new_zeros((), dtype=torch.float32)
    for start, end in _chunks(rows.shape[0], chunk):
        total = total + _maybe_checkpointed(part, rows[start:end], targets[start:end])
    return total, int(targets.numel())


def token_kl(student: torch.Tensor, student_weight: torch.Tensor, teacher: torch.Tensor,
             teacher_weight: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """The summed forward KL(teacher ‖ student) of the next-token distributions at temperature 1, over the rows of
    ``student``/``teacher [N, d]`` (hidden states at the same tokens) through each model's output weight ``[V, d]``;
    the logits exist ``chunk`` rows at a time, the student's recomputed in backward."""
    def part(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = F.log_softmax(F.linear(t, teacher_weight).float(), dim=-1)
        log_probs = F.log_softmax(F.linear(s, student_weight).float(), dim=-1)
        return (target.exp() * (target - log_probs)).sum()

    total = student.new_zeros((), dtype=torch.float32)
    for start, end in _chunks(student.shape[0], chunk):
        total = total + _maybe_checkpointed(part, student[start:end], teacher[start:end])
    return total


def _maybe_checkpointed(function, *args):
    if torch.is_grad_enabled() and any(a.requires_grad for a in args):
        return checkpoint(function, *args, use_reentrant=False)
    return function(*args)
