"""The one training loop: train, evaluate, select, checkpoint, resume. Every script uses it.

What differs between the scripts is passed in: an :class:`~utils.objectives.Objective` (how a
batch becomes losses) and a :class:`Selector` (how the model is evaluated, which score selects
the best checkpoint, and which model is saved as ``best/``).

Files written into the stage's ``output_dir`` (rank 0 only):

* ``metrics.jsonl``  one line per evaluation: step, epoch, metrics, score, elapsed seconds;
* ``best/``          the best model (densified) + tokenizer + ``selection.json``, replaced atomically;
* ``checkpoint/``    the resumable state (weights, optimizer, scheduler, scaler, RNG, counters,
  selector state), replaced atomically every ``--save_steps`` steps and at each epoch end.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm
from transformers import get_scheduler

from utils.errors import RunError
from utils.fingerprint import check_settings
from utils.metrics import compute_metrics
from utils.run import set_seed, write_json_atomic

logger = logging.getLogger(__name__)

BEST_DIR = "best"
STATE_DIR = "checkpoint"
STATE_FILE = "state.pt"
SELECTION_FILE = "selection.json"


# --------------------------------------------------------------------------------------------
# Data order


class EpochBatches:
    """Deterministic batches for every epoch and rank.

    Epoch ``e`` permutes the examples with a generator seeded by ``seed + e`` (so a resumed run
    sees exactly the batches an uninterrupted one would), cuts the permutation into global batches
    of ``batch_size × world_size`` and gives rank r the r-th slice of each. With
    ``group_by_length`` the permutation is cut into chunks of 50 global batches, each sorted by
    length, and the batch order is shuffled again: far less padding, still random.
    Under several processes the last global batch is topped up from the start of the permutation
    so every rank takes the same number of steps.
    """

    def __init__(self, lengths, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 group_by_length: bool = False):
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.group_by_length = group_by_length

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / (self.batch_size * self.world_size))

    def epoch(self, epoch: int) -> list[list[int]]:
        """The batches (lists of example indices) of this rank in ``epoch``."""
        g = torch.Generator().manual_seed(self.seed + epoch)
        order = torch.randperm(len(self.lengths), generator=g).tolist()
        global_size = self.batch_size * self.world_size
        if self.world_size > 1 and len(order) % global_size:
            order += order[: global_size - len(order) % global_size]
        if self.group_by_length:
            chunk = global_size * 50
            order = [i for start in range(0, len(order), chunk)
                     for i in sorted(order[start:start + chunk], key=lambda j: -self.lengths[j])]
        batches = [order[start:start + global_size] for start in range(0, len(order), global_size)]
        if self.group_by_length:
            perm = torch.randperm(len(batches), generator=g).tolist()
            batches = [batches[i] for i in perm]
        return [b[self.rank * self.batch_size:(self.rank + 1) * self.batch_size] for b in batches]


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def unwrap(model):
    """The bare model behind a DistributedDataParallel wrapper."""
    return model.module if isinstance(model, DistributedDataParallel) else model


# --------------------------------------------------------------------------------------------
# Evaluation


def _quiet(run) -> bool:
    return not (run.is_main and sys.stderr.isatty())


@torch.no_grad()
def collect_outputs(model, dataset, batch_size: int, run, desc: str = "eval") -> dict[int, torch.Tensor]:
    """Model outputs per feature, gathered from every rank: ``{feature_index: logits}``.

    Sequence tasks give the logits row [C]; token tasks the logits at the scored positions
    [n_words, C]. Each rank scores a disjoint shard (no padding duplicates), batches sorted by
    length to waste little on padding; keys make the gathered result exact.
    """
    module = unwrap(model)
    was_training = module.training
    module.eval()
    shard = list(range(run.rank, len(dataset), run.world_size))
    shard.sort(key=lambda i: dataset.lengths[i])
    outputs: dict[int, torch.Tensor] = {}
    batches = [shard[i:i + batch_size] for i in range(0, len(shard), batch_size)]
    autocast = torch.autocast(run.device.type, dtype=run.amp_dtype) if run.amp_dtype else nullcontext()
    for indices in tqdm(batches, desc=desc, leave=False, disable=_quiet(run)):
        batch = _to_device(dataset.collate_fn([dataset[i] for i in indices]), run.device)
        with autocast:
            logits = module(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                            token_type_ids=batch["token_type_ids"]).logits.float()
        for row, index in enumerate(batch["feature_index"].tolist()):
            outputs[index] = (logits[row][batch["label_mask"][row]] if logits.dim() == 3 else logits[row]).cpu()
    module.train(was_training)
    if run.distributed:
        parts = [None] * run.world_size
        dist.all_gather_object(parts, outputs)
        outputs = {k: v for part in parts for k, v in part.items()}
    return outputs


def predict(model, dataset, batch_size: int, run, desc: str = "predict") -> list:
    """One prediction per example of ``dataset`` (class index, float, or tag list)."""
    return dataset.decode(collect_outputs(model, dataset, batch_size, run, desc))


def evaluate(model, dataset, batch_size: int, run, desc: str = "eval") -> dict[str, float]:
    """The task's metrics of ``model`` on a labelled ``dataset``."""
    if not dataset.has_labels:
        raise ValueError(f"cannot score the {dataset.task.name} split: it has no gold labels")
    return compute_metrics(dataset.task, predict(model, dataset, batch_size, run, desc), dataset.references())


# --------------------------------------------------------------------------------------------
# Selection


class Selector:
    """Evaluates the model being trained and decides what "best" means.

    ``evaluate`` returns a JSON-able record for ``metrics.jsonl`` holding a ``score`` (higher is
    better). When the score beats the best so far, the loop calls ``accept`` with the record, then
    saves ``model_to_save(module)`` as ``best/``: whatever the selector reports as its choice must
    come from the accepted record, so that it always describes the model in ``best/``.
    """

    def evaluate(self, model, step: int) -> dict:
        raise NotImplementedError

    def accept(self, record: dict) -> None:
        """``record`` (an entry of ``metrics.jsonl``) is the new best; ``best/`` is about to be written from it."""

    def model_to_save(self, module):
        return module

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what ``state_dict`` returned (for resumption)."""


class MetricSelector(Selector):
    """Selects on one dev metric of the model at its current width."""

    def __init__(self, dataset, metric: str, batch_size: int, run):
        self.dataset, self.metric, self.batch_size, self.run = dataset, metric, batch_size, run

    def evaluate(self, model, step):
        metrics = evaluate(model, self.dataset, self.batch_size, self.run)
        return {"metrics": metrics, "score": metrics[self.metric]}


# --------------------------------------------------------------------------------------------
# Checkpoints


def save_model_atomic(model, tokenizer, directory: Path, files: dict | None = None) -> None:
    """Save ``model`` (+ tokenizer, + JSON ``files`` {name: payload}) so ``directory`` is never half-written.

    The new copy is written beside the target and swapped in by renames; if a crash interrupts
    the swap, :func:`recover_model_dir` restores the previous copy.
    """
    directory = Path(directory)
    tmp, old = directory.with_name(directory.name + ".tmp"), directory.with_name(directory.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    for name, payload in (files or {}).items():
        write_json_atomic(tmp / name, payload)
    shutil.rmtree(old, ignore_errors=True)
    if directory.exists():
        os.replace(directory, old)
    os.replace(tmp, directory)
    shutil.rmtree(old, ignore_errors=True)


def recover_model_dir(directory: Path) -> None:
    """Undo a swap that a crash interrupted: bring ``X.old`` back when ``X`` is missing."""
    directory = Path(directory)
    old = directory.with_name(directory.name + ".old")
    if not directory.exists() and old.exists():
        os.replace(old, directory)
    shutil.rmtree(directory.with_name(directory.name + ".tmp"), ignore_errors=True)


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class RunningMean:
    """Mean per-step training loss since the last evaluation (a step sums its passes and micro-batches)."""

    def __init__(self):
        self.total, self.count = 0.0, 0

    def add(self, value: float) -> None:
        self.total += value
        self.count += 1

    def mean(self, run=None) -> float | None:
        """The mean, averaged over processes when ``run`` is distributed (every rank must call it)."""
        total, count = self.total, self.count
        if run is not None and run.distributed:
            both = torch.tensor([total, count], dtype=torch.float64, device=run.device)
            dist.all_reduce(both)
            total, count = both.tolist()
        return round(total / count, 6) if count else None

    def reset(self) -> None:
        self.total, self.count = 0.0, 0

    def state_dict(self) -> dict:
        return {"total": self.total, "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.total, self.count = state["total"], state["count"]


@dataclass
class LoopState:
    """Counters that, with the weights and optimizer, fully describe where training is."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    best_score: float = -math.inf
    best_step: int = -1
    last_eval_step: int = -1
    examples_seen: int = 0
    train_seconds: float = 0.0
    finished: bool = False
    stop_reason: str = ""


@dataclass
class TrainResult:
    """What :func:`train` hands back to the script."""

    best_score: float
    best_step: int
    best_record: dict | None
    steps: int
    epochs_run: float
    train_seconds: float
    examples_per_second: float
    stop_reason: str
    best_dir: Path


def _save_state(path: Path, module, optimizer, scheduler, scaler, state: LoopState, selector, losses, run,
                settings: dict, extra: dict) -> None:
    """Write the resumable state; a finished run keeps only its counters and selection (no weights).

    Each process's random state and running training loss are gathered, so every rank resumes its own.
    """
    per_rank = {"rng": _rng_state(), "loss": losses.state_dict()}
    if run.distributed:
        gathered = [None] * run.world_size
        dist.all_gather_object(gathered, per_rank)
    else:
        gathered = [per_rank]
    if not run.is_main:
        return
    path.mkdir(parents=True, exist_ok=True)
    payload = {"loop": asdict(state), "selector": selector.state_dict(), "ranks": gathered,
               "settings": settings, "extra": extra}
    if not state.finished:
        payload.update(model=module.state_dict(), optimizer=optimizer.state_dict(),
                       scheduler=scheduler.state_dict(), scaler=scaler.state_dict())
    tmp = path / (STATE_FILE + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path / STATE_FILE)


def load_state(output_dir: Path) -> dict | None:
    """The resumable state saved in ``output_dir/checkpoint``, or None."""
    path = Path(output_dir) / STATE_DIR / STATE_FILE
    if not path.exists():
        return None
    return torch.load(path, map_location="cpu", weights_only=False)


def remove_state(output_dir: Path) -> None:
    """Delete the resumable state once a run's results are written (it holds optimizer moments)."""
    shutil.rmtree(Path(output_dir) / STATE_DIR, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Optimisation


def build_optimizer(module, args) -> torch.optim.Optimizer:
    """AdamW with weight decay on every trainable weight except biases and LayerNorm weights."""
    decay, no_decay = [], []
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if name.endswith("bias") or "LayerNorm.weight" in name else decay).append(param)
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # The fused kernel makes one pass over each tensor instead of a dozen (≈5x faster on the CPU, where a
    # MiniLM's optimizer step costs as much as a narrow student's forward and backward).
    fused = all(p.device.type in ("cpu", "cuda") for p in decay + no_decay)
    return torch.optim.AdamW(groups, lr=args.learning_rate, fused=fused or None)


def plan_steps(num_batches_per_epoch: int, args) -> tuple[int, int]:
    """(optimizer steps per epoch, total optimizer steps) for the schedule and early stopping."""
    steps_per_epoch = max(1, math.ceil(num_batches_per_epoch / args.num_grad_accum_steps))
    total = args.max_steps if args.max_steps is not None else math.ceil(args.num_train_epochs * steps_per_epoch)
    return steps_per_epoch, max(1, total)


# --------------------------------------------------------------------------------------------
# The loop


def train(args, run, model, train_dataset, objective, selector: Selector, tokenizer, output_dir: Path,
          resume: bool = False, extra_state: dict | None = None) -> TrainResult:
    """Train ``model`` with ``objective``, evaluate with ``selector``, keep the best in ``output_dir/best``.

    Args:
        args: the parsed training arguments (see :class:`utils.args.TrainingArguments`).
        run: the :class:`utils.run.Run` (device, ranks, precision, settings).
        model: the model to train (bare module; wrapped in DDP here when distributed).
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
        recover_model_dir(output_dir / BEST_DIR)
    module = model.to(run.device)
    module.train()
    if objective.needs_labels and not train_dataset.has_labels:
        raise ValueError("the training split has no gold labels, which this objective needs")
    # find_unused_parameters: a pruned width or a densified student may leave a layer with no heads
    # or no neurons, whose weights then take no part in that forward pass.
    ddp_model = (DistributedDataParallel(module, device_ids=[run.local_rank] if run.device.type == "cuda" else None,
                                         find_unused_parameters=True)
                 if run.distributed else module)

    sampler = EpochBatches(train_dataset.lengths, args.per_device_train_batch_size, args.seed, run.rank,
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

    saved = load_state(output_dir) if resume else None
    if saved is None:
        # Reseed per stage: a stage trains the same whatever ran before it in the process (how many
        # models were built, earlier stages), which MaxiDisc's stage reuse relies on.
        set_seed(args.seed)
    elif "settings" not in saved:
        raise RunError(f"{output_dir / STATE_DIR} was written by an older version of this code and cannot be "
                       "resumed: pass --overwrite_output_dir to start afresh, or choose another --output_dir")
    else:
        check_settings(saved["settings"], settings, output_dir / STATE_DIR, "resumable state")
    # Evaluations logged after the state we continue from (or by a run that died before its first
    # save) are repeated by this run: drop them so metrics.jsonl reads as one uninterrupted run.
    _truncate_metrics(output_dir / "metrics.jsonl", saved["loop"]["step"] if saved else -1, run)
    if saved is not None:
        state = LoopState(**saved["loop"])
        if not state.finished:
            module.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            scheduler.load_state_dict(saved["scheduler"])
            scaler.load_state_dict(saved["scaler"])
        selector.load_state_dict(saved["selector"])
        ranks = saved["ranks"]
        mine = ranks[run.rank] if run.rank < len(ranks) else ranks[0]
        _set_rng_state(mine["rng"])
        losses.load_state_dict(mine["loss"])
        best_record = saved["extra"].get("best_record")
        logger.info("resumed from step %d (epoch %d, batch %d); best %.4f at step %d", state.step, state.epoch,
                    state.batch_in_epoch, state.best_score, state.best_step)
    # A crash between a best/ save and the next checkpoint leaves best/ ahead of the state: take its
    # record as the best, so that the results always describe the model in best/.
    newer = _newer_best(output_dir, state.best_step)
    if newer is not None:
        state.best_score, state.best_step, best_record = newer["score"], newer["step"], newer
        selector.accept(newer)
        logger.info("best/ was saved at step %d after the last checkpoint: keeping it as the best", newer["step"])

    def checkpoint():
        _save_state(output_dir / STATE_DIR, module, optimizer, scheduler, scaler, state, selector, losses, run,
                    settings, {"best_record": best_record})

    def run_evaluation():
        nonlocal best_record
        record = selector.evaluate(ddp_model, state.step)
        state.last_eval_step = state.step
        entry = {"step": state.step, "epoch": round(state.step / steps_per_epoch, 4), **record,
                 "train_loss": losses.mean(run), "elapsed_seconds": round(time.time() - run.started, 2)}
        losses.reset()
        run_append_jsonl(run, output_dir / "metrics.jsonl", entry)
        improved = record["score"] > state.best_score
        if improved:
            state.best_score, state.best_step = record["score"], state.step
            best_record = entry
            selector.accept(entry)
            if run.is_main:
                save_model_atomic(selector.model_to_save(module), tokenizer, output_dir / BEST_DIR,
                                  {SELECTION_FILE: entry})
            run.barrier()
        logger.info("step %d/%d: score %.4f%s (best %.4f at step %d)", state.step, total_steps, record["score"],
                    " *" if improved else "", state.best_score, state.best_step)
        if state.step - state.best_step >= patience_steps:
            state.stop_reason = f"no better dev score for {args.num_patience_epochs} epochs"

    logger.info("training: %d examples, %d steps/epoch, %d steps, batch %d × %d processes × %d accumulation",
                len(train_dataset), steps_per_epoch, total_steps, args.per_device_train_batch_size,
                run.world_size, args.num_grad_accum_steps)
    autocast = torch.autocast(run.device.type, dtype=run.amp_dtype) if run.amp_dtype else nullcontext()
    progress = tqdm(total=total_steps, initial=state.step, desc="train", disable=_quiet(run))
    accum = args.num_grad_accum_steps
    while not state.finished and not state.stop_reason and state.step < total_steps:
        batches = sampler.epoch(state.epoch)
        tick = time.time()
        step_loss = 0.0
        for position in range(state.batch_in_epoch, len(batches)):
            batch = _to_device(train_dataset.collate_fn([train_dataset[i] for i in batches[position]]), run.device)
            # Micro-batches are grouped by ``accum`` from the start of the epoch; the epoch's last group
            # may be shorter, and its losses are averaged over the batches it really has.
            group_start = position - position % accum
            group_size = min(accum, len(batches) - group_start)
            last_micro = position == group_start + group_size - 1
            with autocast:
                objective.prepare(batch)
            for p in range(objective.num_passes):
                sync = last_micro and p == objective.num_passes - 1
                with (ddp_model.no_sync() if run.distributed and not sync else nullcontext()):
                    with autocast:
                        loss = objective.loss(ddp_model, module, batch, p) / group_size
                    scaler.scale(loss).backward()
                step_loss += loss.item()
            objective.finish(module)
            state.examples_seen += len(batches[position]) * run.world_size
            state.batch_in_epoch = position + 1
            if not last_micro:
                continue
            if args.max_grad_norm > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(module.parameters(), args.max_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            losses.add(step_loss)
            step_loss_shown, step_loss = step_loss, 0.0
            progress.update(1)
            progress.set_postfix(loss=f"{step_loss_shown:.4f}")
            if state.step % args.log_interval == 0 or state.step == total_steps:
                state.train_seconds += time.time() - tick
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
    if not state.finished:
        if state.last_eval_step != state.step:
            run_evaluation()
        state.stop_reason = state.stop_reason or "reached the step budget"
        state.finished = True
        checkpoint()
    logger.info("training done after %d steps: %s; best score %.4f at step %d", state.step, state.stop_reason,
                state.best_score, state.best_step)
    return TrainResult(
        best_score=state.best_score, best_step=state.best_step, best_record=best_record, steps=state.step,
        epochs_run=round(state.step / steps_per_epoch, 4), train_seconds=round(state.train_seconds, 2),
        examples_per_second=round(state.examples_seen / state.train_seconds, 2) if state.train_seconds else 0.0,
        stop_reason=state.stop_reason, best_dir=output_dir / BEST_DIR,
    )


def _newer_best(output_dir: Path, best_step: int) -> dict | None:
    """The record of ``best/`` when it was saved after step ``best_step`` (by a run that then died), else None."""
    path = Path(output_dir) / BEST_DIR / SELECTION_FILE
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    return record if record["step"] > best_step else None


def run_append_jsonl(run, path: Path, payload: dict) -> None:
    """Append one JSON line (rank 0 only)."""
    if run.is_main:
        with open(path, "a") as f:
            f.write(json.dumps(payload) + "\n")


def _truncate_metrics(path: Path, step: int, run) -> None:
    """Drop evaluations logged after the resumed state's step: the resumed run repeats them."""
    if not run.is_main or not path.exists():
        return
    lines = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in lines))
