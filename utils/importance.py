"""Importance of attention heads and FFN neurons, and the sparsity map built from it.

The pure part (no model): :func:`normalize_scores` (per-layer L2), :func:`layer_order` (descending
per layer), :func:`build_sparsity_map` (global ranking, one count per layer and level) and
:func:`parse_sparsities`. The one model-facing function, :func:`accumulate_importance`, runs the
gradient pass. :func:`save_importance` / :func:`load_importance` keep the scores beside a sparsified
teacher so it can be re-sparsified with another grid without a second pass.

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
  deterministic.

Example::

    head, neuron = accumulate_importance(model, dataset, 32, run)
    head, neuron = normalize_scores(head), normalize_scores(neuron)
    head_order, neuron_order = layer_order(head), layer_order(neuron)
    model.reorder(head_order, neuron_order)
    model.config.sparsity_map = build_sparsity_map(head, neuron, DEFAULT_SPARSITIES, neuron_multiple=8)
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable
from contextlib import nullcontext
from fractions import Fraction
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from models.sparsity_map import SparsityMap
from utils.errors import StageError
from utils.files import write_json_atomic
from utils.sharding import filler_batches

logger = logging.getLogger(__name__)

DEFAULT_SPARSITIES = (0, 10, 20, 30, 40, 50, 60, 70, 80, 85, 90, 95)
NORM_EPS = 1e-17
IMPORTANCE_FILE = "importance.json"


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


def build_sparsity_map(
    head_scores: torch.Tensor,
    neuron_scores: torch.Tensor,
    levels: Iterable[int],
    neuron_multiple: int = 1,
    min_kept: dict[str, list[int]] | None = None,
) -> SparsityMap:
    """The sparsity map ``{s: {"head": {row: n}, "neuron": {row: n}}}`` from normalised scores.

    Heads (``head_scores [rows, H]``) and neurons (``neuron_scores [rows', I]``) are ranked globally
    and separately over all their rows (a row is one attention or one FFN: BERT's layers; EncT5's
    encoder layers, then its decoder self- and cross-attention); each level removes the same fraction
    of each. Counts depend only on the scores, not on their order within a row, so scores saved after
    reordering give the same map. Because one ranking serves every level, the maps are nested: a unit
    removed at ``s`` is removed at every higher level (with ``neuron_multiple`` too, since its rounding
    is monotone). ``min_kept`` (``{"head": [per row], "neuron": [per row]}``, a model's
    ``min_kept()``) protects each row's most important units from removal.

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
        result[level] = {
            "head": removed_per_layer(head_scores, level, min_kept=min_kept.get("head")),
            "neuron": removed_per_layer(neuron_scores, level, neuron_multiple, min_kept.get("neuron")),
        }
    return result


def accumulate_importance(model, dataset, batch_size: int, run) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw first-order importance of every head and FFN neuron (Michel et al. 2019 for heads).

    The model runs in eval mode with all-ones ``head_mask [rows, H]`` and ``neuron_mask [rows, I]`` (the
    shapes of ``model.mask_shape()``; rows are layers for BERT) that
    require grad; for each batch the task loss against gold labels (cross-entropy, MSE for
    regression, token cross-entropy over scored positions for NER, as the model computes it) is
    differentiated with respect to the masks only, and ``|∂loss_b/∂mask|`` is summed over batches
    (the absolute value of the batch-MEAN gradient, as the reference does). Batches are consecutive
    ``batch_size`` slices of this rank's shard in dataset order. Under several processes each rank
    scores ``dataset[rank::world_size]`` and the sums are added with ``all_reduce``.

    Args:
        model: a full-width (``config.sparsity == 0``) task model of any family.
        dataset: an :class:`~data.pipelines.EncodedDataset` with labels.

    Returns:
        ``(head_scores [rows, H], neuron_scores [rows, I])``, float64 on the CPU, not normalised.
    """
    if not dataset.has_labels:
        raise ValueError(f"importance needs gold labels, but the {dataset.task.name} split has none")
    was_training = model.training
    model.eval()
    shape_h, shape_i = model.mask_shape()["head"], model.mask_shape()["neuron"]
    head_mask = torch.ones(shape_h, device=run.device, requires_grad=True)
    neuron_mask = torch.ones(shape_i, device=run.device, requires_grad=True)
    head_scores = torch.zeros(shape_h, dtype=torch.float64, device=run.device)
    neuron_scores = torch.zeros(shape_i, dtype=torch.float64, device=run.device)
    shard = list(range(run.rank, len(dataset), run.world_size))
    batches = [shard[i:i + batch_size] for i in range(0, len(shard), batch_size)]
    if run.fsdp:
        # the extra batches score one example again, and their gradients are not added
        batches += [None] * filler_batches(len(dataset), run.world_size, batch_size, len(batches))
    autocast = torch.autocast(run.device.type, dtype=run.amp_dtype) if run.amp_dtype else nullcontext()
    skipped = 0
    quiet = not (run.is_main and sys.stderr.isatty())
    for indices in tqdm(batches, desc="importance", leave=False, disable=quiet):
        filler = indices is None
        indices = [0] if filler else indices
        batch = {k: v.to(run.device) for k, v in dataset.collate_fn([dataset[i] for i in indices]).items()}
        with autocast:
            loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         token_type_ids=batch["token_type_ids"], labels=batch["labels"],
                         head_mask=head_mask, neuron_mask=neuron_mask).loss
        finite = bool(torch.isfinite(loss))
        if not finite and not filler:
            # A token batch with no scored word gives a NaN mean; it carries no signal.
            skipped += 1
        if not finite and not run.fsdp:
            continue
        # Gradients w.r.t. the masks only: the model's parameter .grad stay untouched. A sharded model
        # runs every backward (a collective), then drops what carries no signal.
        head_grad, neuron_grad = torch.autograd.grad(loss.float(), (head_mask, neuron_mask))
        if filler or not finite:
            continue
        head_scores += head_grad.abs().double()
        neuron_scores += neuron_grad.abs().double()
    if skipped:
        logger.warning("importance: skipped %d of %d batches whose loss was not finite", skipped, len(batches))
    if run.distributed:
        dist.all_reduce(head_scores)
        dist.all_reduce(neuron_scores)
    model.train(was_training)
    return head_scores.cpu(), neuron_scores.cpu()


def importance_record(head_scores: torch.Tensor, neuron_scores: torch.Tensor, split: str, num_examples: int) -> dict:
    """The content of ``importance.json``: normalised scores in the model's CURRENT (reordered) order.

    Floats are stored as float64 (exact round trip), so maps rebuilt from the file equal the ones
    built before saving.
    """
    return {
        "split": split,
        "num_examples": num_examples,
        "normalization": f"per-layer L2, eps {NORM_EPS}",
        "order": "each layer by descending score; the saved weights are reordered the same way",
        "head": head_scores.double().tolist(),
        "neuron": neuron_scores.double().tolist(),
    }


def save_importance(directory: Path, head_scores: torch.Tensor, neuron_scores: torch.Tensor,
                    split: str, num_examples: int) -> Path:
    """Write ``directory/importance.json`` (see :func:`importance_record`)."""
    path = Path(directory) / IMPORTANCE_FILE
    write_json_atomic(path, importance_record(head_scores, neuron_scores, split, num_examples))
    return path


def load_importance(directory: Path, mask_shape: dict[str, tuple[int, int]]) -> dict:
    """Read ``directory/importance.json`` written by :func:`save_importance`, checked against the model's
    ``mask_shape()`` (``{"head": (rows, H), "neuron": (rows, I)}``).

    Returns:
        ``{"head": [rows, H] float64, "neuron": [rows, I] float64, "split": str, "num_examples": int}``.

    Raises:
        StageError: when the file is absent (naming the script that writes it), or its shapes do not
            match the model.
    """
    path = Path(directory) / IMPORTANCE_FILE
    if not path.is_file():
        raise StageError(f"--reuse_importance: {path} does not exist; pass the model/ folder written by "
                                "run_sparsification.py, or drop --reuse_importance to score importance afresh")
    payload = json.loads(path.read_text())
    head = torch.tensor(payload["head"], dtype=torch.float64)
    neuron = torch.tensor(payload["neuron"], dtype=torch.float64)
    if tuple(head.shape) != tuple(mask_shape["head"]) or tuple(neuron.shape) != tuple(mask_shape["neuron"]):
        raise StageError(f"{path} holds scores of shapes {tuple(head.shape)} and {tuple(neuron.shape)}, but the "
                         f"model has {list(mask_shape['head'])} heads and {list(mask_shape['neuron'])} neurons")
    return {"head": head, "neuron": neuron, "split": payload.get("split"),
            "num_examples": payload.get("num_examples")}
