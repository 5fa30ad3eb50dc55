"""Fine-tune a pretrained BERT on a task into a teacher in our format.

Example (BERT-base on MRPC)::

    python run_finetuning.py --model_name_or_path bert-base-uncased \\
        --task_name mrpc --data_dir datasets --output_dir outputs/ft_mrpc \\
        --learning_rate 3e-5 --per_device_train_batch_size 16 --num_train_epochs 10 --log_interval 10 \\
        --max_grad_norm 5.0 --do_train --do_infer
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from data.tasks import TaskSpec
from utils.artifacts.model_io import load_model, load_tokenizer
from utils.artifacts.task_data import load_train_and_dev
from utils.command.args import (
    DataArguments,
    FinetuneArguments,
    ModelArguments,
    RunArguments,
    TrainingArguments,
    complete_task,
    parse_args,
)
from utils.command.cli import cli
from utils.command.planner import dry_run
from utils.command.results import finish, train_summary
from utils.command.run import end_run, start_run
from utils.engine.evaluation import MetricSelector
from utils.engine.loop import train
from utils.engine.objectives import TaskObjective


@dataclass
class Arguments:
    run: RunArguments
    model: ModelArguments
    finetune: FinetuneArguments
    data: DataArguments
    training: TrainingArguments
    task: TaskSpec | None = field(init=False, default=None)

    def complete(self) -> None:
        """Fill in what the checkpoint decides (reads its config): see :func:`utils.command.args.complete_task`."""
        self.task = complete_task(self.model, self.data, self.finetune.model_name_or_path, "--model_name_or_path",
                                  self.training, dry_run=self.run.dry_run)


def main(argv=None) -> dict:
    args = parse_args(Arguments, argv, description=__doc__)
    args.complete()
    if args.run.dry_run:
        return dry_run(args, args.finetune.model_name_or_path, distils=False)
    task, training = args.task, args.training
    run = start_run(args, "run_finetuning", training=training.do_train)
    summary = {}
    if training.do_train:
        path = args.finetune.model_name_or_path
        tokenizer = load_tokenizer(path)
        data = load_train_and_dev(args.data, task, tokenizer)
        # A language model keeps the checkpoint's own head (its next-token logits); a task gets a new one.
        head = {} if task.is_lm_task else {"num_labels": task.num_labels,
                                           "id2label": dict(enumerate(task.labels or ("score",)))}
        model = load_model(args.model.model_type, path, new_head=not task.is_lm_task, finetuning_task=task.name,
                           **head)
        selector = MetricSelector(data["dev"], training.selection_metric, training.per_device_eval_batch_size, run)
        result = train(training, run, model, data["train"], TaskObjective(), selector, tokenizer, run.output_dir,
                       resume=run.resume)
        summary = train_summary(result, args.model.model_type).to_json()
    results = finish(args, run, task, run.output_dir, summary)
    end_run(run)
    return results


if __name__ == "__main__":
    sys.exit(cli(main))
