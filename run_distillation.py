"""Distil a teacher into a student: layer-dropped (kL), sparsified (sS) or given as a directory.

Example (a 90S student of a sparsified MRPC teacher)::

    python run_distillation.py --teacher_model_path outputs/sparse_mrpc/model \\
        --task_name mrpc --layer_or_sparsity 90S --output_dir outputs/distil_90S_mrpc \\
        --learning_rate 3e-5 --per_device_train_batch_size 16 --num_train_epochs 10 --log_interval 10 \\
        --max_grad_norm 5.0 --num_patience_epochs 5 --do_train --do_infer
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from utils.artifacts.model_io import load_teacher, load_tokenizer
from utils.artifacts.students import build_student
from utils.artifacts.task_data import load_train_and_dev
from utils.command.args import (
    DistillScriptArguments,
    StudentArguments,
    parse_args,
)
from utils.command.cli import cli
from utils.command.planner import dry_run
from utils.command.results import finish, train_summary
from utils.command.run import end_run, start_run
from utils.engine.distillation import build_distill_objective
from utils.engine.evaluation import MetricSelector
from utils.engine.loop import train
from utils.engine.sharding import place


@dataclass
class Arguments(DistillScriptArguments):
    student: StudentArguments


def main(argv=None) -> dict:
    args = parse_args(Arguments, argv, description=__doc__)
    args.complete()
    if args.run.dry_run:
        return dry_run(args, args.distill.teacher_model_path, distils=True)
    task, training, model_type, teacher_path = (args.task, args.training, args.model.model_type,
                                                args.distill.teacher_model_path)
    run = start_run(args, "run_distillation", training=training.do_train)
    summary = {}
    if training.do_train:
        tokenizer = load_tokenizer(teacher_path)
        teacher = place(load_teacher(model_type, teacher_path, task), run)
        student = build_student(model_type, teacher_path, args.student.student, task)
        data = load_train_and_dev(args.data, task, tokenizer)
        objective = build_distill_objective(teacher, args.distill, task.kind == "regression", run.fsdp)
        selector = MetricSelector(data["dev"], training.selection_metric, training.per_device_eval_batch_size, run)
        result = train(training, run, student, data["train"], objective, selector, tokenizer, run.output_dir,
                       resume=run.resume)
        summary = train_summary(result, model_type).to_json()
    results = finish(args, run, task, run.output_dir, summary)
    end_run(run)
    return results


if __name__ == "__main__":
    sys.exit(cli(main))
