"""The sparsity map built from importance scores of attention heads and FFN neurons: pure functions, no model.

:func:`normalize_scores` (per-layer L2), :func:`layer_order` (descending per layer),
:func:`build_sparsity_map` (global ranking, one count per layer and level) and :func:`parse_sparsities`.
The scores come from the gradient pass of :mod:`utils.engine.importance_pass`, which also keeps them
beside a sparsified teacher so it can be re-sparsified with another grid without a second pass.

Rounding rules (documented because they decide the exact counts):

* a level ``s`` removes ``round(s · total / 100)`` heads (and, separately, neurons) over all
  layers, rounded half to even on the EXACT rational value (Python's ``round`` on a
  ``Fraction``), so ``s = 50`` of 37 units removes 18, not 19, and no float error can flip a tie;
* with ``neuron_multiple = m > 1`` each layer's removed-neuron count ``n`` becomes
  ``round(n / m) · m`` (half to even again), capped at the layer's size; the reference uses
  ``m = 8``, so the real neuron sparsity differs slightly from the nominal one (the reference
  reported the nominal level only):
  report the kept counts, never the level alone. Heads are never rounded;
* ties in the global ranking go to the lower (layer, position) first, so the result is
  deterministic;
* with ``uniform`` there is no global ranking: every row of a kind loses ``round(s · N / 100)`` of its
  ``N`` units (neurons rounded to ``m`` as above), its least important ones, so every layer keeps as many
  (a decoder student of uniform widths is a stock architecture, :mod:`models.standalone`).

Example::

    head, neuron = accumulate_importance(model, dataset, 32, run)
    head, neuron = normalize_scores(head), normalize_scores(neuron)
    head_order, neuron_order = layer_order(head), layer_order(neuron)
    model.reorder(head_order, neuron_order)
    model.config.sparsity_map = build_sparsity_map(head, neuron, DEFAULT_SPARSITIES, neuron_multiple=8)
"""

from __future__ import annotations

from collections.abc import Iterable
from fractions import Fraction

import torch

from models.sparsity_map import SparsityMap

DEFAULT_SPARSITIES = (0, 10, 20, 30, 40, 50, 60, 70, 80, 85, 90, 95)
NORM_EPS = 1e-17


def parse_sparsities(text: str) -> tuple[int, ...]:
    """``"0,10,85"`` → ``(0, 10, 85)``: sorted, de-duplicated integer percents in 0–99; 0 always included.

    >>> parse_sparsities("90, 10,10")
    (0, 10, 90)

    Raises:
        ValueError: for an empty list, a non-integer item or a level outside 0–99 (names the item).
    """
    items = [item.strip() for item in str(text).split(",")]
    if not any(items):
        raise ValueError(f"--sparsities {text!r}: expected comma-separated integers between 0 and 99")
    levels = {0}
    for item in items:
        try:
            level = int(item)
        except ValueError:
            raise ValueError(f"--sparsities {text!r}: {item!r} is not an integer; expected comma-separated "
                             "integers between 0 and 99") from None
        if not 0 <= level <= 99:
            raise ValueError(f"--sparsities {text!r}: level {level} is not between 0 and 99")
        levels.add(level)
    return tuple(sorted(levels))


def normalize_scores(scores: torch.Tensor, eps: float = NORM_EPS) -> torch.Tensor:
    """Per-layer L2 normalisation: row ``l`` of ``scores [L, N]`` divided by ``‖row‖₂ + eps``.

    Layers are normalised independently so that every layer competes in the global ranking on
    the same scale (raw gradient magnitudes grow towards the output). An all-zero row stays zero.
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must be [layers, units], got shape {tuple(scores.shape)}")
    return scores / (scores.norm(dim=1, keepdim=True) + eps)


def layer_order(scores: torch.Tensor) -> torch.Tensor:
    """LongTensor ``[L, N]``: each layer's unit indices by descending score (stable: ties keep index order).

    Passed to ``model.reorder`` so that keeping the first ``k`` units keeps the ``k`` most important.
    """
    return torch.argsort(scores, dim=1, descending=True, stable=True)


def removal_count(level: int, total: int) -> int:
    """Units removed at ``level`` percent of ``total``: round half to even on the exact ``level · total / 100``.

    >>> [removal_count(s, 37) for s in (10, 50, 90)]
    [4, 18, 33]
    """
    return round(Fraction(level * total, 100))


def removed_per_layer(scores: torch.Tensor, level: int, multiple: int = 1,
                      min_kept: list[int] | None = None) -> dict[int, int]:
    """``{row: n_removed}`` (rows losing nothing omitted) when the globally least important
    ``removal_count(level, rows·N)`` units of ``scores [rows, N]`` are removed; see the module docstring
    for the rounding to ``multiple``.

    ``min_kept[r]`` units of row ``r`` (its most important ones) are never candidates: the removal
    count is taken from the other units, and capped at their number.
    """
    num_rows, size = scores.shape
    candidates = scores.flatten().clone()
    if min_kept is not None and any(min_kept):
        for row, keep in enumerate(min_kept):
            top = torch.argsort(scores[row], descending=True, stable=True)[:keep]
            candidates[row * size + top] = float("inf")
    count = min(removal_count(level, num_rows * size), int(torch.isfinite(candidates).sum()))
    # Stable ascending sort of the flattened [rows*N] scores: ties go to the lower (row, position).
    least = torch.argsort(candidates, stable=True)[:count]
    per_row = torch.bincount(torch.div(least, size, rounding_mode="floor"), minlength=num_rows).tolist()
    if multiple > 1:
        per_row = [min(round(Fraction(n, multiple)) * multiple, size) for n in per_row]
    return {row: n for row, n in enumerate(per_row) if n > 0}


def removed_uniformly(scores: torch.Tensor, level: int, multiple: int = 1,
                      min_kept: list[int] | None = None) -> dict[int, int]:
    """``{row: n_removed}`` when every row of ``scores [rows, N]`` loses ``removal_count(level, N)`` units (rounded
    to ``multiple``), capped so that every row keeps the largest of ``min_kept``: the same count in every row."""
    num_rows, size = scores.shape
    count = removal_count(level, size)
    if multiple > 1:
        count = min(round(Fraction(count, multiple)) * multiple, size)
    count = min(count, size - max(min_kept or [0]))
    return {row: count for row in range(num_rows)} if count > 0 else {}


def build_sparsity_map(
    head_scores: torch.Tensor,
    neuron_scores: torch.Tensor,
    levels: Iterable[int],
    neuron_multiple: int = 1,
    min_kept: dict[str, list[int]] | None = None,
    uniform: bool = False,
) -> SparsityMap:
    """The sparsity map ``{s: {"head": {row: n}, "neuron": {row: n}}}`` from normalised scores.

    Heads (``head_scores [rows, H]``) and neurons (``neuron_scores [rows', I]``) are ranked globally
    and separately over all their rows (a row is one attention or one FFN: BERT's layers; EncT5's
    encoder layers, then its decoder self- and cross-attention); each level removes the same fraction
    of each. Counts depend only on the scores, not on their order within a row, so scores saved after
    reordering give the same map. Because one ranking serves every level, the maps are nested: a unit
    removed at ``s`` is removed at every higher level (with ``neuron_multiple`` too, since its rounding
    is monotone). ``min_kept`` (``{"head": [per row], "neuron": [per row]}``, a model's
    ``min_kept()``) protects each row's most important units from removal. ``uniform``: every row of a kind
    loses as many units (:func:`removed_uniformly`) instead of the globally least important ones.

    Raises:
        ValueError: for a level outside 0–99, ``neuron_multiple < 1`` or malformed scores.
    """
    if head_scores.dim() != 2 or neuron_scores.dim() != 2:
        raise ValueError(f"scores must be [rows, H] and [rows, I], got {tuple(head_scores.shape)} and "
                         f"{tuple(neuron_scores.shape)}")
    if neuron_multiple < 1:
        raise ValueError(f"neuron_multiple must be at least 1, got {neuron_multiple}")
    min_kept = min_kept or {}
    result: SparsityMap = {}
    for level in sorted(set(levels)):
        if not 0 <= level <= 99:
            raise ValueError(f"sparsity level {level} is not between 0 and 99")
        remove = removed_uniformly if uniform else removed_per_layer
        result[level] = {
            "head": remove(head_scores, level, min_kept=min_kept.get("head")),
            "neuron": remove(neuron_scores, level, neuron_multiple, min_kept.get("neuron")),
        }
    return result
