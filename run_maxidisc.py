"""MaxiDisc: distil through a hand-given chain of teacher assistants, and the exhaustive baseline.

``--layer_or_sparsity_path 80,90S`` distils teacher → 80S assistant → 90S student; each stage's
best becomes the next teacher and each stage writes ``iter_k/`` with its own run files. Several
paths separated by ``;`` (or ``--search_assistants``, which tries every assistant of the teacher's
map between --trunc_sparsity and the target, plus the direct path) run in turn, each in its own
folder, and ``results.json`` ranks them with their cost: the "maximal effort" baseline in one
command. A finished stage is reused, not retrained, wherever a stage with the same key (teacher,
path prefix and training settings) has finished under --reuse_dir.

Example::

    python run_maxidisc.py --model_type sparsebert_cls --teacher_model_path outputs/sparse_mrpc/model \\
        --task_name mrpc --data_type bert_cls --layer_or_sparsity_path 90S --search_assistants \\
        --output_dir outputs/maxidisc_mrpc --learning_rate 3e-5 --per_device_train_batch_size 16 \\
        --num_train_epochs 10 --log_interval 10 --max_grad_norm 5.0 --num_patience_epochs 5 --do_train
"""

from __future__ import annotations

import json
import logging
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from utils.args import (
    DataArguments,
    DistillationArguments,
    ModelArguments,
    RunArguments,
    TrainingArguments,
    arg,
    parse_args,
)
from utils.errors import ArgumentError
from utils.fingerprint import settings_key
from utils.loop import BEST_DIR, MetricSelector, train
from utils.objectives import DistillObjective
from utils.run import end_run, start_run
from utils.stage import (
    build_student,
    check_model_path,
    check_model_task,
    cli,
    close_stage,
    finish,
    load_model,
    load_teacher,
    load_tokenizer,
    load_train_and_dev,
    read_stage,
    resolve_task,
    stage_settings,
    train_summary,
)

logger = logging.getLogger("run_maxidisc")

STAGE_FILE = "stage.json"

# Flags that choose which chains run, not what a stage learns: left out of a stage's key, so a stage
# trained by one MaxiDisc command is reused by another with the same settings.
CHAIN_FLAGS = ("layer_or_sparsity_path", "search_assistants", "trunc_sparsity")


@dataclass
class MaxiDiscArguments:
    layer_or_sparsity_path: str = arg("6,4L", help="Chain of students ending in the final one, e.g. 80,90S or 6,4L; "
                                      "several chains separated by ';'.")
    search_assistants: bool = arg(False, help="For a one-stage path such as 90S, try every assistant of the "
                                  "teacher's map between --trunc_sparsity and the target, plus the direct path.")
    trunc_sparsity: int = arg(50, help="Smallest assistant sparsity tried by --search_assistants.")
    reuse_dir: str | None = arg(None, help="Folder searched for finished stages to reuse (default: the parent of "
                                "--output_dir).")


PATH = re.compile(r"^\d+(,\d+)*[LS]$")


def parse_path(path: str) -> list[str]:
    """``"80,90S"`` → ``["80S", "90S"]``; layers must decrease and sparsities increase along a path."""
    text = path.replace(" ", "")
    if not PATH.match(text):
        raise ArgumentError(f"--layer_or_sparsity_path {path!r}: expected comma-separated numbers ending in L or S, "
                            "e.g. 80,90S or 6,4L")
    unit, values = text[-1], [int(v) for v in text[:-1].split(",")]
    steps = list(zip(values, values[1:], strict=False))
    if unit == "S" and any(b <= a for a, b in steps):
        raise ArgumentError(f"--layer_or_sparsity_path {path}: sparsities must increase along the path")
    if unit == "L" and any(b >= a for a, b in steps):
        raise ArgumentError(f"--layer_or_sparsity_path {path}: layer counts must decrease along the path")
    if unit == "S" and values[-1] > 99:
        raise ArgumentError(f"--layer_or_sparsity_path {path}: a sparsity must be between 0 and 99")
    return [f"{v}{unit}" for v in values]


def path_name(path: list[str]) -> str:
    """``["80S", "90S"]`` → ``"80,90S"``: the path as written on the command line."""
    return ",".join(spec[:-1] for spec in path) + path[-1][-1]


def expand_paths(args, teacher) -> list[list[str]]:
    """The chains to run: the given ones, or every assistant for the target with --search_assistants."""
    paths = [parse_path(p) for p in args.layer_or_sparsity_path.split(";") if p.strip()]
    if not args.search_assistants:
        return paths
    if len(paths) != 1 or len(paths[0]) != 1 or not paths[0][0].endswith("S"):
        raise ArgumentError("--search_assistants needs one target sparsity as the path, e.g. 90S")
    target, low = int(paths[0][0][:-1]), max(args.trunc_sparsity, teacher.config.sparsity + 1)
    assistants = [s for s in teacher.available_sparsities() if low <= s < target]
    return [[f"{s}S", f"{target}S"] for s in assistants] + [[f"{target}S"]]


def stage_key(parent_key: str, spec: str, run) -> str:
    """The key of a stage: its teacher (the content of the original teacher, or the previous stage's
    key), its student and the run's settings but the chain flags. Equal keys = interchangeable stages."""
    settings = {name: value for name, value in run.settings.items() if name not in CHAIN_FLAGS}
    return settings_key({"parent": parent_key, "student": spec, "settings": settings})


def find_finished_stage(reuse_dir: Path, key: str, exclude: Path) -> Path | None:
    """A finished stage folder with this key under ``reuse_dir`` (its best/ intact), or None."""
    for marker in sorted(reuse_dir.rglob(STAGE_FILE)):
        folder = marker.parent
        if folder == exclude:
            continue
        try:
            same = json.loads(marker.read_text()).get("key") == key
            finished = same and json.loads((folder / "results.json").read_text()).get("key") == key
        except (OSError, json.JSONDecodeError):
            continue
        if finished and (folder / BEST_DIR).is_dir():
            return folder
    return None


def run_path(args, run, task, tokenizer, data, path: list[str], path_dir: Path, reuse_dir: Path) -> dict:
    """Distil along one chain; return the final student's summary with every stage's cost.

    A stage's ``stage.json`` (its key) is written only when the stage has finished, by training or
    by reuse, so a key always describes how the stage's model was made.
    """
    teacher_path, parent_key, stages = args.teacher_model_path, run.settings["teacher_model_path"], []
    for k, spec in enumerate(path, start=1):
        stage_dir = path_dir / f"iter_{k}"
        key = stage_key(parent_key, spec, run)
        settings = stage_settings(run, key=key)
        marker = {"key": key, "student": spec, "path": path_name(path), "teacher": teacher_path}
        summary = read_stage(stage_dir, settings)
        source = None if summary else find_finished_stage(reuse_dir, key, stage_dir)
        if summary is None and source is not None:
            logger.info("stage %s of %s: reusing the finished stage %s", spec, path_name(path), source)
            summary = {**json.loads((source / "results.json").read_text()), "reused_from": str(source),
                       "settings": settings}
            close_stage(run, stage_dir, summary, {STAGE_FILE: {**marker, "reused_from": str(source)}})
        elif summary is None:
            logger.info("stage %d/%d of %s: %s → %s", k, len(path), path_name(path), teacher_path, spec)
            teacher = load_model(args.model_type, teacher_path)
            check_model_task(teacher, task, teacher_path)
            student = build_student(args.model_type, teacher_path, spec, task)
            objective = DistillObjective(teacher.to(run.device), args.objective, args.kd_temperature,
                                         task.kind == "regression")
            selector = MetricSelector(data["dev"], args.selection_metric, args.per_device_eval_batch_size, run)
            result = train(args, run, student, data["train"], objective, selector, tokenizer, stage_dir, resume=True,
                           extra_state={"key": key})
            summary = {**train_summary(result, args.model_type), "student": spec, "key": key,
                       "model_dir": str(stage_dir / BEST_DIR), "settings": settings}
            close_stage(run, stage_dir, summary, {STAGE_FILE: marker})
        stages.append(summary)
        teacher_path = summary["model_dir"]
        parent_key = key
    trained = [s for s in stages if "reused_from" not in s]
    return {**{k: v for k, v in stages[-1].items() if k != "settings"}, "path": path_name(path),
            "student_dir": teacher_path,
            "reused_from": [s["reused_from"] for s in stages if "reused_from" in s],
            "cost": {"stages_trained": len(trained), "stages_reused": len(stages) - len(trained),
                     "steps": sum(s["train"]["steps"] for s in trained),
                     "seconds": round(sum(s["train"]["seconds"] for s in trained), 2),
                     "steps_incl_reused": sum(s["train"]["steps"] for s in stages),
                     "seconds_incl_reused": round(sum(s["train"]["seconds"] for s in stages), 2)}}


def main(argv=None) -> dict:
    args = parse_args(GROUPS, argv, description=__doc__,
                      validate=lambda ns: [parse_path(p) for p in ns.layer_or_sparsity_path.split(";") if p.strip()])
    task = resolve_task(args)
    check_model_path(args.teacher_model_path, "--teacher_model_path")
    run = start_run(args, "run_maxidisc", training=args.do_train)
    summary, student_dir = {}, None
    if args.do_train:
        tokenizer = load_tokenizer(args.teacher_model_path)
        paths = expand_paths(args, load_teacher(args, task))
        data = load_train_and_dev(args, task, tokenizer)
        reuse_dir = Path(args.reuse_dir) if args.reuse_dir else run.output_dir.resolve().parent
        outcomes = []
        for path in paths:
            path_dir = run.output_dir if len(paths) == 1 else run.output_dir / path_name(path)
            outcomes.append(run_path(args, run, task, tokenizer, data, path, path_dir, reuse_dir))
        best = max(outcomes, key=lambda o: o["best_score"])
        student_dir = Path(best["student_dir"])
        table = [{"path": o["path"], "score": o["best_score"], "dev": o["best_dev"], **o["cost"],
                  "reused_from": o["reused_from"]} for o in outcomes]
        for row in table:
            reused = f"  (reused {', '.join(row['reused_from'])})" if row["reused_from"] else ""
            logger.info("%-12s %s %.4f  steps %d  seconds %.1f%s", row["path"], args.selection_metric, row["score"],
                        row["steps"], row["seconds"], reused)
        summary = {**best, "best_path": best["path"], "paths_tried": table,
                   "total_cost": {"steps": sum(r["steps"] for r in table),
                                  "seconds": round(sum(r["seconds"] for r in table), 2)}}
        summary["paths"] = {**best["paths"], "student": str(student_dir)}
    results = finish(args, run, task, run.output_dir, summary, model_dir=student_dir)
    end_run(run)
    return results


GROUPS = (RunArguments, ModelArguments, DistillationArguments, MaxiDiscArguments, DataArguments, TrainingArguments)

if __name__ == "__main__":
    sys.exit(cli(main))
