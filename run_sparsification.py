"""Sparsify a fine-tuned teacher: score heads and FFN neurons, reorder them, write the sparsity map.

The saved teacher is the full model (``config.sparsity = 0``) with its weights in importance order
and a ``config.sparsity_map`` giving, per level, the heads and neurons each layer loses; students
are then sliced from it (``run_distillation.py --layer_or_sparsity 90S``). Dev is evaluated at every
level by slicing (the pruning curve, no training).

Example (an MRPC teacher, the reference grid)::

    python run_sparsification.py --teacher_model_path outputs/ft_mrpc/best \\
        --task_name mrpc --output_dir outputs/sparse_mrpc

Re-sparsify with a finer grid from the saved scores (no importance pass)::

    python run_sparsification.py --teacher_model_path outputs/sparse_mrpc/model --reuse_importance \\
        --sparsities 0,50,60,70,80,85,90,92,95,97 --task_name mrpc --output_dir outputs/sparse_mrpc_fine
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field

from data.tasks import TaskSpec
from models import get_model_class
from utils.artifacts.model_card import update_card
from utils.artifacts.model_io import check_model_task, load_model, load_tokenizer
from utils.artifacts.plots import plot_pruning_curve
from utils.artifacts.students import describe_model
from utils.artifacts.task_data import load_split
from utils.command.args import DataArguments, ModelArguments, RunArguments, arg, complete_task, parse_args
from utils.command.cli import cli
from utils.command.planner import dry_run
from utils.command.run import end_run, start_run
from utils.engine.checkpoint import save_model_atomic
from utils.engine.evaluation import evaluate
from utils.engine.importance_pass import (
    IMPORTANCE_FILE,
    accumulate_importance,
    importance_record,
    load_importance,
)
from utils.engine.sharding import place, to_save, unsharded
from utils.errors import ArgumentError, StageError
from utils.maths.importance import DEFAULT_SPARSITIES, build_sparsity_map, normalize_scores, parse_sparsities

logger = logging.getLogger(__name__)

MODEL_DIR = "model"


@dataclass
class SparsificationArguments:
    teacher_model_path: str = arg(help="Fine-tuned, unpruned teacher directory (or a model/ folder written by this "
                                  "script, to re-sparsify it).")
    sparsities: str = arg(",".join(map(str, DEFAULT_SPARSITIES)),
                          help="Comma-separated levels (integer percents 0-99) to put in the sparsity map; 0 is "
                          "always included.")
    neuron_multiple: int = arg(8, help="Round each layer's removed-neuron count to a multiple of this (half to even, "
                               "capped at the layer size); 8 as the reference, 1 for exact counts.")
    importance_split: str = arg("dev", choices=("dev", "train"),
                                help="Split scored for importance: dev as the reference (leaks into dev-based "
                                "selection), or train.")
    importance_samples: int | None = arg(None, help="Score only the first N examples of --importance_split.")
    reuse_importance: bool = arg(False, help="Rebuild the map from TEACHER/importance.json (saved by an earlier run) "
                                 "instead of a new importance pass; the weights are already in importance order.")
    per_device_eval_batch_size: int = arg(32, help="Batch size of the importance pass and of evaluation.")
    head_unit: str | None = arg(None, choices=("group", "query"),
                                help="Decoder LLMs with grouped-query attention: what a sparsity level removes heads "
                                "by, whole KV groups (a KV head with its query heads) or query heads within groups "
                                "(every group keeps as many; all KV heads stay). Default: the teacher's, else group.")
    uniform_widths: bool = arg(False, help="Every layer keeps as many heads (KV groups, or query heads per group) and "
                               "neurons at each level, its own most important ones, instead of a global ranking. A "
                               "decoder LLM pruned so saves as its family's stock architecture (loads without "
                               "trust_remote_code).")
    levels: tuple[int, ...] = field(init=False)

    def __post_init__(self):
        try:
            self.levels = parse_sparsities(self.sparsities)
        except ValueError as err:
            raise ArgumentError(str(err)) from None
        for name in ("neuron_multiple", "per_device_eval_batch_size"):
            if getattr(self, name) < 1:
                raise ArgumentError(f"--{name} {getattr(self, name)}: expected a positive integer")
        if self.importance_samples is not None and self.importance_samples < 1:
            raise ArgumentError(f"--importance_samples {self.importance_samples}: expected a positive number")


@dataclass
class Arguments:
    run: RunArguments
    model: ModelArguments
    sparsify: SparsificationArguments
    data: DataArguments
    task: TaskSpec | None = field(init=False, default=None)

    def complete(self) -> None:
        """Fill in what the teacher checkpoint decides (reads its config): see :func:`utils.command.args.complete_task`."""
        self.task = complete_task(self.model, self.data, self.sparsify.teacher_model_path, "--teacher_model_path",
                                  dry_run=self.run.dry_run)
        if self.sparsify.head_unit and not hasattr(get_model_class(self.model.model_type), "set_head_unit"):
            raise ArgumentError(f"--head_unit {self.sparsify.head_unit}: {self.model.model_type} has no grouped-query "
                                "attention (only decoder LLMs do); leave it out")


def score_importance(args, run, task, teacher, tokenizer) -> dict:
    """Importance pass and per-row normalisation; returns the scores (in the model's order) and the orders
    that put each row's most important units first."""
    options = args.sparsify
    if options.importance_split == "dev" and run.is_main:
        logger.warning("importance is scored on dev, which also selects checkpoints and assistants: dev-based "
                       "selection is optimistically biased (pass --importance_split train to avoid it)")
    data = load_split(args.data, task, tokenizer, options.importance_split, options.importance_samples)
    head, neuron = accumulate_importance(teacher, data, options.per_device_eval_batch_size, run)
    head, neuron = normalize_scores(head), normalize_scores(neuron)
    head_order, neuron_order = teacher.unit_orders("head", head), teacher.unit_orders("neuron", neuron)
    return {"head": head, "neuron": neuron, "head_order": head_order, "neuron_order": neuron_order,
            "split": options.importance_split, "num_examples": len(data.examples)}


def pruning_curve(model, dev, levels, batch_size: int, run) -> list[dict]:
    """Dev metrics and sizes at every level, by slicing (no training)."""
    rows = []
    for level in levels:
        with model.at_sparsity(level):
            rows.append({**describe_model(model), "dev": evaluate(model, dev, batch_size, run, f"dev@{level}")})
    names = list(rows[0]["dev"])
    logger.info("pruning curve:\n%s", "\n".join(
        [f"{'sparsity':>8} {'heads':>6} {'neurons':>8} {'prunable':>11} {'total':>11} " + " ".join(names)]
        + [f"{r['sparsity']:>8} {r['heads_kept']:>6} {r['neurons_kept']:>8} {r['prunable_parameters']:>11} "
           f"{r['total_parameters']:>11} " + " ".join(f"{r['dev'][n]:.4f}" for n in names) for r in rows]))
    return rows


def main(argv=None) -> dict:
    args = parse_args(Arguments, argv, description=__doc__)
    args.complete()
    task, options = args.task, args.sparsify
    levels = options.levels
    if args.run.dry_run:
        return dry_run(args, options.teacher_model_path, distils=False, levels=levels)
    run = start_run(args, "run_sparsification", resumable=False)
    tokenizer = load_tokenizer(options.teacher_model_path)
    teacher = load_model(args.model.model_type, options.teacher_model_path)  # on the CPU until placed below
    check_model_task(teacher, task, options.teacher_model_path)
    if teacher.config.sparsity != 0:
        raise StageError(f"{options.teacher_model_path} is already pruned (config.sparsity {teacher.config.sparsity}): "
                         "sparsify the full teacher (config.sparsity 0) instead")
    dev = load_split(args.data, task, tokenizer, "dev", args.data.max_eval_samples)
    if options.head_unit:
        teacher.set_head_unit(options.head_unit)
    teacher = place(teacher, run)
    teacher_dev = evaluate(teacher, dev, options.per_device_eval_batch_size, run, "dev (teacher)")
    started = time.time()
    if options.reuse_importance:
        scores = load_importance(options.teacher_model_path, teacher.mask_shape())
    else:
        scores = score_importance(args, run, task, teacher, tokenizer)
    if run.fsdp:
        # Sharded for the importance pass (its backward holds the activations); gathered into a plain copy on
        # every process's CPU to reorder and map, then sharded again for the pruning curve.
        teacher = unsharded(teacher)
    if not options.reuse_importance:
        teacher.reorder(scores["head_order"], scores["neuron_order"])
        scores["head"] = scores["head"].gather(1, scores["head_order"])
        scores["neuron"] = scores["neuron"].gather(1, scores["neuron_order"])
    teacher.config.sparsity = 0
    teacher.config.sparsity_map = build_sparsity_map(
        teacher.unit_scores("head", scores["head"]), teacher.unit_scores("neuron", scores["neuron"]), levels,
        options.neuron_multiple, teacher.min_kept(), uniform=options.uniform_widths)
    teacher.config.importance_split = scores["split"]
    teacher.config.importance_samples = scores["num_examples"]
    teacher.config.neuron_multiple = options.neuron_multiple
    importance_seconds = time.time() - started
    teacher = place(teacher, run)
    curve = pruning_curve(teacher, dev, levels, options.per_device_eval_batch_size, run)
    model_dir = run.output_dir / MODEL_DIR
    plain = to_save(teacher, run.fsdp)  # every process takes part in gathering
    if run.is_main:
        record = importance_record(scores["head"], scores["neuron"], scores["split"], scores["num_examples"])
        save_model_atomic(plain, tokenizer, model_dir, {IMPORTANCE_FILE: record}, run_dir=run.output_dir)
        update_card(model_dir, dev=teacher_dev)
    results = {
        "task": task.name,
        "teacher_model_path": options.teacher_model_path,
        "importance": {"split": scores["split"], "num_examples": scores["num_examples"],
                       "reused": options.reuse_importance, "seconds": importance_seconds},
        "sparsities": list(levels),
        "neuron_multiple": options.neuron_multiple,
        "uniform_widths": options.uniform_widths,
        "sparsity_map": {str(s): {unit: {str(k): v for k, v in counts.items()} for unit, counts in entry.items()}
                         for s, entry in teacher.config.sparsity_map.items()},
        "teacher_dev": teacher_dev,
        "pruning_curve": curve,
        "paths": {"model": str(model_dir), "output_dir": str(run.output_dir)},
    }
    if run.is_main:
        picture = plot_pruning_curve(curve, run.output_dir / "pruning_curve.png", task.selection_metric)
        results["paths"]["pruning_curve"] = str(picture) if picture else None
    run.write_json("results.json", results)
    logger.info("sparsified teacher written to %s", model_dir)
    end_run(run)
    return results


if __name__ == "__main__":
    sys.exit(cli(main))
