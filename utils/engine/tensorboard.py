"""``--report_to tensorboard``: the scalars of a training stage, written beside its ``metrics.jsonl``."""

from __future__ import annotations

from pathlib import Path

TENSORBOARD_DIR = "tensorboard"


class Scalars:
    """TensorBoard scalars of a stage, or nothing when ``folder`` is None: the loss and learning rate of every
    optimizer step, and every number of every evaluation record (for MiniDisc ``sparsities/{s}/{metric}``,
    ``performance/{s}``, ``tradeoff/{s}``, ``score``, ``choice``)."""

    def __init__(self, folder: Path | None):
        self.writer = None
        if folder is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(folder))

    def step(self, step: int, loss: float, learning_rate: float) -> None:
        if self.writer is not None:
            self.writer.add_scalar("train/loss", loss, step)
            self.writer.add_scalar("train/learning_rate", learning_rate, step)

    def evaluation(self, entry: dict) -> None:
        if self.writer is None:
            return
        for tag, value in _numbers(entry, "eval"):
            if tag not in ("eval/step", "eval/epoch"):
                self.writer.add_scalar(tag, value, entry["step"])
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _numbers(record: dict, prefix: str):
    """``(tag, value)`` for every number in a nested record, tags joined by ``/``."""
    for key, value in record.items():
        tag = f"{prefix}/{key}"
        if isinstance(value, dict):
            yield from _numbers(value, tag)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            yield tag, value
