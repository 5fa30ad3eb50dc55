"""Every family's recorded numbers (outputs, importance, maps, short runs of every script) are reproduced bit
for bit: see :mod:`tests.reference_numbers` for what is recorded, when, and how to record again."""

import json

import pytest

from tests.reference_numbers import FAMILIES, compute, record_path


def _differences(expected, actual, where="") -> list[str]:
    if isinstance(expected, dict) and isinstance(actual, dict):
        keys = sorted(set(expected) | set(actual))
        return [d for k in keys for d in _differences(expected.get(k), actual.get(k), f"{where}/{k}")]
    if isinstance(expected, list) and isinstance(actual, list) and len(expected) == len(actual):
        return [d for i, (e, a) in enumerate(zip(expected, actual, strict=True)) for d in _differences(e, a, f"{where}[{i}]")]
    return [] if expected == actual else [f"{where}: recorded {expected!r}, now {actual!r}"]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_numbers_are_the_recorded_ones(family):
    recorded = json.loads(record_path(family).read_text())
    now = json.loads(json.dumps(compute(family)))  # the same JSON round trip as the record
    differences = _differences(recorded, now)
    assert not differences, "\n".join(differences[:20])
