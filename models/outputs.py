"""What every family's task models share: the output type :class:`TaskOutput` and the task losses."""

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
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
