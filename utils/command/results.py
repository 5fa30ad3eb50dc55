"""What a training script does after the loop: score the model on test and write predictions, sum up
the run in ``results.json``, and mark the stages of a schedule finished (with the settings they were
trained under)."""

from __future__ import annotations

import json
import logging
from dataclasses import MISSING, dataclass, fields
from pathlib import Path

from data.outputs import write_conll_predictions, write_glue_submission
from utils.artifacts.files import write_json_atomic
from utils.artifacts.fingerprint import check_settings
from utils.artifacts.model_card import FACTS_FILE, update_card
from utils.artifacts.model_io import check_model_task, load_model, load_tokenizer
from utils.artifacts.students import describe_model
from utils.artifacts.task_data import load_split
from utils.engine.checkpoint import BEST_DIR, remove_state
from utils.engine.evaluation import evaluate, predict
from utils.engine.schedule import ScheduleRecord
from utils.engine.sharding import place
from utils.errors import StageError

logger = logging.getLogger(__name__)


def final_model_dir(eval_model_path: str | None, default: Path) -> Path:
    """The model scored by --do_test/--do_infer: --eval_model_path, else this run's own (never a fallback)."""
    path = Path(eval_model_path) if eval_model_path else Path(default)
    if not path.is_dir():
        hint = "" if eval_model_path else " (train first with --do_train, or pass --eval_model_path)"
        raise StageError(f"no model to test at {path}{hint}")
    return path


def read_results(output_dir: Path) -> dict | None:
    """A finished run's ``results.json`` (what :func:`finish` wrote), or None."""
    path = Path(output_dir) / "results.json"
    return json.loads(path.read_text()) if path.exists() else None


def trained_model_dir(output_dir: Path) -> Path:
    """The model a finished run produced: its results' student (MiniDisc, MaxiDisc), else ``best/``."""
    results = read_results(output_dir) or {}
    recorded = results.get("paths", {}).get("student")
    return Path(recorded) if recorded else Path(output_dir) / BEST_DIR


def test_and_infer(args, run, task, output_dir: Path, model_dir: Path | None = None) -> dict:
    """Run --do_test (metrics on a labelled test split) and --do_infer (prediction files).

    ``args`` holds the ``model``, ``data`` and ``training`` argument groups. The model is
    ``--eval_model_path``, else ``model_dir``, else the one this run trained (:func:`trained_model_dir`).
    """
    report, training = {}, args.training
    if not (training.do_test or training.do_infer):
        return report
    model_dir = final_model_dir(training.eval_model_path, model_dir or trained_model_dir(output_dir))
    tokenizer = load_tokenizer(str(model_dir))
    model = place(load_model(args.model.model_type, str(model_dir)), run)
    check_model_task(model, task, model_dir)
    test = load_split(args.data, task, tokenizer, "test")
    report["test_model_path"] = str(model_dir)
    if training.do_test:
        if not test.has_labels:
            raise StageError(f"the test split of {task.name} has no gold labels; use --do_infer to write "
                             "predictions for the GLUE server instead")
        scored = test.take(args.data.max_test_samples)
        report["test_metrics"] = evaluate(model, scored, training.per_device_eval_batch_size, run, "test")
        logger.info("test: %s", report["test_metrics"])
    if training.do_infer:
        predictions = predict(model, test, training.per_device_eval_batch_size, run, "infer")
        if run.is_main:
            if task.is_token_task:
                path = write_conll_predictions(test.examples, predictions, Path(output_dir) / f"{task.name}_test_predictions.txt")
            else:
                path = write_glue_submission(task, test.examples, predictions, output_dir)
            report["prediction_file"] = str(path)
            logger.info("predictions written to %s", path)
    return report


@dataclass
class StageResult:
    """One finished training stage: a script's run, a MiniDisc iteration or a MaxiDisc stage. Its best
    evaluation (step, score, dev metrics), the model it saved (``model``: sizes), what training cost
    (``train``) and where things are (``paths``); a stage of a schedule also records the ``settings`` it was
    trained under, a MaxiDisc stage its ``student``, ``key`` and ``model_dir`` (and ``reused_from`` when it
    was taken from another run), a MiniDisc iteration its ``schedule`` entry.

    Written as the stage's ``results.json`` by :meth:`to_json` (the optional fields only when set) and read
    back by :meth:`from_json`.
    """

    best_step: int
    best_score: float
    best_dev: dict | None
    model: dict | None
    train: dict
    paths: dict
    settings: dict | None = None
    student: str | None = None
    key: str | None = None
    model_dir: str | None = None
    reused_from: str | None = None
    schedule: ScheduleRecord | None = None

    def to_json(self) -> dict:
        record = {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None
                  or f.default is MISSING}
        if self.schedule is not None:
            record["schedule"] = self.schedule.to_json()
        return record

    @classmethod
    def from_json(cls, payload: dict) -> StageResult:
        record = dict(payload)
        if record.get("schedule") is not None:
            record["schedule"] = ScheduleRecord.from_json(record["schedule"])
        return cls(**record)


def train_summary(result, model_type: str) -> StageResult:
    """What one training stage produced (see :class:`StageResult`): best dev metrics, model size, cost, paths."""
    best = load_model(model_type, str(result.best_dir)) if result.best_dir.is_dir() else None
    record = result.best_record or {}
    return StageResult(
        best_step=result.best_step,
        best_score=result.best_score,
        best_dev=record["sparsities"][str(record["choice"])] if "sparsities" in record else record.get("metrics"),
        model=describe_model(best) if best is not None else None,
        train={"steps": result.steps, "epochs": result.epochs_run, "seconds": result.train_seconds,
               "eval_seconds": result.eval_seconds,
               "examples_per_second": result.examples_per_second, "stop_reason": result.stop_reason,
               **result.objective_stats},
        paths={"best": str(result.best_dir)},
    )


def finish(args, run, task, output_dir: Path, summary: dict, model_dir: Path | None = None) -> dict:
    """Test/infer as asked (with ``model_dir``, default the run's trained model), write ``results.json``,
    and drop the resumable state.

    Without ``--do_train`` the run's existing ``results.json`` (if any) keeps its training results and
    gains the test and prediction entries.
    """
    if args.training.do_train:
        results = {"task": task.name, "selection_metric": args.training.selection_metric, **summary}
    else:
        results = read_results(output_dir) or {"task": task.name}
    results.update(test_and_infer(args, run, task, output_dir, model_dir))
    results["paths"] = {**results.get("paths", {}), "output_dir": str(output_dir)}
    run.write_json("results.json", results)
    trained = Path(model_dir) if model_dir is not None else Path(output_dir) / BEST_DIR
    if run.is_main and args.training.do_train and (trained / FACTS_FILE).is_file():
        update_card(trained, **card_results(results))
    if run.is_main and args.training.do_train:
        remove_state(output_dir)
    logger.info("results written to %s", Path(output_dir) / "results.json")
    return results


def card_results(results: dict) -> dict:
    """The facts of a finished run for its model's card: dev (and test) scores, the assistants on its path."""
    facts = {"dev": results.get("best_dev")}
    if results.get("test_metrics"):
        facts["test"] = results["test_metrics"]
    if results.get("assistants") is not None:
        facts["assistants"] = results["assistants"]
    return facts


def stage_settings(run, **stage) -> dict:
    """What a stage of a schedule depends on: the run's settings and the stage's own facts."""
    return {"run": run.settings, "stage": stage}


def read_stage(stage_dir: Path, settings: dict | None = None) -> StageResult | None:
    """The results of a finished stage (``stage_dir/results.json``), or None if it has not finished.

    With ``settings``, a finished stage must have been trained under them.

    Raises:
        SettingsMismatch: the stage finished under other settings.
    """
    results = read_results(stage_dir)
    if results is None:
        return None
    if settings is not None:
        check_settings(results.get("settings"), settings, stage_dir, "finished stage")
    return StageResult.from_json(results)


def close_stage(run, stage_dir: Path, stage: StageResult, files: dict | None = None) -> None:
    """Mark a stage of a schedule finished: ``results.json`` (+ JSON ``files`` {name: payload}, written
    first), and no resumable state left behind."""
    if run.is_main:
        Path(stage_dir).mkdir(parents=True, exist_ok=True)
        for name, payload in (files or {}).items():
            write_json_atomic(Path(stage_dir) / name, payload)
        write_json_atomic(Path(stage_dir) / "results.json", stage.to_json())
        remove_state(stage_dir)
    run.barrier()
