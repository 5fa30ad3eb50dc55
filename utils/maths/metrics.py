"""Task metrics as pure functions; every value is a fraction in [0, 1], CoNLL F1 included,
so that λ in the λ-tradeoff weighs sparsity the same way on every task.

``compute_metrics(task, predictions, references)`` takes what ``EncodedDataset.decode`` and
``EncodedDataset.references`` return (class ids, float scores, or per-sentence tag lists) and gives
the dict whose keys are ``task.metric_names``. Degenerate inputs (a constant prediction, no entity
anywhere) give 0 with a warning instead of NaN, so model selection never compares against NaN.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence

import numpy as np
from scipy import stats
from seqeval import metrics as seqeval_metrics
from sklearn import metrics as sk_metrics

logger = logging.getLogger(__name__)


def _check(predictions: Sequence, references: Sequence) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if len(references) == 0:
        raise ValueError("cannot compute a metric on zero examples")


def accuracy(predictions: Sequence[int], references: Sequence[int]) -> float:
    """Fraction of exact matches."""
    _check(predictions, references)
    return float(np.mean(np.asarray(predictions) == np.asarray(references)))


def binary_f1(predictions: Sequence[int], references: Sequence[int]) -> float:
    """F1 of the positive class 1 (0 when there is no true or predicted positive)."""
    _check(predictions, references)
    return float(sk_metrics.f1_score(references, predictions, pos_label=1, average="binary", zero_division=0))


def acc_and_f1(predictions: Sequence[int], references: Sequence[int]) -> dict[str, float]:
    """MRPC/QQP: ``acc``, binary ``f1`` and their mean ``acc_and_f1``."""
    acc = accuracy(predictions, references)
    f1 = binary_f1(predictions, references)
    return {"acc": acc, "f1": f1, "acc_and_f1": (acc + f1) / 2}


def matthews(predictions: Sequence[int], references: Sequence[int]) -> float:
    """Matthews correlation (CoLA), 0 for constant predictions or references.

    Named ``matthews`` so that it never shadows sklearn's ``matthews_corrcoef`` (the reference's local name did,
and broke its CoLA metric).
    """
    _check(predictions, references)
    if len(set(predictions)) < 2 or len(set(references)) < 2:
        logger.warning("Matthews correlation of a constant sequence is undefined; reporting 0")
        return 0.0
    return float(sk_metrics.matthews_corrcoef(references, predictions))


def _correlation(fn, predictions: Sequence[float], references: Sequence[float], name: str) -> float:
    _check(predictions, references)
    x = np.asarray(predictions, dtype=np.float64)
    y = np.asarray(references, dtype=np.float64)
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        logger.warning("%s correlation of a constant sequence is undefined; reporting 0", name)
        return 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = float(fn(x, y)[0])
    return 0.0 if np.isnan(value) else value


def pearson(predictions: Sequence[float], references: Sequence[float]) -> float:
    """Pearson correlation of raw regression outputs (0 with a warning when either is constant)."""
    return _correlation(stats.pearsonr, predictions, references, "Pearson")


def spearman(predictions: Sequence[float], references: Sequence[float]) -> float:
    """Spearman rank correlation (0 with a warning when either is constant)."""
    return _correlation(stats.spearmanr, predictions, references, "Spearman")


def pearson_and_spearman(predictions: Sequence[float], references: Sequence[float]) -> dict[str, float]:
    """STS-B: ``pearson_corr``, ``spearman_corr`` and their mean ``corr``."""
    p = pearson(predictions, references)
    s = spearman(predictions, references)
    return {"pearson_corr": p, "spearman_corr": s, "corr": (p + s) / 2}


def entity_prf(predictions: Sequence[Sequence[str]], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """Entity-level micro ``precision``/``recall``/``f1`` with seqeval on per-sentence IOB2 tag lists.

    Sentences stay separate (the reference scored one flattened sequence,
so an entity could run across a sentence boundary); an entity
    starts at ``B-X`` or at an ``I-X`` that does not continue an ``X`` entity (conlleval's rule).
    """
    _check(predictions, references)
    for i, (p, r) in enumerate(zip(predictions, references, strict=True)):
        if len(p) != len(r):
            raise ValueError(f"sentence {i}: {len(p)} predicted tags but {len(r)} gold tags")
    preds, refs = [list(p) for p in predictions], [list(r) for r in references]
    return {
        "precision": float(seqeval_metrics.precision_score(refs, preds, zero_division=0)),
        "recall": float(seqeval_metrics.recall_score(refs, preds, zero_division=0)),
        "f1": float(seqeval_metrics.f1_score(refs, preds, zero_division=0)),
    }


def token_accuracy(predictions: Sequence[Sequence[str]], references: Sequence[Sequence[str]]) -> float:
    """Fraction of words whose tag is right, over all sentences (POS)."""
    _check(predictions, references)
    right = total = 0
    for i, (p, r) in enumerate(zip(predictions, references, strict=True)):
        if len(p) != len(r):
            raise ValueError(f"sentence {i}: {len(p)} predicted tags but {len(r)} gold tags")
        right += sum(a == b for a, b in zip(p, r, strict=True))
        total += len(r)
    if total == 0:
        raise ValueError("cannot compute token accuracy on zero words")
    return right / total


def compute_metrics(task, predictions: Sequence, references: Sequence) -> dict[str, float]:
    """The metrics of ``task`` (a ``data.tasks.TaskSpec`` or task name) as ``{name: fraction}``.

    Keys: cola ``matthews_corrcoef``; mrpc/qqp ``acc``, ``f1``, ``acc_and_f1``; stsb ``pearson_corr``,
    ``spearman_corr``, ``corr``; conll ``precision``, ``recall``, ``f1``; the others ``acc``.
    """
    if isinstance(task, str):
        from data.tasks import get_task  # late import: keeps this module free of data/ at import time

        task = get_task(task)
    family = task.metric
    if family == "matthews":
        return {"matthews_corrcoef": matthews(predictions, references)}
    if family == "acc":
        return {"acc": accuracy(predictions, references)}
    if family == "acc_and_f1":
        return acc_and_f1(predictions, references)
    if family == "corr":
        return pearson_and_spearman(predictions, references)
    if family == "entity_f1":
        return entity_prf(predictions, references)
    if family == "token_acc":
        return {"acc": token_accuracy(predictions, references)}
    raise ValueError(f"task {task.name}: unknown metric family {family!r}")
