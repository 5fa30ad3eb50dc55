"""What every entry script does around the loop: load task data, models and students; test, infer
and report. Scripts stay short and differ only in what they build and which objective and
selector they hand to :func:`utils.loop.train`.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from pathlib import Path

from transformers import AutoTokenizer

from data.outputs import write_conll_predictions, write_glue_submission
from data.pipelines import encode_dataset
from data.readers import read_examples
from data.tasks import get_task, validate_selection_metric
from models import get_model_class
from utils.loop import BEST_DIR, evaluate, predict, remove_state
from utils.run import write_json_atomic

logger = logging.getLogger(__name__)

DATA_TYPES = {"bert_cls": ("classification", "regression"), "bert_ner": ("token_classification",)}


class StageError(ValueError):
    """Input a stage cannot work with (wrong teacher, missing map, bad student spec, ...)."""


# --------------------------------------------------------------------------------------------
# Task and data


def resolve_task(args):
    """The task spec, checked against ``--data_type`` and ``--selection_metric`` (one clear line each)."""
    task = get_task(args.task_name)
    if task.kind not in DATA_TYPES[args.data_type]:
        want = "bert_ner" if task.is_token_task else "bert_cls"
        raise StageError(f"--data_type {args.data_type} does not fit task {task.name} ({task.kind}); use {want}")
    if hasattr(args, "selection_metric"):
        args.selection_metric = validate_selection_metric(task, args.selection_metric)
    return task


def load_split(args, task, tokenizer, split: str, limit: int | None = None):
    """Read and tokenise one split of ``task`` from ``--data_dir`` (first ``limit`` examples)."""
    examples = read_examples(task, args.data_dir, split)
    if not examples:
        raise StageError(f"the {split} split of {task.name} in {args.data_dir} is empty")
    dataset = encode_dataset(task, examples[:limit] if limit else examples, tokenizer, args.max_length)
    logger.info("%s %s: %d examples, %d features", task.name, split, len(dataset.examples), len(dataset))
    return dataset


def load_train_and_dev(args, task, tokenizer) -> dict:
    """``{"train": ..., "dev": ...}`` encoded datasets, limited by --max_train/eval_samples."""
    return {"train": load_split(args, task, tokenizer, "train", args.max_train_samples),
            "dev": load_split(args, task, tokenizer, "dev", args.max_eval_samples)}


# --------------------------------------------------------------------------------------------
# Models


def load_tokenizer(path: str):
    """The (fast) tokenizer saved with a model directory or named on the hub."""
    try:
        return AutoTokenizer.from_pretrained(path)
    except OSError as err:
        raise StageError(f"cannot load a tokenizer from {path!r}: {str(err).splitlines()[0]}") from None


def load_model(model_type: str, path: str, new_head: bool = False, **config_overrides):
    """``model_type``'s class loaded from a directory or hub name, with a one-line error if absent.

    ``config_overrides`` are set on the loaded config first; ``new_head`` allows a task head of a
    different size than the checkpoint's (fine-tuning a pretrained encoder on a new task).
    """
    cls = get_model_class(model_type)
    try:
        config = cls.config_class.from_pretrained(path)
        for key, value in config_overrides.items():
            setattr(config, key, value)
        return cls.from_pretrained(path, config=config, ignore_mismatched_sizes=new_head)
    except OSError as err:
        raise StageError(f"cannot load a {model_type} model from {path!r}: {str(err).splitlines()[0]}") from None


def load_teacher(args, task):
    """The teacher of ``task`` at ``--teacher_model_path``, checked to be one (labels, task name)."""
    teacher = load_model(args.model_type, args.teacher_model_path)
    check_model_task(teacher, task, args.teacher_model_path)
    return teacher


def check_model_task(model, task, path) -> None:
    """Raise unless ``model`` has ``task``'s label count and (when recorded) its task name."""
    recorded = getattr(model.config, "finetuning_task", None)
    if recorded and get_task(recorded).name != task.name:
        raise StageError(f"{path} was fine-tuned on {recorded}, not {task.name}: not a teacher of this task")
    if model.config.num_labels != task.num_labels:
        raise StageError(f"{path} predicts {model.config.num_labels} labels but task {task.name} has "
                         f"{task.num_labels}: not a teacher of this task")


STUDENT_SPEC = re.compile(r"^(-?\d+)([LS])$")


def parse_student_spec(spec: str) -> tuple[str, int] | tuple[str, str]:
    """``"4L"`` → ("layers", 4); ``"90S"`` → ("sparsity", 90); an existing directory → ("dir", path).

    Raises:
        StageError: for anything else, naming the flag value and the expected forms.
    """
    match = STUDENT_SPEC.match(spec.strip())
    if match:
        value, unit = int(match.group(1)), match.group(2)
        if unit == "S" and not 0 <= value <= 99:
            raise StageError(f"--layer_or_sparsity {spec}: a sparsity must be between 0 and 99 percent")
        if unit == "L" and value < 1:
            raise StageError(f"--layer_or_sparsity {spec}: a student needs at least one layer")
        return ("layers", value) if unit == "L" else ("sparsity", value)
    if Path(spec).is_dir():
        return "dir", spec
    raise StageError(f"--layer_or_sparsity {spec!r}: expected kL (keep k layers), sS (sparsity s%, e.g. 90S) "
                     "or a directory holding a student model")


def check_sparsity_available(model, sparsity: int, path, flag: str = "--layer_or_sparsity") -> None:
    """Raise a clear error unless ``model`` can be sparsified to ``sparsity``."""
    levels = model.available_sparsities()
    if not model.config.sparsity_map or levels == [model.config.sparsity]:
        raise StageError(f"{path} has no sparsity map: run run_sparsification.py on it first")
    if sparsity not in levels:
        raise StageError(f"{flag} {sparsity}S: {path} has no map entry for {sparsity}; available: "
                         f"{', '.join(map(str, levels))}")


def build_student(model_type: str, teacher_path: str, spec: str, task):
    """The student a spec describes, initialised from the teacher (or loaded from a directory).

    ``kL`` keeps the teacher's bottom k layers; ``sS`` slices the teacher per its sparsity map and
    densifies (physically smaller tensors); a directory is loaded as is.
    """
    kind, value = parse_student_spec(spec)
    if kind == "dir":
        student = load_model(model_type, value)
        check_model_task(student, task, value)
        return student
    student = load_model(model_type, teacher_path)
    if kind == "layers":
        layers = student.config.num_hidden_layers
        if value > layers:
            raise StageError(f"--layer_or_sparsity {spec}: the teacher {teacher_path} has only {layers} layers")
        student.drop_layers(value)
    else:
        check_sparsity_available(student, value, teacher_path)
        student.sparsify(value)
        student.densify()
    return student


def describe_model(model) -> dict:
    """Sparsity, layers, kept heads/neurons and parameter counts (prunable encoder and total)."""
    counts = model.count_parameters()
    widths = model.kept_widths()
    return {
        "sparsity": model.current_sparsity,
        "num_layers": model.config.num_hidden_layers,
        "heads_kept": sum(widths["head"]),
        "neurons_kept": sum(widths["neuron"]),
        "prunable_parameters": counts["prunable"],
        "total_parameters": counts["total"],
    }


# --------------------------------------------------------------------------------------------
# Test, inference, results


def final_model_dir(args, default: Path) -> Path:
    """The model scored by --do_test/--do_infer: --eval_model_path, else this run's own (never a fallback)."""
    path = Path(args.eval_model_path) if args.eval_model_path else Path(default)
    if not path.is_dir():
        hint = "" if args.eval_model_path else " (train first with --do_train, or pass --eval_model_path)"
        raise StageError(f"no model to test at {path}{hint}")
    return path


def test_and_infer(args, run, task, output_dir: Path, model_dir: Path | None = None) -> dict:
    """Run --do_test (metrics on a labelled test split) and --do_infer (prediction files).

    The model is ``--eval_model_path``, else ``model_dir`` (default ``OUTPUT_DIR/best``).
    """
    report = {}
    if not (args.do_test or args.do_infer):
        return report
    model_dir = final_model_dir(args, model_dir or Path(output_dir) / BEST_DIR)
    tokenizer = load_tokenizer(str(model_dir))
    model = load_model(args.model_type, str(model_dir)).to(run.device)
    check_model_task(model, task, model_dir)
    test = load_split(args, task, tokenizer, "test")
    report["test_model_path"] = str(model_dir)
    if args.do_test:
        if not test.has_labels:
            raise StageError(f"the test split of {task.name} has no gold labels; use --do_infer to write "
                             "predictions for the GLUE server instead")
        report["test_metrics"] = evaluate(model, test, args.per_device_eval_batch_size, run, "test")
        logger.info("test: %s", report["test_metrics"])
    if args.do_infer:
        predictions = predict(model, test, args.per_device_eval_batch_size, run, "infer")
        if run.is_main:
            if task.is_token_task:
                path = write_conll_predictions(test.examples, predictions, Path(output_dir) / f"{task.name}_test_predictions.txt")
            else:
                path = write_glue_submission(task, test.examples, predictions, output_dir)
            report["prediction_file"] = str(path)
            logger.info("predictions written to %s", path)
    return report


def cli(main, argv=None) -> int:
    """Run a script's ``main`` and turn bad input into one line on stderr (exit status 2).

    Set ``MINIDISC_DEBUG=1`` to see the full traceback instead.
    """
    import os

    try:
        main(argv)
    except SystemExit as err:  # argparse has already printed its one line
        return err.code if isinstance(err.code, int) else 2
    except (ValueError, FileNotFoundError) as err:
        if os.environ.get("MINIDISC_DEBUG"):
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def train_summary(result, model_type: str) -> dict:
    """The results.json entries of one training stage: best dev metrics, model size, cost, paths."""
    best = load_model(model_type, str(result.best_dir)) if result.best_dir.is_dir() else None
    record = result.best_record or {}
    return {
        "best_step": result.best_step,
        "best_score": result.best_score,
        "best_dev": record["widths"][str(record["selected"])] if "widths" in record else record.get("metrics"),
        "model": describe_model(best) if best is not None else None,
        "train": {"steps": result.steps, "epochs": result.epochs_run, "seconds": result.train_seconds,
                  "examples_per_second": result.examples_per_second, "stop_reason": result.stop_reason},
        "paths": {"best": str(result.best_dir)},
    }


def finish(args, run, task, output_dir: Path, summary: dict, model_dir: Path | None = None) -> dict:
    """Test/infer as asked (with ``model_dir``, default ``OUTPUT_DIR/best``), write ``results.json``,
    and drop the resumable state."""
    results = {"task": task.name, "selection_metric": getattr(args, "selection_metric", None), **summary}
    results.update(test_and_infer(args, run, task, output_dir, model_dir))
    results["paths"] = {**results.get("paths", {}), "output_dir": str(output_dir)}
    run.write_json("results.json", results)
    if run.is_main:
        remove_state(output_dir)
    logger.info("results written to %s", Path(output_dir) / "results.json")
    return results


def read_stage(stage_dir: Path) -> dict | None:
    """The results of a finished stage (``stage_dir/results.json``), or None if it has not finished."""
    path = Path(stage_dir) / "results.json"
    return json.loads(path.read_text()) if path.exists() else None


def close_stage(run, stage_dir: Path, summary: dict) -> None:
    """Mark a stage of a schedule finished: its ``results.json``, and no resumable state left behind."""
    if run.is_main:
        write_json_atomic(Path(stage_dir) / "results.json", summary)
        remove_state(stage_dir)
    run.barrier()
