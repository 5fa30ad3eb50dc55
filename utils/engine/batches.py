"""The order in which a training run sees its examples, the same for every run, rank and resume."""

from __future__ import annotations

import math

import torch


class EpochBatches:
    """Deterministic batches for every epoch and rank.

    Epoch ``e`` permutes the examples with a generator seeded by ``seed + e`` (so a resumed run
    sees exactly the batches an uninterrupted one would), cuts the permutation into global batches
    of ``batch_size × world_size`` and gives rank r the r-th slice of each. With
    ``group_by_length`` the permutation is cut into chunks of 50 global batches, each sorted by
    length, and the batch order is shuffled again: far less padding, still random.
    Under several processes the last global batch is topped up from the start of the permutation
    so every rank takes the same number of steps.
    """

    def __init__(self, lengths, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 group_by_length: bool = False):
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.group_by_length = group_by_length

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / (self.batch_size * self.world_size))

    def epoch(self, epoch: int) -> list[list[int]]:
        """The batches (lists of example indices) of this rank in ``epoch``."""
        g = torch.Generator().manual_seed(self.seed + epoch)
        order = torch.randperm(len(self.lengths), generator=g).tolist()
        global_size = self.batch_size * self.world_size
        if self.world_size > 1 and len(order) % global_size:
            order += order[: global_size - len(order) % global_size]
        if self.group_by_length:
            chunk = global_size * 50
            order = [i for start in range(0, len(order), chunk)
                     for i in sorted(order[start:start + chunk], key=lambda j: -self.lengths[j])]
        batches = [order[start:start + global_size] for start in range(0, len(order), global_size)]
        if self.group_by_length:
            perm = torch.randperm(len(batches), generator=g).tolist()
            batches = [batches[i] for i in perm]
        return [b[self.rank * self.batch_size:(self.rank + 1) * self.batch_size] for b in batches]


def to_device(batch: dict, device: torch.device) -> dict:
    """Every tensor of ``batch`` on ``device``."""
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}
