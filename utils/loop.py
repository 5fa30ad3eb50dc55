"""The one training loop: train, evaluate, select, checkpoint, resume. Every script uses it.

What differs between the scripts is passed in: an :class:`~utils.objectives.Objective` (how a
batch becomes losses) and a :class:`~utils.evaluation.Selector` (how the model is evaluated,
which score selects the best checkpoint, and which model is saved as ``best/``). The pieces live
beside it: the data order in :mod:`utils.batches`, one optimizer step in :mod:`utils.step`,
evaluation and selection in :mod:`utils.evaluation`, the files a run keeps (``best/``,
``checkpoint/``, ``metrics.jsonl``) in :mod:`utils.checkpoint`.
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm
from transformers import get_scheduler

from utils.batches import EpochBatches, to_device
from utils.checkpoint import (
    BEST_DIR,
    METRICS_FILE,
    SELECTION_FILE,
    STATE_DIR,
    LoopState,
    RunningMean,
    append_jsonl,
    load_sharded,
    load_state,
    newer_best,
    recover_model_dir,
    restore_rng_state,
    save_model_atomic,
    save_state,
    truncate_metrics,
)
from utils.errors import RunError
from utils.evaluation import Selector, quiet
from utils.fingerprint import check_settings
from utils.run import set_seed
from utils.sharding import gathered, place
from utils.step import backward_batch, build_optimizer, optimizer_step, plan_steps

logger = logging.getLogger(__name__)


TENSORBOARD_DIR = "tensorboard"


class Scalars:
    """TensorBoard scalars of a stage (``--report_to tensorboard``), or nothing when ``folder`` is None: the
    loss and learning rate of every optimizer step, and every number of every evaluation record (for
    MiniDisc ``sparsities/{s}/{metric}``, ``performance/{s}``, ``tradeoff/{s}``, ``score``, ``choice``)."""

    def __init__(self, folder: Path | None):
        self.writer = None
        if folder is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(folder))

    def step(self, step: int, loss: float, learning_rate: float) -> None:
        if self.writer is not None:
            self.writer.add_scalar("train/loss", loss, step)
            self.writer.add_scalar("train/learning_rate", learning_rate, step)

    def evaluation(self, entry: dict) -> None:
        if self.writer is None:
            return
        for tag, value in _numbers(entry, "eval"):
            if tag not in ("eval/step", "eval/epoch"):
                self.writer.add_scalar(tag, value, entry["step"])
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _numbers(record: dict, prefix: str):
    """``(tag, value)`` for every number in a nested record, tags joined by ``/``."""
    for key, value in record.items():
        tag = f"{prefix}/{key}"
        if isinstance(value, dict):
            yield from _numbers(value, tag)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            yield tag, value


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
        args: the training arguments (:class:`utils.args.TrainingArguments`).
        run: the :class:`utils.run.Run` (device, ranks, precision, seed, settings).
        model: the model to train (bare module; wrapped in DDP here when distributed, or sharded in
            place with the objective's teacher under ``--fsdp``).
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
        recover_model_dir(output_dir / BEST_DIR)  # a crash may have interrupted a swap of best/
    # Under --fsdp the model stays where it was loaded until it is sharded (below): each process moves only
    # its own shards to the device, never the whole model.
    module = model if run.fsdp else model.to(run.device)
    module.train()
    if objective.needs_labels and not train_dataset.has_labels:
        raise ValueError("the training split has no gold labels, which this objective needs")
    module.set_gradient_checkpointing(args.gradient_checkpointing)
    if args.torch_compile:
        module.compile_layers()
    if run.fsdp:
        for model_to_shard in [module, *objective.frozen_models()]:
            place(model_to_shard, run)
        ddp_model = module
    else:
        # find_unused_parameters: a pruned width or a densified student may leave a layer with no heads
        # or no neurons, whose weights then take no part in that forward pass.
        ddp_model = (DistributedDataParallel(module, device_ids=[run.local_rank] if run.device.type == "cuda" else None,
                                             find_unused_parameters=True)
                     if run.distributed else module)

    sampler = EpochBatches(train_dataset.lengths, args.per_device_train_batch_size, run.seed, run.rank,
                           run.world_size, args.group_by_length)
    steps_per_epoch, total_steps = plan_steps(len(sampler), args)
    patience_steps = max(1, math.ceil(args.num_patience_epochs * steps_per_epoch))
    optimizer = build_optimizer(module, args)
    scheduler = get_scheduler(args.lr_scheduler_type, optimizer,
                              num_warmup_steps=int(args.warmup_proportion * total_steps),
                              num_training_steps=total_steps)
    scaler = torch.amp.GradScaler("cuda", enabled=run.amp_dtype is torch.float16)
    state, losses, best_record = LoopState(), RunningMean(), None
    settings = {"run": run.settings, "stage": extra_state or {}}

    # Resume. A fresh stage reseeds, so it trains the same whatever ran before it in the process
    # (how many models were built, earlier stages): MaxiDisc's stage reuse relies on it.
    saved = load_state(output_dir) if resume else None
    if saved is None:
        set_seed(run.seed)
    elif "settings" not in saved:
        raise RunError(f"{output_dir / STATE_DIR} was written by an older version of this code and cannot be "
                       "resumed: pass --overwrite_output_dir to start afresh, or choose another --output_dir")
    else:
        check_settings(saved["settings"], settings, output_dir / STATE_DIR, "resumable state")
    # Evaluations logged after the state we continue from (or by a run that died before its first
    # save) are repeated by this run: drop them so metrics.jsonl reads as one uninterrupted run.
    truncate_metrics(output_dir / METRICS_FILE, saved["loop"]["step"] if saved else -1, run)
    if saved is not None:
        state = LoopState(**saved["loop"])
        if not state.finished:
            if bool(saved.get("sharded")) != run.fsdp:
                raise RunError(f"{output_dir / STATE_DIR} was saved {'with' if saved.get('sharded') else 'without'} "
                               f"--fsdp: resume it the same way, or pass --overwrite_output_dir to start afresh")
            if run.fsdp:
                load_sharded(output_dir / STATE_DIR / saved["sharded"], module, optimizer)
            else:
                module.load_state_dict(saved["model"])
                optimizer.load_state_dict(saved["optimizer"])
            scheduler.load_state_dict(saved["scheduler"])
            scaler.load_state_dict(saved["scaler"])
        selector.load_state_dict(saved["selector"])
        mine = saved["ranks"][run.rank] if run.rank < len(saved["ranks"]) else saved["ranks"][0]
        restore_rng_state(mine["rng"])
        losses.load_state_dict(mine["loss"])
        best_record = saved["extra"].get("best_record")
        objective.load_state_dict(saved["extra"].get("objective", {}))
        logger.info("resumed from step %d (epoch %d, batch %d); best %.4f at step %d", state.step, state.epoch,
                    state.batch_in_epoch, state.best_score, state.best_step)
    # A crash between a best/ save and the next checkpoint leaves best/ ahead of the state: take its
    # record as the best, so that the results always describe the model in best/.
    newer = newer_best(output_dir, state.best_step)
    if newer is not None:
        state.best_score, state.best_step, best_record = newer["score"], newer["step"], newer
        selector.accept(newer)
        logger.info("best/ was saved at step %d after the last checkpoint: keeping it as the best", newer["step"])

    def checkpoint():
        save_state(output_dir / STATE_DIR, module, optimizer, scheduler, scaler, state, selector, losses, run,
                   settings, {"best_record": best_record, "objective": objective.state_dict()})

    def run_evaluation():
        nonlocal best_record
        started = time.time()
        record = selector.evaluate(ddp_model, state.step)
        state.last_eval_step = state.step
        entry = {"step": state.step, "epoch": round(state.step / steps_per_epoch, 4), **record,
                 "train_loss": losses.mean(run), "elapsed_seconds": round(time.time() - run.started, 2)}
        losses.reset()
        append_jsonl(run, output_dir / METRICS_FILE, entry)
        scalars.evaluation(entry)
        # Only a strict improvement replaces best/: the selector's choice changes with it, never alone.
        improved = record["score"] > state.best_score
        if improved:
            state.best_score, state.best_step = record["score"], state.step
            best_record = entry
            selector.accept(entry)
            plain = gathered(module) if run.fsdp else module  # every rank takes part in gathering
            if run.is_main:
                save_model_atomic(selector.model_to_save(plain), tokenizer, output_dir / BEST_DIR,
                                  {SELECTION_FILE: entry}, run_dir=run.output_dir)
            run.barrier()
        logger.info("step %d/%d: score %.4f%s (best %.4f at step %d)", state.step, total_steps, record["score"],
                    " *" if improved else "", state.best_score, state.best_step)
        if state.step - state.best_step >= patience_steps:
            state.stop_reason = f"no better dev score for {args.num_patience_epochs} epochs"
        state.eval_seconds += time.time() - started

    logger.info("training: %d examples, %d steps/epoch, %d steps, batch %d × %d processes × %d accumulation",
                len(train_dataset), steps_per_epoch, total_steps, args.per_device_train_batch_size,
                run.world_size, args.num_grad_accum_steps)
    autocast = torch.autocast(run.device.type, dtype=run.amp_dtype) if run.amp_dtype else nullcontext()
    progress = tqdm(total=total_steps, initial=state.step, desc="train", disable=quiet(run))
    scalars = Scalars(output_dir / TENSORBOARD_DIR if args.report_to == "tensorboard" and run.is_main else None)
    accum = args.num_grad_accum_steps
    while not state.finished and not state.stop_reason and state.step < total_steps:
        batches = sampler.epoch(state.epoch)
        tick, step_loss = time.time(), 0.0
        for position in range(state.batch_in_epoch, len(batches)):
            batch = train_dataset.collate_fn([train_dataset[i] for i in batches[position]])
            batch["example_index"] = torch.tensor(batches[position])  # the key of the objective's teacher cache
            batch = to_device(batch, run.device)
            # Micro-batches are grouped by ``accum`` from the start of the epoch; the epoch's last group
            # may be shorter, and its losses are averaged over the batches it really has.
            group_start = position - position % accum
            group_size = min(accum, len(batches) - group_start)
            last_micro = position == group_start + group_size - 1
            step_loss += backward_batch(objective, ddp_model, module, batch, group_size, sync=last_micro,
                                        autocast=autocast, scaler=scaler, distributed=run.distributed,
                                        sharded=run.fsdp)
            state.examples_seen += len(batches[position]) * run.world_size
            state.batch_in_epoch = position + 1
            if not last_micro:
                continue
            learning_rate = scheduler.get_last_lr()[0]
            optimizer_step(module, optimizer, args.max_grad_norm, scheduler, scaler)
            state.step += 1
            losses.add(step_loss)
            scalars.step(state.step, step_loss, learning_rate)
            progress.update(1)
            progress.set_postfix(loss=f"{step_loss:.4f}")
            step_loss = 0.0
            if state.step % args.log_interval == 0 or state.step == total_steps:
                state.train_seconds += time.time() - tick  # evaluation time is not training time
                run_evaluation()
                tick = time.time()
            if state.step % args.save_steps == 0:
                checkpoint()
            if state.stop_reason or state.step >= total_steps:
                break
        state.train_seconds += time.time() - tick
        if state.batch_in_epoch >= len(batches):
            state.epoch += 1
            state.batch_in_epoch = 0
            if not state.stop_reason and state.step < total_steps:
                checkpoint()
    progress.close()
    scalars.close()
    if not state.finished:
        if state.last_eval_step != state.step:
            run_evaluation()
        state.stop_reason = state.stop_reason or "reached the step budget"
        state.finished = True
        checkpoint()  # a finished state keeps the counters and selection only, no weights
    logger.info("training done after %d steps: %s; best score %.4f at step %d", state.step, state.stop_reason,
                state.best_score, state.best_step)
    return TrainResult(
        best_score=state.best_score, best_step=state.best_step, best_record=best_record, steps=state.step,
        epochs_run=round(state.step / steps_per_epoch, 4), train_seconds=round(state.train_seconds, 2),
        eval_seconds=round(state.eval_seconds, 2),
        examples_per_second=round(state.examples_seen / state.train_seconds, 2) if state.train_seconds else 0.0,
        stop_reason=state.stop_reason, best_dir=output_dir / BEST_DIR, objective_stats=objective.stats(),
    )
