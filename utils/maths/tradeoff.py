"""The λ-tradeoff that picks MiniDisc's teacher assistant, as pure functions.

τ(s) = P(s) + λ · s / 100, where P(s) is the best dev score so far at sparsity s (a fraction in
[0, 1]) and s the sparsity in percent. Candidates are restricted to ``low ≤ s ≤ high`` (the
current teacher's sparsity and the target) *before* the argmax. The reference instead fell back
to the target's raw score when its argmax lay above the target, and then compared that raw score
with λ-augmented ones.

Ties in τ (after rounding to 12 decimals, so float noise cannot break one) go to the smaller
sparsity: of two equally good assistants, the larger one, closer to the teacher; and the rule does
not depend on the order of the map's levels. The reference took the first maximum in its map's
insertion order (0, 10, ..., 80, 90, 85, 95): the smaller sparsity too, except that 90 came
before 85.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

DEFAULT_LAMBDA_GRID = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 1.0)


def tradeoff(performance: float, sparsity: int, lam: float) -> float:
    """τ = P + λ · s / 100.

    >>> round(tradeoff(0.887, 30, 0.2), 3)
    0.947
    """
    return performance + lam * sparsity / 100.0


def select_assistant(performance: Mapping[int, float], lam: float, low: int, high: int) -> tuple[int, float]:
    """The sparsity maximising τ among ``low ≤ s ≤ high``, and its τ.

    Args:
        performance: best dev score so far per candidate sparsity, P(s).
        lam: λ ≥ 0; 0 picks the best performer, a large λ the sparsest candidate (the target).
        low, high: the current teacher's sparsity and the target sparsity.

    Raises:
        ValueError: when no candidate lies in the range.

    >>> select_assistant({50: 0.91, 70: 0.90, 90: 0.85}, 0.2, 0, 90)
    (90, 1.03)
    >>> select_assistant({50: 0.91, 70: 0.90, 90: 0.85}, 0.0, 0, 90)
    (50, 0.91)
    """
    candidates = sorted(s for s in performance if low <= s <= high)
    if not candidates:
        raise ValueError(f"no candidate sparsity between {low} and {high} among {sorted(performance)}")
    best = max(candidates, key=lambda s: (round(tradeoff(performance[s], s, lam), 12), -s))
    return best, round(tradeoff(performance[best], best, lam), 12)


def lambda_sweep(performance: Mapping[int, float], lams: Iterable[float], low: int, high: int) -> list[dict]:
    """Which assistant each λ would pick: free, since P(s) is stored. One row per λ."""
    rows = []
    for lam in lams:
        chosen, score = select_assistant(performance, lam, low, high)
        rows.append({"lam": lam, "assistant": chosen, "tradeoff": score})
    return rows
