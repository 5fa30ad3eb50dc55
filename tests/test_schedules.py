"""MiniDisc and MaxiDisc end to end on a tiny teacher: iterations, reuse, resume, errors."""

import json
from functools import partial

import pytest
import torch

import run_maxidisc
import run_minidisc
from data.readers import read_examples
from tests.helpers import crashing_epochs, read_jsonl, same_weights, schedule_args
from utils.artifacts.plots import pyplot
from utils.command.cli import cli
from utils.command.results import StageResult, read_stage
from utils.engine.schedule import draw_schedule, fixed_subset, plot_schedule, schedule_panels
from utils.maths.metrics import compute_metrics


@pytest.fixture
def args_for(fine_grid_teacher, short_sst2_task):
    """``args_for(out, *flags)``: a run_minidisc/run_maxidisc command line on the shared fine-grid teacher."""
    return partial(schedule_args, fine_grid_teacher, short_sst2_task)

def test_minidisc_two_iterations(args_for, tmp_path):
    out = tmp_path / "mini"
    results = run_minidisc.main(args_for(out, "--lam", "0.05", "--trunc_sparsity", "50",
                                         "--target_sparsity", "90", "--export_all", "--do_infer"))
    schedule = json.loads((out / "schedule.json").read_text())["iterations"]
    first = schedule[0]
    assert first["candidates"] == [50, 60, 70, 80, 85, 90, 95]
    # the choice is the λ-tradeoff's argmax over 0 ≤ s ≤ 90 of the stored P(s)
    tau = {int(s): v for s, v in first["tradeoff"].items()}
    assert set(tau) == {50, 60, 70, 80, 85, 90}
    assert first["selected"] == max(sorted(tau), key=lambda s: round(tau[s], 9))
    lines = read_jsonl(out / "iter_1" / "metrics.jsonl")
    assert [line["step"] for line in lines] == [3, 6] and set(lines[0]["sparsities"]) == {str(s) for s in first["candidates"]}
    best_p = {s: max(line["sparsities"][str(s)]["acc"] for line in lines) for s in first["candidates"]}
    assert {int(s): v["score"] for s, v in first["performance"].items()} == best_p
    assert len(first["lambda_sweep"]) > 3
    assert (out / "schedule.png").stat().st_size > 1000
    # in memory a stage is typed (sparsities are ints), and it is written back exactly as it was read
    stage = read_stage(out / "iter_1")
    assert stage.schedule.role == "assistant" and set(stage.schedule.performance) == set(first["candidates"])
    assert stage.to_json() == json.loads((out / "iter_1" / "results.json").read_text())
    assert StageResult.from_json(stage.to_json()) == stage
    assert sorted(p.name for p in (out / "iter_1" / "export").iterdir()) == [f"{s}S" for s in (50, 60, 70, 80, 85, 90, 95)]
    # the saved assistant is physically pruned to the chosen width
    assistant = json.loads((out / "iter_1" / "best" / "config.json").read_text())
    assert assistant["sparsity"] == first["selected"]
    if first["selected"] != 90:
        second = schedule[1]
        assert second["teacher_sparsity"] == first["selected"]
        assert second["candidates"][0] == max(50, first["selected"]) and second["selected"] == 90
        assert results["assistants"] == [first["selected"]]
    assert results["model"]["sparsity"] == 90
    assert results["model"]["heads_kept"] == 16 - round(0.9 * 16)
    assert (out / "SST-2.tsv").exists() and not (out / "iter_1" / "checkpoint").exists()


def test_minidisc_large_lambda_picks_the_target_and_stops(args_for, tmp_path):
    out = tmp_path / "big_lam"
    results = run_minidisc.main(args_for(out, "--lam", "100", "--max_steps", "3"))
    assert results["assistants"] == [] and len(results["schedule"]) == 1
    assert not (out / "iter_2").exists()
    assert json.loads((out / "iter_1" / "best" / "config.json").read_text())["sparsity"] == 90


def test_minidisc_final_student_alone(args_for, tmp_path, monkeypatch):
    drawn = []

    def record(*args, **kwargs):
        drawn.append(kwargs)
        return plot_schedule(*args, **kwargs)

    monkeypatch.setattr(run_minidisc, "plot_schedule", record)
    out = tmp_path / "alone"
    results = run_minidisc.main(args_for(out, "--lam", "0", "--final_student", "alone", "--max_steps", "3"))
    assert results["schedule"][0]["role"] == "assistant"
    assert results["schedule"][-1]["mode"] == "alone"
    assert "sparsities" not in read_jsonl(out / "iter_2" / "metrics.jsonl")[0]
    assert results["model"]["sparsity"] == 90
    # a student trained alone has no P(target) in the schedule: the picture gets its dev score, and the
    # teacher's, from the run
    assert drawn == [{"student_score": results["best_dev"]["acc"], "teacher_score": results["teacher_dev"]["acc"]}]
    assert (out / "schedule.png").stat().st_size > 1000


@pytest.mark.parametrize("sample", [[], ["--sandwich_sample", "2"]], ids=["all-widths", "sampled"])
def test_minidisc_resumes_within_and_between_iterations(args_for, tmp_path, sample):
    args = ["--lam", "0", "--max_steps", "6", "--save_steps", "2", *sample]
    run_minidisc.main(args_for(tmp_path / "full", *args))

    # iteration 1 runs epochs 0-1 (3 batches each); die in iteration 2's second epoch
    with crashing_epochs(keep=1, when=lambda epoch, call: call == 4), pytest.raises(TypeError):
        run_minidisc.main(args_for(tmp_path / "cut", *args))
    assert (tmp_path / "cut" / "iter_1" / "results.json").exists()
    assert (tmp_path / "cut" / "iter_2" / "checkpoint").exists()
    run_minidisc.main(args_for(tmp_path / "cut", *args))
    for it in ("iter_1", "iter_2"):
        full = read_jsonl(tmp_path / "full" / it / "metrics.jsonl")
        cut = read_jsonl(tmp_path / "cut" / it / "metrics.jsonl")
        assert [(r["step"], r["sparsities"]) for r in full] == [(r["step"], r["sparsities"]) for r in cut]
    assert same_weights(tmp_path / "full" / "iter_2" / "best", tmp_path / "cut" / "iter_2" / "best",
                        atol=1e-6)


def test_sandwich_step_is_one_optimizer_step_over_every_width(args_for, tmp_path, monkeypatch):
    calls = {"widths": [], "steps": 0}
    from models import SparseBertCls

    original_scope = SparseBertCls.at_sparsity
    original_step = torch.optim.AdamW.step

    def record(self, s):
        calls["widths"].append((s, self.current_sparsity))  # the width entered, and the one it was entered from
        return original_scope(self, s)

    def count(self, *a, **k):
        calls["steps"] += 1
        return original_step(self, *a, **k)

    monkeypatch.setattr(SparseBertCls, "at_sparsity", record)
    monkeypatch.setattr(torch.optim.AdamW, "step", count)
    run_minidisc.main(args_for(tmp_path / "count", "--lam", "100", "--max_steps", "1",
                               "--log_interval", "100"))
    assert calls["steps"] == 1
    # one training step: each of the 7 sparsities once (sparsest first), each from full width (every pass puts
    # the width back); then the evaluation
    assert calls["widths"][:7] == [(s, 0) for s in (95, 90, 85, 80, 70, 60, 50)]


def test_sampled_sandwich_trains_both_ends_and_k_others(args_for, tmp_path, monkeypatch):
    from models import SparseBertCls

    passes, original_scope = [], SparseBertCls.at_sparsity

    def record(self, s):
        passes.append(s)
        return original_scope(self, s)

    monkeypatch.setattr(SparseBertCls, "at_sparsity", record)
    flags = ("--lam", "100", "--max_steps", "6", "--log_interval", "100", "--sandwich_sample", "2")
    run_minidisc.main(args_for(tmp_path / "sampled", *flags))
    steps = [passes[i:i + 4] for i in range(0, 24, 4)]
    middles = [95, 90, 85, 80, 70, 60, 50][1:-1]
    for step in steps:  # sparsest first, 2 distinct middle widths in order, least sparse last
        assert step[0] == 95 and step[3] == 50
        assert step[1] > step[2] and {step[1], step[2]} <= set(middles)
    assert len({tuple(step) for step in steps}) > 1  # drawn anew each step
    first = list(passes)
    passes.clear()
    run_minidisc.main(args_for(tmp_path / "again", *flags))
    assert passes[:24] == first[:24]  # the same seed draws the same widths


def test_only_the_widths_a_choice_reads_are_evaluated(args_for, tmp_path):
    out = tmp_path / "mini"
    run_minidisc.main(args_for(out, "--lam", "0", "--max_steps", "3", "--target_sparsity", "85"))
    first = read_jsonl(out / "iter_1" / "metrics.jsonl")[0]["sparsities"]
    assert set(first) == {"50", "60", "70", "80", "85"}  # 90 and 95 are trained, never chosen
    schedule = json.loads((out / "schedule.json").read_text())["iterations"]
    assert schedule[0]["candidates"] == [50, 60, 70, 80, 85, 90, 95]
    assert schedule[1]["evaluated"] == [85]
    assert set(read_jsonl(out / "iter_2" / "metrics.jsonl")[0]["sparsities"]) == {"85"}


def test_candidates_scored_on_a_fixed_dev_subset_and_the_student_on_all(args_for, short_sst2_task, tmp_path):
    out = tmp_path / "mini"
    run_minidisc.main(args_for(out, "--lam", "0.05", "--target_sparsity", "90", "--search_eval_samples", "5",
                               "--record_predictions"))
    dev = read_examples("sst2", short_sst2_task, "dev")
    subset = fixed_subset(len(dev), 5)
    assert len(subset) == 5 and subset == sorted(subset) and subset != list(range(5))
    first = json.loads((out / "schedule.json").read_text())["iterations"][0]
    recorded = read_jsonl(out / "iter_1" / "dev_predictions.jsonl")
    assert {line["sparsity"] for line in recorded} == set(first["evaluated"])
    assert all(len(line["predictions"]) == 5 for line in recorded)
    # P(s) is the best accuracy of the recorded predictions against the subset's labels
    labels = [dev[i].label for i in subset]
    for s in first["evaluated"]:
        accuracies = [compute_metrics("sst2", line["predictions"], labels)["acc"] for line in recorded
                      if line["sparsity"] == s]
        assert first["performance"][str(s)]["score"] == max(accuracies)
    if first["selected"] != 90:  # the student is scored on every dev example
        assert {len(line["predictions"]) for line in read_jsonl(out / "iter_2" / "dev_predictions.jsonl")} == {len(dev)}


def test_the_search_has_its_own_step_budget(args_for, tmp_path):
    out = tmp_path / "mini"
    run_minidisc.main(args_for(out, "--lam", "0", "--target_sparsity", "90", "--search_max_steps", "3",
                               "--final_student", "alone"))
    steps = [json.loads((out / f"iter_{k}" / "results.json").read_text())["train"]["steps"] for k in (1, 2)]
    assert steps == [3, 6]  # the search stops at 3, the student keeps --max_steps 6


def test_maxidisc_path_and_stage_reuse(args_for, tmp_path):
    root = tmp_path / "runs"
    first = run_maxidisc.main(args_for(root / "a", "--layer_or_sparsity_path", "80,90S"))
    assert first["student"] == "90S" and first["cost"]["stages_trained"] == 2
    assert json.loads((root / "a" / "iter_1" / "best" / "config.json").read_text())["sparsity"] == 80
    assert len(read_jsonl(root / "a" / "iter_2" / "metrics.jsonl")) == 2
    # another run reuses a stage only from the folder it is pointed to
    alone = run_maxidisc.main(args_for(root / "alone", "--layer_or_sparsity_path", "80,95S"))
    assert alone["cost"]["stages_reused"] == 0
    second = run_maxidisc.main(args_for(root / "b", "--layer_or_sparsity_path", "80,95S", "--reuse_dir", str(root / "a")))
    assert second["cost"]["stages_reused"] == 1 and second["cost"]["stages_trained"] == 1
    assert json.loads((root / "b" / "iter_1" / "results.json").read_text())["reused_from"] == str(root / "a" / "iter_1")
    # a different learning rate is a different stage: nothing reused
    third = run_maxidisc.main(args_for(root / "c", "--layer_or_sparsity_path", "80,95S",
                                       "--learning_rate", "2e-3", "--reuse_dir", str(root)))
    assert third["cost"]["stages_reused"] == 0
    # within one run, chains that share a first stage train it once
    shared = run_maxidisc.main(args_for(root / "d", "--layer_or_sparsity_path", "60,90S;60,95S", "--max_steps", "3"))
    assert [row["reused_from"] for row in shared["chains_tried"]] == [[], [str(root / "d" / "60,90S" / "iter_1")]]


def test_maxidisc_search_over_assistants(args_for, tmp_path):
    out = tmp_path / "search" / "run"
    results = run_maxidisc.main(args_for(out, "--layer_or_sparsity_path", "90S", "--search_assistants",
                                         "--trunc_sparsity", "70", "--max_steps", "3"))
    assert [row["chain"] for row in results["chains_tried"]] == ["70,90S", "80,90S", "85,90S", "90S"]
    assert results["best_score"] == max(row["score"] for row in results["chains_tried"])
    assert all(row["steps"] == (3 if row["chain"] == "90S" else 6) for row in results["chains_tried"])
    assert results["paths"]["search_picture"] == str(out / "search.png")
    assert (out / "search.png").stat().st_size > 10_000


def test_layer_path_with_small_students(args_for, tmp_path):
    results = run_maxidisc.main(args_for(tmp_path / "layers", "--layer_or_sparsity_path", "3,2L",
                                         "--max_steps", "2"))
    assert results["model"]["num_layers"] == 2


@pytest.mark.parametrize("script,flags,needle", [
    (run_minidisc, ["--target_sparsity", "75"], "no map entry for 75"),
    (run_minidisc, ["--trunc_sparsity", "95", "--target_sparsity", "90"], "is above --target_sparsity"),
    (run_minidisc, ["--lam", "-1"], "expected λ ≥ 0"),
    (run_minidisc, ["--search_eval_samples", "0"], "expected a number of dev examples, 1 or more"),
    (run_minidisc, ["--search_max_steps", "0"], "expected a positive integer"),
    (run_maxidisc, ["--layer_or_sparsity_path", "90,80S"], "must increase"),
    (run_maxidisc, ["--layer_or_sparsity_path", "2,3L"], "must decrease"),
    (run_maxidisc, ["--layer_or_sparsity_path", "80,90X"], "expected comma-separated"),
    (run_maxidisc, ["--layer_or_sparsity_path", "75,90S"], "no map entry for 75"),
])
def test_schedule_errors_are_one_line(args_for, tmp_path, capsys, script, flags, needle):
    assert cli(script.main, args_for(tmp_path / "err", *flags)) == 2
    assert needle in capsys.readouterr().err.strip().splitlines()[-1]


def test_minidisc_needs_a_sparsified_teacher(plain_teacher, short_sst2_task, tmp_path, capsys):
    assert cli(run_minidisc.main, schedule_args(plain_teacher, short_sst2_task, tmp_path / "x")) == 2
    assert "run_sparsification.py" in capsys.readouterr().err


def scripted_sparsities(monkeypatch, scores_by_eval):
    """Make every sandwich evaluation return ``scores_by_eval[i][sparsity]`` as the acc at that sparsity."""
    import utils.engine.evaluation
    import utils.engine.schedule

    calls = {"n": 0, "last": None}

    def evaluate(model, dataset, batch_size, run, desc=""):
        s = utils.engine.evaluation.unwrap(model).current_sparsity
        if calls["last"] is None or s <= calls["last"]:  # sparsities are evaluated in ascending order
            calls["n"] += 1
        calls["last"] = s
        return {"acc": scores_by_eval[min(calls["n"], len(scores_by_eval)) - 1][s]}, []

    monkeypatch.setattr(utils.engine.schedule, "evaluate_predictions", evaluate)


def test_a_later_tie_keeps_the_saved_assistant(args_for, tmp_path, monkeypatch):
    # λ = 0.2. Evaluation 1: τ(90) = 0.5 + 0.18 = 0.68 is the best → the target, saved as best/.
    # Evaluation 2: τ(85) = 0.51 + 0.17 = 0.68 ties it, and a tie goes to the smaller sparsity; but τ did
    # not rise, so nothing is saved, and the schedule must go on describing the saved 90S model.
    base = {50: 0.3, 60: 0.3, 70: 0.3, 80: 0.3, 85: 0.3, 90: 0.5, 95: 0.3}
    scripted_sparsities(monkeypatch, [base, {**base, 85: 0.51}])
    out = tmp_path / "tie"
    results = run_minidisc.main(args_for(out, "--lam", "0.2"))
    lines = read_jsonl(out / "iter_1" / "metrics.jsonl")
    assert [line["choice"] for line in lines] == [90, 85]
    assert lines[0]["score"] == pytest.approx(lines[1]["score"])
    first = json.loads((out / "schedule.json").read_text())["iterations"][0]
    saved = json.loads((out / "iter_1" / "best" / "config.json").read_text())["sparsity"]
    assert first["selected"] == saved == 90
    assert (first["selected_step"], first["selected_score"]) == (3, pytest.approx(0.68))
    assert first["role"] == "student" and results["assistants"] == [] and not (out / "iter_2").exists()


def test_an_assistant_is_saved_and_reported_at_its_step(args_for, tmp_path, monkeypatch):
    base = {50: 0.3, 60: 0.3, 70: 0.3, 80: 0.3, 85: 0.3, 90: 0.3, 95: 0.3}
    scripted_sparsities(monkeypatch, [base, {**base, 70: 0.9}])
    out = tmp_path / "assistant"
    run_minidisc.main(args_for(out, "--lam", "0.2"))
    first = json.loads((out / "schedule.json").read_text())["iterations"][0]
    assert (first["selected"], first["selected_step"]) == (70, 6) and first["role"] == "assistant"
    assert first["performance"]["70"] == {"score": 0.9, "step": 6}
    assert json.loads((out / "iter_1" / "best" / "config.json").read_text())["sparsity"] == 70
    assert json.loads((out / "iter_1" / "best" / "selection.json").read_text())["step"] == 6


def test_tensorboard_scalars_per_width(args_for, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "tb"
    run_minidisc.main(args_for(out, "--lam", "100", "--report_to", "tensorboard"))
    events = EventAccumulator(str(out / "iter_1" / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/learning_rate", "eval/score", "eval/train_loss"} <= tags
    lines = read_jsonl(out / "iter_1" / "metrics.jsonl")
    for s in (50, 90):
        logged = [(e.step, e.value) for e in events.Scalars(f"eval/sparsities/{s}/acc")]
        assert logged == [(line["step"], pytest.approx(line["sparsities"][str(s)]["acc"])) for line in lines]
    assert [e.step for e in events.Scalars("train/loss")] == list(range(1, 7))


def test_tensorboard_without_the_package_is_a_one_line_error(args_for, tmp_path, monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    assert cli(run_minidisc.main, args_for(tmp_path / "no_tb", "--report_to", "tensorboard")) == 2
    assert "--report_to tensorboard needs the tensorboard package" in capsys.readouterr().err


# A two-iteration schedule as run_minidisc writes it: iteration 1 chose 70S among 50-90S, iteration 2
# evaluated the 90S student alone.
FIRST = {"iteration": 1, "role": "assistant", "selected": 70, "lam": 0.2, "teacher_sparsity": 0,
         "performance": {"50": {"score": 0.80, "step": 3}, "70": {"score": 0.78, "step": 3},
                         "90": {"score": 0.70, "step": 6}},
         "tradeoff": {"50": 0.90, "70": 0.92, "90": 0.88}}
SECOND = {"iteration": 2, "role": "student", "selected": 90, "lam": 0.2, "teacher_sparsity": 70,
          "performance": {"90": {"score": 0.73, "step": 6}}, "tradeoff": {}}


def test_the_final_iteration_is_the_student_beside_the_first_curve():
    panels, student = schedule_panels([FIRST, SECOND])
    assert [it["iteration"] for it in panels] == [1]  # the one-point last iteration is no panel
    assert student == (90, 0.73)  # its P(target) when no score is passed
    assert schedule_panels([FIRST, SECOND], student_score=0.74)[1] == (90, 0.74)
    alone = {"iteration": 2, "role": "student", "selected": 90, "mode": "alone"}
    assert schedule_panels([FIRST, alone]) == ([FIRST], None)
    assert schedule_panels([FIRST, alone], student_score=0.7)[1] == (90, 0.7)
    chose_the_target = {**FIRST, "role": "student", "selected": 90}
    assert schedule_panels([chose_the_target]) == ([chose_the_target], (90, 0.70))
    # with --export_all the last iteration scores every width: a curve, so a panel of its own
    exported = {**SECOND, "performance": {**FIRST["performance"], "90": {"score": 0.73, "step": 6}}}
    assert [it["iteration"] for it in schedule_panels([FIRST, exported])[0]] == [1, 2]
    assert schedule_panels([]) == ([], None)


def test_the_schedule_figure_draws_student_teacher_and_direct_where_p_is_read(tmp_path):
    plt = pyplot("test")
    fig = draw_schedule(plt, [FIRST, SECOND], "acc", student_score=0.74, teacher_score=0.85, direct_score=0.72)
    score_axis, tau_axis = fig.axes  # one panel, τ on a twin axis
    lines = {line.get_label(): line for line in score_axis.get_lines()}
    assert list(lines["student 90S: 0.7400"].get_xdata()) == [pytest.approx(0.1)]
    assert list(lines["student 90S: 0.7400"].get_ydata()) == [0.74]
    assert set(lines["teacher: 0.8500"].get_ydata()) == {0.85}
    assert set(lines["direct student: 0.7200"].get_ydata()) == {0.72}
    low, high = score_axis.get_ylim()
    assert low <= 0.70 and high >= 0.85  # P, the student and the teacher share one readable axis
    assert [t.get_text() for t in score_axis.get_legend().get_texts()][-1].startswith("τ(s)")
    assert list(tau_axis.get_lines()[0].get_ydata()) == [0.90, 0.92, 0.88]
    plt.close(fig)
    # nothing known beyond the schedule: no lines, and the picture is still written
    fig = draw_schedule(plt, [FIRST, {**SECOND, "performance": {}}], "acc")
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    assert [label for label in labels if not label.startswith("_")] == ["P(s): dev acc of each width"]
    plt.close(fig)
    assert plot_schedule([FIRST, SECOND], tmp_path / "s.png", "acc", teacher_score=0.85).stat().st_size > 1000
    assert plot_schedule([{"iteration": 1, "role": "student", "selected": 90}], tmp_path / "n.png", "acc") is None
