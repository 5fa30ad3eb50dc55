"""Task registry and readers: fixtures in the exact official layouts, bad input, real files when present."""

import logging
import shutil
from pathlib import Path

import pytest

from data.readers import ClsExample, DataFormatError, TokenExample, iob1_to_iob2, read_examples
from data.tasks import CONLL_TAGS, TASKS, get_task, validate_selection_metric
from tests.helpers import FIXTURE_DATA, SHARED_DATA, requires_shared_data

# ---- registry ------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "name, keys, selection",
    [
        ("cola", ("matthews_corrcoef",), "matthews_corrcoef"),
        ("sst2", ("acc",), "acc"),
        ("mrpc", ("acc", "f1", "acc_and_f1"), "acc_and_f1"),
        ("qqp", ("acc", "f1", "acc_and_f1"), "acc_and_f1"),
        ("stsb", ("pearson_corr", "spearman_corr", "corr"), "corr"),
        ("mnli", ("acc",), "acc"),
        ("mnlimm", ("acc",), "acc"),
        ("qnli", ("acc",), "acc"),
        ("rte", ("acc",), "acc"),
        ("wnli", ("acc",), "acc"),
        ("polarity", ("acc",), "acc"),
        ("conll", ("precision", "recall", "f1"), "f1"),
        ("pos", ("acc",), "acc"),
    ],
)
def test_registry_metric_keys_and_defaults(name, keys, selection):
    spec = get_task(name)
    assert spec.metric_names == keys
    assert spec.selection_metric == selection
    assert validate_selection_metric(spec, None) == selection


def test_label_maps_follow_the_reference():
    assert get_task("mnli").labels == ("contradiction", "neutral", "entailment")
    assert get_task("qnli").labels == ("not_entailment", "entailment")
    assert get_task("rte").labels == ("not_entailment", "entailment")
    for name in ("cola", "sst2", "mrpc", "qqp", "wnli", "polarity"):
        assert get_task(name).labels == ("0", "1")
    assert get_task("stsb").labels == () and get_task("stsb").num_labels == 1
    assert get_task("conll").labels == CONLL_TAGS and get_task("conll").num_labels == 9
    assert get_task("MRPC").submission_name == "MRPC.tsv"
    assert get_task("mnlimm").submission_name == "MNLI-mm.tsv"
    assert get_task("conll").submission_name is None


def test_unknown_task_lists_known_names():
    with pytest.raises(ValueError, match="unknown task 'mrcp'") as info:
        get_task("mrcp")
    assert all(name in str(info.value) for name in TASKS)
    assert "\n" not in str(info.value)


def test_bad_selection_metric_names_metric_task_and_valid_ones():
    with pytest.raises(ValueError) as info:
        validate_selection_metric("stsb", "acc")
    message = str(info.value)
    assert "'acc'" in message and "stsb" in message and "pearson_corr" in message and "corr" in message


# ---- readers on fixtures ---------------------------------------------------------------------------

def test_cola_headerless_train_and_headed_test():
    train = read_examples(get_task("cola"), FIXTURE_DATA, "train")
    assert [e.label for e in train] == [1, 0, 1]
    assert train[1].text_a == "movie the good was ." and train[1].text_b is None
    dev = read_examples("cola", FIXTURE_DATA, "dev")  # last line has no newline
    assert len(dev) == 2 and dev[-1].text_a == "was he dull not ."
    test = read_examples("cola", FIXTURE_DATA, "test")
    assert [(e.guid, e.label) for e in test] == [("0", None), ("1", None)]


def test_sst2_keeps_quotes():
    train = read_examples("sst2", FIXTURE_DATA, "train")
    assert train[0] == ClsExample(guid="0", text_a='a " great " movie ', text_b=None, label=1)
    assert train[2].text_a == '"bad film'
    test = read_examples("sst2", FIXTURE_DATA, "test")
    assert test[1].guid == "1" and test[1].text_a == '" dull' and test[1].label is None


def test_mrpc_bom_header_and_test_index():
    train = read_examples("mrpc", FIXTURE_DATA, "train")
    assert [e.label for e in train] == [1, 0]
    assert train[0].text_a == 'he said " good " .' and train[0].text_b == '" good , " he said .'
    test = read_examples("mrpc", FIXTURE_DATA, "test")
    assert test[0].guid == "0" and test[0].text_b == "he said ." and test[0].label is None


def test_stsb_scores_are_floats():
    dev = read_examples("stsb", FIXTURE_DATA, "dev")
    assert [e.label for e in dev] == [2.5, 4.2]
    assert read_examples("stsb", FIXTURE_DATA, "train")[0].text_b == 'An "air" plane is taking off.'
    assert read_examples("stsb", FIXTURE_DATA, "test")[0].label is None


def test_qqp_skips_rows_with_missing_fields_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        train = read_examples("qqp", FIXTURE_DATA, "train")
    assert [(e.guid, e.label) for e in train] == [("133273", 1), ("5", 0)]
    assert train[0].text_a == 'How is "the" film?'
    assert "skipped 2 rows" in caplog.text
    test = read_examples("qqp", FIXTURE_DATA, "test")
    assert [e.text_a for e in test] == ["What is this?", '"quoted']


def test_mnli_matched_and_mismatched():
    train = read_examples("mnli", FIXTURE_DATA, "train")  # 12 columns
    assert [e.label for e in train] == [2, 0, 1]
    assert train[0].text_a == "He said it." and train[0].text_b == "He spoke."
    assert [e.label for e in read_examples("mnli", FIXTURE_DATA, "dev")] == [1, 2]  # 16 columns, gold last
    assert [e.label for e in read_examples("mnlimm", FIXTURE_DATA, "dev")] == [0]
    assert [e.text_a for e in read_examples("mnli", FIXTURE_DATA, "test")] == ["G."]
    assert [e.guid for e in read_examples("mnlimm", FIXTURE_DATA, "test")] == ["0", "1"]
    assert len(read_examples("mnlimm", FIXTURE_DATA, "train")) == 3


@pytest.mark.parametrize("name", ["qnli", "rte", "wnli"])
def test_pair_tasks(name):
    spec = get_task(name)
    train = read_examples(spec, FIXTURE_DATA, "train")
    assert [spec.labels[e.label] for e in train] == (
        ["entailment", "not_entailment"] if name == "qnli" else
        ["not_entailment", "entailment"] if name == "rte" else ["1", "0"]
    )
    assert train[1].text_a == 'Who "said" it?'
    assert [e.label for e in read_examples(spec, FIXTURE_DATA, "test")] == [None, None]


def test_conll_iob1_converted_and_docstart_skipped():
    train = read_examples("conll", FIXTURE_DATA, "train")
    tags = [[CONLL_TAGS[i] for i in e.labels] for e in train]
    assert [e.words for e in train] == [
        ["EU", "rejects", "German", "call", "to", "boycott", "British", "lamb", "."],
        ["Peter", "Blackburn"],
        ["BRUSSELS", "Hamburg"],
    ]
    assert tags == [
        ["B-ORG", "O", "B-MISC", "O", "O", "O", "B-MISC", "O", "O"],
        ["B-PER", "I-PER"],
        ["B-LOC", "B-LOC"],  # IOB1 B- right after a same-type entity opens a new one
    ]
    assert isinstance(train[0], TokenExample) and train[0].extra[0] == ["NNP", "I-NP", "I-ORG"]
    dev = read_examples("conll", FIXTURE_DATA, "dev")  # IOB2 passes unchanged
    assert [CONLL_TAGS[i] for i in dev[0].labels] == ["B-PER", "I-PER", "O", "O", "B-LOC", "B-LOC", "O"]


def test_conll_original_file_names(tmp_path):
    folder = tmp_path / "conll2003"
    folder.mkdir()
    for split, name in (("train", "eng.train"), ("dev", "eng.testa"), ("test", "eng.testb")):
        shutil.copy(FIXTURE_DATA / "conll" / f"{split}.txt", folder / name)
    assert len(read_examples("conll", tmp_path, "dev")) == 1
    assert len(read_examples("conll", tmp_path, "test")) == 1


def test_iob1_to_iob2():
    assert iob1_to_iob2(["I-PER", "I-PER", "O", "I-LOC", "I-ORG", "B-ORG"]) == [
        "B-PER", "I-PER", "O", "B-LOC", "B-ORG", "B-ORG"]
    assert iob1_to_iob2(["B-PER", "I-PER"]) == ["B-PER", "I-PER"]


def test_data_dir_may_be_the_task_folder_itself():
    assert len(read_examples("sst2", FIXTURE_DATA / "sst2", "dev")) == 2


# ---- bad input ----------------------------------------------------------------------------------------

def _write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text, encoding="utf-8")
    return folder / name


@pytest.mark.parametrize(
    "task, folder, text, expected",
    [
        ("sst2", "sst2", "sentence\tlabel\ngood\t1\nbad\t0\textra\n", r"train\.tsv:3: expected 2 tab-separated columns, found 3"),
        ("sst2", "sst2", "sentence\tlabel\ngood\t1\nbad\tneg\n", r"train\.tsv:3: unknown label 'neg'"),
        ("rte", "RTE", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentails\n", r"train\.tsv:2: unknown label 'entails'"),
        ("cola", "CoLA", "gj04\t1\t\tok .\ngj04\t1\tbroken .\n", r"train\.tsv:2: expected 4 tab-separated columns, found 3"),
        ("stsb", "STS-B", "index\tg\tf\ty\to\ts1\ts2\tsentence1\tsentence2\tscore\n0\tg\tf\ty\to\ts\ts\ta\tb\tfive\n",
         r"train\.tsv:2: expected a numeric score, found 'five'"),
        ("conll", "conll", "-DOCSTART- -X- O O\n\nEU NNP I-ORG\n", r"train\.txt:3: expected 4 space-separated fields, found 3"),
        ("conll", "conll", "EU NNP I-NP I-ORG\nrejects VBZ I-VP I-FOO\n", r"train\.txt:2: unknown tag 'I-FOO'"),
    ],
)
def test_malformed_rows_name_file_and_line(tmp_path, task, folder, text, expected):
    name = "train.txt" if task == "conll" else "train.tsv"
    _write(tmp_path / folder, name, text)
    with pytest.raises(DataFormatError, match=expected) as info:
        read_examples(task, tmp_path, "train")
    assert str(tmp_path / folder / name) in str(info.value)


def test_empty_file(tmp_path):
    _write(tmp_path / "sst2", "dev.tsv", "")
    with pytest.raises(DataFormatError, match=r"dev\.tsv: file is empty"):
        read_examples("sst2", tmp_path, "dev")
    _write(tmp_path / "sst2", "train.tsv", "sentence\tlabel\n")
    with pytest.raises(DataFormatError, match=r"train\.tsv: no data rows"):
        read_examples("sst2", tmp_path, "train")


def test_unlabelled_train_file_is_refused(tmp_path):
    _write(tmp_path / "sst2", "train.tsv", "index\tsentence\n0\tgood\n")
    with pytest.raises(DataFormatError, match="must carry gold labels"):
        read_examples("sst2", tmp_path, "train")


def test_missing_folder_lists_paths_tried(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        read_examples("mnlimm", tmp_path, "dev")
    message = str(info.value)
    for folder in ("mnlimm", "MNLI", "mnli"):
        assert str(tmp_path / folder) in message
    assert "\n" not in message


def test_missing_split_file_lists_paths_tried(tmp_path):
    _write(tmp_path / "sst2", "train.tsv", "sentence\tlabel\na\t1\n")
    with pytest.raises(FileNotFoundError, match=r"no dev file for task sst2; tried: .*sst2/dev\.tsv"):
        read_examples("sst2", tmp_path, "dev")


def test_unknown_split():
    with pytest.raises(ValueError, match="unknown split 'valid'"):
        read_examples("sst2", FIXTURE_DATA, "valid")


# ---- real files (../shared/data) ----------------------------------------------------------------------

REAL_COUNTS = {
    "cola": (8551, 1043, 1063),
    "sst2": (67349, 872, 1821),
    "mrpc": (3668, 408, 1725),
    "stsb": (5749, 1500, 1379),
    "rte": (2490, 277, 3000),
    "wnli": (635, 71, 146),
    "qnli": (None, 5463, 5463),
}


@pytest.mark.real_data
@requires_shared_data
@pytest.mark.parametrize("name", sorted(REAL_COUNTS))
def test_real_glue_files_parse_with_official_counts(name):
    spec = get_task(name)
    for split, count in zip(("train", "dev", "test"), REAL_COUNTS[name], strict=True):
        if count is None:
            continue
        examples = read_examples(spec, SHARED_DATA / "glue", split)
        assert len(examples) == count, (name, split)
        if split == "test":
            assert all(e.label is None for e in examples)
            assert [e.guid for e in examples[:3]] == ["0", "1", "2"]
        else:
            assert all(e.label is not None for e in examples)


@pytest.mark.real_data
@requires_shared_data
def test_real_label_distributions():
    cola_dev = read_examples("cola", SHARED_DATA / "glue", "dev")
    assert sum(e.label for e in cola_dev) == 721  # 721 acceptable / 322 not
    mrpc_train = read_examples("mrpc", SHARED_DATA / "glue", "train")
    assert sum(e.label for e in mrpc_train) == 2474
    stsb = read_examples("stsb", SHARED_DATA / "glue", "dev")
    assert all(0.0 <= e.label <= 5.0 for e in stsb)


@pytest.mark.real_data
@requires_shared_data
def test_real_conll_files():
    expected = {"train": (14041, 203621), "dev": (3250, 51362), "test": (3453, 46435)}
    for split, (sentences, tokens) in expected.items():
        examples = read_examples("conll", SHARED_DATA, split)
        assert len(examples) == sentences
        assert sum(len(e.words) for e in examples) == tokens
    train = read_examples("conll", SHARED_DATA, "train")
    entities = sum(CONLL_TAGS[t].startswith("B-") for e in train for t in e.labels)
    assert entities == 23499  # official entity count, so the IOB1 -> IOB2 conversion opened every entity
