"""Compare our fine-tuning with a plain Hugging Face fine-tune of the same checkpoint.

Two runs on the same task, with the same seed, data order, budget and schedule:

1. ours: ``run_finetuning.main([...])`` (``sparsebert_cls``, the project's loop);
2. HF: ``transformers.BertForSequenceClassification`` trained by the short loop below: torch AdamW
   with the same groups (``utils.engine.step.build_optimizer``: no weight decay on biases and LayerNorm
   weights), the linear warmup schedule from ``transformers.get_scheduler``, gradient clipping, the
   same batches (``utils.engine.batches.EpochBatches`` over the same tokenised features, dynamic padding),
   evaluation on the whole dev set at the same steps, and the best dev accuracy kept.

Prints both best dev accuracies and the difference (target: ours within one point of HF).
The heads are not identical: HF classifies from the pooler (dense + tanh over [CLS]) that it
initialises from the checkpoint, while our head's first dense (also dense + tanh over [CLS]) is new.

Example (≈ 200 steps each; a few minutes per run on 2 idle cores)::

    python benchmarks/compare_hf_finetune.py --model_dir /tmp/minilm --data_dir /tmp/datasets \\
        --output_dir /tmp/compare_hf_finetune
"""

import argparse
import json
import logging
import math
import time
from pathlib import Path

import torch
from common import collate, encode_split, encoder_inputs, load_average
from transformers import AutoTokenizer, BertForSequenceClassification, get_scheduler

import run_finetuning
from data.tasks import get_task
from utils.artifacts.files import write_json_atomic
from utils.command.run import setup_logging
from utils.engine.batches import EpochBatches
from utils.engine.checkpoint import set_seed
from utils.engine.step import build_optimizer, optimizer_step

logger = logging.getLogger("compare_hf_finetune")

HEAD_NOTE = ("note: HF's BertForSequenceClassification classifies from the pooler (dense+tanh over [CLS]) "
             "initialised from the checkpoint; our head's first dense+tanh over [CLS] is newly initialised.")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_dir", required=True, help="pretrained BERT checkpoint (e.g. all-MiniLM-L6-v2)")
    parser.add_argument("--data_dir", required=True, help="folder holding {task_name}/train.tsv and dev.tsv")
    parser.add_argument("--output_dir", required=True, help="run folders ours/ and hf/, and compare.json")
    parser.add_argument("--task_name", default="polarity", help="a sequence classification task")
    parser.add_argument("--max_length", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--learning_rate", type=float, default=5e-5)
    parser.add_argument("--weight_decay", type=float, default=0.01)
    parser.add_argument("--num_train_epochs", type=int, default=2)
    parser.add_argument("--warmup_proportion", type=float, default=0.1)
    parser.add_argument("--max_grad_norm", type=float, default=1.0)
    parser.add_argument("--log_interval", type=int, default=25, help="evaluate on the whole dev set every N steps")
    parser.add_argument("--eval_batch_size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=776)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--max_train_samples", type=int, default=None, help="first N training examples (smoke runs)")
    parser.add_argument("--max_eval_samples", type=int, default=None, help="first N dev examples (smoke runs)")
    parser.add_argument("--skip_ours", action="store_true", help="reuse the finished run in OUTPUT_DIR/ours")
    parser.add_argument("--skip_hf", action="store_true", help="reuse the finished run in OUTPUT_DIR/hf")
    return parser.parse_args(argv)


def run_ours(args) -> dict:
    """Fine-tune with the project's script; its best dev accuracy, step and wall-clock seconds."""
    start = time.time()
    limits = [item for flag in ("max_train_samples", "max_eval_samples") if getattr(args, flag)
              for item in (f"--{flag}", str(getattr(args, flag)))]
    run_finetuning.main([
        "--model_type", "sparsebert_cls", "--model_name_or_path", args.model_dir, "--task_name", args.task_name,
        "--data_type", "bert_cls", "--data_dir", args.data_dir, "--output_dir", str(Path(args.output_dir) / "ours"),
        "--overwrite_output_dir", "--max_length", str(args.max_length),
        "--per_device_train_batch_size", str(args.batch_size), "--per_device_eval_batch_size", str(args.eval_batch_size),
        "--learning_rate", str(args.learning_rate), "--weight_decay", str(args.weight_decay),
        "--num_train_epochs", str(args.num_train_epochs), "--warmup_proportion", str(args.warmup_proportion),
        "--max_grad_norm", str(args.max_grad_norm), "--log_interval", str(args.log_interval),
        # patience longer than the budget: both runs see every evaluation
        "--num_patience_epochs", str(args.num_train_epochs + 1), "--lr_scheduler_type", "linear",
        "--selection_metric", "acc", "--seed", str(args.seed), "--do_train", *limits,
    ])
    summary = summarise_ours(Path(args.output_dir) / "ours", round(time.time() - start, 1))
    write_json_atomic(Path(args.output_dir) / "ours" / "comparison.json", summary)
    return summary


def summarise_ours(run_dir: Path, seconds: float | None = None) -> dict:
    """Best dev accuracy, its step, the dev curve and the cost of our finished run in ``run_dir``."""
    if seconds is None:
        return json.loads((run_dir / "comparison.json").read_text())
    results = json.loads((run_dir / "results.json").read_text())
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {"best_acc": results["best_score"], "best_step": results["best_step"],
            "history": [(h["step"], h["metrics"]["acc"]) for h in history],
            "steps": results["train"]["steps"], "seconds": seconds}


@torch.no_grad()
def dev_accuracy(model, dataset, batch_size: int) -> float:
    """Accuracy on the whole dev set (batches of similar length; the order does not change the result)."""
    model.eval()
    order = sorted(range(len(dataset)), key=lambda i: dataset.lengths[i])
    correct = 0
    for start in range(0, len(order), batch_size):
        batch = collate(dataset, order[start:start + batch_size])
        logits = model(**encoder_inputs(batch)).logits
        correct += (logits.argmax(-1) == batch["labels"]).sum().item()
    model.train()
    return correct / len(dataset)


def run_hf(args, task) -> dict:
    """A plain HF fine-tune with our data order and schedule; its best dev accuracy, step and seconds."""
    start = time.time()
    set_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    train_set = encode_split(task, args.data_dir, "train", tokenizer, args.max_length, args.max_train_samples)
    dev_set = encode_split(task, args.data_dir, "dev", tokenizer, args.max_length, args.max_eval_samples)
    model = BertForSequenceClassification.from_pretrained(args.model_dir, num_labels=task.num_labels)
    model.train()
    optimizer = build_optimizer(model, args)
    sampler = EpochBatches(train_set.lengths, args.batch_size, args.seed)
    total = math.ceil(args.num_train_epochs * len(sampler))
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=int(args.warmup_proportion * total),
                              num_training_steps=total)
    step, best_acc, best_step, history = 0, -1.0, -1, []
    output_dir = Path(args.output_dir) / "hf"
    output_dir.mkdir(parents=True, exist_ok=True)
    for epoch in range(args.num_train_epochs):
        for indices in sampler.epoch(epoch):
            batch = collate(train_set, indices)
            loss = model(**encoder_inputs(batch), labels=batch["labels"]).loss
            loss.backward()
            optimizer_step(model, optimizer, args.max_grad_norm, scheduler)
            step += 1
            if step % args.log_interval == 0 or step == total:
                acc = dev_accuracy(model, dev_set, args.eval_batch_size)
                history.append((step, acc))
                if acc > best_acc:
                    best_acc, best_step = acc, step
                logger.info("hf step %d/%d: dev acc %.4f (best %.4f at step %d), loss %.4f", step, total, acc,
                            best_acc, best_step, loss.item())
    result = {"best_acc": best_acc, "best_step": best_step, "history": history, "steps": step,
              "seconds": round(time.time() - start, 1)}
    write_json_atomic(output_dir / "results.json", result)
    return result


def main(argv=None) -> dict:
    args = parse_args(argv)
    setup_logging(None, is_main=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    task = get_task(args.task_name)
    if task.kind != "classification":
        raise SystemExit(f"{task.name} is not a sequence classification task")
    load = load_average()
    results = {}
    if args.skip_ours:
        results["ours"] = summarise_ours(Path(args.output_dir) / "ours")
    else:
        results["ours"] = run_ours(args)
    if args.skip_hf:
        results["hf"] = json.loads((Path(args.output_dir) / "hf" / "results.json").read_text())
    else:
        results["hf"] = run_hf(args, task)
    difference = results["ours"]["best_acc"] - results["hf"]["best_acc"]
    results.update(difference=round(difference, 4), within_one_point=difference >= -0.01,
                   threads=torch.get_num_threads(), load_at_start=load,
                   load_at_end=load_average(), settings=vars(args), note=HEAD_NOTE)
    write_json_atomic(Path(args.output_dir) / "compare.json", results)
    print(f"{task.name}: {args.num_train_epochs} epochs, batch {args.batch_size}, lr {args.learning_rate}, "
          f"max_length {args.max_length}, seed {args.seed}, threads {torch.get_num_threads()}, "
          f"load {load} -> {results['load_at_end']}")
    for name in ("ours", "hf"):
        r = results[name]
        curve = " ".join(f"{s}:{a:.4f}" for s, a in r["history"])
        print(f"{name:4s} best dev acc {r['best_acc']:.4f} at step {r['best_step']} ({r['steps']} steps, "
              f"{r['seconds']:.0f} s)  dev curve {curve}")
    print(f"ours - HF = {100 * difference:+.2f} points: "
          f"{'within one point' if results['within_one_point'] else 'MORE than one point below HF'}")
    print(HEAD_NOTE)
    return results


if __name__ == "__main__":
    main()
