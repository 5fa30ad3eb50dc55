"""One optimizer step of the loop, in two parts that the loop and the benchmarks share: the
forward and backward passes of one (micro-)batch, and the update after the last one."""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from transformers import get_scheduler

from models.core import is_normalization
from models.fast_ops import WeightCasts


class MixedPrecision:
    """Autocast in ``dtype`` and the weights' low-precision copies (:class:`models.fast_ops.WeightCasts`), entered
    together around each forward (``with precision:``; reusable, not re-entrant).

    The copies live as long as this object: a frozen teacher's weights are converted once, and a trained model's
    once per optimizer step (:func:`optimizer_step` drops them after each update), whatever the number of widths,
    passes and micro-batches in between. Without ``cast_once`` it is plain autocast (FSDP2 gathers its parameters
    in ``dtype`` already).
    """

    def __init__(self, device_type: str, dtype: torch.dtype, cast_once: bool = True):
        self.autocast = torch.autocast(device_type, dtype=dtype)
        self.casts = WeightCasts(dtype) if cast_once else None

    def __enter__(self) -> MixedPrecision:
        self.autocast.__enter__()
        if self.casts is not None:
            self.casts.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.casts is not None:
            self.casts.__exit__(*exc)
        self.autocast.__exit__(*exc)

    def updated(self, parameters) -> None:
        """``parameters`` changed (an optimizer step): their copies are made again when next used."""
        if self.casts is not None:
            self.casts.forget(parameters)


def mixed_precision(run):
    """The run's :class:`MixedPrecision` under ``--use_bf16``/``--use_fp16`` (plain autocast under ``--fsdp``),
    else a context that does nothing."""
    if not run.amp_dtype:
        return nullcontext()
    return MixedPrecision(run.device.type, run.amp_dtype, cast_once=not run.fsdp)


def build_optimizer(module, args) -> torch.optim.Optimizer:
    """AdamW with weight decay on every trainable weight except biases and normalisation layers' parameters.

    What is exempt is chosen by module type, so that it holds for every family whatever its parameter
    names: every parameter of a norm (:func:`models.core.is_normalization`: BERT's LayerNorm, T5's norm,
    the decoders' RMSNorm with Qwen3's q_norm/k_norm) and every module's ``bias``, as HF Trainer does.
    """
    exempt = {id(param) for sub in module.modules() for name, param in sub.named_parameters(recurse=False)
              if name == "bias" or is_normalization(sub)}
    decay, no_decay = [], []
    for param in module.parameters():
        if param.requires_grad:
            (no_decay if id(param) in exempt else decay).append(param)
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # The fused kernel makes one pass over each tensor instead of a dozen (≈5x faster on the CPU, where a
    # MiniLM's optimizer step costs as much as a narrow student's forward and backward).
    # FSDP2's sharded parameters (DTensors) take the plain per-tensor kernel.
    fused = all(p.device.type in ("cpu", "cuda") and type(p.data) is torch.Tensor for p in decay + no_decay)
    return torch.optim.AdamW(groups, lr=args.learning_rate, fused=fused or None)


def plan_steps(num_batches_per_epoch: int, args) -> tuple[int, int]:
    """(optimizer steps per epoch, total optimizer steps) for the schedule and early stopping."""
    steps_per_epoch = max(1, math.ceil(num_batches_per_epoch / args.num_grad_accum_steps))
    total = args.max_steps if args.max_steps is not None else math.ceil(args.num_train_epochs * steps_per_epoch)
    return steps_per_epoch, max(1, total)


def backward_batch(objective, placed, batch: dict, group_size: int = 1, sync: bool = True, autocast=None,
                   scaler=None) -> float:
    """Forward and backward every pass of ``objective`` on one batch of the :class:`~utils.engine.sharding.Placed`
    model; return the summed loss.

    Each pass's loss is divided by ``group_size`` (the batches accumulated into this optimizer step)
    and backpropagated before the next pass runs, so only one pass's activations are alive at a time.
    A pass that trains a width of its own (:meth:`~utils.engine.objectives.Objective.width`) runs, forward
    and backward, inside ``at_sparsity`` of it. Gradients are synchronised only by the last pass of a batch
    with ``sync`` (the last of its group); under FSDP2 that pass also reshards, so parameters are gathered
    once per step (:meth:`~utils.engine.sharding.Placed.pass_context`).
    """
    autocast = autocast or nullcontext()
    with autocast:
        objective.prepare(batch)
    total = 0.0
    for p in range(objective.num_passes):
        width = objective.width(p)
        # the pass's width holds through its backward too: activation checkpointing recomputes the forward there
        with placed.module.at_sparsity(width) if width is not None else nullcontext(), \
                placed.pass_context(last=sync and p == objective.num_passes - 1, several=objective.num_passes > 1):
            with autocast:
                loss = objective.loss(placed.model, placed.module, batch, p) / group_size
            (scaler.scale(loss) if scaler is not None else loss).backward()
        total += loss.item()
    return total


def optimizer_step(module, optimizer, max_grad_norm: float, scheduler=None, scaler=None, precision=None) -> None:
    """Clip the accumulated gradients (``max_grad_norm`` > 0), step, advance the schedule, clear the gradients, and
    tell the :class:`MixedPrecision` ``precision`` (if any) that ``module``'s weights changed."""
    if max_grad_norm > 0:
        if scaler is not None:
            scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(module.parameters(), max_grad_norm)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    if scheduler is not None:
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    if isinstance(precision, MixedPrecision):
        precision.updated(module.parameters())


@dataclass
class Optimization:
    """The optimizer of a stage, its learning-rate schedule and its fp16 loss scaler (off unless fp16)."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler

    @classmethod
    def build(cls, module, args, run, total_steps: int) -> Optimization:
        optimizer = build_optimizer(module, args)
        scheduler = get_scheduler(args.lr_scheduler_type, optimizer,
                                  num_warmup_steps=int(args.warmup_proportion * total_steps),
                                  num_training_steps=total_steps)
        return cls(optimizer, scheduler, torch.amp.GradScaler("cuda", enabled=run.amp_dtype is torch.float16))

    @property
    def learning_rate(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def step(self, module, max_grad_norm: float, precision=None) -> None:
        optimizer_step(module, self.optimizer, max_grad_norm, self.scheduler, self.scaler, precision)
