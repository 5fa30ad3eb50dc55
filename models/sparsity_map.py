"""The sparsity map: how many heads and FFN neurons each row loses at each sparsity level.

A sparsity map has the form ``{s: {"head": {row: n_removed}, "neuron": {row: n_removed}}}`` with
``s`` an integer percent and the counts relative to the ORIGINAL sizes (for BERT
``config.num_attention_heads`` heads and ``config.intermediate_size`` neurons per row). A row is one
attention (head rows) or one FFN (neuron rows) in the model's order: for BERT, row ``l`` is layer
``l``; for EncT5, rows ``0..L-1`` are the encoder layers, then come the decoder's self-attention and
cross-attention (head rows ``L`` and ``L+1``) and its FFN (neuron row ``L``). Rows that lose nothing
may be omitted. In memory every key is an ``int``; JSON turns keys into strings,
so maps read from a saved config go through :func:`normalize_sparsity_map`.
"""

import logging
from collections.abc import Mapping

logger = logging.getLogger(__name__)

UNITS = ("head", "neuron")

SparsityMap = dict[int, dict[str, dict[int, int]]]


class ModelConfigError(ValueError):
    """A saved model configuration this project cannot build (an input error, not a bug): the
    message names the field and what was expected."""


def normalize_sparsity_map(sparsity_map: Mapping | None) -> SparsityMap:
    """Return a copy of ``sparsity_map`` with ``int`` sparsity and layer keys and ``int`` counts.

    Accepts the JSON form (string keys) as well as the in-memory form; ``None`` gives ``{}``.
    Both ``"head"`` and ``"neuron"`` entries are always present in the result.

    >>> normalize_sparsity_map({"90": {"head": {"0": 3}, "neuron": {"1": "20"}}})
    {90: {'head': {0: 3}, 'neuron': {1: 20}}}

    Raises:
        ModelConfigError: for an unknown unit name or a negative count.
    """
    result: SparsityMap = {}
    for level, entry in (sparsity_map or {}).items():
        unknown = set(entry) - set(UNITS)
        if unknown:
            raise ModelConfigError(f"sparsity map level {level}: unknown units {sorted(unknown)}, expected {UNITS}")
        normalized: dict[str, dict[int, int]] = {}
        for unit in UNITS:
            counts = {int(layer): int(count) for layer, count in (entry.get(unit) or {}).items()}
            if any(count < 0 for count in counts.values()):
                raise ModelConfigError(f"sparsity map level {level}: negative {unit} count in {counts}")
            normalized[unit] = counts
        result[int(level)] = normalized
    return result


def truncate_sparsity_map(sparsity_map: SparsityMap, min_sparsity: int = 0) -> SparsityMap:
    """Keep the levels ``>= min_sparsity`` (after :meth:`densify`, a model can only be pruned further)."""
    return {level: {unit: dict(entry[unit]) for unit in UNITS}
            for level, entry in sparsity_map.items() if level >= min_sparsity}
