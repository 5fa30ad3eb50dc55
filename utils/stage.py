"""What every entry script does around the loop: load task data, models and students; test, infer
and report. Scripts stay short and differ only in what they build and which objective and
selector they hand to :func:`utils.loop.train`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from pathlib import Path

from transformers import AutoTokenizer, PretrainedConfig

from data.outputs import write_conll_predictions, write_glue_submission
from data.pipelines import encode_dataset
from data.readers import read_examples
from data.tasks import get_task, validate_selection_metric
from models import MODEL_REGISTRY, get_model_class
from utils.errors import USER_ERRORS, StageError
from utils.fingerprint import check_settings
from utils.loop import BEST_DIR, evaluate, predict, remove_state
from utils.run import write_json_atomic

logger = logging.getLogger(__name__)

DATA_TYPES = {"bert_cls": ("classification", "regression"), "bert_ner": ("token_classification",)}


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


HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def supported_model_types() -> list[str]:
    """The HF ``model_type`` values whose checkpoints this project's model classes load."""
    return sorted({cls.config_class.model_type for cls in MODEL_REGISTRY.values()})


def check_model_path(path: str, flag: str) -> None:
    """Stop with one line unless ``path`` (given as ``flag``) is a saved model directory of a supported
    architecture, or a name that may be on the hub (checked when it is loaded).

    Raises:
        StageError: no such directory, a file, no ``config.json``, or another architecture.
    """
    folder = Path(path)
    if not folder.exists():
        if HUB_NAME.match(path):
            return
        raise StageError(f"{flag} {path}: no such directory")
    if not folder.is_dir():
        raise StageError(f"{flag} {path} is a file; expected a directory holding a saved model")
    if not (folder / "config.json").is_file():
        raise StageError(f"{flag} {path} has no config.json: not a saved model directory")
    check_architecture(path, flag)


def check_architecture(path: str, flag: str = "the checkpoint") -> None:
    """Raise :class:`StageError` unless the config at ``path`` has a supported ``model_type``."""
    try:
        config, _ = PretrainedConfig.get_config_dict(path)
    except OSError as err:
        raise StageError(f"{flag} {path}: cannot read its config ({str(err).splitlines()[0]})") from None
    model_type = config.get("model_type")
    if model_type not in supported_model_types():
        raise StageError(f"{flag} {path} is a {model_type or 'untyped'} checkpoint (config model_type "
                         f"{model_type!r}); supported: {', '.join(supported_model_types())}")


def load_tokenizer(path: str):
    """The (fast) tokenizer saved with a model directory or named on the hub."""
    try:
        return AutoTokenizer.from_pretrained(path)
    except OSError as err:
        raise StageError(f"cannot load a tokenizer from {path!r}: {str(err).splitlines()[0]}") from None


def _is_encoder_key(key: str, prefix: str) -> bool:
    key = key[len(prefix) + 1:] if key.startswith(prefix + ".") else key
    return key.startswith(("embeddings.", "encoder."))


def load_model(model_type: str, path: str, new_head: bool = False, **config_overrides):
    """``model_type``'s class loaded from a directory or hub name, with a one-line error if it cannot be.

    ``config_overrides`` are set on the loaded config first; ``new_head`` allows a task head of a
    different size than the checkpoint's, or none (fine-tuning a pretrained encoder on a new task).
    Every encoder weight must come from the checkpoint: a missing, unexpected or mis-shaped one
    stops the load, as does a head weight unless ``new_head`` (weights of heads we do not use, such
    as a pretraining head, are ignored).

    Raises:
        StageError: unreadable path, unsupported architecture, or weights that do not fit.
    """
    cls = get_model_class(model_type)
    check_architecture(path)
    try:
        config = cls.config_class.from_pretrained(path)
        for key, value in config_overrides.items():
            setattr(config, key, value)
        model, info = cls.from_pretrained(path, config=config, ignore_mismatched_sizes=True,
                                          output_loading_info=True)
    except OSError as err:
        raise StageError(f"cannot load a {model_type} model from {path!r}: {str(err).splitlines()[0]}") from None
    prefix = cls.base_model_prefix
    mismatched = [k if isinstance(k, str) else k[0] for k in info.get("mismatched_keys", [])]
    problems = {
        "missing": [k for k in info["missing_keys"] if new_head is False or _is_encoder_key(k, prefix)],
        "unexpected": [k for k in info["unexpected_keys"] if _is_encoder_key(k, prefix)],
        "mis-shaped": [k for k in mismatched if new_head is False or _is_encoder_key(k, prefix)],
    }
    problems = {kind: sorted(keys) for kind, keys in problems.items() if keys}
    if problems:
        detail = "; ".join(f"{len(keys)} {kind} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})"
                           for kind, keys in problems.items())
        hint = "" if new_head else " (fine-tune it first with run_finetuning.py if it is a pretrained encoder)"
        raise StageError(f"{path} does not hold a complete {model_type} model: {detail} weights{hint}")
    return model


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


def trained_model_dir(output_dir: Path) -> Path:
    """The model a finished run produced: its results' student (MiniDisc, MaxiDisc), else ``best/``."""
    results = read_stage(output_dir) or {}
    recorded = results.get("paths", {}).get("student")
    return Path(recorded) if recorded else Path(output_dir) / BEST_DIR


def test_and_infer(args, run, task, output_dir: Path, model_dir: Path | None = None) -> dict:
    """Run --do_test (metrics on a labelled test split) and --do_infer (prediction files).

    The model is ``--eval_model_path``, else ``model_dir``, else the one this run trained
    (:func:`trained_model_dir`).
    """
    report = {}
    if not (args.do_test or args.do_infer):
        return report
    model_dir = final_model_dir(args, model_dir or trained_model_dir(output_dir))
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

    Only the project's input errors (:data:`utils.errors.USER_ERRORS`) are caught: anything else is
    a bug and keeps its traceback. Set ``MINIDISC_DEBUG=1`` to see the traceback of input errors too.
    """
    try:
        main(argv)
    except SystemExit as err:  # argparse has already printed its one line
        return err.code if isinstance(err.code, int) else 2
    except USER_ERRORS as err:
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
        "best_dev": record["widths"][str(record["choice"])] if "widths" in record else record.get("metrics"),
        "model": describe_model(best) if best is not None else None,
        "train": {"steps": result.steps, "epochs": result.epochs_run, "seconds": result.train_seconds,
                  "examples_per_second": result.examples_per_second, "stop_reason": result.stop_reason},
        "paths": {"best": str(result.best_dir)},
    }


def finish(args, run, task, output_dir: Path, summary: dict, model_dir: Path | None = None) -> dict:
    """Test/infer as asked (with ``model_dir``, default the run's trained model), write ``results.json``,
    and drop the resumable state.

    Without ``--do_train`` the run's existing ``results.json`` (if any) keeps its training results and
    gains the test and prediction entries.
    """
    if args.do_train:
        results = {"task": task.name, "selection_metric": getattr(args, "selection_metric", None), **summary}
    else:
        results = read_stage(output_dir) or {"task": task.name}
    results.update(test_and_infer(args, run, task, output_dir, model_dir))
    results["paths"] = {**results.get("paths", {}), "output_dir": str(output_dir)}
    run.write_json("results.json", results)
    if run.is_main and args.do_train:
        remove_state(output_dir)
    logger.info("results written to %s", Path(output_dir) / "results.json")
    return results


def stage_settings(run, **stage) -> dict:
    """What a stage of a schedule depends on: the run's settings and the stage's own facts."""
    return {"run": run.settings, "stage": stage}


def read_stage(stage_dir: Path, settings: dict | None = None) -> dict | None:
    """The results of a finished stage (``stage_dir/results.json``), or None if it has not finished.

    With ``settings``, a finished stage must have been trained under them.

    Raises:
        SettingsMismatch: the stage finished under other settings.
    """
    path = Path(stage_dir) / "results.json"
    if not path.exists():
        return None
    results = json.loads(path.read_text())
    if settings is not None:
        check_settings(results.get("settings"), settings, stage_dir, "finished stage")
    return results


def close_stage(run, stage_dir: Path, summary: dict, files: dict | None = None) -> None:
    """Mark a stage of a schedule finished: ``results.json`` (+ JSON ``files`` {name: payload}, written
    first), and no resumable state left behind."""
    if run.is_main:
        Path(stage_dir).mkdir(parents=True, exist_ok=True)
        for name, payload in (files or {}).items():
            write_json_atomic(Path(stage_dir) / name, payload)
        write_json_atomic(Path(stage_dir) / "results.json", summary)
        remove_state(stage_dir)
    run.barrier()
