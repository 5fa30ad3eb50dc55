"""Fine-tune a pretrained BERT on a task into a teacher in our format.

Example (the real MiniLM checkpoint on the offline polarity corpus)::

    python run_finetuning.py --model_type sparsebert_cls --model_name_or_path bert-base-uncased \\
        --task_name mrpc --data_type bert_cls --data_dir datasets --output_dir outputs/ft_mrpc \\
        --learning_rate 3e-5 --per_device_train_batch_size 16 --num_train_epochs 10 --log_interval 10 \\
        --max_grad_norm 5.0 --do_train --do_infer
"""

from __future__ import annotations

import sys

from utils.args import (
    DataArguments,
    FinetuneArguments,
    ModelArguments,
    RunArguments,
    TrainingArguments,
    parse_args,
)
from utils.loop import MetricSelector, train
from utils.objectives import TaskObjective
from utils.run import end_run, start_run
from utils.stage import (
    check_model_path,
    cli,
    finish,
    load_model,
    load_tokenizer,
    load_train_and_dev,
    resolve_task,
    train_summary,
)

GROUPS = (RunArguments, ModelArguments, FinetuneArguments, DataArguments, TrainingArguments)


def main(argv=None) -> dict:
    args = parse_args(GROUPS, argv, description=__doc__)
    task = resolve_task(args)
    check_model_path(args.model_name_or_path, "--model_name_or_path")
    run = start_run(args, "run_finetuning", training=args.do_train)
    summary = {}
    if args.do_train:
        tokenizer = load_tokenizer(args.model_name_or_path)
        data = load_train_and_dev(args, task, tokenizer)
        model = load_model(args.model_type, args.model_name_or_path, new_head=True, num_labels=task.num_labels,
                           finetuning_task=task.name, id2label=dict(enumerate(task.labels or ("score",))))
        selector = MetricSelector(data["dev"], args.selection_metric, args.per_device_eval_batch_size, run)
        result = train(args, run, model, data["train"], TaskObjective(), selector, tokenizer, run.output_dir,
                       resume=run.resume)
        summary = train_summary(result, args.model_type)
    results = finish(args, run, task, run.output_dir, summary)
    end_run(run)
    return results


if __name__ == "__main__":
    sys.exit(cli(main))
