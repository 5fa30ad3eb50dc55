"""Input errors of the scripts end in one line that names the fix; a bug keeps its traceback."""

import pytest

import run_distillation
import run_finetuning
from tests.helpers import distill_args, finetune_args, save_tiny_teacher
from utils.command.cli import cli


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
def test_bad_arguments_get_one_clear_line(sparse_teacher, sst2_task, tmp_path, capsys, flags, needle):
    args = distill_args(sparse_teacher, sst2_task, tmp_path / "bad", "90S")
    assert cli(run_distillation.main, args + flags) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert needle in err[-1], err


def test_missing_map_names_the_sparsification_script(plain_teacher, sst2_task, tmp_path, capsys):
    assert cli(run_distillation.main, distill_args(plain_teacher, sst2_task, tmp_path / "x", "90S")) == 2
    assert "run_sparsification.py" in capsys.readouterr().err


def test_an_output_dir_that_is_a_file_is_one_line(sparse_teacher, sst2_task, tmp_path, capsys):
    (tmp_path / "taken").write_text("not a folder")
    assert cli(run_finetuning.main, finetune_args(sparse_teacher, sst2_task, tmp_path / "taken")) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == f"error: --output_dir {tmp_path / 'taken'} is a file, not a directory: choose another --output_dir"


@pytest.mark.parametrize("flag_value,needle", [
    ("outputs/nowhere/best", "--teacher_model_path outputs/nowhere/best: no such directory"),
    ("./nowhere", "--teacher_model_path ./nowhere: no such directory"),
])
def test_a_missing_teacher_directory_is_named(sst2_task, tmp_path, capsys, flag_value, needle):
    assert cli(run_distillation.main, distill_args(flag_value, sst2_task, tmp_path / "x", "90S")) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(f"error: {needle}")
    assert not (tmp_path / "x").exists()


def test_kd_temperature_is_refused_with_hidden_kd(sparse_teacher, sst2_task, tmp_path, capsys):
    args = distill_args(sparse_teacher, sst2_task, tmp_path / "t", "90S", "--kd_temperature", "2")
    assert cli(run_distillation.main, args) == 2
    assert "--kd_temperature 2.0 is not used by --objective hidden_kd" in capsys.readouterr().err
    assert cli(run_distillation.main, args + ["--objective", "hidden_cos"]) == 2  # refused before any work
    assert "--objective hidden_cos" in capsys.readouterr().err
    assert not (tmp_path / "t").exists()
    assert cli(run_distillation.main, args + ["--objective", "kd", "--max_steps", "1"]) == 0


def test_a_bug_keeps_its_traceback(sparse_teacher, sst2_task, tmp_path, monkeypatch):
    # cli turns input errors into one line, but a ValueError from a bug must not read like user error
    import utils.engine.objectives

    def broken(*args, **kwargs):
        raise ValueError("mat1 and mat2 shapes cannot be multiplied (4x32 and 37x32)")

    monkeypatch.setattr(utils.engine.objectives, "hidden_mse", broken)
    with pytest.raises(ValueError, match="cannot be multiplied"):
        cli(run_distillation.main, distill_args(sparse_teacher, sst2_task, tmp_path / "bug", "90S"))


def test_a_sparsification_run_folder_as_the_teacher_names_its_model_folder(sst2_task, tmp_path, capsys):
    run_folder = tmp_path / "sparsify"
    save_tiny_teacher(run_folder / "model", levels=(0, 90))
    assert cli(run_distillation.main, distill_args(run_folder, sst2_task, tmp_path / "x", "90S")) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(
        f"error: --teacher_model_path {run_folder} has no config.json, but {run_folder / 'model' / 'config.json'} "
        f"exists: it is a run folder; pass --teacher_model_path {run_folder / 'model'}")
