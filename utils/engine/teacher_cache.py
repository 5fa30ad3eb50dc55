"""The frozen teacher's outputs kept per training example (``--teacher_cache_mb``), so that a distillation
stage runs the teacher once per example, not once per epoch."""

from __future__ import annotations

import torch


class TeacherCache:
    """The frozen teacher's outputs per training example, so that later epochs skip its forward pass.

    Each example keeps its scored logits and, per selection of hidden states, those states at its
    real tokens, on the device they were computed on. Entries are stored while they fit in
    ``budget_bytes`` (the logits are small; the states are ``layers × tokens × hidden`` floats);
    past it, batches with an uncached example run the teacher as before. A batch is served only when
    every one of its examples is cached.

    The cached values come from the batch an example was first seen in. Batching can change a
    float's last bits (padding, matmul blocking), so a cached run equals a recomputing one within
    float rounding, not bit for bit.
    """

    def __init__(self, budget_bytes: int):
        self.budget = budget_bytes
        self.used = 0
        self.logits: dict[int, torch.Tensor] = {}
        self.states: dict[tuple, dict[int, torch.Tensor]] = {}
        self.hits = self.misses = 0

    def _fits(self, tensors) -> bool:
        size = sum(t.numel() * t.element_size() for t in tensors)
        if self.used + size > self.budget:
            return False
        self.used += size
        return True

    def lookup(self, indices: list[int], key: tuple | None):
        """``(logits, states)`` of a batch (rows in batch order; states None when ``key`` is None), or
        None when an example is missing."""
        found = key is None or key in self.states
        if not found or any(i not in self.logits or (key is not None and i not in self.states[key])
                            for i in indices):
            self.misses += 1
            return None
        self.hits += 1
        logits = torch.cat([self.logits[i] for i in indices])
        states = None if key is None else torch.cat([self.states[key][i] for i in indices], dim=1)
        return logits, states

    def store_logits(self, indices: list[int], logits: torch.Tensor, counts: list[int]) -> None:
        for i, rows in zip(indices, logits.detach().split(counts), strict=True):
            if i not in self.logits and self._fits([rows]):
                self.logits[i] = rows.clone()

    def store_states(self, indices: list[int], key: tuple, states: torch.Tensor, tokens: list[int]) -> None:
        table = self.states.setdefault(key, {})
        for i, rows in zip(indices, states.detach().split(tokens, dim=1), strict=True):
            if i not in table and self._fits([rows]):
                table[i] = rows.clone()
