"""MiniDisc: choose the teacher assistant in one trial, then distil the student through it.

Iteration 1 trains every candidate width (sparsity ≥ --trunc_sparsity) of a supernet copied from
the sparsified teacher at once (sandwich), scores each width on dev, and picks the assistant that
maximises τ(s) = P(s) + λ·s/100 between the teacher's sparsity and the target. Iteration 2 starts
from the assistant and produces the student at --target_sparsity (jointly with the wider widths,
as the reference does, or alone with --final_student alone). Each iteration writes ``iter_k/``
with its own run files; ``schedule.json`` and ``schedule.png`` describe the choices.

Example::

    python run_minidisc.py --model_type sparsebert_cls --teacher_model_path outputs/sparse_mrpc/model \\
        --task_name mrpc --data_type bert_cls --target_sparsity 90 --lam 0.2 --output_dir outputs/minidisc_mrpc \\
        --learning_rate 3e-5 --per_device_train_batch_size 16 --num_train_epochs 10 --log_interval 10 \\
        --max_grad_norm 5.0 --num_patience_epochs 5 --do_train --do_infer
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from utils.args import (
    DataArguments,
    DistillationArguments,
    ModelArguments,
    RunArguments,
    ScheduleArguments,
    TrainingArguments,
    parse_args,
)
from utils.errors import StageError
from utils.loop import BEST_DIR, MetricSelector, evaluate, train
from utils.objectives import DistillObjective, SandwichObjective
from utils.run import end_run, start_run, write_json_atomic
from utils.schedule import SandwichSelector, plot_schedule
from utils.stage import (
    build_student,
    check_model_path,
    check_model_task,
    check_sparsity_available,
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

logger = logging.getLogger("run_minidisc")

GROUPS = (RunArguments, ModelArguments, DistillationArguments, ScheduleArguments, DataArguments, TrainingArguments)


def run_iteration(args, run, task, tokenizer, teacher_path: str, stage_dir: Path, iteration: int, data) -> dict:
    """Train one iteration from ``teacher_path`` into ``stage_dir``; return its summary with the schedule."""
    final = iteration == args.target_iteration
    teacher = load_model(args.model_type, teacher_path).to(run.device)
    check_model_task(teacher, task, teacher_path)
    teacher_sparsity = teacher.config.sparsity
    distill = DistillObjective(teacher, args.objective, args.kd_temperature, task.kind == "regression")
    if final and args.final_student == "alone":
        model = build_student(args.model_type, teacher_path, f"{args.target_sparsity}S", task)
        objective, selector = distill, MetricSelector(data["dev"], args.selection_metric,
                                                      args.per_device_eval_batch_size, run)
    else:
        model = load_model(args.model_type, teacher_path)
        widths = [s for s in model.available_sparsities() if s >= max(args.trunc_sparsity, teacher_sparsity)]
        objective = SandwichObjective(distill, widths, rest_width=teacher_sparsity)
        selector = SandwichSelector(data["dev"], args.selection_metric, args.per_device_eval_batch_size, run, widths,
                                    rest_width=teacher_sparsity, lam=args.lam, low=teacher_sparsity,
                                    target=args.target_sparsity, choose_assistant=not final,
                                    export_dir=stage_dir / "export" if args.export_all else None, tokenizer=tokenizer)
        logger.info("iteration %d: sandwich over widths %s from a %dS teacher", iteration, widths, teacher_sparsity)
    result = train(args, run, model, data["train"], objective, selector, tokenizer, stage_dir, resume=True,
                   extra_state={"iteration": iteration})
    summary = {**train_summary(result, args.model_type), "settings": stage_settings(run, iteration=iteration)}
    schedule = selector.summary() if isinstance(selector, SandwichSelector) else {"selected": args.target_sparsity}
    schedule.update(iteration=iteration, teacher=teacher_path, teacher_sparsity=teacher_sparsity,
                    mode="alone" if isinstance(selector, MetricSelector) else "sandwich")
    schedule["role"] = "student" if schedule["selected"] == args.target_sparsity else "assistant"
    summary["schedule"] = schedule
    return summary


def main(argv=None) -> dict:
    args = parse_args(GROUPS, argv, description=__doc__)
    task = resolve_task(args)
    check_model_path(args.teacher_model_path, "--teacher_model_path")
    run = start_run(args, "run_minidisc", training=args.do_train)
    summary, student_dir = {}, None
    if args.do_train:
        tokenizer = load_tokenizer(args.teacher_model_path)
        teacher = load_teacher(args, task)
        check_sparsity_available(teacher, args.target_sparsity, args.teacher_model_path, "--target_sparsity")
        if args.target_sparsity < teacher.config.sparsity:
            raise StageError(f"--target_sparsity {args.target_sparsity} is below the teacher's own sparsity "
                             f"{teacher.config.sparsity}")
        data = load_train_and_dev(args, task, tokenizer)
        teacher_dev = evaluate(teacher.to(run.device), data["dev"], args.per_device_eval_batch_size, run, "teacher")
        logger.info("teacher dev: %s", teacher_dev)
        del teacher
        teacher_path, iterations = args.teacher_model_path, []
        for k in range(1, args.target_iteration + 1):
            stage_dir = run.output_dir / f"iter_{k}"
            stage = read_stage(stage_dir, stage_settings(run, iteration=k))
            if stage is None:
                stage = run_iteration(args, run, task, tokenizer, teacher_path, stage_dir, k, data)
                close_stage(run, stage_dir, stage)
            else:
                logger.info("iteration %d already finished in %s: reusing it", k, stage_dir)
            iterations.append(stage)
            teacher_path = str(stage_dir / BEST_DIR)
            if stage["schedule"]["role"] == "student":
                break
        schedule = [it["schedule"] for it in iterations]
        if run.is_main:
            write_json_atomic(run.output_dir / "schedule.json", {"metric": args.selection_metric, "lam": args.lam,
                                                                 "iterations": schedule})
            plot_schedule(schedule, run.output_dir / "schedule.png", args.selection_metric)
        student_dir = Path(teacher_path)
        assistants = [s["selected"] for s in schedule if s["role"] == "assistant"]
        last = {key: value for key, value in iterations[-1].items() if key != "settings"}
        summary = {**last, "teacher_dev": teacher_dev, "assistants": assistants, "schedule": schedule,
                   "iterations": [{k: it[k] for k in ("best_step", "best_score", "best_dev", "model", "train")}
                                  for it in iterations]}
        summary["paths"] = {**summary["paths"], "student": str(student_dir),
                            "schedule": str(run.output_dir / "schedule.json")}
        logger.info("assistants %s; student %dS dev %s", assistants or "none", args.target_sparsity,
                    summary["best_dev"])
    results = finish(args, run, task, run.output_dir, summary, model_dir=student_dir)
    end_run(run)
    return results


if __name__ == "__main__":
    sys.exit(cli(main))
