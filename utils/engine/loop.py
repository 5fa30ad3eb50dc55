"""The one training loop: train, evaluate, select, checkpoint, resume. Every script uses it.

What differs between the scripts is passed in: an :class:`~utils.engine.objectives.Objective` (how a
batch becomes losses) and a :class:`~utils.engine.evaluation.Selector` (how the model is evaluated,
which score selects the best checkpoint, and which model is saved as ``best/``). The pieces live
beside it: the data order in :mod:`utils.engine.batches`, one optimizer step in :mod:`utils.engine.step`, the
model's placement (devices, DDP, FSDP2) in :mod:`utils.engine.sharding`, evaluation and selection in
:mod:`utils.engine.evaluation`, the files a run keeps (``best/``, ``checkpoint/``, ``metrics.jsonl``) and
resuming from them in :mod:`utils.engine.checkpoint`, TensorBoard in :mod:`utils.engine.tensorboard`.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from utils.engine import checkpoint
from utils.engine.batches import EpochBatches, to_device
from utils.engine.checkpoint import (
    BEST_DIR,
    METRICS_FILE,
    SELECTION_FILE,
    STATE_DIR,
    append_jsonl,
    save_model_atomic,
)
from utils.engine.evaluation import Selector, quiet
from utils.engine.loop_state import LoopState, RunningMean
from utils.engine.sharding import prepare
from utils.engine.step import Optimization, backward_batch, mixed_precision, plan_steps
from utils.engine.tensorboard import TENSORBOARD_DIR, Scalars

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What :func:`train` hands back to the script."""

    best_score: float
    best_step: int
    best_record: dict | None
    steps: int
    epochs_run: float
    train_seconds: float
    eval_seconds: float
    examples_per_second: float
    stop_reason: str
    best_dir: Path
    objective_stats: dict


def train(args, run, model, train_dataset, objective, selector: Selector, tokenizer, output_dir: Path,
          resume: bool = False, extra_state: dict | None = None) -> TrainResult:
    """Train ``model`` with ``objective``, evaluate with ``selector``, keep the best in ``output_dir/best``.

    Args:
        args: the training arguments (:class:`utils.command.args.TrainingArguments`).
        run: the :class:`utils.command.run.Run` (device, ranks, precision, seed, settings).
        model: the model to train (bare module; placed here by :func:`utils.engine.sharding.prepare`, with the
            objective's teacher under ``--fsdp``).
        train_dataset: an encoded dataset with ``lengths`` and ``collate_fn``.
        objective: how a batch becomes losses (one backward per pass).
        selector: evaluation and best-model rule.
        tokenizer: saved beside every best model.
        output_dir: this stage's folder (a script's run folder, or ``iter_k/`` of a schedule).
        resume: continue from ``output_dir/checkpoint`` when it exists.
        extra_state: JSON-able facts that identify this stage (e.g. a schedule's iteration or key);
            with ``run.settings`` they must match the saved state's for a resume.

    Raises:
        SettingsMismatch: when the state to resume was saved under other settings.
    """
    output_dir = Path(output_dir)
    if run.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        checkpoint.recover_model_dir(output_dir / BEST_DIR)  # a crash may have interrupted a swap of best/
    if objective.needs_labels and not train_dataset.has_labels:
        raise ValueError("the training split has no gold labels, which this objective needs")
    model.train()
    model.set_gradient_checkpointing(args.gradient_checkpointing)
    if args.torch_compile:
        model.compile_layers()
    placed = prepare(model, run, objective.frozen_models())
    sampler = EpochBatches(train_dataset.lengths, args.per_device_train_batch_size, run.seed, run.rank,
                           run.world_size, args.group_by_length)
    steps_per_epoch, total_steps = plan_steps(len(sampler), args)
    optimization = Optimization.build(placed.module, args, run, total_steps)
    settings = {"run": run.settings, "stage": extra_state or {}}
    state, losses, best_record = checkpoint.resume(output_dir, resume, run, settings, placed, optimization, selector,
                                                   objective)
    logger.info("training: %d examples, %d steps/epoch, %d steps, batch %d × %d processes × %d accumulation",
                len(train_dataset), steps_per_epoch, total_steps, args.per_device_train_batch_size,
                run.world_size, args.num_grad_accum_steps)
    progress = tqdm(total=total_steps, initial=state.step, desc="train", disable=quiet(run))
    scalars = Scalars(output_dir / TENSORBOARD_DIR if args.report_to == "tensorboard" and run.is_main else None)
    stage = _Stage(args, run, placed, optimization, objective, selector, tokenizer, output_dir, settings,
                   steps_per_epoch, total_steps, state, losses, best_record, scalars)
    while not state.finished and not state.stop_reason and state.step < total_steps:
        stage.train_epoch(sampler.epoch(state.epoch), train_dataset, progress)
    progress.close()
    scalars.close()
    if not state.finished:
        if state.last_eval_step != state.step:
            stage.evaluate()
        state.stop_reason = state.stop_reason or "reached the step budget"
        state.finished = True
        stage.checkpoint()  # a finished state keeps the counters and selection only, no weights
    logger.info("training done after %d steps: %s; best score %.4f at step %d", state.step, state.stop_reason,
                state.best_score, state.best_step)
    return TrainResult(
        best_score=state.best_score, best_step=state.best_step, best_record=stage.best_record, steps=state.step,
        epochs_run=round(state.step / steps_per_epoch, 4), train_seconds=round(state.train_seconds, 2),
        eval_seconds=round(state.eval_seconds, 2),
        examples_per_second=round(state.examples_seen / state.train_seconds, 2) if state.train_seconds else 0.0,
        stop_reason=state.stop_reason, best_dir=output_dir / BEST_DIR, objective_stats=objective.stats(),
    )


class _Stage:
    """One call of :func:`train`: what it holds from step to step, and what it does at a step, an
    evaluation and a checkpoint. ``state``, ``losses`` and ``best_record`` come from
    :func:`utils.engine.checkpoint.resume`."""

    def __init__(self, args, run, placed, optimization: Optimization, objective, selector: Selector, tokenizer,
                 output_dir: Path, settings: dict, steps_per_epoch: int, total_steps: int, state: LoopState,
                 losses: RunningMean, best_record: dict | None, scalars: Scalars):
        self.args, self.run, self.placed, self.optimization = args, run, placed, optimization
        self.objective, self.selector, self.tokenizer, self.output_dir = objective, selector, tokenizer, output_dir
        self.settings, self.steps_per_epoch, self.total_steps = settings, steps_per_epoch, total_steps
        self.state, self.losses, self.best_record, self.scalars = state, losses, best_record, scalars
        self.patience_steps = max(1, math.ceil(args.num_patience_epochs * steps_per_epoch))
        self.precision = mixed_precision(run)

    def train_epoch(self, batches: list[list[int]], dataset, progress) -> None:
        """The epoch's batches from where the state stands, until it ends, the step budget is spent or
        training stops early; a checkpoint at its end unless training is over."""
        state, args, accum = self.state, self.args, self.args.num_grad_accum_steps
        tick, step_loss = time.time(), 0.0
        for position in range(state.batch_in_epoch, len(batches)):
            batch = dataset.collate_fn([dataset[i] for i in batches[position]])
            batch["example_index"] = torch.tensor(batches[position])  # the key of the objective's teacher cache
            batch = to_device(batch, self.run.device)
            # Micro-batches are grouped by ``accum`` from the start of the epoch; the epoch's last group
            # may be shorter, and its losses are averaged over the batches it really has.
            group_start = position - position % accum
            group_size = min(accum, len(batches) - group_start)
            last_micro = position == group_start + group_size - 1
            step_loss += backward_batch(self.objective, self.placed, batch, group_size, sync=last_micro,
                                        autocast=self.precision, scaler=self.optimization.scaler)
            state.examples_seen += len(batches[position]) * self.run.world_size
            state.batch_in_epoch = position + 1
            if not last_micro:
                continue
            learning_rate = self.optimization.learning_rate
            self.optimization.step(self.placed.module, args.max_grad_norm, self.precision)
            state.step += 1
            self.losses.add(step_loss)
            self.scalars.step(state.step, step_loss, learning_rate)
            progress.update(1)
            progress.set_postfix(loss=f"{step_loss:.4f}")
            step_loss = 0.0
            if state.step % args.log_interval == 0 or state.step == self.total_steps:
                state.train_seconds += time.time() - tick  # evaluation time is not training time
                self.evaluate()
                tick = time.time()
            if state.step % args.save_steps == 0:
                self.checkpoint()
            if state.stop_reason or state.step >= self.total_steps:
                break
        state.train_seconds += time.time() - tick
        if state.batch_in_epoch >= len(batches):
            state.epoch += 1
            state.batch_in_epoch = 0
            if not state.stop_reason and state.step < self.total_steps:
                self.checkpoint()

    def evaluate(self) -> None:
        """Evaluate, log the record, save ``best/`` on a strict improvement, and stop when out of patience."""
        state, run = self.state, self.run
        started = time.time()
        record = self.selector.evaluate(self.placed.model, state.step)
        state.last_eval_step = state.step
        entry = {"step": state.step, "epoch": round(state.step / self.steps_per_epoch, 4), **record,
                 "train_loss": self.losses.mean(run), "elapsed_seconds": round(time.time() - run.started, 2)}
        self.losses.reset()
        append_jsonl(run, self.output_dir / METRICS_FILE, entry)
        self.scalars.evaluation(entry)
        # Only a strict improvement replaces best/: the selector's choice changes with it, never alone.
        improved = record["score"] > state.best_score
        if improved:
            state.best_score, state.best_step = record["score"], state.step
            self.best_record = entry
            self.selector.accept(entry)
            plain = self.placed.plain()  # every rank takes part in gathering a sharded model
            if run.is_main:
                save_model_atomic(self.selector.model_to_save(plain), self.tokenizer, self.output_dir / BEST_DIR,
                                  {SELECTION_FILE: entry}, run_dir=run.output_dir)
            run.barrier()
        logger.info("step %d/%d: score %.4f%s (best %.4f at step %d)", state.step, self.total_steps, record["score"],
                    " *" if improved else "", state.best_score, state.best_step)
        if state.step - state.best_step >= self.patience_steps:
            state.stop_reason = f"no better dev score for {self.args.num_patience_epochs} epochs"
        state.eval_seconds += time.time() - started

    def checkpoint(self) -> None:
        """Save the resumable state (:func:`utils.engine.checkpoint.save_state`)."""
        checkpoint.save_state(self.output_dir / STATE_DIR, self.placed, self.optimization, self.state, self.selector,
                              self.losses, self.run, self.settings,
                              {"best_record": self.best_record, "objective": self.objective.state_dict()})
