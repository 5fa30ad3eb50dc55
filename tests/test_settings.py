"""A run records its settings: resuming it or reusing its stages with other settings stops with one line."""

import json
import shutil

import pytest

import run_distillation
import run_finetuning
import run_maxidisc
import run_minidisc
from tests.helpers import (
    crashing_epochs,
    distill_args,
    finetune_args,
    save_tiny_teacher,
    schedule_args,
    write_sst2_task,
)
from utils.artifacts.fingerprint import differences, model_identity, run_settings
from utils.command.cli import cli
from utils.engine.checkpoint import load_state


def test_resuming_with_changed_settings_stops_with_one_line(sparse_teacher, sst2_task, tmp_path, capsys):
    args = finetune_args(sparse_teacher, sst2_task, tmp_path / "ft", "--save_steps", "3")
    with crashing_epochs(keep=5), pytest.raises(TypeError):
        run_finetuning.main(args)
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


def test_a_changed_teacher_is_a_changed_setting(sst2_task, tmp_path, capsys):
    teacher = save_tiny_teacher(tmp_path / "teacher", levels=(0, 90))
    args = distill_args(teacher, sst2_task, tmp_path / "d", "90S", "--save_steps", "2")
    run_distillation.main(args)
    (tmp_path / "d" / "results.json").unlink()  # as if it had died before writing its results
    save_tiny_teacher(teacher, levels=(0, 90), seed=1)  # same files, same sizes, other weights
    assert cli(run_distillation.main, args) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert 'teacher_model_path "sha256:' in err, err


def test_minidisc_with_a_changed_lambda_does_not_reuse_iteration_one(fine_grid_teacher, short_sst2_task,
                                                                      tmp_path, capsys):
    args = schedule_args(fine_grid_teacher, short_sst2_task, tmp_path / "m", "--lam", "0", "--max_steps", "3")
    # die in iteration 2
    with crashing_epochs(keep=1, when=lambda epoch, call: call == 2), pytest.raises(TypeError):
        run_minidisc.main(args)
    assert (tmp_path / "m" / "iter_1" / "results.json").exists()
    assert cli(run_minidisc.main, args + ["--lam", "0.3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "(lam 0.0 -> 0.3)" in err, err
    # a finished iteration checks its own record too (here: as if args.json had been rewritten)
    record = json.loads((tmp_path / "m" / "args.json").read_text())
    (tmp_path / "m" / "args.json").write_text(json.dumps({**record, "settings": None}))
    assert cli(run_minidisc.main, args + ["--lam", "0.3"]) == 2
    assert "iter_1 holds a finished stage started with other settings (run.lam" in capsys.readouterr().err
    assert run_minidisc.main(args)["schedule"][0]["iteration"] == 1


def test_maxidisc_writes_a_stage_key_only_for_a_stage_trained_under_it(fine_grid_teacher, short_sst2_task,
                                                                       tmp_path, capsys):
    root = tmp_path / "runs"
    args = schedule_args(fine_grid_teacher, short_sst2_task, root / "a", "--layer_or_sparsity_path", "80,90S")
    # die in the second epoch of the first stage, after its first checkpoint
    with crashing_epochs(keep=1, when=lambda epoch, call: epoch == 1), pytest.raises(TypeError):
        run_maxidisc.main(args)
    assert (root / "a" / "iter_1" / "checkpoint").is_dir()
    assert not (root / "a" / "iter_1" / "stage.json").exists()
    assert cli(run_maxidisc.main, args + ["--learning_rate", "2e-3"]) == 2
    assert "learning_rate 0.001 -> 0.002" in capsys.readouterr().err.strip().splitlines()[-1]
    assert not (root / "a" / "iter_1" / "stage.json").exists()
    first = run_maxidisc.main(args)
    key = json.loads((root / "a" / "iter_1" / "stage.json").read_text())["key"]
    assert json.loads((root / "a" / "iter_1" / "results.json").read_text())["key"] == key
    # a stage reused from another run is reported as reused, with where it came from
    second = run_maxidisc.main(schedule_args(fine_grid_teacher, short_sst2_task, root / "b",
                                             "--layer_or_sparsity_path", "80,95S", "--reuse_dir", str(root)))
    assert second["chains_tried"][0]["reused_from"] == [str(root / "a" / "iter_1")]
    assert json.loads((root / "b" / "iter_1" / "stage.json").read_text())["reused_from"] == str(root / "a" / "iter_1")
    assert first["chains_tried"][0]["reused_from"] == []


FLAGS = {"learning_rate": 1e-3, "per_device_train_batch_size": 4, "torch_compile": False, "use_cpu": False,
         "fsdp": False, "use_bf16": False, "use_fp16": False}


def _changes(before: dict, after: dict, world_size: int = 2, devices=("cpu", "cpu")) -> list[str]:
    return differences(run_settings({**FLAGS, **before}, world_size, devices[0]),
                       run_settings({**FLAGS, **after}, world_size, devices[1]))


def test_compilation_device_and_sharded_mixed_precision_are_settings():
    # compiled layers and the device type draw dropout from other random streams
    assert _changes({}, {"torch_compile": True}) == ["torch_compile false -> true"]
    assert _changes({}, {}, devices=("cpu", "cuda")) == ['device_type "cpu" -> "cuda"']
    # --use_cpu counts by the device it gives: on a machine without CUDA it changes nothing
    assert _changes({}, {"use_cpu": True}) == []
    # sharding casts norms and heads to bf16 that DDP keeps in fp32; in fp32 N sharded processes train as N DDP ones
    assert _changes({"use_bf16": True}, {"use_bf16": True, "fsdp": True}) == ["sharded_mixed_precision false -> true"]
    assert _changes({}, {"fsdp": True}) == []
    assert _changes({"use_bf16": True}, {"use_bf16": True, "fsdp": True}, world_size=1) == []


def test_data_and_tokenizer_files_count_by_content(tmp_path):
    data = write_sst2_task(tmp_path / "data")
    flags = {**FLAGS, "task_name": "sst2", "data_dir": str(data)}
    settings = run_settings(flags, 1, "cpu")
    assert set(settings["data_dir"]) == {"train", "dev"} and all(settings["data_dir"].values())
    # the same files elsewhere are the same data
    shutil.copytree(data, tmp_path / "moved")
    assert run_settings({**flags, "data_dir": str(tmp_path / "moved")}, 1, "cpu") == settings
    for split in ("train", "dev"):
        path = data / "sst2" / f"{split}.tsv"
        original = path.read_text()
        path.write_text(original.replace("\t0\n", "\t1\n", 1))  # one label flipped: same path, same size
        assert differences(settings, run_settings(flags, 1, "cpu")) == [
            f'data_dir.{split} "{settings["data_dir"][split]}" -> "{run_settings(flags, 1, "cpu")["data_dir"][split]}"']
        path.write_text(original)
    # a model's tokenizer decides its input ids: its files are part of the model's identity
    teacher = save_tiny_teacher(tmp_path / "teacher")
    before = model_identity(teacher)
    vocab = teacher / "vocab.txt"
    vocab.write_text(vocab.read_text().replace("movie", "moviE", 1))
    assert model_identity(teacher) != before


def test_resuming_on_changed_data_files_stops_with_one_line(sparse_teacher, tmp_path, capsys):
    data = write_sst2_task(tmp_path / "data")
    args = finetune_args(sparse_teacher, data, tmp_path / "ft", "--save_steps", "3")
    with crashing_epochs(keep=5), pytest.raises(TypeError):
        run_finetuning.main(args)
    assert json.loads((tmp_path / "ft" / "args.json").read_text())["settings"]["device_type"] == "cpu"
    train = data / "sst2" / "train.tsv"
    train.write_text(train.read_text().replace("\t1\n", "\t0\n", 1))
    assert cli(run_finetuning.main, args) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "holds a run started with other settings (data_dir.train " in err, err


def test_the_recorded_git_revision_is_read_at_the_repository_root():
    from utils.command.run import REPO_ROOT

    assert (REPO_ROOT / "run_minidisc.py").is_file() and (REPO_ROOT / "models" / "configs").is_dir()
