"""``--dry_run``: what a run would hold and cost, for every candidate sparsity, without allocating the model.

The model is built on the meta device (shapes only, no memory) from a saved model directory (its
``config.json``) or from a published config by name (``t5-3b``, ``google/flan-t5-xl``,
``bert-base-uncased``, ...: a few fields of each model's public ``config.json``, kept in
``models/configs/`` since the hub is not always reachable). For each sparsity level it reports:

* layers, and heads and neurons kept (summed over every unit row);
* prunable and total parameters (exact: counted on the meta model at that width);
* training FLOPs per token of the model at that width: 3 × its forward (forward + backward), the
  forward counted as 2 FLOPs per multiply-add of every transformer-block projection plus the
  attention scores and weighted sums, at ``--max_length`` tokens (embeddings, norms and the task
  head are left out); a distilling script adds the teacher's forward;
* peak memory per device of one training step, fp32 and bf16 (autocast, as ``--use_bf16`` runs), every
  part counted as if alive at once (an upper estimate; :func:`peak_memory`):

  - weights + gradients + AdamW state (16 bytes a parameter: fp32 master weights either way) of the
    model being trained (MiniDisc's sandwich trains the full-width supernet at every level);
  - the frozen teacher (fp32, 4 bytes a parameter) and its cache on the device (``--teacher_cache_mb``)
    when the script distils;
  - activations kept for backward at ``--per_device_train_batch_size`` × ``--max_length`` tokens
    (residual-stream tensors in fp32; projection outputs in the run's dtype; attention scores not
    stored, as with PyTorch's fused SDPA kernels; with ``--gradient_checkpointing``, each layer's
    input plus one layer's activations);
  - "DDP" (a full copy on every device): plus DDP's gradient buckets (4 bytes a parameter, on more
    than one device) and, under bf16, the bf16 copies of the trained model's and the teacher's weights
    (2 bytes a parameter each), made once per optimizer step and once per stage and kept in between
    (:class:`utils.engine.step.MixedPrecision`);
  - "sharded" (``--fsdp`` over ``--dry_run_devices``; on one device the same as DDP): weights,
    gradients, AdamW state and teacher divided by the devices, plus what FSDP2 gathers: the root
    unit (embeddings, final norm, head) and two layer units (the one running and the one
    prefetched) with their whole gradients, of the student and of the teacher, in bf16 under bf16
    and fp32 otherwise; a sandwich keeps every layer of the student gathered, with its whole
    gradient, for the step (:func:`utils.engine.sharding.pass_context`); and the sharded AdamW step's
    temporary (4 bytes a parameter over the devices). Loading never holds more: the models are
    sharded on the CPU and FSDP2 moves one unit at a time to the device (:func:`utils.engine.sharding.place`).

  Activation counts are an estimate for planning, not a measurement; unit sizes are those of the
  checkpoint's architecture at full width (an upper bound for a smaller student).

Without a sparsity map in the config (a published config, or an unsparsified teacher), every row
loses the same fraction ``s`` of its units (neurons in multiples of ``--neuron_multiple``-like 8;
the cross-attention of EncT5 keeps a head), the shape importance-built maps have on average.
"""

from __future__ import annotations

import json
import logging
from fractions import Fraction
from pathlib import Path

import torch
from transformers import AutoConfig, PretrainedConfig

from models import get_model_class
from models.sparsity_map import UNITS
from utils.artifacts.model_io import supported_model_types
from utils.errors import StageError

logger = logging.getLogger(__name__)

PUBLISHED = Path(__file__).resolve().parents[2] / "models" / "configs"
DEFAULT_LEVELS = (0, 10, 20, 30, 40, 50, 60, 70, 80, 85, 90, 95)
GIB = 1024 ** 3
DTYPES = {"fp32": 4, "bf16": 2}


def published_names() -> list[str]:
    """The published configs the planner knows by name, hub spelling (``google/flan-t5-xl``)."""
    return sorted(p.stem.replace("--", "/") for p in PUBLISHED.glob("*.json"))


def load_plan_config(name_or_dir: str, flag: str = "--dry_run") -> PretrainedConfig:
    """The config of a model directory, or of a published model by name.

    Raises:
        StageError: neither a directory with ``config.json`` nor a known name (the message lists them).
    """
    folder = Path(name_or_dir)
    if (folder / "config.json").is_file():
        payload = json.loads((folder / "config.json").read_text())
    else:
        path = PUBLISHED / (name_or_dir.replace("/", "--") + ".json")
        if not path.is_file():
            raise StageError(f"{flag} {name_or_dir}: not a model directory and not a published config this "
                             f"planner knows ({', '.join(published_names())}); pass a folder holding config.json")
        payload = json.loads(path.read_text())
    model_type = payload.pop("model_type", None)
    supported = supported_model_types()
    if model_type not in supported:
        raise StageError(f"{flag} {name_or_dir} is a {model_type or 'untyped'} config; supported: {', '.join(supported)}")
    return AutoConfig.for_model(model_type, **payload)


def uniform_map(model, levels, neuron_multiple: int = 8) -> dict:
    """A map in which every row loses ``s`` percent of its units at level ``s`` (neurons rounded to
    ``neuron_multiple``; each row keeps its ``min_kept`` units)."""
    shape, floors = model.unit_shape(), model.min_kept()
    result = {}
    for level in levels:
        entry = {}
        for kind in UNITS:
            rows, size = shape[kind]
            removed = round(Fraction(level * size, 100))
            if kind == "neuron" and neuron_multiple > 1:
                removed = min(round(Fraction(removed, neuron_multiple)) * neuron_multiple, size)
            entry[kind] = {row: min(removed, size - floors[kind][row]) for row in range(rows) if removed}
        result[level] = entry
    return result


def build_on_meta(model_type: str, config: PretrainedConfig, num_labels: int):
    """``model_type`` built from ``config`` on the meta device (no memory), with ``num_labels`` outputs (a language
    model, 0 labels, keeps its vocabulary head)."""
    if num_labels:
        config.num_labels = num_labels
    with torch.device("meta"):
        return get_model_class(model_type)(config)


def fsdp_units(model) -> tuple[int, int]:
    """``(root, layer)``: the parameters of FSDP2's root unit (what no layer holds: embeddings, final norm, task
    head) and of its largest layer unit, as :func:`utils.engine.sharding.shard` makes them, at the stored width."""
    layers = [sum(p.numel() for p in layer.parameters()) for layer in model.layer_modules()]
    return sum(p.numel() for p in model.parameters()) - sum(layers), max(layers, default=0)


def peak_memory(trained: int, teacher: int, activations: int, cache: int, units: tuple[int, int], devices: int,
                gathered_bytes: int, autocast: bool, sandwich: bool) -> dict:
    """Bytes per device at the peak of a training step, without sharding (DDP) and sharded (FSDP2), with what
    each holds. Every part is counted as if alive at once (an upper estimate: activations are freed before
    the optimizer step, the teacher's units before the student's are gathered).

    Args:
        trained: parameters of the model being trained, as stored (a sandwich's supernet at full width).
        teacher: parameters of the frozen teacher (0: none).
        activations: bytes of activations kept for backward (see :func:`plan_rows`).
        cache: bytes of the teacher cache on the device (``--teacher_cache_mb``).
        units: :func:`fsdp_units` of the teacher's architecture (an upper bound for a smaller student's).
        gathered_bytes: bytes of a gathered parameter under FSDP2 (2 under bf16 mixed precision, else 4).
        autocast: bf16 without sharding: the bf16 copies of the trained weights and the teacher's are kept
            (:class:`utils.engine.step.MixedPrecision`).
        sandwich: several widths a step (MiniDisc): FSDP2 keeps every layer gathered, and its gradient
            unsharded, from the step's first forward to its last backward (:func:`utils.engine.sharding.pass_context`).
    """
    root, layer = units
    states, frozen = 16 * trained, 4 * teacher
    ddp_extra = {
        # DDP all-reduces from bucket copies of the gradients (when there is more than one device)
        "ddp_buckets": 4 * trained if devices > 1 else 0,
        "bf16_copies": 2 * (trained + teacher) if autocast else 0,
    }
    # FSDP2 keeps the root unit gathered through forward and backward and one layer unit ahead of the one
    # running; each gathered unit gets a whole gradient (fp32 for the reduce-scatter) before it is sharded.
    one_pass = (root + 2 * layer) * (gathered_bytes + 4)
    sharded_extra = {
        "gathered_student": trained * (gathered_bytes + 4) if sandwich else one_pass,
        "gathered_teacher": (root + 2 * layer) * gathered_bytes if teacher else 0,
        # sharded parameters take AdamW's per-tensor kernel, whose step holds one temporary per parameter
        "optimizer_step": 4 * trained // devices,
    }
    ddp = states + frozen + cache + activations + sum(ddp_extra.values())
    if devices == 1:  # --fsdp with one process shards nothing: the model is trained as it is
        return {"ddp": ddp, "sharded": ddp, **ddp_extra, **dict.fromkeys(sharded_extra, 0)}
    # Sharding itself: FSDP2 moves one whole fp32 unit to the device at a time, keeps its shard, frees the rest.
    sharding = (4 * trained + frozen) // devices + 4 * max(root, layer)
    sharded = max((states + frozen) // devices + cache + activations + sum(sharded_extra.values()), sharding)
    return {"ddp": ddp, "sharded": sharded, **ddp_extra, **sharded_extra}


def plan_rows(model, levels, batch_size: int, seq_len: int, devices: int, teacher_params: int | None,
              checkpointing: bool = False, sandwich: bool = False, cache_bytes: int = 0) -> list[dict]:
    """One row per level: sizes, FLOPs and memory per device (see the module docstring and :func:`peak_memory`).

    ``sandwich``: the script trains a supernet of every width at once (MiniDisc): it holds the weights,
    gradients and AdamW state of the full-width model at every level. ``cache_bytes``: the teacher cache.
    """
    rows = []
    model.sparsify(model.config.sparsity)
    teacher_flops = model.training_cost(seq_len)["forward_flops"]
    stored = model.count_parameters()["total"]
    units = fsdp_units(model)
    for level in levels:
        model.sparsify(level)
        counts = model.count_parameters()
        widths = model.kept_widths()
        cost = model.training_cost(seq_len)
        row = {
            "sparsity": level, "num_layers": model.depth,
            "heads_kept": model.heads_in_use(), "neurons_kept": sum(widths["neuron"]),
            "prunable_parameters": counts["prunable"], "total_parameters": counts["total"],
            "train_flops_per_token": 3 * cost["forward_flops"] / seq_len,
            "memory_gib": {},
        }
        trained = stored if sandwich else counts["total"]
        for dtype, size in DTYPES.items():
            activations = batch_size * (4 * cost["stream_elements"] + size * cost["projection_elements"])
            if checkpointing:
                # each layer keeps only its input (a quarter of its stream tensors); one layer at a time
                # holds everything while it is recomputed
                activations = batch_size * 4 * cost["stream_elements"] // 4 + activations // max(model.depth, 1)
            activations += 4 * cost.get("transient_elements", 0)  # a language model's chunk of vocabulary logits
            peak = peak_memory(trained, teacher_params or 0, activations, cache_bytes, units, devices,
                               gathered_bytes=size, autocast=dtype == "bf16", sandwich=sandwich)
            row["memory_gib"][dtype] = {
                "weights_grads_adamw": 16 * trained / GIB, "teacher": 4 * (teacher_params or 0) / GIB,
                "teacher_cache": cache_bytes / GIB, "activations": activations / GIB,
                **{key: value / GIB for key, value in peak.items()},
            }
        rows.append(row)
    model.sparsify(model.config.sparsity)
    if teacher_params:
        for row in rows:
            row["teacher_flops_per_token"] = teacher_flops / seq_len
    return rows


def format_plan(header: str, rows: list[dict], devices: int) -> str:
    """The plan as a table: one line per level and dtype."""
    lines = [header,
             f"{'sparsity':>8} {'layers':>6} {'heads':>6} {'neurons':>8} {'prunable':>14} {'total':>14} "
             f"{'GFLOP/tok':>10} {'dtype':>5} {'states':>8} {'teacher':>8} {'cache':>6} {'activ.':>8} "
             f"{'gather':>8} {'DDP/dev':>8} {f'shard/{devices}':>8}"]
    for row in rows:
        for dtype, memory in row["memory_gib"].items():
            gather = memory["gathered_student"] + memory["gathered_teacher"]
            lines.append(
                f"{row['sparsity']:>8} {row['num_layers']:>6} {row['heads_kept']:>6} {row['neurons_kept']:>8} "
                f"{row['prunable_parameters']:>14,} {row['total_parameters']:>14,} "
                f"{row['train_flops_per_token'] / 1e9:>10.3f} {dtype:>5} {memory['weights_grads_adamw']:>8.2f} "
                f"{memory['teacher']:>8.2f} {memory['teacher_cache']:>6.2f} {memory['activations']:>8.2f} "
                f"{gather:>8.2f} {memory['ddp']:>8.2f} {memory['sharded']:>8.2f}")
    if rows and "teacher_flops_per_token" in rows[0]:
        lines.append(f"teacher forward: {rows[0]['teacher_flops_per_token'] / 1e9:.3f} GFLOP/token on top of each "
                     "row's training FLOPs")
    lines.append(
        "peak memory in GiB per device, every part counted as alive at once: states (fp32 weights, gradients, AdamW), "
        "the fp32 teacher, the teacher cache, activations (an estimate); DDP/dev adds DDP's gradient buckets and, "
        "in bf16, the student's and the teacher's bf16 weight copies; shard/N divides states and teacher by N and adds what FSDP2 gathers "
        "(gather: units with their whole gradients, a sandwich's whole student) and the AdamW step's temporaries "
        "(see utils/command/planner.py)")
    return "\n".join(lines)


def dry_run(args, checkpoint: str, distils: bool, levels=None, sandwich: bool = False) -> dict:
    """Print and return the plan of the run ``args`` describes, starting from ``checkpoint``.

    ``distils``: the script holds a frozen teacher (the model at ``checkpoint``) beside the trained one, and
    its cache (``--teacher_cache_mb``). ``sandwich``: it trains every width of a supernet at once (MiniDisc).
    ``levels``: the sparsities to plan (default: the config's map levels, else :data:`DEFAULT_LEVELS`).
    """
    config = load_plan_config(checkpoint, "--dry_run")
    model = build_on_meta(args.model.model_type, config, args.task.num_labels)
    teacher_params = model.count_parameters()["total"] if distils else None
    if not model.config.sparsity_map:
        model.config.sparsity_map = uniform_map(model, levels or DEFAULT_LEVELS)
        source = "uniform map (every row loses the same fraction)"
    else:
        source = "the config's sparsity map"
    available = model.available_sparsities()
    levels = sorted(set(levels or available) & set(available))
    devices = args.run.dry_run_devices
    batch, seq_len = getattr(args, "training", None), args.data.max_length
    batch_size = batch.per_device_train_batch_size if batch is not None else 1
    checkpointing = bool(getattr(batch, "gradient_checkpointing", False))
    # a language model's objectives keep no teacher cache (a vocabulary of logits per token would not fit)
    cached = distils and not args.task.is_lm_task
    cache_bytes = int(args.distill.teacher_cache_mb * 2**20) if cached else 0
    rows = plan_rows(model, levels, batch_size, seq_len, devices, teacher_params, checkpointing, sandwich, cache_bytes)
    header = (f"plan for {args.model.model_type} from {checkpoint} ({source}); batch {batch_size} x "
              f"{seq_len} tokens per device; {devices} device(s)"
              f"{'; activations with gradient checkpointing' if checkpointing else ''}")
    print(format_plan(header, rows, devices))
    return {"checkpoint": checkpoint, "model_type": args.model.model_type, "map": source, "devices": devices,
            "batch_size": batch_size, "max_length": seq_len, "gradient_checkpointing": checkpointing,
            "sandwich": sandwich, "levels": rows}
