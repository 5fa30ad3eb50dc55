"""MiniDisc: choose the teacher assistant in one trial, then distil the student through it.

Iteration 1 trains every candidate sparsity (≥ --trunc_sparsity) of a supernet copied from
the sparsified teacher at once (sandwich), scores each on dev, and picks the assistant that
maximises τ(s) = P(s) + λ·s/100 between the teacher's sparsity and the target. Iteration 2 starts
from the assistant and produces the student at --target_sparsity (jointly with the less sparse candidates,
as the reference does, or alone with --final_student alone). Each iteration writes ``iter_k/``
with its own run files; ``schedule.json`` and ``schedule.png`` describe the choices.

Example::

    python run_minidisc.py --teacher_model_path outputs/sparse_mrpc/model \\
        --task_name mrpc --target_sparsity 90 --lam 0.2 --output_dir outputs/minidisc_mrpc \\
        --learning_rate 3e-5 --per_device_train_batch_size 16 --num_train_epochs 10 --log_interval 10 \\
        --max_grad_norm 5.0 --num_patience_epochs 5 --do_train --do_infer
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from utils.artifacts.files import write_json_atomic
from utils.artifacts.model_io import load_model, load_teacher, load_tokenizer
from utils.artifacts.students import StudentSpec, build_student, check_sparsity_available
from utils.artifacts.task_data import load_train_and_dev
from utils.command.args import (
    DistillScriptArguments,
    ScheduleArguments,
    parse_args,
)
from utils.command.cli import cli
from utils.command.planner import dry_run
from utils.command.results import StageResult, close_stage, finish, read_stage, stage_settings, train_summary
from utils.command.run import end_run, start_run
from utils.engine.checkpoint import BEST_DIR
from utils.engine.distillation import build_distill_objective
from utils.engine.evaluation import MetricSelector, evaluate
from utils.engine.loop import train
from utils.engine.objectives import SandwichObjective
from utils.engine.schedule import (
    PREDICTIONS_FILE,
    SandwichSelector,
    ScheduleRecord,
    fixed_subset,
    plot_schedule,
)
from utils.engine.sharding import place
from utils.errors import StageError

logger = logging.getLogger("run_minidisc")


@dataclass
class Arguments(DistillScriptArguments):
    schedule: ScheduleArguments


def run_iteration(args, run, tokenizer, teacher_path: str, stage_dir: Path, iteration: int, data,
                  scale: float = 1.0) -> StageResult:
    """Train one iteration from ``teacher_path`` into ``stage_dir``; return what it produced, with its schedule.
    ``scale`` turns the dev metric into P(s) (:class:`~utils.engine.schedule.SandwichSelector`)."""
    task, model_type, schedule_args, training = args.task, args.model.model_type, args.schedule, args.training
    final = iteration == schedule_args.target_iteration
    teacher = place(load_teacher(model_type, teacher_path, task), run)
    teacher_sparsity = teacher.config.sparsity
    distill = build_distill_objective(teacher, args.distill, task.kind == "regression", run.fsdp)
    if final and schedule_args.final_student == "alone":
        model = build_student(model_type, teacher_path, StudentSpec(sparsity=schedule_args.target_sparsity), task)
        objective, selector = distill, MetricSelector(data["dev"], training.selection_metric,
                                                      training.per_device_eval_batch_size, run)
    else:
        model = load_model(model_type, teacher_path)
        sparsities = [s for s in model.available_sparsities()
                      if s >= max(schedule_args.trunc_sparsity, teacher_sparsity)]
        objective = SandwichObjective(distill, sparsities, sample=schedule_args.sandwich_sample, seed=run.seed)
        dev = data["dev"]
        if not final and schedule_args.search_eval_samples:
            dev = dev.subset(fixed_subset(len(dev.examples), schedule_args.search_eval_samples))
            logger.info("iteration %d scores the candidates on %d of the %d dev examples", iteration,
                        len(dev.examples), len(data["dev"].examples))
        selector = SandwichSelector(dev, training.selection_metric, training.per_device_eval_batch_size, run,
                                    sparsities, lam=schedule_args.lam,
                                    low=teacher_sparsity, target=schedule_args.target_sparsity,
                                    choose_assistant=not final,
                                    export_dir=stage_dir / "export" if schedule_args.export_all else None,
                                    tokenizer=tokenizer,
                                    predictions_path=stage_dir / PREDICTIONS_FILE
                                    if schedule_args.record_predictions else None, scale=scale)
        logger.info("iteration %d: sandwich over sparsities %s from a %dS teacher", iteration, sparsities,
                    teacher_sparsity)
    if not final and schedule_args.search_max_steps:
        training = replace(training, max_steps=schedule_args.search_max_steps)
    result = train(training, run, model, data["train"], objective, selector, tokenizer, stage_dir, resume=True,
                   extra_state={"iteration": iteration})
    search = selector.summary() if isinstance(selector, SandwichSelector) else {
        "selected": schedule_args.target_sparsity}
    schedule = ScheduleRecord(iteration=iteration, teacher=teacher_path, teacher_sparsity=teacher_sparsity,
                              mode="alone" if isinstance(selector, MetricSelector) else "sandwich",
                              role="student" if search["selected"] == schedule_args.target_sparsity else "assistant",
                              **search)
    return replace(train_summary(result, model_type), settings=stage_settings(run, iteration=iteration),
                   schedule=schedule)


def main(argv=None) -> dict:
    args = parse_args(Arguments, argv, description=__doc__)
    args.complete()
    if args.run.dry_run:
        return dry_run(args, args.distill.teacher_model_path, distils=True, sandwich=True)
    task, training, schedule_args = args.task, args.training, args.schedule
    target, metric = schedule_args.target_sparsity, training.selection_metric
    run = start_run(args, "run_minidisc", training=training.do_train)
    summary, student_dir = {}, None
    if training.do_train:
        teacher_path = args.distill.teacher_model_path
        tokenizer = load_tokenizer(teacher_path)
        teacher = load_teacher(args.model.model_type, teacher_path, task)
        check_sparsity_available(teacher, target, teacher_path, "--target_sparsity")
        if target < teacher.config.sparsity:
            raise StageError(f"--target_sparsity {target} is below the teacher's own sparsity "
                             f"{teacher.config.sparsity}")
        data = load_train_and_dev(args.data, task, tokenizer)
        teacher_dev = evaluate(place(teacher, run), data["dev"], training.per_device_eval_batch_size, run,
                               "teacher")
        logger.info("teacher dev: %s", teacher_dev)
        # P(s) of a language model is the teacher's perplexity over the student's (its metric is 1 / perplexity)
        scale = teacher_dev["perplexity"] if task.is_lm_task else 1.0
        del teacher
        iterations = []
        for k in range(1, schedule_args.target_iteration + 1):
            stage_dir = run.output_dir / f"iter_{k}"
            stage = read_stage(stage_dir, stage_settings(run, iteration=k))
            if stage is None:
                stage = run_iteration(args, run, tokenizer, teacher_path, stage_dir, k, data, scale)
                close_stage(run, stage_dir, stage)
            else:
                logger.info("iteration %d already finished in %s: reusing it", k, stage_dir)
            iterations.append(stage)
            teacher_path = str(stage_dir / BEST_DIR)
            if stage.schedule.role == "student":
                break
        schedule = [it.schedule.to_json() for it in iterations]
        if run.is_main:
            write_json_atomic(run.output_dir / "schedule.json", {"metric": metric, "lam": schedule_args.lam,
                                                                 "iterations": schedule})
            plot_schedule(schedule, run.output_dir / "schedule.png", metric,
                          student_score=(iterations[-1].best_dev or {}).get(metric),
                          teacher_score=teacher_dev.get(metric))
        student_dir = Path(teacher_path)
        assistants = [it.schedule.selected for it in iterations if it.schedule.role == "assistant"]
        last = {key: value for key, value in iterations[-1].to_json().items() if key != "settings"}
        summary = {**last, "teacher_dev": teacher_dev, "assistants": assistants, "schedule": schedule,
                   "iterations": [{k: getattr(it, k) for k in ("best_step", "best_score", "best_dev", "model", "train")}
                                  for it in iterations]}
        summary["paths"] = {**summary["paths"], "student": str(student_dir),
                            "schedule": str(run.output_dir / "schedule.json")}
        logger.info("assistants %s; student %dS dev %s", assistants or "none", target, summary["best_dev"])
    results = finish(args, run, task, run.output_dir, summary, model_dir=student_dir)
    end_run(run)
    return results


if __name__ == "__main__":
    sys.exit(cli(main))
