"""The λ-tradeoff selection, table-driven (pure functions, no model)."""

import pytest

from utils.maths.tradeoff import lambda_sweep, select_assistant, tradeoff

# P(s) from the README figure of the reference (MRPC, TA scale 0.7 ... 0.2 = sparsity 30 ... 80)
MRPC = {30: 0.915, 40: 0.913, 50: 0.913, 60: 0.899, 70: 0.889, 80: 0.870, 90: 0.867}


@pytest.mark.parametrize("performance,lam,low,high,expected", [
    # λ = 0 picks the best performer
    ({50: 0.90, 60: 0.92, 70: 0.91, 90: 0.80}, 0.0, 0, 90, 60),
    # a large λ picks the target (the sparsest allowed candidate)
    ({50: 0.90, 60: 0.92, 70: 0.91, 90: 0.80}, 10.0, 0, 90, 90),
    # candidates above the target are excluded even when their τ is higher (95 would win otherwise)
    ({50: 0.90, 90: 0.80, 95: 0.79}, 1.0, 0, 90, 90),
    # candidates below the current teacher's sparsity are excluded
    ({50: 0.95, 70: 0.80, 90: 0.70}, 0.0, 70, 90, 70),
    # ties in τ go to the smaller sparsity: 0.90 + 0.2·0.5 == 0.88 + 0.2·0.6
    ({50: 0.90, 60: 0.88}, 0.2, 0, 90, 50),
    # the figure's P values at λ = 0.2: τ(80) = 0.870 + 0.16 = 1.030 beats τ(70) = 0.889 + 0.14 = 1.029
    (MRPC, 0.2, 0, 80, 80),
    # ... and with the target at 70 the range stops there
    (MRPC, 0.2, 0, 70, 70),
])
def test_select_assistant(performance, lam, low, high, expected):
    assert select_assistant(performance, lam, low, high)[0] == expected


def test_tradeoff_value_matches_the_figure():
    # QQP at scale 0.7: TA 0.8874 and τ 0.9470 in the reference figure
    assert tradeoff(0.8874, 30, 0.2) == pytest.approx(0.9474, abs=1e-4)


def test_no_candidate_in_range_is_an_error():
    with pytest.raises(ValueError, match="no candidate sparsity between 91 and 99"):
        select_assistant({50: 0.9, 90: 0.8}, 0.2, 91, 99)


def test_lambda_sweep_is_monotone_in_sparsity():
    rows = lambda_sweep(MRPC, [0.0, 0.1, 0.2, 0.5, 5.0], 0, 90)
    chosen = [r["assistant"] for r in rows]
    assert chosen[0] == 30 and chosen[-1] == 90
    assert chosen == sorted(chosen)
