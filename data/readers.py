"""Readers for GLUE TSVs, CoNLL-2003 and column-per-token files.

GLUE files are split on tabs with **no CSV quoting** (several official files hold unbalanced ``"``
characters that a quoting reader would use to swallow rows). Which columns hold the text and the
label is each task's ``file_format`` (the official GLUE layouts); a file is read as labelled when its header names the label column (so a test
file that carries gold labels, like the prepared polarity test split, is scored), and as unlabelled
(label None, guid = the file's ``index``/``id`` column, as the GLUE server expects) otherwise.

Malformed rows raise :class:`DataFormatError` naming the file, the 1-based line and what was
expected; QQP rows with missing fields are the one exception (skipped, counted, warned), because the
official QQP train file has a few of them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from data.tasks import DataError, TaskSpec, get_task

logger = logging.getLogger(__name__)

SPLITS = ("train", "dev", "test")


class DataFormatError(DataError):
    """A data file that does not have the expected layout (message: file, line, what was expected)."""


class MissingDataError(DataError, FileNotFoundError):
    """No data folder or split file where the task's data should be (message: the paths tried)."""


@dataclass
class ClsExample:
    """One sentence or sentence pair. ``label``: class id, float score (regression) or None (unlabelled)."""

    guid: str
    text_a: str
    text_b: str | None
    label: int | float | None


@dataclass
class TokenExample:
    """One sentence of a token-classification file.

    ``labels``: tag ids (IOB2 for CoNLL) or None when unlabelled; ``extra[i]``: the columns of word
    ``i``'s line other than the word itself (gold tag included, as in the file), kept so that
    predictions can be written back in the input's format.
    """

    guid: str
    words: list[str]
    labels: list[int] | None
    extra: list[list[str]] = field(default_factory=list)


Example = ClsExample | TokenExample


@dataclass(frozen=True)
class _Layout:
    """Column positions of one TSV format (negative = from the end)."""

    text_a: int
    text_b: int | None
    label: int | None  # None: unlabelled layout
    index: int | None  # column used as guid; None: the 0-based data row number
    num_columns: int | None = None  # fixed count for headerless files; else the header's count


# Per format: (label column name in the header, labelled layout, unlabelled layout).
# CoLA train/dev have no header (label_name None); its test file starts with "index\tsentence".
_TSV_FORMATS: dict[str, tuple[str | None, _Layout, _Layout]] = {
    "cola": (None, _Layout(3, None, 1, None, num_columns=4), _Layout(1, None, None, 0)),
    "sst2": ("label", _Layout(0, None, 1, None), _Layout(1, None, None, 0)),
    "mrpc": ("Quality", _Layout(3, 4, 0, None), _Layout(3, 4, None, 0)),
    "stsb": ("score", _Layout(7, 8, -1, 0), _Layout(7, 8, None, 0)),
    "qqp": ("is_duplicate", _Layout(3, 4, 5, 0), _Layout(1, 2, None, 0)),
    "mnli": ("gold_label", _Layout(8, 9, -1, 0), _Layout(8, 9, None, 0)),
    "pair": ("label", _Layout(1, 2, -1, 0), _Layout(1, 2, None, 0)),  # QNLI, RTE, WNLI
}


def find_task_dir(task: TaskSpec, data_dir: str | Path) -> Path:
    """The folder holding ``task``'s files: ``data_dir/{name}`` or an official folder name under it.

    ``data_dir`` may also be that folder itself. Raises MissingDataError listing the paths tried.
    """
    root = Path(data_dir)
    tried = [root / folder for folder in task.folders]
    for candidate in tried:
        if candidate.is_dir():
            return candidate
    if root.is_dir() and any((root / f).is_file() for _, files in task.split_files for f in files):
        return root
    raise MissingDataError(
        f"no data folder for task {task.name}; tried: {', '.join(str(p) for p in tried)} "
        f"(prepare it with `python -m data.prepare {task.name}`)"
    )


def find_split_file(task: TaskSpec, data_dir: str | Path, split: str) -> Path:
    """Path of ``split``'s file for ``task``; MissingDataError listing the paths tried."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    folder = find_task_dir(task, data_dir)
    tried = [folder / name for name in task.files_for(split)]
    for path in tried:
        if path.is_file():
            return path
    raise MissingDataError(f"no {split} file for task {task.name}; tried: {', '.join(str(p) for p in tried)}")


def read_examples(task: TaskSpec | str, data_dir: str | Path, split: str) -> list[Example]:
    """Read ``split`` (``train``, ``dev`` or ``test``) of ``task`` from ``data_dir``.

    ``data_dir`` is a root holding ``{task.name}/`` or the official GLUE folder (``SST-2``, ``MNLI``,
    ...; ``conll2003`` for CoNLL). Returns ``ClsExample``s or ``TokenExample``s in file order.

    Raises:
        MissingDataError: no folder or file (message lists the paths tried).
        DataFormatError: empty file or malformed row (file, 1-based line, what was expected).
    """
    task = get_task(task)
    path = find_split_file(task, data_dir, split)
    if task.file_format == "conll":
        examples = read_conll_file(path, task, doc_start=True)
    elif task.file_format == "columns":
        examples = read_conll_file(path, task, doc_start=False)
    else:
        examples = read_tsv_file(path, task)
    if split != "test" and any(_unlabelled(ex) for ex in examples):
        raise DataFormatError(f"{path}: the {split} split must carry gold labels, but the file has none")
    logger.info("read %d examples from %s", len(examples), path)
    return examples


def _unlabelled(example: Example) -> bool:
    return (example.labels if isinstance(example, TokenExample) else example.label) is None


def _lines(path: Path) -> list[str]:
    """File lines without line ends; a BOM is dropped. Split on '\\n' only (str.splitlines would
    also split on form feeds and unicode separators that can occur inside sentences)."""
    text = path.read_text(encoding="utf-8-sig")
    if not text.strip():
        raise DataFormatError(f"{path}: file is empty")
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def read_tsv_file(path: str | Path, task: TaskSpec | str) -> list[ClsExample]:
    """Read one GLUE-format TSV of ``task`` (layout chosen by ``task.file_format``)."""
    task = get_task(task)
    path = Path(path)
    label_name, labelled_layout, unlabelled_layout = _TSV_FORMATS[task.file_format]
    lines = _lines(path)
    first = lines[0].split("\t")
    if label_name is None:  # CoLA: headerless when labelled
        labelled = first[0] != "index"
        header = None if labelled else first
    else:
        labelled = label_name in first
        header = first
    layout = labelled_layout if labelled else unlabelled_layout
    num_columns = len(header) if header is not None else layout.num_columns
    start = 0 if header is None else 1
    label_to_id = task.label_to_id
    examples: list[ClsExample] = []
    skipped = 0
    for line_no, line in enumerate(lines[start:], start=start + 1):
        if not line:
            continue  # a blank line (e.g. a doubled final newline) carries no example
        cols = line.split("\t")
        if len(cols) != num_columns:
            if task.file_format == "qqp":
                skipped += 1
                continue
            raise DataFormatError(
                f"{path}:{line_no}: expected {num_columns} tab-separated columns, found {len(cols)}"
            )
        label = None
        if layout.label is not None:
            raw = cols[layout.label].strip()
            if task.kind == "regression":
                try:
                    label = float(raw)
                except ValueError:
                    raise DataFormatError(f"{path}:{line_no}: expected a numeric score, found {raw!r}") from None
            elif raw in label_to_id:
                label = label_to_id[raw]
            elif task.file_format == "qqp" and not raw:
                skipped += 1
                continue
            else:
                raise DataFormatError(
                    f"{path}:{line_no}: unknown label {raw!r}; expected one of {', '.join(task.labels)}"
                )
        text_a = cols[layout.text_a]
        text_b = cols[layout.text_b] if layout.text_b is not None else None
        if task.file_format == "qqp" and (not text_a.strip() or not text_b.strip()):
            skipped += 1
            continue
        guid = cols[layout.index] if layout.index is not None else str(len(examples) + skipped)
        examples.append(ClsExample(guid=guid, text_a=text_a, text_b=text_b, label=label))
    if skipped:
        logger.warning("%s: skipped %d rows with missing fields (QQP)", path, skipped)
    if not examples:
        raise DataFormatError(f"{path}: no data rows")
    return examples


def iob1_to_iob2(tags: list[str]) -> list[str]:
    """Convert one sentence's IOB1 tags to IOB2 (idempotent on IOB2 input).

    In IOB1 ``I-X`` opens an entity unless it follows a ``B-X``/``I-X``; IOB2 always opens with ``B-X``.
    """
    out = []
    previous = "O"
    for tag in tags:
        if tag.startswith("I-") and (previous == "O" or previous[2:] != tag[2:]):
            tag = "B-" + tag[2:]
        out.append(tag)
        previous = tag
    return out


def read_conll_file(path: str | Path, task: TaskSpec | str, doc_start: bool = True) -> list[TokenExample]:
    """Read a one-word-per-line file: sentences separated by blank lines, tag in the last column.

    CoNLL (``doc_start=True``): exactly four space-separated fields ``word POS chunk NER``;
    ``-DOCSTART-`` lines end a sentence and are skipped. NER tags are read as IOB1 (the original
    CoNLL-2003 scheme) and converted to IOB2, which is what the model is trained on and what
    ``seqeval`` scores; IOB2 input passes through unchanged. Other column files (``pos``): two fields
    ``word TAG``.
    """
    task = get_task(task)
    path = Path(path)
    expected = 4 if doc_start else 2
    label_to_id = task.label_to_id
    examples: list[TokenExample] = []
    words: list[str] = []
    tags: list[str] = []
    extra: list[list[str]] = []
    converted = 0

    def flush():
        nonlocal converted, words, tags, extra
        if words:
            iob2 = iob1_to_iob2(tags) if doc_start else tags
            converted += sum(a != b for a, b in zip(tags, iob2, strict=True))
            examples.append(
                TokenExample(guid=str(len(examples)), words=words,
                             labels=[label_to_id[t] for t in iob2], extra=extra)
            )
        words, tags, extra = [], [], []

    for line_no, line in enumerate(_lines(path), start=1):
        fields = line.split()
        if not fields:
            flush()
            continue
        if doc_start and fields[0] == "-DOCSTART-":
            flush()
            continue
        if len(fields) != expected:
            raise DataFormatError(
                f"{path}:{line_no}: expected {expected} space-separated fields, found {len(fields)}"
            )
        tag = fields[-1]
        if tag not in label_to_id:
            raise DataFormatError(f"{path}:{line_no}: unknown tag {tag!r}; expected one of {', '.join(task.labels)}")
        words.append(fields[0])
        tags.append(tag)
        extra.append(fields[1:])
    flush()
    if not examples:
        raise DataFormatError(f"{path}: no sentences")
    if converted:
        logger.info("%s: converted %d IOB1 tags to IOB2", path, converted)
    return examples
