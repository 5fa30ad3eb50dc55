"""The shared loop through run_finetuning/run_distillation: learning, determinism, resume, run files."""

import json

import pytest
import torch
from safetensors.torch import load_file

import run_distillation
import run_finetuning
from tests.helpers import save_tiny_teacher, write_sst2_task
from utils.batches import EpochBatches
from utils.checkpoint import load_state
from utils.cli import cli


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
    # the running training loss is part of the state: saved at step 3, logged at step 5
    assert [r["train_loss"] for r in full] == pytest.approx([r["train_loss"] for r in cut], abs=1e-6)
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


def test_last_partial_accumulation_group_is_a_mean_over_its_batches(tmp_path, task_dir):
    # 12 examples / batch 4 = 3 batches per epoch; with accumulation 2 the last group holds one batch.
    # A learning rate of 1e-30 leaves the weights unchanged, so every step's loss can be compared.
    teacher = save_tiny_teacher(tmp_path / "still", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    data = write_sst2_task(tmp_path / "twelve", n_train=12)
    flags = ["--learning_rate", "1e-30", "--log_interval", "1", "--num_train_epochs", "1", "--warmup_proportion", "0"]
    run_finetuning.main(finetune_args(teacher, data, tmp_path / "one", *flags))
    run_finetuning.main(finetune_args(teacher, data, tmp_path / "two", *flags, "--num_grad_accum_steps", "2"))
    single = [r["train_loss"] for r in read_jsonl(tmp_path / "one" / "metrics.jsonl")]
    grouped = [r["train_loss"] for r in read_jsonl(tmp_path / "two" / "metrics.jsonl")]
    assert len(single) == 3 and len(grouped) == 2
    assert grouped == pytest.approx([(single[0] + single[1]) / 2, single[2]], rel=1e-5)


def test_best_saved_after_the_last_checkpoint_is_what_the_results_describe(teacher_dir, task_dir, tmp_path,
                                                                          monkeypatch):
    # Checkpoints only at epoch ends (10 steps); the run dies right after saving best/ at step 14. The
    # resumed run's evaluations come out lower (as a nondeterministic GPU kernel could make them):
    # best/ from step 14 must stay the best, and results.json must say so.
    import utils.evaluation
    import utils.loop

    args = finetune_args(teacher_dir, task_dir, tmp_path / "ft", "--log_interval", "2", "--save_steps", "1000")
    original_save = utils.loop.save_model_atomic

    def scripted(self, model, step):
        return {"metrics": {"acc": step / 100}, "score": step / 100}

    def save_then_die(model, tokenizer, directory, files=None):
        original_save(model, tokenizer, directory, files)
        if files["selection.json"]["step"] == 14:
            raise KeyboardInterrupt

    monkeypatch.setattr(utils.evaluation.MetricSelector, "evaluate", scripted)
    monkeypatch.setattr(utils.loop, "save_model_atomic", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_finetuning.main(args)
    assert load_state(tmp_path / "ft")["loop"]["best_step"] == 10
    monkeypatch.setattr(utils.loop, "save_model_atomic", original_save)
    monkeypatch.setattr(utils.evaluation.MetricSelector, "evaluate",
                        lambda self, model, step: {"metrics": {"acc": 0.0}, "score": 0.0})
    results = run_finetuning.main(args)
    selection = json.loads((tmp_path / "ft" / "best" / "selection.json").read_text())
    assert selection["step"] == 14
    assert (results["best_step"], results["best_score"]) == (14, 0.14)
    assert results["best_dev"] == selection["metrics"]


def test_resuming_with_changed_settings_stops_with_one_line(teacher_dir, task_dir, tmp_path, monkeypatch, capsys):
    import utils.loop

    args = finetune_args(teacher_dir, task_dir, tmp_path / "ft", "--save_steps", "3")
    original = utils.loop.EpochBatches.epoch
    monkeypatch.setattr(utils.loop.EpochBatches, "epoch", lambda self, epoch: original(self, epoch)[:5] + [None])
    with pytest.raises(TypeError):
        run_finetuning.main(args)
    monkeypatch.setattr(utils.loop.EpochBatches, "epoch", original)
    changed = [*args, "--learning_rate", "2e-3", "--per_device_train_batch_size", "2"]
    assert cli(run_finetuning.main, changed) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"error: {tmp_path / 'ft'} holds a run started with other settings")
    assert "learning_rate 0.001 -> 0.002" in err and "per_device_train_batch_size 4 -> 2" in err
    assert "--overwrite_output_dir" in err and "another --output_dir" in err
    # the state was left as it was: the same command resumes it
    assert load_state(tmp_path / "ft")["loop"]["step"] == 3
    assert run_finetuning.main(args)["train"]["steps"] == 20
    assert run_finetuning.main(changed + ["--overwrite_output_dir"])["train"]["steps"] == 40


def test_a_changed_teacher_is_a_changed_setting(task_dir, tmp_path, capsys):
    teacher = save_tiny_teacher(tmp_path / "teacher", levels=(0, 90))
    args = distill_args(teacher, task_dir, tmp_path / "d", "90S", "--save_steps", "2")
    run_distillation.main(args)
    (tmp_path / "d" / "results.json").unlink()  # as if it had died before writing its results
    save_tiny_teacher(teacher, levels=(0, 90), seed=1)  # same files, same sizes, other weights
    assert cli(run_distillation.main, args) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert 'teacher_model_path "sha256:' in err, err


def test_scoring_a_finished_run_keeps_its_model_and_results(teacher_dir, task_dir, tmp_path):
    out = tmp_path / "ft"
    trained = run_finetuning.main(finetune_args(teacher_dir, task_dir, out, "--max_steps", "4"))
    score = [a for a in finetune_args(teacher_dir, task_dir, out) if a != "--do_train"]
    for extra in ([], ["--overwrite_output_dir"]):
        results = run_finetuning.main(score + ["--do_infer", *extra])
        assert (out / "best" / "model.safetensors").exists() and (out / "SST-2.tsv").exists()
        assert results["best_step"] == trained["best_step"] and results["prediction_file"].endswith("SST-2.tsv")
        assert json.loads((out / "results.json").read_text())["best_dev"] == trained["best_dev"]
        assert json.loads((out / "args.json").read_text())["args"]["do_train"] is True


def test_an_output_dir_that_is_a_file_is_one_line(teacher_dir, task_dir, tmp_path, capsys):
    (tmp_path / "taken").write_text("not a folder")
    assert cli(run_finetuning.main, finetune_args(teacher_dir, task_dir, tmp_path / "taken")) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == f"error: --output_dir {tmp_path / 'taken'} is a file, not a directory: choose another --output_dir"


@pytest.mark.parametrize("flag_value,needle", [
    ("outputs/nowhere/best", "--teacher_model_path outputs/nowhere/best: no such directory"),
    ("./nowhere", "--teacher_model_path ./nowhere: no such directory"),
])
def test_a_missing_teacher_directory_is_named(task_dir, tmp_path, capsys, flag_value, needle):
    assert cli(run_distillation.main, distill_args(flag_value, task_dir, tmp_path / "x", "90S")) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(f"error: {needle}")
    assert not (tmp_path / "x").exists()


def test_kd_temperature_is_refused_with_hidden_kd(teacher_dir, task_dir, tmp_path, capsys):
    args = distill_args(teacher_dir, task_dir, tmp_path / "t", "90S", "--kd_temperature", "2")
    assert cli(run_distillation.main, args) == 2
    assert "--kd_temperature 2.0 is not used by --objective hidden_kd" in capsys.readouterr().err
    assert cli(run_distillation.main, args + ["--objective", "kd", "--max_steps", "1"]) == 0


def test_a_bug_keeps_its_traceback(teacher_dir, task_dir, tmp_path, monkeypatch):
    # cli turns input errors into one line, but a ValueError from a bug must not read like user error
    import utils.objectives

    def broken(*args, **kwargs):
        raise ValueError("mat1 and mat2 shapes cannot be multiplied (4x32 and 37x32)")

    monkeypatch.setattr(utils.objectives, "hidden_mse", broken)
    with pytest.raises(ValueError, match="cannot be multiplied"):
        cli(run_distillation.main, distill_args(teacher_dir, task_dir, tmp_path / "bug", "90S"))
