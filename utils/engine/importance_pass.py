"""The importance pass: |gradient| of a head mask and a neuron mask summed over a labelled split, and the
scores kept beside a sparsified teacher (``importance.json``) so that it can be re-sparsified with another
grid without a second pass. The map built from the scores: :mod:`utils.maths.importance`."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from utils.artifacts.files import write_json_atomic
from utils.engine.evaluation import quiet
from utils.engine.sharding import filler_batches
from utils.engine.step import mixed_precision
from utils.errors import StageError
from utils.maths.importance import NORM_EPS

logger = logging.getLogger(__name__)

IMPORTANCE_FILE = "importance.json"


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
    autocast = mixed_precision(run)
    skipped = 0
    for indices in tqdm(batches, desc="importance", leave=False, disable=quiet(run)):
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
