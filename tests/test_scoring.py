"""A finished run: retraining it needs --overwrite_output_dir; --do_infer alone scores it and keeps it."""

import json

import run_distillation
import run_finetuning
from tests.helpers import distill_args, finetune_args
from utils.command.cli import cli


def test_finished_run_is_not_overwritten(sparse_teacher, sst2_task, tmp_path, capsys):
    args = finetune_args(sparse_teacher, sst2_task, tmp_path / "ft", "--max_steps", "2")
    run_finetuning.main(args)
    assert cli(run_finetuning.main, args) == 2
    assert "--overwrite_output_dir" in capsys.readouterr().err
    assert run_finetuning.main(args + ["--overwrite_output_dir"])["train"]["steps"] == 2


def test_scoring_a_finished_run_keeps_its_model_and_results(sparse_teacher, sst2_task, tmp_path):
    out = tmp_path / "ft"
    trained = run_finetuning.main(finetune_args(sparse_teacher, sst2_task, out, "--max_steps", "4"))
    score = [a for a in finetune_args(sparse_teacher, sst2_task, out) if a != "--do_train"]
    for extra in ([], ["--overwrite_output_dir"]):
        results = run_finetuning.main(score + ["--do_infer", *extra])
        assert (out / "best" / "model.safetensors").exists() and (out / "SST-2.tsv").exists()
        assert results["best_step"] == trained["best_step"] and results["prediction_file"].endswith("SST-2.tsv")
        assert json.loads((out / "results.json").read_text())["best_dev"] == trained["best_dev"]
        assert json.loads((out / "args.json").read_text())["args"]["do_train"] is True


def test_infer_without_a_trained_model_is_an_error(sparse_teacher, sst2_task, tmp_path, capsys):
    args = distill_args(sparse_teacher, sst2_task, tmp_path / "none", "90S")
    args.remove("--do_train")
    assert cli(run_distillation.main, args + ["--do_infer"]) == 2
    assert "no model to test" in capsys.readouterr().err
