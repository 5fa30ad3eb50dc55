"""A task's splits read and tokenised as the data flags say."""

from __future__ import annotations

import logging

from data.pipelines import encode_dataset
from data.readers import read_examples
from utils.errors import StageError

logger = logging.getLogger(__name__)


def load_split(data, task, tokenizer, split: str, limit: int | None = None):
    """Read and tokenise one split of ``task`` from ``data.data_dir`` (first ``limit`` examples; for ``lm`` the
    first ``limit`` blocks of ``max_length`` tokens)."""
    examples = read_examples(task, data.data_dir, split)
    if not examples:
        raise StageError(f"the {split} split of {task.name} in {data.data_dir} is empty")
    if task.is_lm_task:
        dataset = encode_dataset(task, examples, tokenizer, data.max_length).take(limit)
    else:
        dataset = encode_dataset(task, examples[:limit] if limit else examples, tokenizer, data.max_length)
    logger.info("%s %s: %d examples, %d features", task.name, split, len(dataset.examples), len(dataset))
    return dataset


def load_train_and_dev(data, task, tokenizer) -> dict:
    """``{"train": ..., "dev": ...}`` encoded datasets, limited by --max_train/eval_samples."""
    return {"train": load_split(data, task, tokenizer, "train", data.max_train_samples),
            "dev": load_split(data, task, tokenizer, "dev", data.max_eval_samples)}
