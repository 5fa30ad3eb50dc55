"""Metrics against hand-computed values (arithmetic in the comments) and degenerate inputs."""

import logging
import math

import pytest

from utils.maths.metrics import (
    acc_and_f1,
    accuracy,
    binary_f1,
    compute_metrics,
    entity_prf,
    matthews,
    pearson_and_spearman,
    token_accuracy,
)


def test_accuracy():
    # 3 of 4 right
    assert accuracy([1, 0, 1, 1], [1, 0, 0, 1]) == 0.75


def test_binary_f1_and_mean():
    preds, refs = [1, 1, 0, 0, 1], [1, 0, 0, 1, 1]
    # tp = 2 (positions 0, 4), fp = 1 (1), fn = 1 (3): P = 2/3, R = 2/3, F1 = 2/3; acc = 3/5
    assert binary_f1(preds, refs) == pytest.approx(2 / 3)
    out = acc_and_f1(preds, refs)
    assert out == pytest.approx({"acc": 0.6, "f1": 2 / 3, "acc_and_f1": (0.6 + 2 / 3) / 2})


def test_binary_f1_positive_class_is_one():
    # no positive predicted or gold: F1 of class 1 is 0 (not the F1 of class 0)
    assert binary_f1([0, 0], [0, 0]) == 0.0


def test_matthews_by_hand():
    preds, refs = [1, 1, 0, 0, 1, 0], [1, 0, 0, 0, 1, 1]
    # tp = 2, tn = 2, fp = 1, fn = 1: (tp*tn - fp*fn) / sqrt((tp+fp)(tp+fn)(tn+fp)(tn+fn)) = (4-1)/sqrt(3*3*3*3) = 3/9
    assert matthews(preds, refs) == pytest.approx(1 / 3)
    assert compute_metrics("cola", preds, refs) == {"matthews_corrcoef": pytest.approx(1 / 3)}


def test_matthews_constant_prediction_is_zero(caplog):
    with caplog.at_level(logging.WARNING):
        assert matthews([1, 1, 1], [1, 0, 1]) == 0.0
    assert "constant" in caplog.text


def test_pearson_spearman_by_hand():
    preds, refs = [1.0, 2.0, 3.0, 4.0], [1.0, 3.0, 2.0, 4.0]
    # deviations x: -1.5 -0.5 0.5 1.5, y: -1.5 0.5 -0.5 1.5; sum xy = 2.25 - 0.25 - 0.25 + 2.25 = 4; sum x^2 = sum y^2 = 5
    # pearson = 4/5 = 0.8; the data are ranks already, so spearman = 0.8 too; corr = 0.8
    out = pearson_and_spearman(preds, refs)
    assert out == pytest.approx({"pearson_corr": 0.8, "spearman_corr": 0.8, "corr": 0.8})
    # raw regression outputs, not clipped: a monotone but non-linear map keeps spearman at 1
    out = compute_metrics("stsb", [0.0, 1.0, 10.0], [0.0, 1.0, 2.0])
    assert out["spearman_corr"] == pytest.approx(1.0) and out["pearson_corr"] < 1.0


def test_constant_regression_output_is_zero_not_nan(caplog):
    with caplog.at_level(logging.WARNING):
        out = compute_metrics("stsb", [2.0, 2.0, 2.0], [1.0, 2.0, 3.0])
    assert out == {"pearson_corr": 0.0, "spearman_corr": 0.0, "corr": 0.0}
    assert not any(math.isnan(v) for v in out.values())
    assert "constant" in caplog.text


def test_entity_prf_per_sentence():
    refs = [["B-PER", "I-PER", "O"], ["B-LOC", "O", "B-ORG"]]
    preds = [["B-PER", "I-PER", "O"], ["B-LOC", "B-MISC", "O"]]
    # gold entities: PER(0-1), LOC, ORG = 3; predicted: PER(0-1), LOC, MISC = 3; correct: PER, LOC = 2
    # P = 2/3, R = 2/3, F1 = 2/3
    assert entity_prf(preds, refs) == pytest.approx({"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3})


def test_entities_do_not_cross_sentence_boundaries():
    # flattened, the I-PER opening sentence 2 would extend sentence 1's PER; per sentence it is its own entity
    refs = [["B-PER"], ["B-PER"]]
    preds = [["B-PER"], ["I-PER"]]
    # an I-X after the start of a sentence opens an X entity (conlleval rule): both entities right
    assert entity_prf(preds, refs)["f1"] == 1.0


def test_entity_prf_without_entities_is_zero():
    assert entity_prf([["O", "O"]], [["O", "O"]]) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}


def test_token_accuracy():
    # 3 right of 4 words across two sentences
    assert token_accuracy([["NN", "VB"], ["DT", "NN"]], [["NN", "VB"], ["DT", "JJ"]]) == 0.75
    assert compute_metrics("pos", [["NN"]], [["NN"]]) == {"acc": 1.0}


def test_length_mismatch_and_empty_inputs():
    with pytest.raises(ValueError, match="3 predictions but 2 references"):
        accuracy([1, 0, 1], [1, 0])
    with pytest.raises(ValueError, match="zero examples"):
        accuracy([], [])
    with pytest.raises(ValueError, match="sentence 0"):
        entity_prf([["O"]], [["O", "O"]])


@pytest.mark.parametrize(
    "task, preds, refs",
    [("sst2", [1, 0], [1, 0]), ("mrpc", [1, 0], [1, 0]), ("qqp", [1, 0], [1, 0]), ("rte", [1, 0], [1, 0]),
     ("mnlimm", [2, 0], [2, 0]), ("polarity", [0, 1], [0, 1]), ("conll", [["B-PER"]], [["B-PER"]])],
)
def test_all_values_are_fractions(task, preds, refs):
    out = compute_metrics(task, preds, refs)
    assert all(0.0 <= v <= 1.0 for v in out.values())
    assert max(out.values()) == 1.0  # a fraction like every metric, so λ means the same on every task
