"""Helpers the benchmark scripts share: interleaved timing, encoder FLOP counts, batches and load.

Importing this module puts the repository root on ``sys.path``, so a script run as
``python benchmarks/NAME.py`` imports ``common`` first and then the project's packages
(``data``, ``models``, ``utils``).
"""

import argparse
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from scipy import stats

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from data.pipelines import encode_dataset  # noqa: E402
from data.readers import read_examples  # noqa: E402

# --------------------------------------------------------------------------------------------
# Timing


def add_timing_arguments(parser: argparse.ArgumentParser, repeats: int) -> None:
    """``--threads``, ``--warmup`` and ``--repeats`` (default ``repeats``) for :func:`interleaved_times`."""
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds before timing")
    parser.add_argument("--repeats", type=int, default=repeats, help="timed rounds; the median is reported")


def interleaved_times(steps: dict[str, Callable[[], None]], warmup: int, repeats: int,
                      after_round: Callable[[int], None] | None = None) -> dict[str, list[float]]:
    """Seconds per call of each step over ``repeats`` rounds, after ``warmup`` untimed rounds.

    Calls alternate between the steps (the order reversed every round) so that load from other
    processes on a shared machine hits every step alike. ``after_round(i)`` runs after timed round i.
    """
    names = list(steps)
    for _ in range(warmup):
        for name in names:
            steps[name]()
    times = {name: [] for name in names}
    for round_index in range(repeats):
        for name in names if round_index % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            steps[name]()
            times[name].append(time.perf_counter() - start)
        if after_round is not None:
            after_round(round_index)
    return times


def inference_step(forward: Callable[[dict], object], batches: list[dict]) -> Callable[[], None]:
    """A step that runs ``forward(batch)`` for every batch of ``batches`` without gradients."""

    def step():
        with torch.no_grad():
            for batch in batches:
                forward(batch)

    return step


def medians(times: dict[str, list[float]]) -> dict[str, float]:
    """The median of each step's times."""
    return {name: statistics.median(values) for name, values in times.items()}


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, to print next to timings."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# --------------------------------------------------------------------------------------------
# FLOP counts


def encoder_flops(widths: dict, config, batch_size: int, seq_len: int, tokens: int | None = None) -> int:
    """Matmul FLOPs (2 per multiply-add) of one encoder forward at the given per-layer widths.

    ``widths`` is ``{"head": [L ints], "neuron": [L ints]}`` (a model's ``kept_widths()``). The Q/K/V
    and output projections and the FFN run over ``tokens`` (default every position of the
    ``[batch_size, seq_len]`` batch; pass the real token count for an encoder that skips padding),
    the attention scores and context over the padded ``[batch_size, seq_len, seq_len]``.
    Embeddings, LayerNorms and heads are not counted.
    """
    hidden = config.hidden_size
    head_size = hidden // config.num_attention_heads
    tokens = batch_size * seq_len if tokens is None else tokens
    flops = 0
    for heads, neurons in zip(widths["head"], widths["neuron"], strict=True):
        width = heads * head_size
        flops += 2 * tokens * (4 * hidden * width + 2 * hidden * neurons)  # Q, K, V, output; FFN up and down
        flops += 4 * batch_size * seq_len * seq_len * width  # scores and context
    return flops


def full_widths(config) -> dict:
    """Every head and neuron of every layer, in the form of ``kept_widths()``."""
    return {"head": [config.num_attention_heads] * config.num_hidden_layers,
            "neuron": [config.intermediate_size] * config.num_hidden_layers}


def kept_widths(model, sparsity: int) -> dict:
    """The widths ``model`` keeps at ``sparsity``."""
    with model.at_sparsity(sparsity):
        return model.kept_widths()


# --------------------------------------------------------------------------------------------
# Data


def dev_labels(task, data_dir: str, limit: int | None) -> list:
    """The gold labels of the dev examples a run evaluates (the first ``limit`` when given)."""
    return [example.label for example in read_examples(task, data_dir, "dev")[:limit]]


def encode_split(task, data_dir: str, split: str, tokenizer, max_length: int, limit: int | None = None):
    """The tokenised features of ``split`` of ``task`` (its first ``limit`` examples when given)."""
    return encode_dataset(task, read_examples(task, data_dir, split)[:limit], tokenizer, max_length)


def collate(dataset, indices) -> dict:
    """The batch of ``dataset``'s features at ``indices`` (dynamic padding)."""
    return dataset.collate_fn([dataset[i] for i in indices])


def encoder_inputs(batch: dict) -> dict:
    """The keyword arguments of a BERT forward taken from ``batch`` (no labels)."""
    return {key: batch[key] for key in ("input_ids", "attention_mask", "token_type_ids")}


def rank_correlation(x: list, y: list, names: tuple[str, str] = ("x", "y")) -> tuple[float, str]:
    """Spearman's ρ over the pairs where both values are known, and '' or why it is nan: fewer than 3
    pairs, or one side constant (a rank correlation is undefined there; ties short of that are ranked
    by their mean rank, as scipy does)."""
    pairs = [(a, b) for a, b in zip(x, y, strict=True) if a is not None and b is not None
             and not (math.isnan(a) or math.isnan(b))]
    if len(pairs) < 3:
        return math.nan, f"{len(pairs)} pairs, need 3"
    xs, ys = zip(*pairs, strict=True)
    for values, name in ((xs, names[0]), (ys, names[1])):
        if len(set(values)) == 1:
            return math.nan, f"{name} is the same for every assistant"
    return float(stats.spearmanr(xs, ys)[0]), ""
