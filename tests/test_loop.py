"""The shared loop through run_finetuning/run_distillation: learning, determinism, resume, run files."""

import json

import pytest
import torch
from safetensors.torch import load_file

import run_distillation
import run_finetuning
from tests.helpers import save_tiny_teacher, write_sst2_task
from utils.loop import EpochBatches
from utils.stage import cli


@pytest.fixture
def task_dir(tmp_path):
    return write_sst2_task(tmp_path / "data")


@pytest.fixture
def teacher_dir(tmp_path):
    return save_tiny_teacher(tmp_path / "teacher", levels=(0, 50, 90))


def finetune_args(teacher_dir, task_dir, out, *extra):
    return ["--model_name_or_path", str(teacher_dir), "--task_name", "sst2", "--data_dir", str(task_dir),
            "--output_dir", str(out), "--max_length", "16", "--per_device_train_batch_size", "4",
            "--per_device_eval_batch_size", "8", "--learning_rate", "1e-3", "--log_interval", "5",
            "--num_train_epochs", "2", "--num_patience_epochs", "5", "--seed", "3", "--do_train", *extra]


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


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


def test_finetuning_writes_the_run_files(teacher_dir, task_dir, tmp_path):
    out = tmp_path / "ft"
    results = run_finetuning.main(finetune_args(teacher_dir, task_dir, out, "--do_infer"))
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


def test_overfits_eight_examples(teacher_dir, tmp_path):
    data = write_sst2_task(tmp_path / "small", n_train=8, dev_is_train=True)
    out = tmp_path / "overfit"
    run_finetuning.main(finetune_args(teacher_dir, data, out, "--num_train_epochs", "60", "--log_interval", "20",
                                      "--per_device_train_batch_size", "8", "--warmup_proportion", "0",
                                      "--max_grad_norm", "0", "--num_patience_epochs", "60", "--learning_rate", "3e-3"))
    lines = read_jsonl(out / "metrics.jsonl")
    assert lines[-1]["train_loss"] < 0.2 * lines[0]["train_loss"]
    # train == dev here, so dev accuracy measures memorisation
    assert lines[-1]["metrics"]["acc"] == 1.0


def test_same_seed_same_metrics(teacher_dir, task_dir, tmp_path):
    first = run_finetuning.main(finetune_args(teacher_dir, task_dir, tmp_path / "a", "--max_steps", "8"))
    second = run_finetuning.main(finetune_args(teacher_dir, task_dir, tmp_path / "b", "--max_steps", "8"))
    assert read_jsonl(tmp_path / "a" / "metrics.jsonl")[-1]["metrics"] == read_jsonl(tmp_path / "b" / "metrics.jsonl")[-1]["metrics"]
    assert first["best_score"] == second["best_score"]
    a = load_file(tmp_path / "a" / "best" / "model.safetensors")
    b = load_file(tmp_path / "b" / "best" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("accum", ["1", "2"])
def test_interrupted_and_resumed_equals_uninterrupted(teacher_dir, task_dir, tmp_path, monkeypatch, accum):
    extra = ["--save_steps", "3", "--num_grad_accum_steps", accum, "--num_train_epochs", "3"]
    run_finetuning.main(finetune_args(teacher_dir, task_dir, tmp_path / "full", *extra))

    import utils.loop

    original = utils.loop.EpochBatches.epoch
    calls = {"n": 0}

    def crash_in_second_epoch(self, epoch):
        calls["n"] += 1
        if epoch == 1:
            batches = original(self, epoch)
            return batches[:5] + [None]  # a crash part-way through epoch 1, after a mid-epoch save
        return original(self, epoch)

    monkeypatch.setattr(utils.loop.EpochBatches, "epoch", crash_in_second_epoch)
    with pytest.raises(TypeError):
        run_finetuning.main(finetune_args(teacher_dir, task_dir, tmp_path / "cut", *extra))
    assert (tmp_path / "cut" / "checkpoint").exists() and not (tmp_path / "cut" / "results.json").exists()
    monkeypatch.setattr(utils.loop.EpochBatches, "epoch", original)
    resumed = run_finetuning.main(finetune_args(teacher_dir, task_dir, tmp_path / "cut", *extra))

    full = read_jsonl(tmp_path / "full" / "metrics.jsonl")
    cut = read_jsonl(tmp_path / "cut" / "metrics.jsonl")
    assert [(r["step"], r["metrics"]) for r in full] == [(r["step"], r["metrics"]) for r in cut]
    a = load_file(tmp_path / "full" / "best" / "model.safetensors")
    b = load_file(tmp_path / "cut" / "best" / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert resumed["best_step"] == json.loads((tmp_path / "full" / "results.json").read_text())["best_step"]


def test_finished_run_is_not_overwritten(teacher_dir, task_dir, tmp_path, capsys):
    args = finetune_args(teacher_dir, task_dir, tmp_path / "ft", "--max_steps", "2")
    run_finetuning.main(args)
    assert cli(run_finetuning.main, args) == 2
    assert "--overwrite_output_dir" in capsys.readouterr().err
    assert run_finetuning.main(args + ["--overwrite_output_dir"])["train"]["steps"] == 2


def distill_args(teacher_dir, task_dir, out, student, *extra):
    return ["--teacher_model_path", str(teacher_dir), "--task_name", "sst2", "--data_dir", str(task_dir),
            "--output_dir", str(out), "--layer_or_sparsity", student, "--max_length", "16",
            "--per_device_train_batch_size", "4", "--learning_rate", "1e-3", "--log_interval", "4",
            "--max_steps", "8", "--do_train", *extra]


@pytest.mark.parametrize("student,objective", [("2L", "hidden_kd"), ("90S", "hidden_kd"), ("50S", "kd")])
def test_distillation_students(teacher_dir, task_dir, tmp_path, student, objective):
    out = tmp_path / f"distil_{student}"
    results = run_distillation.main(distill_args(teacher_dir, task_dir, out, student, "--objective", objective))
    if student.endswith("L"):
        assert results["model"]["num_layers"] == 2
    else:
        assert results["model"]["sparsity"] == int(student[:-1])
        # 90% of the 16 heads and 148 neurons are removed
        if student == "90S":
            assert results["model"]["heads_kept"] == 16 - round(0.9 * 16)
            assert results["model"]["neurons_kept"] == 148 - round(0.9 * 148)
    assert len(read_jsonl(out / "metrics.jsonl")) == 2


@pytest.mark.parametrize("flags,needle", [
    (["--selection_metric", "f1"], "selection metric 'f1'"),
    (["--layer_or_sparsity", "5L"], "has only 4 layers"),
    (["--layer_or_sparsity=-10S"], "between 0 and 99"),
    (["--layer_or_sparsity", "120S"], "between 0 and 99"),
    (["--layer_or_sparsity", "80S"], "no map entry for 80"),
    (["--layer_or_sparsity", "banana"], "expected kL"),
    (["--task_name", "mrpcc"], "unknown task"),
    (["--data_type", "bert_ner"], "does not fit task sst2"),
])
def test_bad_arguments_get_one_clear_line(teacher_dir, task_dir, tmp_path, capsys, flags, needle):
    args = distill_args(teacher_dir, task_dir, tmp_path / "bad", "90S")
    assert cli(run_distillation.main, args + flags) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert needle in err[-1], err


def test_missing_map_names_the_sparsification_script(task_dir, tmp_path, capsys):
    plain = save_tiny_teacher(tmp_path / "plain")
    assert cli(run_distillation.main, distill_args(plain, task_dir, tmp_path / "x", "90S")) == 2
    assert "run_sparsification.py" in capsys.readouterr().err


def test_infer_without_a_trained_model_is_an_error(teacher_dir, task_dir, tmp_path, capsys):
    args = distill_args(teacher_dir, task_dir, tmp_path / "none", "90S")
    args.remove("--do_train")
    assert cli(run_distillation.main, args + ["--do_infer"]) == 2
    assert "no model to test" in capsys.readouterr().err


def test_training_does_not_depend_on_random_numbers_drawn_before_it(teacher_dir, task_dir, tmp_path, monkeypatch):
    # MaxiDisc reuses a finished stage for an equal key: that is only sound if a stage's training
    # is independent of what the process did before it (models built, earlier stages).
    args = ["--max_steps", "6", "--log_interval", "3"]
    run_distillation.main(distill_args(teacher_dir, task_dir, tmp_path / "plain", "90S", *args))
    original = run_distillation.train

    def after_other_work(*a, **k):
        torch.rand(1000)
        return original(*a, **k)

    monkeypatch.setattr(run_distillation, "train", after_other_work)
    run_distillation.main(distill_args(teacher_dir, task_dir, tmp_path / "busy", "90S", *args))
    plain = read_jsonl(tmp_path / "plain" / "metrics.jsonl")
    busy = read_jsonl(tmp_path / "busy" / "metrics.jsonl")
    assert [(r["metrics"], r["train_loss"]) for r in plain] == [(r["metrics"], r["train_loss"]) for r in busy]
