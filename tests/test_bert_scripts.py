"""The per-task shell scripts (bert_scripts/ and t5_scripts/): present for every task, well-formed, and (in
DRY_RUN mode) building the right command: per-task settings, the stage chain through OUTPUT_ROOT, user
flags last, and EncT5's settings in t5_scripts/."""

import os
import shlex
import shutil
import subprocess

import pytest

from data.tasks import get_task
from tests.helpers import REPO_ROOT

SCRIPTS = REPO_ROOT / "bert_scripts"
T5_SCRIPTS = REPO_ROOT / "t5_scripts"
TASKS = ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "mnlimm", "qnli", "rte", "wnli", "conll", "polarity")
STAGES = ("finetuning", "sparsification", "distillation", "maxidisc", "minidisc")
ENTRY = {"finetuning": "run_finetuning.py", "sparsification": "run_sparsification.py",
         "distillation": "run_distillation.py", "maxidisc": "run_maxidisc.py", "minidisc": "run_minidisc.py"}
ALL_SCRIPTS = [folder / f"run_{stage}_{task}.sh" for folder in (SCRIPTS, T5_SCRIPTS) for task in TASKS
               for stage in STAGES]
HELPERS = [SCRIPTS / name for name in ("common.sh", "run_main_job.sh", "run_tests.sh")] + [T5_SCRIPTS / "common.sh"]

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def dry_run(stage: str, task: str, *flags: str, folder=SCRIPTS, **env) -> list[str]:
    """The python command a script of ``folder`` would run, as argv (after the interpreter)."""
    environ = {k: v for k, v in os.environ.items() if k not in ("MODEL", "TEACHER_PATH", "STUDENT", "TA_PATH",
                                                                  "TARGET", "OBJECTIVE", "SUFFIX", "OUTPUT_ROOT",
                                                                  "FAMILY")}
    environ.update({"DRY_RUN": "1", "PYTHON": "python3", "OUTPUT_ROOT": "/out", "DATA_DIR": "/data", **env})
    environ = {k: v for k, v in environ.items() if v is not None}
    result = subprocess.run(["bash", str(folder / f"run_{stage}_{task}.sh"), *flags], capture_output=True,
                            text=True, env=environ, check=True)
    argv = shlex.split(result.stdout)
    assert argv[0] == "python3"
    return argv[1:]


def flag(argv: list[str], name: str) -> str:
    """The value argparse would see for ``name``: its last occurrence."""
    positions = [i for i, a in enumerate(argv) if a == name]
    assert positions, f"{name} missing from {argv}"
    return argv[positions[-1] + 1]


def test_every_task_has_all_five_scripts_and_they_are_tiny():
    missing = [p.name for p in ALL_SCRIPTS if not p.is_file()]
    assert not missing
    for path in ALL_SCRIPTS:
        text = path.read_text()
        assert os.access(path, os.X_OK), f"{path.name} is not executable"
        assert text.startswith("#!/usr/bin/env bash\n")
        assert 'source "$(dirname "$0")/common.sh"' in text, path.name
        assert '"$@"' in text.splitlines()[-1], path.name
        assert len(text.splitlines()) <= 4, f"{path.name}: keep settings in common.sh, not in each script"


@pytest.mark.parametrize("path", ALL_SCRIPTS + HELPERS, ids=lambda p: p.name)
def test_bash_syntax(path):
    result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("stage", STAGES)
def test_user_flags_come_last_and_task_is_right(stage, task):
    argv = dry_run(stage, task, "--learning_rate", "7e-7", "--seed", "3")
    assert argv[0] == str(REPO_ROOT / ENTRY[stage])
    assert argv[-4:] == ["--learning_rate", "7e-7", "--seed", "3"]
    assert flag(argv, "--task_name") == task and flag(argv, "--data_dir") == "/data"
    ner = get_task(task).is_token_task
    assert flag(argv, "--model_type") == ("sparsebert_ner" if ner else "sparsebert_cls")
    assert flag(argv, "--data_type") == ("bert_ner" if ner else "bert_cls")
    if stage != "sparsification":
        assert "--do_train" in argv
        predict = "--do_test" if task in ("conll", "polarity") else "--do_infer"
        assert predict in argv and ({"--do_test", "--do_infer"} - {predict}).isdisjoint(argv)


def test_stages_chain_through_output_root():
    finetune = dry_run("finetuning", "rte")
    sparsify = dry_run("sparsification", "rte")
    assert flag(sparsify, "--teacher_model_path") == flag(finetune, "--output_dir") + "/best"
    teacher = flag(sparsify, "--output_dir") + "/model"
    for stage in ("distillation", "maxidisc", "minidisc"):
        assert flag(dry_run(stage, "rte"), "--teacher_model_path") == teacher
    assert flag(dry_run("distillation", "rte"), "--output_dir") == "/out/rte/distil_90S"
    assert flag(dry_run("maxidisc", "rte"), "--output_dir") == "/out/rte/maxidisc_80,90S"
    assert flag(dry_run("minidisc", "rte"), "--output_dir") == "/out/rte/minidisc_90S"
    assert len({flag(dry_run(stage, "rte"), "--output_dir") for stage in STAGES}) == len(STAGES)


def test_environment_replaces_the_original_positional_arguments():
    distil = dry_run("distillation", "qqp", STUDENT="4L", OBJECTIVE="kd", SUFFIX="base")
    assert flag(distil, "--layer_or_sparsity") == "4L" and flag(distil, "--output_dir") == "/out/qqp/distil_4L"
    assert flag(distil, "--objective") == "kd" and flag(distil, "--model_suffix") == "base"
    maxi = dry_run("maxidisc", "qqp", TA_PATH="70,90S;80,90S")
    assert flag(maxi, "--layer_or_sparsity_path") == "70,90S;80,90S"
    assert flag(maxi, "--output_dir") == "/out/qqp/maxidisc_70,90S+80,90S"
    mini = dry_run("minidisc", "qqp", TARGET="95", TEACHER_PATH="/t")
    assert flag(mini, "--target_sparsity") == "95" and flag(mini, "--output_dir") == "/out/qqp/minidisc_95S"
    assert flag(mini, "--teacher_model_path") == "/t"
    assert flag(dry_run("finetuning", "qqp", MODEL="/minilm"), "--model_name_or_path") == "/minilm"


def test_reference_settings():
    mrpc = dry_run("minidisc", "mrpc")
    assert (flag(mrpc, "--learning_rate"), flag(mrpc, "--per_device_train_batch_size")) == ("3e-5", "16")
    assert flag(mrpc, "--selection_metric") == "acc_and_f1" and flag(mrpc, "--log_interval") == "10"
    assert (flag(mrpc, "--num_train_epochs"), flag(mrpc, "--num_patience_epochs")) == ("10", "5")
    assert (flag(mrpc, "--max_grad_norm"), flag(mrpc, "--seed"), flag(mrpc, "--max_length")) == ("5.0", "776", "128")
    qqp = dry_run("distillation", "qqp")
    assert (flag(qqp, "--learning_rate"), flag(qqp, "--per_device_train_batch_size")) == ("2e-5", "32")
    assert (flag(qqp, "--log_interval"), flag(qqp, "--selection_metric")) == ("3000", "acc_and_f1")
    conll = dry_run("finetuning", "conll")
    assert flag(conll, "--data_type") == "bert_ner" and flag(conll, "--selection_metric") == "f1"
    assert flag(conll, "--model_name_or_path") == "bert-base-cased" and flag(conll, "--num_train_epochs") == "3"
    assert (flag(conll, "--learning_rate"), flag(conll, "--log_interval")) == ("2e-5", "100")
    assert flag(dry_run("finetuning", "sst2"), "--model_name_or_path") == "bert-base-uncased"
    # a selection metric is passed only where the reference had one; elsewhere the task's default applies
    assert "--selection_metric" not in dry_run("finetuning", "cola")


def test_missing_teacher_names_the_script_to_run_first(tmp_path):
    env = {**os.environ, "OUTPUT_ROOT": str(tmp_path), "PYTHON": "false"}
    for stage, needed in (("sparsification", "run_finetuning_mrpc.sh"), ("minidisc", "run_sparsification_mrpc.sh")):
        result = subprocess.run(["bash", str(SCRIPTS / f"run_{stage}_mrpc.sh")], capture_output=True, text=True,
                                env=env)
        assert result.returncode == 1
        assert needed in result.stderr and str(tmp_path / "mrpc") in result.stderr
    # a teacher given on the command line is not second-guessed: the (fake) interpreter runs
    result = subprocess.run(["bash", str(SCRIPTS / "run_minidisc_mrpc.sh"), "--teacher_model_path", "/x"],
                            capture_output=True, text=True, env=env)
    assert result.returncode == 1 and "no sparsified teacher" not in result.stderr


def test_unknown_profile_is_one_clear_line():
    result = subprocess.run(["bash", str(SCRIPTS / "run_main_job.sh")], capture_output=True, text=True,
                            env={**os.environ, "PROFILE": "fast"})
    assert result.returncode == 1 and result.stderr.strip() == "error: PROFILE=fast: expected quick, full or smoke"
    result = subprocess.run(["bash", str(SCRIPTS / "run_main_job.sh")], capture_output=True, text=True,
                            env={**os.environ, "TASK": "lm"})
    assert result.returncode == 1 and result.stderr.strip() == "error: TASK=lm: expected polarity, or lm with MODEL=smollm2"


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("stage", STAGES)
def test_t5_scripts_run_enct5_with_user_flags_last(stage, task):
    argv = dry_run(stage, task, "--seed", "3", folder=T5_SCRIPTS)
    assert argv[0] == str(REPO_ROOT / ENTRY[stage]) and argv[-2:] == ["--seed", "3"]
    ner = get_task(task).is_token_task
    assert flag(argv, "--model_type") == ("sparseenct5_ner" if ner else "sparseenct5_cls")
    assert flag(argv, "--data_type") == ("enct5_ner" if ner else "enct5_cls")
    bert = dry_run(stage, task)
    if task not in ("mrpc", "qqp") and stage != "sparsification":
        assert flag(argv, "--learning_rate") == flag(bert, "--learning_rate")


def test_t5_reference_settings_and_outputs():
    mrpc = dry_run("minidisc", "mrpc", folder=T5_SCRIPTS)
    assert (flag(mrpc, "--per_device_train_batch_size"), flag(mrpc, "--learning_rate")) == ("32", "2e-4")
    assert (flag(mrpc, "--num_train_epochs"), flag(mrpc, "--max_grad_norm"), flag(mrpc, "--seed")) == ("10", "5.0", "776")
    qqp = dry_run("distillation", "qqp", folder=T5_SCRIPTS)
    assert (flag(qqp, "--per_device_train_batch_size"), flag(qqp, "--learning_rate")) == ("32", "1e-4")
    assert flag(dry_run("sparsification", "mrpc", folder=T5_SCRIPTS), "--per_device_eval_batch_size") == "16"
    assert flag(dry_run("sparsification", "mrpc"), "--per_device_eval_batch_size") == "32"
    assert flag(dry_run("finetuning", "mrpc", folder=T5_SCRIPTS), "--model_name_or_path") == "t5-3b"
    assert flag(dry_run("finetuning", "mrpc", folder=T5_SCRIPTS, MODEL="t5-small"), "--model_name_or_path") == "t5-small"
    default = dry_run("finetuning", "mrpc", folder=T5_SCRIPTS, OUTPUT_ROOT=None)
    assert flag(default, "--output_dir") == str(REPO_ROOT / "outputs" / "t5" / "mrpc" / "finetune")
    assert flag(dry_run("finetuning", "mrpc", OUTPUT_ROOT=None), "--output_dir") == str(REPO_ROOT / "outputs" / "mrpc"
                                                                                      / "finetune")


def test_t5_missing_teacher_names_the_t5_script(tmp_path):
    env = {**os.environ, "OUTPUT_ROOT": str(tmp_path), "PYTHON": "false"}
    result = subprocess.run(["bash", str(T5_SCRIPTS / "run_minidisc_qqp.sh")], capture_output=True, text=True, env=env)
    assert result.returncode == 1 and "run t5_scripts/run_sparsification_qqp.sh first" in result.stderr


def test_family_decoder_runs_the_decoder_model_types():
    argv = dry_run("minidisc", "polarity", FAMILY="decoder", MODEL="/llm")
    assert (flag(argv, "--model_type"), flag(argv, "--data_type")) == ("sparsedecoder_cls", "decoder_cls")
    assert flag(dry_run("finetuning", "conll", FAMILY="decoder"), "--model_type") == "sparsedecoder_ner"
    env = {**os.environ, "DRY_RUN": "1", "PYTHON": "python3", "FAMILY": "gpt"}
    result = subprocess.run(["bash", str(SCRIPTS / "run_finetuning_rte.sh")], capture_output=True, text=True, env=env)
    assert result.returncode == 1 and "FAMILY=gpt: expected bert or decoder" in result.stderr


@pytest.mark.parametrize("stage", STAGES)
def test_the_language_model_scripts_take_a_decoder_only(stage):
    script = SCRIPTS / f"run_{stage}_lm.sh"
    assert script.is_file() and os.access(script, os.X_OK) and len(script.read_text().splitlines()) <= 4
    argv = dry_run(stage, "lm", "--seed", "3", FAMILY="decoder")
    assert (flag(argv, "--task_name"), flag(argv, "--model_type"), flag(argv, "--data_type")) == (
        "lm", "sparsedecoder_lm", "decoder_lm")
    with pytest.raises(subprocess.CalledProcessError) as refused:
        dry_run(stage, "lm")
    assert "task lm is for decoder LLMs: set FAMILY=decoder" in refused.value.stderr
