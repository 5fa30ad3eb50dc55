"""benchmarks/dev_subset.py: the choice a dev subset would have made, from recorded predictions, checked against
known hypergeometric odds and against a real run that scored its candidates on that subset."""

import json
import math

import pytest

import run_minidisc
from data.tasks import get_task
from tests.helpers import import_benchmark, schedule_args


@pytest.fixture(scope="module")
def dev_subset():
    return import_benchmark("dev_subset")


SST2 = get_task("sst2")
LABELS = [1] * 10


def test_a_later_line_replaces_an_evaluation_repeated_after_a_resume(dev_subset, tmp_path):
    path = tmp_path / "dev_predictions.jsonl"
    lines = [{"step": 3, "sparsity": 50, "predictions": [0, 0]}, {"step": 3, "sparsity": 70, "predictions": [1, 0]},
             {"step": 3, "sparsity": 50, "predictions": [1, 1]}]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert dev_subset.read_recording(path) == {3: {50: [1, 1], 70: [1, 0]}}


def test_performance_is_the_best_over_evaluations_on_the_subset(dev_subset):
    evaluations = {1: {50: [1] * 6 + [0] * 4, 70: [1] * 10}, 2: {50: [1] * 9 + [0], 70: [0] * 10}}
    assert dev_subset.performance_on(evaluations, LABELS, list(range(10)), SST2, "acc") == {50: 0.9, 70: 1.0}
    # on the last four examples width 50 was right only at step 2
    assert dev_subset.performance_on(evaluations, LABELS, [6, 7, 8, 9], SST2, "acc") == {50: 0.75, 70: 1.0}


def test_random_subsets_agree_as_often_as_the_hypergeometric_odds(dev_subset):
    # 50S is right on examples 0-4, 70S on 5-9: a tie on all ten, which goes to 50S (λ = 0). A subset of 4
    # keeps 50S exactly when it holds at least 2 of 0-4: (100 + 50 + 5) / 210 of the subsets.
    evaluations = {1: {50: [1] * 5 + [0] * 5, 70: [0] * 5 + [1] * 5}}
    rows = dev_subset.subset_study(evaluations, LABELS, SST2, "acc", lam=0.0, low=0, target=90, sizes=(4, 10),
                                   draws=2000)
    assert [row["size"] for row in rows] == [4]  # a subset as large as the set is no subset
    row = rows[0]
    assert row["choice_all"] == 50
    assert abs(row["same_rate"] - 155 / 210) < 0.04
    assert row["mean_tau_loss"] == 0.0  # the two are tied on all ten: either choice loses nothing
    # where 50S is right everywhere, every subset chooses it
    clear = {1: {50: [1] * 10, 70: [1] * 5 + [0] * 5, 90: [0] * 10}}
    row = dev_subset.subset_study(clear, LABELS, SST2, "acc", 0.0, 0, 90, sizes=(3,), draws=50)[0]
    assert row["same_rate"] == 1.0 and row["fixed_choice"] == 50 and row["fixed_rho"] == 1.0


def test_the_fixed_subset_makes_the_choice_of_a_run_scored_on_it(dev_subset, fine_grid_teacher, short_sst2_task,
                                                                tmp_path):
    flags = ("--lam", "0.05", "--target_sparsity", "90", "--record_predictions")
    recorded = tmp_path / "recorded"
    run_minidisc.main(schedule_args(fine_grid_teacher, short_sst2_task, recorded, *flags))
    row = dev_subset.study_run(recorded, None, sizes=(8,), draws=20)[0]
    assert row["fixed_choice"] != row["choice_all"]  # these 8 of the 12 choose otherwise: the check can tell
    on_subset = tmp_path / "on_subset"
    run_minidisc.main(schedule_args(fine_grid_teacher, short_sst2_task, on_subset, *flags,
                                    "--search_eval_samples", "8"))
    # training does not depend on what is scored: the recorded run's fixed subset chose what the run did
    assert json.loads((on_subset / "schedule.json").read_text())["iterations"][0]["selected"] == row["fixed_choice"]
    assert not math.isnan(row["mean_tau_loss"])
    with pytest.raises(SystemExit, match="scored on a subset already"):
        dev_subset.study_run(on_subset, None, sizes=(5,), draws=1)
