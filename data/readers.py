"""Readers for GLUE TSVs, CoNLL-2003, column-per-token files and plain-text language-modelling corpora.

GLUE files are split on tabs with **no CSV quoting** (several official files hold unbalanced ``"``
characters that a quoting reader would use to swallow rows). Which columns hold the text and the
label is each task's ``file_format`` (the official GLUE layouts); a file is read as labelled when its header names the label column (so a test
file that carries gold labels, like the prepared polarity test split, is scored), and as unlabelled
(label None, guid = the file's ``index``/``id`` column, as the GLUE server expects) otherwise.

Malformed rows raise :class:`DataFormatError` naming the file, the 1-based line and what was
expected; QQP rows with missing fields are the one exception (skipped, counted, warned), because the
official QQP train file has a few of them.

The language-modelling task (``lm``) reads documents, not labelled rows: every ``*.txt`` (paragraphs
separated by blank lines) and ``*.jsonl`` (a string field ``text`` per line) file of its folder, each
file assigned to a split by its name (:func:`lm_split_of`); see :func:`read_lm_documents`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from data.tasks import DataError, TaskSpec, get_task

logger = logging.getLogger(__name__)

SPLITS = ("train", "dev", "test")

LM_SUFFIXES = (".txt", ".jsonl")  # files of the lm task's folder that hold documents
# With no dev file, the documents at index % LM_HELD_OUT_EVERY == LM_HELD_OUT_EVERY - 1 (in reading order) of
# the training files form the dev split (5%): document-level, so no document is split between the two.
LM_HELD_OUT_EVERY = 20


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


@dataclass(frozen=True)
class LMDocument:
    """One document of a language-modelling corpus: a ``*.txt`` paragraph or a ``*.jsonl`` record's ``text``.

    ``guid``: ``{split}-{k}``, ``k`` its 0-based position in the split as read.
    """

    guid: str
    text: str


Example = ClsExample | TokenExample | LMDocument


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

    ``data_dir`` may also be that folder itself (for ``lm``: whenever ``data_dir/lm`` is absent, as its
    files have no fixed names). Raises MissingDataError listing the paths tried.
    """
    root = Path(data_dir)
    tried = [root / folder for folder in task.folders]
    for candidate in tried:
        if candidate.is_dir():
            return candidate
    has_split_file = any((root / f).is_file() for _, files in task.split_files for f in files)
    if root.is_dir() and (task.is_lm_task or has_split_file):
        return root
    hint = (f"put {' or '.join('*' + s for s in LM_SUFFIXES)} files there" if task.is_lm_task
            else f"prepare it with `python -m data.prepare {task.name}`")
    raise MissingDataError(
        f"no data folder for task {task.name}; tried: {', '.join(str(p) for p in [*tried, root])} ({hint})"
    )


def find_split_file(task: TaskSpec, data_dir: str | Path, split: str) -> Path:
    """Path of ``split``'s file for ``task``; MissingDataError listing the paths tried.

    A split of ``lm`` may span several files: this raises MissingDataError for it; use :func:`find_split_files`.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    if task.is_lm_task:
        raise MissingDataError(f"a {split} split of task {task.name} may span several files: use find_split_files")
    folder = find_task_dir(task, data_dir)
    tried = [folder / name for name in task.files_for(split)]
    for path in tried:
        if path.is_file():
            return path
    raise MissingDataError(f"no {split} file for task {task.name}; tried: {', '.join(str(p) for p in tried)}")


def find_split_files(task: TaskSpec | str, data_dir: str | Path, split: str) -> list[Path]:
    """The files ``split`` of ``task`` is read from (for its data's identity): ``[find_split_file(...)]``,
    or for ``lm`` the split's files in reading order (a dev split held out of the training files: those).

    Raises:
        MissingDataError: no folder or file (message lists the paths tried).
    """
    task = get_task(task)
    if not task.is_lm_task:
        return [find_split_file(task, data_dir, split)]
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    files = find_lm_files(task, data_dir)
    source = _lm_source(files, split)
    if not source:
        raise _no_lm_documents(task, data_dir, split, files)
    return source


def read_examples(task: TaskSpec | str, data_dir: str | Path, split: str) -> list[Example]:
    """Read ``split`` (``train``, ``dev`` or ``test``) of ``task`` from ``data_dir``.

    ``data_dir`` is a root holding ``{task.name}/`` or the official GLUE folder (``SST-2``, ``MNLI``,
    ...; ``conll2003`` for CoNLL). Returns ``ClsExample``s or ``TokenExample``s in file order, or for
    ``lm`` the split's ``LMDocument``s (:func:`read_lm_documents`).

    Raises:
        MissingDataError: no folder or file (message lists the paths tried); for ``lm``, a split without
            documents.
        DataFormatError: empty file or malformed row (file, 1-based line, what was expected).
    """
    task = get_task(task)
    if task.is_lm_task:
        return read_lm_documents(task, data_dir, split)
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


def lm_split_of(path: str | Path) -> str:
    """The split an ``lm`` file belongs to, by its name (stem, case-insensitive): containing ``train`` →
    ``train``; else ``dev``, ``valid`` or ``validation`` → ``dev``; else ``test`` → ``test``; anything else
    → ``train``.

    >>> lm_split_of("wiki.valid.jsonl"), lm_split_of("Test-2024.txt"), lm_split_of("corpus.txt")
    ('dev', 'test', 'train')
    """
    stem = Path(path).stem.lower()
    if "train" in stem:
        return "train"
    if "dev" in stem or "valid" in stem:  # "validation" contains "valid"
        return "dev"
    if "test" in stem:
        return "test"
    return "train"


def find_lm_files(task: TaskSpec | str, data_dir: str | Path) -> dict[str, list[Path]]:
    """``{split: [path, ...]}`` of the ``*.txt``/``*.jsonl`` files in ``task``'s folder (``data_dir/lm`` if
    it exists, else ``data_dir``; not recursive), each list in sorted name order; a split may be empty.

    Raises:
        MissingDataError: ``data_dir`` is not a folder.
    """
    folder = find_task_dir(get_task(task), data_dir)
    files: dict[str, list[Path]] = {split: [] for split in SPLITS}
    for path in sorted(folder.iterdir(), key=lambda p: p.name):
        if path.is_file() and path.suffix.lower() in LM_SUFFIXES:
            files[lm_split_of(path)].append(path)
    return files


def _lm_source(files: dict[str, list[Path]], split: str) -> list[Path]:
    """The files whose documents ``split`` is drawn from: a dev split without dev files is held out of train's."""
    return files["train"] if split == "dev" and not files["dev"] else files[split]


def _no_lm_documents(task: TaskSpec, data_dir: str | Path, split: str, files: dict[str, list[Path]]) -> DataError:
    source = _lm_source(files, split)
    if source:
        looked_at = ", ".join(str(p) for p in source)
    else:
        found = [str(p) for paths in files.values() for p in paths]
        looked_at = f"no {split} file among {', '.join(found) if found else 'no *.txt or *.jsonl file'}"
    hint = {
        "train": "files whose names contain none of dev/valid/test are training files",
        "dev": f"with no dev file, every {LM_HELD_OUT_EVERY}th training document is held out as dev"
               if not files["dev"] else "file names containing dev, valid or validation form the dev split",
        "test": "file names containing test form the test split; it is never held out of the training files",
    }[split]
    return MissingDataError(
        f"no {split} documents for task {task.name} in {find_task_dir(task, data_dir)}; looked at: {looked_at} "
        f"({hint})"
    )


def read_lm_documents(task: TaskSpec | str, data_dir: str | Path, split: str) -> list[LMDocument]:
    """The documents of ``split`` of the ``lm`` task, from the files :func:`find_lm_files` assigns to it, read
    in sorted name order (:func:`read_lm_file`).

    If there is no dev file, the dev split is every :data:`LM_HELD_OUT_EVERY`-th training document (index
    ``% 20 == 19`` in reading order, 5%) and the train split is the other training documents. A test split
    needs test files.

    Raises:
        MissingDataError: a split with no documents (message: the files looked at).
        DataFormatError: a malformed ``*.jsonl`` line (file, 1-based line) or a file that is not UTF-8.
    """
    task = get_task(task)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    files = find_lm_files(task, data_dir)
    source = _lm_source(files, split)
    texts = [text for path in source for text in read_lm_file(path)]
    held_out = not files["dev"] and split != "test"
    if held_out:
        is_dev = split == "dev"
        texts = [t for i, t in enumerate(texts) if (i % LM_HELD_OUT_EVERY == LM_HELD_OUT_EVERY - 1) == is_dev]
    if not texts:
        raise _no_lm_documents(task, data_dir, split, files)
    logger.info("read %d %s documents from %d files%s", len(texts), split, len(source),
                f" (every {LM_HELD_OUT_EVERY}th training document held out as dev)" if held_out else "")
    return [LMDocument(guid=f"{split}-{k}", text=text) for k, text in enumerate(texts)]


def read_lm_file(path: str | Path) -> list[str]:
    """The documents of one ``lm`` file, in order; whitespace-only documents are skipped.

    ``*.txt``: paragraphs separated by one or more blank (or whitespace-only) lines, a paragraph's lines
    joined with ``\\n``. ``*.jsonl``: one JSON object per non-blank line with a string field ``text``.

    Raises:
        DataFormatError: a malformed JSON line, or a missing or non-string ``text`` (file, 1-based line); a
            file that is not UTF-8.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataFormatError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    lines = [line[:-1] if line.endswith("\r") else line for line in text.split("\n")]
    documents: list[str] = []
    if path.suffix.lower() == ".jsonl":
        for line_no, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataFormatError(f"{path}:{line_no}: not valid JSON ({err.msg})") from None
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise DataFormatError(f'{path}:{line_no}: expected a JSON object with a string field "text"')
            if record["text"].strip():
                documents.append(record["text"])
        return documents
    paragraph: list[str] = []
    for line in [*lines, ""]:  # the sentinel blank line ends the last paragraph
        if line.strip():
            paragraph.append(line)
        elif paragraph:
            documents.append("\n".join(paragraph))
            paragraph = []
    return documents
