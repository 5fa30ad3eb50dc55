"""Where a training stage is: its counters and its running training loss, both saved with the resumable
state (:mod:`utils.engine.checkpoint`) so that a resumed stage continues exactly."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist


class RunningMean:
    """Mean per-step training loss since the last evaluation (a step sums its passes and micro-batches)."""

    def __init__(self):
        self.total, self.count = 0.0, 0

    def add(self, value: float) -> None:
        self.total += value
        self.count += 1

    def mean(self, run=None) -> float | None:
        """The mean, averaged over processes when ``run`` is distributed (every rank must call it)."""
        total, count = self.total, self.count
        if run is not None and run.distributed:
            both = torch.tensor([total, count], dtype=torch.float64, device=run.device)
            dist.all_reduce(both)
            total, count = both.tolist()
        return round(total / count, 6) if count else None

    def reset(self) -> None:
        self.total, self.count = 0.0, 0

    def state_dict(self) -> dict:
        return {"total": self.total, "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.total, self.count = state["total"], state["count"]


@dataclass
class LoopState:
    """Counters that, with the weights and optimizer, fully describe where training is."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    best_score: float = -math.inf
    best_step: int = -1
    last_eval_step: int = -1
    examples_seen: int = 0
    train_seconds: float = 0.0
    eval_seconds: float = 0.0  # evaluations and best/ saves, not counted in train_seconds
    finished: bool = False
    stop_reason: str = ""
