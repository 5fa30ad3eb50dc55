"""benchmarks/compare_schedules.py and its analysis (benchmarks/schedule_report.py): the paper's experiment
computed from synthetic rows (Spearman's ρ, paired t intervals, the majority-class floor and its flags, the
report), and one tiny run of the whole benchmark."""

import argparse
import json
import math
import warnings

import pytest

from data.tasks import get_task
from tests.helpers import SHARED_DATA, import_benchmark, requires_shared_data
from utils.artifacts.plots import draw_students_through_assistants, plot_students_through_assistants, pyplot

common = import_benchmark("common")
schedule_report = import_benchmark("schedule_report")  # the analysis and report: pure functions of the rows


@pytest.fixture(scope="module")
def compare():
    return import_benchmark("compare_schedules")


def test_chain_assistant(compare):
    assert schedule_report.chain_assistant("70,90S") == 70
    assert schedule_report.chain_assistant("60,80,90S") == 60
    assert schedule_report.chain_assistant("90S") is None


def test_candidate_rows_join_minidiscs_first_iteration_with_maxidiscs_paths(compare):
    first = {"performance": {"50": 0.80, "60": 0.79, "70": 0.77, "90": 0.70},
             "tradeoff": {"50": 0.90, "60": 0.91, "70": 0.91, "90": 0.88}}
    paths = {"50,90S": 0.74, "70,90S": 0.76, "85,90S": 0.75, "90S": 0.73}
    rows = schedule_report.candidate_rows(first, paths, low=50, target=90)
    # the target (90) is no assistant, 85 has a student but no P, 60 a P but no student
    assert rows == [{"assistant": 50, "P": 0.80, "tau": 0.90, "student": 0.74},
                    {"assistant": 60, "P": 0.79, "tau": 0.91, "student": None},
                    {"assistant": 70, "P": 0.77, "tau": 0.91, "student": 0.76},
                    {"assistant": 85, "P": None, "tau": None, "student": 0.75}]
    assert [r["assistant"] for r in schedule_report.candidate_rows(first, paths, low=60, target=85)] == [60, 70]
    assert schedule_report.candidate_rows(None, None, 50, 90) == []


@pytest.mark.parametrize("x,y,expected", [
    ([1, 2, 3, 4], [10, 20, 30, 40], 1.0),
    ([1, 2, 3, 4], [4, 3, 2, 1], -1.0),
    # 1 - 6·Σd² / (n(n² - 1)) with d = (0, 1, -1, 0): 1 - 12/60
    ([1, 2, 3, 4], [1, 3, 2, 4], 0.8),
    # a tie among the τ: mean ranks (3.5, 3.5, 2, 1) against (1, 2, 3, 4) give -4.5 / √(4.5 · 5)
    ([0.9, 0.9, 0.8, 0.7], [1, 2, 3, 4], -4.5 / math.sqrt(22.5)),
    # unknown values drop their pair
    ([1, None, 2, 3, 4], [1, 5, 2, math.nan, 3], 1.0),
])
def test_rank_correlation(compare, x, y, expected):
    rho, note = common.rank_correlation(x, y)
    assert rho == pytest.approx(expected) and note == ""


@pytest.mark.parametrize("x,y,needle", [
    ([0.9, 0.9, 0.9], [1, 2, 3], "τ(s) is the same for every assistant"),
    ([1, 2, 3], [0.748, 0.748, 0.748], "the student's score is the same for every assistant"),
    ([1, 2], [1, 2], "2 pairs, need 3"),
    ([1, 2, None], [1, 2, 3], "2 pairs, need 3"),
    ([], [], "0 pairs, need 3"),
])
def test_rank_correlation_is_nan_with_its_reason_never_a_crash(compare, x, y, needle):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # scipy warns on constant input: it must never be reached
        rho, note = common.rank_correlation(x, y, ("τ(s)", "the student's score"))
    assert math.isnan(rho) and note == needle


def test_t_interval_against_hand_computed_values(compare):
    # mean 2, sd 1, t(0.975; 2 df) = 4.302653: 2 ± 4.302653/√3
    d = schedule_report.t_interval([1.0, 2.0, 3.0])
    assert (d["n"], d["mean"]) == (3, 2.0)
    assert d["low"] == pytest.approx(2 - 2.484138, abs=1e-6) and d["high"] == pytest.approx(2 + 2.484138, abs=1e-6)
    # mean 0.02, sd √(0.001/4) = 0.0158114, t(0.975; 4 df) = 2.776445: half width 0.0196324
    d = schedule_report.t_interval([0.01, 0.02, 0.00, 0.03, 0.04])
    assert d["low"] == pytest.approx(0.02 - 0.0196324, abs=1e-7) and d["high"] == pytest.approx(0.0396324, abs=1e-7)
    # a 90% interval is narrower: t(0.95; 4 df) = 2.131847
    assert schedule_report.t_interval([0.01, 0.02, 0.00, 0.03, 0.04], 0.90)["high"] == pytest.approx(
        0.02 + 2.131847 * 0.0158114 / math.sqrt(5), abs=1e-7)
    assert schedule_report.t_interval([0.5, 0.5, 0.5]) == {"n": 3, "mean": 0.5, "low": 0.5, "high": 0.5}
    one = schedule_report.t_interval([0.3])
    assert one["mean"] == 0.3 and math.isnan(one["low"]) and math.isnan(one["high"])
    assert math.isnan(schedule_report.t_interval([])["mean"])


def test_paired_differences_pair_by_seed(compare):
    rows = [{"method": "minidisc", "seed": 1, "score": 0.80}, {"method": "direct", "seed": 1, "score": 0.75},
            {"method": "minidisc", "seed": 2, "score": 0.70}, {"method": "direct", "seed": 2, "score": 0.72},
            {"method": "minidisc", "seed": 3, "score": 0.90}]  # seed 3 has no direct run: no pair
    assert schedule_report.paired_differences(rows, "minidisc", "direct") == {1: pytest.approx(0.05), 2: pytest.approx(-0.02)}
    assert schedule_report.paired_differences(rows, "minidisc", "maxidisc") == {}


def test_majority_floor_of_known_label_lists(compare):
    mrpc, sst2 = get_task("mrpc"), get_task("sst2")
    # 68 of 100 paraphrases: always 1 gives acc 0.68 and F1 2·0.68/1.68
    labels = [1] * 68 + [0] * 32
    assert schedule_report.majority_floor(mrpc, labels, "acc_and_f1") == pytest.approx((0.68 + 1.36 / 1.68) / 2)
    assert schedule_report.majority_floor(mrpc, labels, "acc") == pytest.approx(0.68)
    # the majority is 0 here: acc 0.7, and F1 0 (no positive predicted)
    assert schedule_report.majority_floor(mrpc, [0] * 7 + [1] * 3, "acc_and_f1") == pytest.approx(0.35)
    # a tie takes the better constant: always 1 gives (0.5 + 2/3) / 2, always 0 only 0.25
    assert schedule_report.majority_floor(mrpc, [0, 1, 0, 1], "acc_and_f1") == pytest.approx((0.5 + 2 / 3) / 2)
    assert schedule_report.majority_floor(sst2, [0, 1, 1, 0, 1], "acc") == pytest.approx(0.6)
    assert schedule_report.majority_floor(get_task("stsb"), [0.5, 4.0, 2.5], "corr") == 0.0
    with pytest.raises(ValueError, match="no majority-class floor"):
        schedule_report.majority_floor(get_task("conll"), [[0, 1]], "f1")


@requires_shared_data
def test_majority_floor_of_the_real_mrpc_dev_set_is_the_documented_74_80(compare):
    task = get_task("mrpc")
    labels = common.dev_labels(task, str(SHARED_DATA / "glue"), None)
    assert len(labels) == 408
    assert schedule_report.majority_floor(task, labels, "acc_and_f1") == pytest.approx(0.7480, abs=5e-5)
    assert len(common.dev_labels(task, str(SHARED_DATA / "glue"), 100)) == 100


def test_at_floor_is_within_two_points_or_below(compare):
    assert schedule_report.at_floor(0.748, 0.748) and schedule_report.at_floor(0.768, 0.748) and schedule_report.at_floor(0.70, 0.748)
    assert not schedule_report.at_floor(0.7681, 0.748)
    assert schedule_report.floor_mark([0.748, 0.80, 0.76], 0.748) == "⚠ 2/3"
    assert schedule_report.floor_mark([0.80, 0.81], 0.748) == "no"
    assert schedule_report.floor_mark([0.80], None) == "—"


def synthetic_rows() -> list[dict]:
    """Three seeds of direct, MiniDisc and MaxiDisc. τ ranks MaxiDisc's students exactly in seed 1, in reverse
    in seed 2; in seed 3 every student is at the MRPC floor (0.748)."""
    students = {1: {50: 0.76, 70: 0.78, 80: 0.77}, 2: {50: 0.79, 70: 0.75, 80: 0.77}, 3: {50: 0.748, 70: 0.748, 80: 0.748}}
    tau = {50: 0.90, 70: 0.93, 80: 0.92}
    split = {"train": 10.0, "eval": 1.0, "other": 2.0, "stages": {"iter_1": [8.0, 1.0], "iter_2": [2.0, 0.0]}}
    rows = []
    for seed, by_assistant in students.items():
        best = max(by_assistant, key=by_assistant.get)
        rows += [
            {"method": "direct", "seed": seed, "score": 0.748, "assistant": None, "seconds": 10.0, "flops": 1e12,
             "split": {**split, "stages": {".": [10.0, 1.0]}}},
            {"method": "minidisc", "seed": seed, "score": 0.748 + 0.01 * seed, "assistant": 70, "seconds": 30.0,
             "flops": 3e12, "split": split,
             "iteration_1": {"performance": {str(s): t - 0.2 * s / 100 for s, t in tau.items()},
                             "tradeoff": {str(s): t for s, t in tau.items()}, "selected": 70}},
            {"method": "maxidisc", "seed": seed, "score": by_assistant[best], "assistant": best, "seconds": 60.0,
             "flops": 6e12, "split": split,
             "paths": {**{f"{s},90S": v for s, v in by_assistant.items()}, "90S": 0.748}},
        ]
    return rows


def test_analyse_and_report_synthetic_seeds(compare):
    rows = synthetic_rows()
    analysis = schedule_report.analyse(rows, low=50, target=90)
    assert set(analysis["candidates"]) == {1, 2, 3}
    assert [c["assistant"] for c in analysis["candidates"][1]] == [50, 70, 80]
    rho = analysis["correlations"]["minidisc"]
    assert rho[1] == {"rho": pytest.approx(1.0), "note": ""} and rho[2]["rho"] == pytest.approx(-1.0)
    assert math.isnan(rho[3]["rho"]) and "same for every assistant" in rho[3]["note"]
    assert "minidisc_sampled" not in analysis["correlations"]
    direct = analysis["differences"]["minidisc − direct"]
    assert direct["per_seed"] == {1: pytest.approx(0.01), 2: pytest.approx(0.02), 3: pytest.approx(0.03)}
    # mean 0.02, sd 0.01, t(0.975; 2 df) = 4.302653
    assert direct["low"] == pytest.approx(0.02 - 4.302653 * 0.01 / math.sqrt(3), abs=1e-7)
    best = analysis["differences"]["minidisc − MaxiDisc's best"]["per_seed"]
    assert best == {1: pytest.approx(0.758 - 0.78), 2: pytest.approx(0.768 - 0.79), 3: pytest.approx(0.778 - 0.748)}

    args = argparse.Namespace(task_name="mrpc", target_sparsity=90, trunc_sparsity=50, lam=0.2, profile="cpu",
                              seeds=[1, 2, 3], methods=["direct", "minidisc", "minidisc_sampled", "maxidisc"])
    text = schedule_report.report(rows, analysis, args, "acc_and_f1", floor=0.748)
    lines = text.splitlines()
    assert "floor (majority class, or chance) 74.80" in lines[0]
    direct_row = next(line for line in lines if line.startswith("| direct |"))
    assert "74.80 ± 0.00 | ⚠ 3/3 |" in direct_row  # every direct student sits at the floor
    # MiniDisc's students are 1, 2 and 3 points above the floor: the first two are flagged
    assert "| 76.80 ± 1.00 | ⚠ 2/3 |" in next(line for line in lines if line.startswith("| minidisc |"))
    assert not any(line.startswith("| minidisc_sampled |") for line in lines)
    # 70S: students 78, 75 and 74.8, two of them within 2 points of the floor
    assert "| 70S | 0.30 | 79.00 ± 0.00 | 93.00 ± 0.00 | 75.93 ± 1.79 | ⚠ 2/3 |" in lines
    assert any("seed 1 +1.00; seed 2 -1.00; seed 3 nan (the student's score is the same for every assistant); "
               "mean +0.00 over 2 seeds" in line for line in lines)
    assert any(line.startswith("| minidisc − direct | 3 | +2.00 | [-0.48, +4.48] |") for line in lines)
    assert any("fewer than 5 seeds" in line for line in lines)
    assert lines[-1].startswith("- paper (BERT-base") and "direct student 86.70" in lines[-1]
    assert "best through an assistant 87.40 at scale 0.3 (70S)" in lines[-1]
    assert "no paper" not in text and not schedule_report.paper_lines("sst2", "gpu")
    assert "this profile uses the reference's budgets" in schedule_report.paper_lines("mrpc", "gpu")[0]
    # nan has no JSON: compare.json gets null where the report says nan
    assert json.loads(json.dumps(compare.json_ready(analysis), allow_nan=False))["correlations"]["minidisc"]["3"][
        "rho"] is None


def test_paper_figure_is_drawn_from_partial_rows(tmp_path):
    rows = [{"seed": 1, "assistant": 50, "student": 0.76, "tau": 0.90},
            {"seed": 2, "assistant": 50, "student": 0.78, "tau": None},
            {"seed": 1, "assistant": 70, "student": None, "tau": 0.93}]
    path = plot_students_through_assistants(rows, tmp_path / "f.png", "acc", direct=[0.75, 0.74], floor=0.5,
                                            paper={"direct": 0.867, "best": 0.874, "best_scale": 0.3})
    assert path.stat().st_size > 10_000
    assert plot_students_through_assistants([{"seed": 1, "assistant": 50, "student": None, "tau": None}],
                                            tmp_path / "g.png", "acc") is None
    assert not (tmp_path / "g.png").exists()



def test_a_floor_far_below_the_students_is_named_not_drawn():
    plt = pyplot("test")
    rows = [{"seed": 1, "assistant": s, "student": v, "tau": None} for s, v in ((50, 0.79), (70, 0.80))]
    far = draw_students_through_assistants(plt, rows, "acc", direct=[0.785], floor=0.51)
    ax = far.axes[0]
    assert ax.get_ylim()[0] > 0.7  # a point between students stays visible
    assert any("far below the axis" in text.get_text() for text in ax.get_legend().get_texts())
    near = draw_students_through_assistants(plt, rows, "acc", direct=[0.785], floor=0.77)
    assert near.axes[0].get_ylim()[0] < 0.77  # within reach: drawn as a line
    assert not any("far below" in text.get_text() for text in near.axes[0].get_legend().get_texts())
    plt.close("all")


@requires_shared_data
def test_sst2_reads_the_shared_glue_folder(compare):
    args = compare.parse_args(["--model_dir", "m", "--output_dir", "o", "--task_name", "sst2"])
    assert args.data_dir == str(SHARED_DATA / "glue") and args.seeds == [1, 2, 3, 4, 5]


def test_token_tasks_are_refused(compare, capsys):
    with pytest.raises(SystemExit):
        compare.parse_args(["--model_dir", "m", "--output_dir", "o", "--task_name", "conll", "--data_dir", "d"])
    assert "sentence(-pair) tasks" in capsys.readouterr().err


@pytest.mark.slow  # 40-50 s of subprocesses; the analysis it feeds is tested above on synthetic rows
def test_the_benchmark_end_to_end_on_a_tiny_model(compare, plain_teacher, short_sst2_task, tmp_path, capsys):
    # one seed, MiniDisc and MaxiDisc over the assistants 80 and 85S, 2 steps a stage: the wiring, not the numbers
    out = tmp_path / "compare"
    compare.main(["--model_dir", str(plain_teacher), "--data_dir", str(short_sst2_task), "--task_name", "sst2",
                  "--output_dir", str(out), "--seeds", "1", "--methods", "minidisc,maxidisc", "--trunc_sparsity", "80",
                  "--max_length", "16", "--max_eval_samples", "10",
                  "--finetune_extra", "--num_train_epochs 1 --per_device_train_batch_size 8 --log_interval 3",
                  "--extra", "--max_steps 2 --log_interval 1 --per_device_train_batch_size 8"])
    printed = capsys.readouterr().out
    assert "floor (majority class): dev acc 50.00" in printed.splitlines()[0]  # 5 of the first 10 labels are 1
    written = json.loads((out / "compare.json").read_text())
    assert written["floor"] == 0.5
    assert "--max_eval_samples 10" in json.loads((out / "seed1" / "minidisc" / "timing.json").read_text())["command"]
    first = json.loads((out / "seed1" / "minidisc" / "schedule.json").read_text())["iterations"][0]
    paths = {row["chain"]: row["dev"]["acc"]
             for row in json.loads((out / "seed1" / "maxidisc" / "results.json").read_text())["chains_tried"]}
    assert written["analysis"]["candidates"]["1"] == [
        {"assistant": s, "P": first["performance"][str(s)]["score"], "tau": first["tradeoff"][str(s)],
         "student": paths[f"{s},90S"]} for s in (80, 85)]
    assert written["analysis"]["correlations"]["minidisc"]["1"] == {"rho": None, "note": "2 pairs, need 3"}
    assert (out / "seed1" / "minidisc" / "iter_1" / "dev_predictions.jsonl").exists()  # what dev_subset.py reads
    assert written["dev_subset"] == {}  # 10 dev examples: fewer than the smallest subset size, nothing to study
    assert (out / "compare.md").read_text().strip() in printed
    assert (out / "paper_figure.png").stat().st_size > 10_000 and (out / "seed1" / "search.png").exists()


def test_minidisc_alone_differs_from_minidisc_only_in_its_final_iteration(compare):
    args = argparse.Namespace(target_sparsity=90, trunc_sparsity=50, lam=0.2, sandwich_sample=1)
    script, reference = compare.method_flags("minidisc", args)
    assert script == "run_minidisc.py" and "--final_student" not in reference
    assert compare.method_flags("minidisc_alone", args)[1] == reference + ["--final_student", "alone"]
    sampled = compare.method_flags("minidisc_sampled", args)[1]
    assert sampled == reference + ["--sandwich_sample", "1", "--final_student", "alone"]
    # with both variants run, their paired difference is what --final_student decides
    rows = synthetic_rows()
    rows += [{**r, "method": "minidisc_alone", "score": r["score"] + 0.005 * r["seed"]}
             for r in rows if r["method"] == "minidisc"]
    analysis = schedule_report.analyse(rows, low=50, target=90)
    final = analysis["differences"]["minidisc_alone − minidisc"]
    assert final["per_seed"] == {1: pytest.approx(0.005), 2: pytest.approx(0.01), 3: pytest.approx(0.015)}
    assert "minidisc_alone" in analysis["correlations"]


def test_compare_objectives_table_pairs_seeds_and_flags_the_floor():
    objectives = import_benchmark("compare_objectives")
    scores = {"hidden_kd": (50.0, 50.5), "logit_kd": (76.0, 75.5)}
    rows = [{"objective": o, "seed": seed, "score": scores[o][seed - 1], "seconds": 10.0}
            for o in scores for seed in (1, 2)]
    lines = objectives.table(rows, ["hidden_kd", "logit_kd"], floor=50.0).splitlines()
    assert lines[2] == "| hidden_kd | 2 | 50.25 ± 0.35 | +0.00 | 50.00, 50.50 | 10 | **yes** |"
    assert lines[3] == "| logit_kd | 2 | 75.75 ± 0.35 | +25.50 | 76.00, 75.50 | 10 | no |"
