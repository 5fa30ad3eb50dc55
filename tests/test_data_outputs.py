"""GLUE submission files and CoNLL prediction files."""

import pytest

from data.outputs import write_conll_predictions, write_glue_submission
from data.readers import ClsExample, read_examples
from tests.helpers import FIXTURE_DATA


@pytest.mark.parametrize(
    "task, predictions, expected_name, expected_values",
    [
        ("rte", [1, 0], "RTE.tsv", ["entailment", "not_entailment"]),
        ("mnli", [2], "MNLI-m.tsv", ["entailment"]),
        ("mnlimm", [0, 1], "MNLI-mm.tsv", ["contradiction", "neutral"]),
        ("sst2", [0, 1], "SST-2.tsv", ["0", "1"]),
        ("cola", [1, 1], "CoLA.tsv", ["1", "1"]),
    ],
)
def test_glue_submission_format(tmp_path, task, predictions, expected_name, expected_values):
    examples = read_examples(task, FIXTURE_DATA, "test")
    path = write_glue_submission(task, examples, predictions, tmp_path)
    assert path == tmp_path / expected_name
    lines = path.read_text().split("\n")
    assert lines[0] == "index\tprediction" and lines[-1] == ""
    assert lines[1:-1] == [f"{e.guid}\t{v}" for e, v in zip(examples, expected_values, strict=True)]


def test_stsb_submission_is_clipped(tmp_path):
    examples = [ClsExample(str(i), "a", "b", None) for i in range(3)]
    path = write_glue_submission("stsb", examples, [-0.4, 2.71828, 5.9], tmp_path)
    assert path.name == "STS-B.tsv"
    assert path.read_text() == "index\tprediction\n0\t0.000\n1\t2.718\n2\t5.000\n"


def test_submission_count_mismatch(tmp_path):
    with pytest.raises(ValueError, match="1 predictions for 2 examples"):
        write_glue_submission("qnli", read_examples("qnli", FIXTURE_DATA, "test"), [0], tmp_path)
    with pytest.raises(ValueError, match="no GLUE submission"):
        write_glue_submission("conll", [], [], tmp_path)


def test_conll_predictions_keep_input_columns(tmp_path):
    examples = read_examples("conll", FIXTURE_DATA, "train")
    predictions = [["B-ORG"] + ["O"] * 8, ["B-PER", "I-PER"], ["B-LOC", "O"]]
    path = write_conll_predictions(examples, predictions, tmp_path / "pred.txt")
    blocks = path.read_text().rstrip("\n").split("\n\n")
    assert len(blocks) == 3
    assert blocks[0].split("\n")[0] == "EU NNP I-NP I-ORG B-ORG"
    assert blocks[2].split("\n") == ["BRUSSELS NNP I-NP I-LOC B-LOC", "Hamburg NNP I-NP B-LOC O"]
    with pytest.raises(ValueError, match="2 tags for 9 words"):
        write_conll_predictions(examples[:1], [["O", "O"]], tmp_path / "bad.txt")
