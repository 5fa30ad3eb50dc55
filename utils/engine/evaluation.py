"""Evaluation (model outputs gathered over processes, predictions, metrics) and the selection rules
that tell the loop which evaluation is the best so far and which model to save for it."""

from __future__ import annotations

import math
import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from utils.engine.batches import to_device
from utils.engine.sharding import filler_batches
from utils.engine.step import mixed_precision
from utils.maths.metrics import compute_metrics


def unwrap(model):
    """The bare model behind a DistributedDataParallel wrapper."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def quiet(run) -> bool:
    """Whether progress bars stay off: on every rank but 0, and when stderr is not a terminal."""
    return not (run.is_main and sys.stderr.isatty())


def shard_batches(dataset, batch_size: int, run) -> list[list[int] | None]:
    """This rank's evaluation batches: a disjoint shard of ``dataset``, sorted by length to waste little on
    padding; under FSDP2 padded with ``None`` fillers, since a sharded forward is a collective every rank joins
    as often (a filler runs one example again, and its output is not kept)."""
    shard = sorted(range(run.rank, len(dataset), run.world_size), key=lambda i: dataset.lengths[i])
    batches = [shard[i:i + batch_size] for i in range(0, len(shard), batch_size)]
    if run.fsdp:
        batches += [None] * filler_batches(len(dataset), run.world_size, batch_size, len(batches))
    return batches


@torch.no_grad()
def collect_outputs(model, dataset, batch_size: int, run, desc: str = "eval") -> dict[int, torch.Tensor]:
    """Model outputs per feature, gathered from every rank: ``{feature_index: logits}``.

    Sequence tasks give the logits row [C]; token tasks the logits at the scored positions
    [n_words, C]. Each rank scores a disjoint shard (no padding duplicates), batches sorted by
    length to waste little on padding; keys make the gathered result exact.
    """
    module = unwrap(model)
    was_training = module.training
    module.eval()
    outputs: dict[int, torch.Tensor] = {}
    autocast = mixed_precision(run)
    for indices in tqdm(shard_batches(dataset, batch_size, run), desc=desc, leave=False, disable=quiet(run)):
        if indices is None:
            filler = to_device(dataset.collate_fn([dataset[0]]), run.device)
            with autocast:
                module(input_ids=filler["input_ids"], attention_mask=filler["attention_mask"],
                       token_type_ids=filler["token_type_ids"])
            continue
        batch = to_device(dataset.collate_fn([dataset[i] for i in indices]), run.device)
        with autocast:
            logits = module(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                            token_type_ids=batch["token_type_ids"]).logits.float()
        for row, index in enumerate(batch["feature_index"].tolist()):
            outputs[index] = (logits[row][batch["label_mask"][row]] if logits.dim() == 3 else logits[row]).cpu()
    module.train(was_training)
    if run.distributed:
        parts = [None] * run.world_size
        dist.all_gather_object(parts, outputs)
        outputs = {k: v for part in parts for k, v in part.items()}
    return outputs


@torch.no_grad()
def lm_metrics(model, dataset, batch_size: int, run, desc: str = "eval") -> dict[str, float]:
    """Held-out perplexity of a language model: ``exp`` of the mean next-token cross-entropy over every scored
    token of ``dataset`` (every rank scores a disjoint shard; the sums are gathered), with ``nll`` (that mean) and
    ``inverse_perplexity`` (``1 / perplexity``, in (0, 1], higher is better: what selection compares)."""
    module = unwrap(model)
    was_training = module.training
    module.eval()
    autocast = mixed_precision(run)
    totals = torch.zeros(2, dtype=torch.float64, device=run.device)
    for indices in tqdm(shard_batches(dataset, batch_size, run), desc=desc, leave=False, disable=quiet(run)):
        batch = to_device(dataset.collate_fn([dataset[i] for i in (indices or [0])]), run.device)
        with autocast:
            loss = module(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                          labels=batch["labels"]).loss
        if indices is not None:  # a filler batch only takes part in the sharded forward
            count = int((batch["labels"][:, 1:] != -100).sum())
            totals += torch.stack([loss.double() * count, torch.tensor(float(count), dtype=torch.float64,
                                                                        device=run.device)])
    module.train(was_training)
    if run.distributed:
        dist.all_reduce(totals)
    nll = float(totals[0] / totals[1].clamp(min=1))
    return {"perplexity": math.exp(nll), "nll": nll, "inverse_perplexity": math.exp(-nll)}


def predict(model, dataset, batch_size: int, run, desc: str = "predict") -> list:
    """One prediction per example of ``dataset`` (class index, float, or tag list)."""
    return dataset.decode(collect_outputs(model, dataset, batch_size, run, desc))


def evaluate_predictions(model, dataset, batch_size: int, run, desc: str = "eval") -> tuple[dict[str, float], list]:
    """The task's metrics of ``model`` on a labelled ``dataset``, and the predictions they score."""
    if not dataset.has_labels:
        raise ValueError(f"cannot score the {dataset.task.name} split: it has no gold labels")
    if dataset.task.is_lm_task:  # a language model is scored by its loss: there is no prediction to record
        return lm_metrics(model, dataset, batch_size, run, desc), []
    predictions = predict(model, dataset, batch_size, run, desc)
    return compute_metrics(dataset.task, predictions, dataset.references()), predictions


def evaluate(model, dataset, batch_size: int, run, desc: str = "eval") -> dict[str, float]:
    """The task's metrics of ``model`` on a labelled ``dataset``."""
    return evaluate_predictions(model, dataset, batch_size, run, desc)[0]


class Selector:
    """Evaluates the model being trained and decides what "best" means.

    ``evaluate`` returns a JSON-able record for ``metrics.jsonl`` holding a ``score`` (higher is
    better). When the score beats the best so far, the loop calls ``accept`` with the record, then
    saves ``model_to_save(module)`` as ``best/``: whatever the selector reports as its choice must
    come from the accepted record, so that it always describes the model in ``best/``.
    """

    def evaluate(self, model, step: int) -> dict:
        raise NotImplementedError

    def accept(self, record: dict) -> None:
        """``record`` (an entry of ``metrics.jsonl``) is the new best; ``best/`` is about to be written from it."""

    def model_to_save(self, module):
        return module

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what ``state_dict`` returned (for resumption)."""


class MetricSelector(Selector):
    """Selects on one dev metric of the model at its current width."""

    def __init__(self, dataset, metric: str, batch_size: int, run):
        self.dataset, self.metric, self.batch_size, self.run = dataset, metric, batch_size, run

    def evaluate(self, model, step):
        metrics = evaluate(model, self.dataset, self.batch_size, self.run)
        return {"metrics": metrics, "score": metrics[self.metric]}
