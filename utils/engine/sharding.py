"""``--fsdp``: the student (and the teacher) sharded with PyTorch's FSDP2 across the processes of a run.

:func:`shard` applies ``torch.distributed.fsdp.fully_shard`` to every transformer layer of a model (its
family's ``layer_modules()``) and then to the model itself, with a mixed-precision policy under
``--use_bf16``/``--use_fp16`` (parameters gathered in that dtype, gradients reduced in fp32). :func:`place`
puts a model on the run's device: under ``--fsdp`` it shards the model where it was loaded (the CPU)
and each process moves only its own shards, one FSDP unit at a time, so no process ever holds a
whole model on its device (an 8 B model in fp32 is 28 GiB). Inside a
layer's forward the gathered parameters are ordinary tensors, so the sliced widths of the sandwich
work unchanged; :func:`pass_context` keeps the parameters gathered and the gradients local until the
last pass of a step, so a sandwich step gathers and reduces each layer once, not once per width.

:func:`prepare` does all of it for the loop: it returns one :class:`Placed` handle that knows whether the
run is sharded, which model runs the forward passes (the DDP wrapper of an unsharded distributed run) and
how one pass of a step synchronises. Nothing downstream asks a model whether it is sharded.

Saving goes through :func:`gathered`: every process takes part in assembling the full state dict,
and rank 0 gets a plain (unsharded, CPU) copy of the model at its current width, which it saves
exactly as a single-process run does. The resumable state keeps the weights and optimizer state as
shards (:func:`utils.engine.checkpoint.save_sharded`).
"""

from __future__ import annotations

import copy
import logging
import math
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

logger = logging.getLogger(__name__)


def shard(model, run):
    """Shard ``model`` in place: each of its ``layer_modules()``, then the root (FSDP2); returns it.

    The shards are placed on ``run.device`` (the mesh's device): FSDP2 moves one unit's parameters
    there, keeps this process's shard and frees the rest before it shards the next unit, so a model
    still on the CPU reaches the device one unit at a time (see :func:`place`).
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=run.amp_dtype, reduce_dtype=torch.float32) if run.amp_dtype else None
    options = {"mp_policy": policy} if policy is not None else {}
    device = getattr(run, "device", None)
    if device is not None:
        # The run's device, not FSDP2's default (the machine's accelerator, even under --use_cpu).
        options["mesh"] = init_device_mesh(device.type, (dist.get_world_size(),))
    layers = model.layer_modules()
    for layer in layers:
        fully_shard(layer, **options)
    fully_shard(model, **options)
    logger.info("%s sharded with FSDP2 over %d processes (%d layer units and the root)", type(model).__name__,
                run.world_size, len(layers))
    return model


def place(model, run):
    """``model`` on ``run.device``, ready to run: sharded first under ``--fsdp`` (:func:`shard`, which moves
    only this process's shards to the device), moved whole otherwise. Returns it."""
    if not run.fsdp:
        return model.to(run.device)
    from torch.distributed.fsdp import FSDPModule

    return model if isinstance(model, FSDPModule) else shard(model, run)


@dataclass
class Placed:
    """A model placed for training by :func:`prepare`.

    ``module`` is the bare model (holding its FSDP2 shards under ``--fsdp``): the optimizer, the verbs and
    the resumable state use it. ``model`` is what runs the forward passes: the DDP wrapper of a distributed,
    unsharded run, else ``module``.
    """

    module: nn.Module
    model: nn.Module
    sharded: bool
    distributed: bool

    def pass_context(self, last: bool, several: bool):
        """One forward/backward pass of a step (``last``: the pass that synchronises the gradients; ``several``:
        the step has more than one): FSDP2's :func:`pass_context`, DDP's ``no_sync`` before the last pass."""
        if self.sharded:
            return pass_context(self.module, last, several)
        return self.model.no_sync() if self.distributed and not last else nullcontext()

    def plain(self):
        """The model to save (:func:`to_save`)."""
        return to_save(self.module, self.sharded)


def prepare(model, run, frozen=()) -> Placed:
    """``model`` placed for training on ``run``, and the ``frozen`` models (a teacher) beside it.

    Under ``--fsdp`` every one is sharded where it was loaded (each process moves only its own shards to
    the device); otherwise the model moves to the device and, when distributed, is wrapped in DDP with
    ``find_unused_parameters`` (a pruned width or a densified student may leave a layer with no heads or
    no neurons, whose weights then take no part in that pass).
    """
    if run.fsdp:
        for each in (model, *frozen):
            place(each, run)
        return Placed(model, model, sharded=True, distributed=run.distributed)
    module = model.to(run.device)
    wrapped = (DistributedDataParallel(module, device_ids=[run.local_rank] if run.device.type == "cuda" else None,
                                       find_unused_parameters=True)
               if run.distributed else module)
    return Placed(module, wrapped, sharded=False, distributed=run.distributed)


@contextmanager
def pass_context(model, last: bool, several: bool = True):
    """One forward/backward pass of a step; ``last``: the step's last, ``several``: the step has more than
    one (a sandwich). Gradients are reduced by the last pass only. In a sandwich every layer also stays
    gathered from its first forward of the step to the step's last backward, which reshards it, so a
    step gathers and reduces each layer once however many widths it trains (the price: during the
    step the gathered parameters of every layer are held, as in an unsharded model). A single pass
    reshards after forward as FSDP2 does by default."""
    model.set_reshard_after_forward(not several)
    model.set_requires_gradient_sync(last)
    model.set_reshard_after_backward(last or not several)
    try:
        yield
    finally:
        model.set_reshard_after_forward(True)
        model.set_requires_gradient_sync(True)
        model.set_reshard_after_backward(True)


def _plain_copy(model, state: dict):
    """A plain (unsharded, CPU) model of ``model``'s class before sharding, holding the full ``state``, at
    ``model``'s current width and mode."""
    from torch.distributed.fsdp import FSDPModule

    cls = next(c for c in type(model).__mro__ if not issubclass(c, FSDPModule))  # the class before sharding
    plain = cls(copy.deepcopy(model.config))
    plain.load_state_dict({key: value.to("cpu") for key, value in state.items()})
    plain.sparsify(model.current_sparsity)
    return plain.train(model.training)


def _full_state(model, keep: bool) -> dict | None:
    """The sharded ``model``'s whole state on the CPU where ``keep``, else None; a collective, gathered one tensor
    at a time, so that the device holds one whole parameter at a time, never the whole model."""
    from torch.distributed.tensor import DTensor

    state = {}
    for key, value in model.state_dict().items():
        if isinstance(value, DTensor):
            # An empty weight (a densified layer left with no heads) has nothing to gather, and DTensor cannot
            # unpad its shards (torch 2.13 fails on it, in get_model_state_dict too).
            value = torch.zeros(value.shape, dtype=value.dtype) if value.numel() == 0 else value.full_tensor()
        if keep:
            state[key] = value.to("cpu")
    return state if keep else None


def unsharded(model):
    """A plain CPU copy of the sharded ``model`` on every rank (at its current width). A collective."""
    return _plain_copy(model, _full_state(model, keep=True))


def gathered(model):
    """A plain CPU copy of the sharded ``model`` on rank 0 (at its current width), None on the other ranks.

    A collective: every process must call it.
    """
    main = dist.get_rank() == 0
    state = _full_state(model, keep=main)
    return _plain_copy(model, state) if main else None


def to_save(model, sharded: bool):
    """The model to save: a plain CPU copy on rank 0 when ``sharded`` (a collective: every rank calls it; None
    on the others), else ``model`` itself."""
    return gathered(model) if sharded else model


def filler_batches(num_examples: int, world_size: int, batch_size: int, batches: int) -> int:
    """How many extra batches a rank with ``batches`` of its own runs so that every rank runs as many as
    rank 0 (the largest shard of ``num_examples``): a sharded forward is a collective."""
    if not num_examples:
        return 0
    return math.ceil(len(range(0, num_examples, world_size)) / batch_size) - batches
