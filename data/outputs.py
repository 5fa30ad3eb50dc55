"""Prediction files for users: GLUE-server submissions and CoNLL files with a predicted-tag column."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from data.readers import ClsExample, TokenExample
from data.tasks import TaskSpec, get_task

logger = logging.getLogger(__name__)


def write_glue_submission(task: TaskSpec | str, dataset_or_examples, predictions: Sequence, output_dir: str | Path) -> Path:
    """Write ``{output_dir}/{task.submission_name}`` (``MRPC.tsv``, ``MNLI-mm.tsv``, ...) for the GLUE server.

    Rows are ``index<TAB>prediction`` under the header ``index\\tprediction``; ``index`` is the
    example's guid (the test file's ``index``/``id`` column) and ``prediction`` the label string
    (``entailment``, ``1``, ...) or, for STS-B, the score clipped to [0, 5] with 3 decimals.
    ``dataset_or_examples``: an ``EncodedDataset`` or its list of ``ClsExample``.
    """
    task = get_task(task)
    if task.submission_name is None:
        raise ValueError(f"task {task.name} has no GLUE submission file")
    examples: list[ClsExample] = getattr(dataset_or_examples, "examples", dataset_or_examples)
    if len(examples) != len(predictions):
        raise ValueError(f"{len(predictions)} predictions for {len(examples)} examples")
    path = Path(output_dir) / task.submission_name
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["index\tprediction"]
    for example, prediction in zip(examples, predictions, strict=True):
        if task.kind == "regression":
            value = f"{min(max(float(prediction), 0.0), 5.0):.3f}"
        else:
            value = task.labels[int(prediction)]
        lines.append(f"{example.guid}\t{value}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    logger.info("wrote %d predictions to %s", len(examples), path)
    return path


def write_conll_predictions(examples: Sequence[TokenExample], predictions: Sequence[Sequence[str]], path: str | Path) -> Path:
    """Write the input's columns plus a predicted-tag column, one word a line, a blank line between sentences.

    The gold column is kept as read (IOB1 for the original CoNLL-2003 files); predictions are IOB2.
    ``conlleval`` accepts either scheme in each column.
    """
    if len(examples) != len(predictions):
        raise ValueError(f"{len(predictions)} predictions for {len(examples)} sentences")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    blocks = []
    for example, tags in zip(examples, predictions, strict=True):
        if len(tags) != len(example.words):
            raise ValueError(f"sentence {example.guid}: {len(tags)} tags for {len(example.words)} words")
        extra = example.extra or [[] for _ in example.words]
        blocks.append("\n".join(" ".join([w, *cols, t]) for w, cols, t in zip(example.words, extra, tags, strict=True)))
    path.write_text("\n\n".join(blocks) + "\n", encoding="utf-8")
    logger.info("wrote predictions for %d sentences to %s", len(examples), path)
    return path
