"""Arguments: typed groups per script, the original flag names, values derived from the task and the
checkpoint, and students parsed once at the argument boundary."""

import json

import pytest

import run_distillation
import run_finetuning
import run_maxidisc
from tests.helpers import distill_args
from utils.artifacts.students import Chain, StudentSpec
from utils.command.args import DataArguments, TrainingArguments, flag_values, parse_args
from utils.command.cli import cli
from utils.errors import USER_ERRORS, ArgumentError


@pytest.fixture
def distill(fine_grid_teacher, sst2_task):
    """``distill(*flags)``: a run_distillation command line for 90S that is only parsed."""
    return lambda *extra: distill_args(fine_grid_teacher, sst2_task, "unused", "90S", *extra)


def completed(script_cls, argv):
    """``argv`` parsed, then completed from the checkpoint, as a script's ``main()`` does."""
    args = parse_args(script_cls, argv)
    args.complete()
    return args


def test_parse_args_returns_the_typed_groups(distill):
    args = completed(run_distillation.Arguments, distill("--learning_rate", "3e-5"))
    assert isinstance(args.training, TrainingArguments) and isinstance(args.data, DataArguments)
    assert args.training.learning_rate == 3e-5 and args.student.student == StudentSpec(sparsity=90)
    assert args.task.name == "sst2"
    flags = flag_values(args)
    assert flags["learning_rate"] == 3e-5 and flags["layer_or_sparsity"] == "90S" and "student" not in flags


def test_parsing_reads_no_checkpoint_and_completing_names_a_missing_one(sst2_task):
    argv = distill_args("./nowhere", sst2_task, "unused", "90S")
    args = parse_args(run_distillation.Arguments, argv)  # no file is read
    assert args.task is None and args.model.model_type is None and args.distill.objective == "auto"
    with pytest.raises(USER_ERRORS, match="--teacher_model_path ./nowhere: no such directory"):
        args.complete()


def test_model_and_data_types_come_from_the_task_and_the_checkpoint(distill, make_teacher):
    args = completed(run_distillation.Arguments, distill())
    assert (args.model.model_type, args.data.data_type, args.training.selection_metric) == (
        "sparsebert_cls", "bert_cls", "acc")
    ner = make_teacher(num_labels=9)
    args = completed(run_finetuning.Arguments, ["--model_name_or_path", str(ner), "--task_name", "conll",
                                                 "--output_dir", "unused", "--do_train"])
    assert (args.model.model_type, args.data.data_type, args.training.selection_metric) == (
        "sparsebert_ner", "bert_ner", "f1")
    # the paper's commands name them, and still run
    given = ["--model_type", "sparsebert_cls", "--data_type", "bert_cls"]
    assert completed(run_distillation.Arguments, distill(*given)).model.model_type == "sparsebert_cls"


@pytest.mark.parametrize("flags,needle", [
    (["--model_type", "sparsebert_ner"], "--model_type sparsebert_ner does not fit task sst2 (classification)"),
    (["--data_type", "bert_ner"], "--data_type bert_ner does not fit task sst2"),
    (["--layer_or_sparsity", "91X"], "--layer_or_sparsity '91X': expected kL"),
])
def test_a_flag_that_does_not_fit_is_one_line(distill, capsys, flags, needle):
    assert cli(run_distillation.main, distill(*flags)) == 2
    assert needle in capsys.readouterr().err.strip().splitlines()[-1]


def test_a_token_task_runs_without_type_flags(make_teacher, conll_task, tmp_path):
    ner = make_teacher(num_labels=9)
    results = run_finetuning.main(["--model_name_or_path", str(ner), "--task_name", "conll",
                                   "--data_dir", str(conll_task), "--output_dir", str(tmp_path / "out"),
                                   "--max_length", "32", "--max_steps", "2", "--do_train"])
    assert set(results["best_dev"]) == {"precision", "recall", "f1"}
    recorded = json.loads((tmp_path / "out" / "args.json").read_text())["args"]
    assert (recorded["model_type"], recorded["data_type"]) == ("sparsebert_ner", "bert_ner")


@pytest.mark.parametrize("text,spec,name", [
    ("4L", StudentSpec(layers=4), "4L"),
    ("90S", StudentSpec(sparsity=90), "90S"),
    (" 0S", StudentSpec(sparsity=0), "0S"),
])
def test_student_specs(text, spec, name):
    assert StudentSpec.parse(text) == spec and str(spec) == name


def test_a_directory_is_a_student(tmp_path):
    assert StudentSpec.parse(str(tmp_path)) == StudentSpec(path=str(tmp_path))


@pytest.mark.parametrize("text,needle", [
    ("100S", "between 0 and 99"), ("-5S", "between 0 and 99"), ("0L", "at least one layer"), ("ninety", "expected kL"),
])
def test_bad_student_specs(text, needle):
    with pytest.raises(ArgumentError, match=needle):
        StudentSpec.parse(text)


def test_chains():
    chain = Chain.parse("80, 90S")
    assert chain.students == (StudentSpec(sparsity=80), StudentSpec(sparsity=90)) and str(chain) == "80,90S"
    assert chain.assistants == (StudentSpec(sparsity=80),) and chain.target == StudentSpec(sparsity=90)
    assert str(Chain.parse("6,4L")) == "6,4L" and [s.layers for s in Chain.parse("6,4L")] == [6, 4]
    for text, needle in (("90,80S", "must increase"), ("4,6L", "must decrease"), ("80,90X", "expected comma"),
                         ("80,100S", "between 0 and 99")):
        with pytest.raises(ArgumentError, match=needle):
            Chain.parse(text)


def test_maxidisc_parses_its_chains_once(fine_grid_teacher, sst2_task):
    teacher = str(fine_grid_teacher)
    args = parse_args(run_maxidisc.Arguments, ["--teacher_model_path", teacher, "--task_name", "sst2",
                                               "--output_dir", "unused", "--layer_or_sparsity_path", "80,90S;90S",
                                               "--data_dir", str(sst2_task), "--do_train"])
    assert args.maxidisc.chains == [Chain((StudentSpec(sparsity=80), StudentSpec(sparsity=90))),
                                    Chain((StudentSpec(sparsity=90),))]
    with pytest.raises(SystemExit):
        parse_args(run_maxidisc.Arguments, ["--teacher_model_path", teacher, "--task_name", "sst2",
                                            "--output_dir", "unused", "--layer_or_sparsity_path", "80,90S",
                                            "--search_assistants", "--do_train"])
