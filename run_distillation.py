"""Distil a teacher into a student: layer-dropped (kL), sparsified (sS) or given as a directory.

Example (a 90S student of a sparsified MRPC teacher)::

    python run_distillation.py --model_type sparsebert_cls --teacher_model_path outputs/sparse_mrpc \\
        --task_name mrpc --data_type bert_cls --layer_or_sparsity 90S --output_dir outputs/distil_90S_mrpc \\
        --learning_rate 3e-5 --per_device_train_batch_size 16 --num_train_epochs 10 --log_interval 10 \\
        --max_grad_norm 5.0 --num_patience_epochs 5 --do_train --do_infer
"""

from __future__ import annotations

import sys

from utils.args import (
    DataArguments,
    DistillationArguments,
    ModelArguments,
    RunArguments,
    StudentArguments,
    TrainingArguments,
    parse_args,
)
from utils.loop import MetricSelector, train
from utils.objectives import DistillObjective
from utils.run import end_run, start_run
from utils.stage import (
    build_student,
    check_model_path,
    cli,
    finish,
    load_teacher,
    load_tokenizer,
    load_train_and_dev,
    resolve_task,
    train_summary,
)

GROUPS = (RunArguments, ModelArguments, DistillationArguments, StudentArguments, DataArguments, TrainingArguments)


def main(argv=None) -> dict:
    args = parse_args(GROUPS, argv, description=__doc__)
    task = resolve_task(args)
    check_model_path(args.teacher_model_path, "--teacher_model_path")
    run = start_run(args, "run_distillation", training=args.do_train)
    summary = {}
    if args.do_train:
        tokenizer = load_tokenizer(args.teacher_model_path)
        teacher = load_teacher(args, task).to(run.device)
        student = build_student(args.model_type, args.teacher_model_path, args.layer_or_sparsity, task)
        data = load_train_and_dev(args, task, tokenizer)
        objective = DistillObjective(teacher, args.objective, args.kd_temperature, task.kind == "regression")
        selector = MetricSelector(data["dev"], args.selection_metric, args.per_device_eval_batch_size, run)
        result = train(args, run, student, data["train"], objective, selector, tokenizer, run.output_dir,
                       resume=run.resume)
        summary = train_summary(result, args.model_type)
    results = finish(args, run, task, run.output_dir, summary)
    end_run(run)
    return results


if __name__ == "__main__":
    sys.exit(cli(main))
