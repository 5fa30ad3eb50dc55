"""BERT's recorded numbers (outputs, importance, maps, short runs of every script) are reproduced bit for bit.

The record was made by ``python -m tests.bert_reference --write`` before the model layer became one
prunable core shared by every family; see :mod:`tests.bert_reference`.
"""

import json

from tests.bert_reference import RECORD, compute


def _differences(expected, actual, where="") -> list[str]:
    if isinstance(expected, dict) and isinstance(actual, dict):
        keys = sorted(set(expected) | set(actual))
        return [d for k in keys for d in _differences(expected.get(k), actual.get(k), f"{where}/{k}")]
    if isinstance(expected, list) and isinstance(actual, list) and len(expected) == len(actual):
        return [d for i, (e, a) in enumerate(zip(expected, actual, strict=True)) for d in _differences(e, a, f"{where}[{i}]")]
    return [] if expected == actual else [f"{where}: recorded {expected!r}, now {actual!r}"]


def test_bert_numbers_are_the_recorded_ones():
    recorded = json.loads(RECORD.read_text())
    now = json.loads(json.dumps(compute()))  # the same JSON round trip as the record
    differences = _differences(recorded, now)
    assert not differences, "\n".join(differences[:20])
