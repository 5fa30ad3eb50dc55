"""The training loop: it learns, is deterministic, accumulates, resumes as if never stopped, keeps the best."""

import json

import pytest
import torch

import run_distillation
import run_finetuning
from tests.helpers import (
    crashing_epochs,
    distill_args,
    finetune_args,
    read_jsonl,
    same_weights,
)
from utils.engine.batches import EpochBatches
from utils.engine.checkpoint import load_state


def test_epoch_batches_cover_every_example_once_per_rank_group():
    lengths = list(range(23))
    single = EpochBatches(lengths, 4, seed=1).epoch(0)
    assert sorted(i for b in single for i in b) == list(range(23))
    ranks = [EpochBatches(lengths, 2, seed=1, rank=r, world_size=2).epoch(0) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == 6
    # global batch j of the 2-process run == batch j of the 1-process run with twice the batch size
    for j in range(5):
        assert ranks[0][j] + ranks[1][j] == single[j]
    grouped = EpochBatches(lengths, 4, seed=1, group_by_length=True).epoch(0)
    assert sorted(i for b in grouped for i in b) == list(range(23))
    assert EpochBatches(lengths, 4, seed=1).epoch(1) != single


def test_finetuning_writes_the_run_files(sparse_teacher, sst2_task, tmp_path):
    out = tmp_path / "ft"
    results = run_finetuning.main(finetune_args(sparse_teacher, sst2_task, out, "--do_infer"))
    args = json.loads((out / "args.json").read_text())
    assert args["args"]["learning_rate"] == 1e-3 and "torch" in args["versions"]
    lines = read_jsonl(out / "metrics.jsonl")
    assert [line["step"] for line in lines] == [5, 10, 15, 20]  # 40 examples / 4 = 10 steps per epoch
    assert all({"acc"} <= set(line["metrics"]) for line in lines)
    assert results["best_score"] == max(line["score"] for line in lines)
    assert results["model"]["total_parameters"] > results["model"]["prunable_parameters"] > 0
    assert results["train"]["examples_per_second"] > 0
    assert (out / "best" / "config.json").exists() and (out / "best" / "selection.json").exists()
    assert not (out / "checkpoint").exists()
    rows = (out / "SST-2.tsv").read_text().splitlines()
    assert rows[0] == "index\tprediction" and len(rows) == 9
    assert json.loads((out / "results.json").read_text())["best_step"] == results["best_step"]
    assert "log.txt" in {p.name for p in out.iterdir()}


def test_overfits_eight_examples(sparse_teacher, make_sst2_task, tmp_path):
    data = make_sst2_task(n_train=8, dev_is_train=True)
    out = tmp_path / "overfit"
    run_finetuning.main(finetune_args(sparse_teacher, data, out, "--num_train_epochs", "60",
                                      "--log_interval", "20", "--per_device_train_batch_size", "8",
                                      "--warmup_proportion", "0", "--max_grad_norm", "0",
                                      "--num_patience_epochs", "60", "--learning_rate", "3e-3"))
    lines = read_jsonl(out / "metrics.jsonl")
    assert lines[-1]["train_loss"] < 0.2 * lines[0]["train_loss"]
    # train == dev here, so dev accuracy measures memorisation
    assert lines[-1]["metrics"]["acc"] == 1.0


def test_same_seed_same_metrics(sparse_teacher, sst2_task, tmp_path):
    first = run_finetuning.main(finetune_args(sparse_teacher, sst2_task, tmp_path / "a", "--max_steps", "8"))
    second = run_finetuning.main(finetune_args(sparse_teacher, sst2_task, tmp_path / "b", "--max_steps", "8"))
    assert read_jsonl(tmp_path / "a" / "metrics.jsonl")[-1]["metrics"] == read_jsonl(tmp_path / "b" / "metrics.jsonl")[-1]["metrics"]
    assert first["best_score"] == second["best_score"]
    assert same_weights(tmp_path / "a" / "best", tmp_path / "b" / "best")


@pytest.mark.parametrize("accum", ["1", "2"])
def test_interrupted_and_resumed_equals_uninterrupted(sparse_teacher, sst2_task, tmp_path, accum):
    extra = ["--save_steps", "3", "--num_grad_accum_steps", accum, "--num_train_epochs", "3"]
    run_finetuning.main(finetune_args(sparse_teacher, sst2_task, tmp_path / "full", *extra))

    # a crash part-way through epoch 1, after a mid-epoch save
    with crashing_epochs(keep=5, when=lambda epoch, call: epoch == 1), pytest.raises(TypeError):
        run_finetuning.main(finetune_args(sparse_teacher, sst2_task, tmp_path / "cut", *extra))
    assert (tmp_path / "cut" / "checkpoint").exists() and not (tmp_path / "cut" / "results.json").exists()
    resumed = run_finetuning.main(finetune_args(sparse_teacher, sst2_task, tmp_path / "cut", *extra))

    full = read_jsonl(tmp_path / "full" / "metrics.jsonl")
    cut = read_jsonl(tmp_path / "cut" / "metrics.jsonl")
    assert [(r["step"], r["metrics"]) for r in full] == [(r["step"], r["metrics"]) for r in cut]
    # the running training loss is part of the state: saved at step 3, logged at step 5
    assert [r["train_loss"] for r in full] == pytest.approx([r["train_loss"] for r in cut], abs=1e-6)
    assert same_weights(tmp_path / "full" / "best", tmp_path / "cut" / "best", atol=1e-6)
    assert resumed["best_step"] == json.loads((tmp_path / "full" / "results.json").read_text())["best_step"]


@pytest.mark.parametrize("student,objective", [("2L", "hidden_kd"), ("90S", "hidden_kd"), ("50S", "kd"),
                                               ("90S", "hidden_cos"), ("2L", "logit_kd")])
def test_distillation_students(sparse_teacher, sst2_task, tmp_path, student, objective):
    out = tmp_path / f"distil_{student}"
    args = distill_args(sparse_teacher, sst2_task, out, student, "--objective", objective)
    results = run_distillation.main(args)
    if student.endswith("L"):
        assert results["model"]["num_layers"] == 2
    else:
        assert results["model"]["sparsity"] == int(student[:-1])
        # 90% of the 16 heads and 148 neurons are removed
        if student == "90S":
            assert results["model"]["heads_kept"] == 16 - round(0.9 * 16)
            assert results["model"]["neurons_kept"] == 148 - round(0.9 * 148)
    assert len(read_jsonl(out / "metrics.jsonl")) == 2


@pytest.mark.parametrize("student,objective", [("90S", "hidden_kd"), ("2L", "hidden_cos"), ("50S", "logit_kd")])
def test_a_cached_teacher_trains_as_a_recomputed_one(sparse_teacher, sst2_task, tmp_path, student, objective):
    """Three epochs: from the second on the teacher cache serves every batch, and the run ends as the one
    that runs the teacher on every batch (within float rounding: an example's teacher outputs come from
    the batch it was first seen in)."""
    runs = {}
    for name, budget in (("cached", "2048"), ("recomputed", "0")):
        runs[name] = run_distillation.main(distill_args(
            sparse_teacher, sst2_task, tmp_path / name, student, "--objective", objective, "--max_steps", "30",
            "--log_interval", "10", "--teacher_cache_mb", budget))
    served = runs["cached"]["train"]["teacher_cache"]
    assert served["batches_computed"] == 10 and served["batches_served"] == 20  # 10 batches an epoch
    assert "teacher_cache" not in runs["recomputed"]["train"]
    cached, recomputed = (read_jsonl(tmp_path / name / "metrics.jsonl") for name in ("cached", "recomputed"))
    assert [r["train_loss"] for r in cached] == pytest.approx([r["train_loss"] for r in recomputed], rel=1e-4)
    assert [r["metrics"] for r in cached] == [r["metrics"] for r in recomputed]
    assert same_weights(tmp_path / "cached" / "best", tmp_path / "recomputed" / "best", atol=1e-4)


def test_training_does_not_depend_on_random_numbers_drawn_before_it(sparse_teacher, sst2_task, tmp_path,
                                                                    monkeypatch):
    # MaxiDisc reuses a finished stage for an equal key: that is only sound if a stage's training
    # is independent of what the process did before it (models built, earlier stages).
    args = ["--max_steps", "6", "--log_interval", "3"]
    run_distillation.main(distill_args(sparse_teacher, sst2_task, tmp_path / "plain", "90S", *args))
    original = run_distillation.train

    def after_other_work(*a, **k):
        torch.rand(1000)
        return original(*a, **k)

    monkeypatch.setattr(run_distillation, "train", after_other_work)
    run_distillation.main(distill_args(sparse_teacher, sst2_task, tmp_path / "busy", "90S", *args))
    plain = read_jsonl(tmp_path / "plain" / "metrics.jsonl")
    busy = read_jsonl(tmp_path / "busy" / "metrics.jsonl")
    assert [(r["metrics"], r["train_loss"]) for r in plain] == [(r["metrics"], r["train_loss"]) for r in busy]


def test_last_partial_accumulation_group_is_a_mean_over_its_batches(make_teacher, make_sst2_task, tmp_path):
    # 12 examples / batch 4 = 3 batches per epoch; with accumulation 2 the last group holds one batch.
    # A learning rate of 1e-30 leaves the weights unchanged, so every step's loss can be compared.
    teacher = make_teacher(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    data = make_sst2_task(n_train=12)
    flags = ["--learning_rate", "1e-30", "--log_interval", "1", "--num_train_epochs", "1", "--warmup_proportion", "0"]
    run_finetuning.main(finetune_args(teacher, data, tmp_path / "one", *flags))
    run_finetuning.main(finetune_args(teacher, data, tmp_path / "two", *flags, "--num_grad_accum_steps", "2"))
    single = [r["train_loss"] for r in read_jsonl(tmp_path / "one" / "metrics.jsonl")]
    grouped = [r["train_loss"] for r in read_jsonl(tmp_path / "two" / "metrics.jsonl")]
    assert len(single) == 3 and len(grouped) == 2
    assert grouped == pytest.approx([(single[0] + single[1]) / 2, single[2]], rel=1e-5)


def test_best_saved_after_the_last_checkpoint_is_what_the_results_describe(sparse_teacher, sst2_task,
                                                                          tmp_path, monkeypatch):
    # Checkpoints only at epoch ends (10 steps); the run dies right after saving best/ at step 14. The
    # resumed run's evaluations come out lower (as a nondeterministic GPU kernel could make them):
    # best/ from step 14 must stay the best, and results.json must say so.
    import utils.engine.evaluation
    import utils.engine.loop

    args = finetune_args(sparse_teacher, sst2_task, tmp_path / "ft", "--log_interval", "2",
                         "--save_steps", "1000")
    original_save = utils.engine.loop.save_model_atomic

    def scripted(self, model, step):
        return {"metrics": {"acc": step / 100}, "score": step / 100}

    def save_then_die(model, tokenizer, directory, files=None, run_dir=None):
        original_save(model, tokenizer, directory, files, run_dir)
        if files["selection.json"]["step"] == 14:
            raise KeyboardInterrupt

    monkeypatch.setattr(utils.engine.evaluation.MetricSelector, "evaluate", scripted)
    monkeypatch.setattr(utils.engine.loop, "save_model_atomic", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_finetuning.main(args)
    assert load_state(tmp_path / "ft")["loop"]["best_step"] == 10
    monkeypatch.setattr(utils.engine.loop, "save_model_atomic", original_save)
    monkeypatch.setattr(utils.engine.evaluation.MetricSelector, "evaluate",
                        lambda self, model, step: {"metrics": {"acc": 0.0}, "score": 0.0})
    results = run_finetuning.main(args)
    selection = json.loads((tmp_path / "ft" / "best" / "selection.json").read_text())
    assert selection["step"] == 14
    assert (results["best_step"], results["best_score"]) == (14, 0.14)
    assert results["best_dev"] == selection["metrics"]


def test_a_sharded_state_is_not_resumed_without_fsdp(sparse_teacher, sst2_task, tmp_path, capsys):
    from utils.command.cli import cli
    from utils.engine.checkpoint import STATE_DIR, STATE_FILE

    extra = ["--save_steps", "3", "--num_train_epochs", "2"]
    with crashing_epochs(keep=5, when=lambda epoch, call: epoch == 1), pytest.raises(TypeError):
        run_finetuning.main(finetune_args(sparse_teacher, sst2_task, tmp_path / "cut", *extra))
    path = tmp_path / "cut" / STATE_DIR / STATE_FILE
    saved = torch.load(path, weights_only=True)
    saved["sharded"] = "sharded-step-10"  # as an --fsdp run writes it
    torch.save(saved, path)
    assert cli(run_finetuning.main, finetune_args(sparse_teacher, sst2_task, tmp_path / "cut", *extra)) == 2
    assert "was saved with --fsdp: resume it the same way" in capsys.readouterr().err
