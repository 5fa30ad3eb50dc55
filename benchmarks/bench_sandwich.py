"""Benchmark MiniDisc's sandwich training step: speed against the reference's padding, and memory.

One sandwich step is what :func:`utils.engine.loop.train` does per batch with a
:class:`~utils.engine.objectives.SandwichObjective`: one teacher forward (no grad), then for every sparsity s
``sparsify(s)``, student forward, ``loss / len(sparsities)``, backward; then gradient clipping and one
AdamW step. The timed step calls the loop's own step functions (``utils.engine.step.backward_batch`` and
``optimizer_step``) with the project's objective classes on a sparsified MiniLM and the real MRPC
training set, and measures in one process, on the same model and batches:

(a) every batch padded to ``--pad_to`` (128), as the reference code pads (in-process baseline);
(b) dynamic padding (pad to the longest sequence of the batch), the project's default;
(c) length-grouped batches (``EpochBatches(group_by_length=True)``, ``--group_by_length``);
(d) the parts of a step on the (b) batches: one teacher forward, and one single-sparsity
    distillation step per sparsity (a densified student at that sparsity, its own AdamW, teacher
    outputs precomputed); the sandwich must cost no more than their sum (no hidden waste);
(g) with ``--fresh_shapes``: fp32, bf16 and plain bf16 autocast on dynamic batches that no call has seen
    before (every call of every configuration its own), as in real training, where the packed token count
    changes with every batch: oneDNN, which runs the CPU's bf16 matmuls, builds a kernel for each new shape,
    so (f), which repeats its batches, shows bf16 warm. Times are per token, scaled to the (b) batches';
(e) peak memory (VmHWM after the models are loaded, minus VmRSS then) of sandwich training and
    of distilling the full-width student alone, each in its own subprocess over a few steps;
(f) with ``--bf16``: (b) and (c) in bf16 as ``--use_bf16`` runs them (autocast, each weight converted
    once per optimizer step: :class:`utils.engine.step.MixedPrecision`), the matmuls on the CPU's bf16
    units, and (c) under plain autocast (every slice converted at every pass: the previous behaviour);
    with ``--torch_compile``: (c) with every layer compiled (``--torch_compile``), fp32 and, with
    ``--bf16``, bf16; the compilation (the first calls) is timed on its own and printed.

Speed is printed as s/step, examples/s, the speedup over the reference's measured step
(``--anchor_seconds``, 3.78 s on 2 idle threads of a CPU whose fp32 matmul probe ran 177 GFLOP/s; on a faster
CPU the ratio flatters us, and the line scaled to that probe says by how much) and over (a). Calls are interleaved (the order
reversed every round) and a matmul probe runs between them, so load from other processes hits
every configuration alike; the probe's GFLOP/s says how much of the machine the run actually got,
and "achieved" is the step's matmul FLOPs over its median time.

Example:
    python benchmarks/bench_sandwich.py --model_dir /tmp/sparse_polarity/model --data_dir /tmp/glue
    python benchmarks/bench_sandwich.py --model_dir /tmp/minilm --data_dir /tmp/glue --random_weights --quick
    python benchmarks/bench_sandwich.py --model_dir /tmp/minilm --data_dir /tmp/glue --profile

``--data_dir`` holds ``mrpc/train.tsv`` (or ``MRPC/``). A ``--model_dir`` without a sparsity map
(e.g. the plain all-MiniLM-L6-v2 checkpoint) gets one built from seeded random importance scores.
"""

import argparse
import copy
import json
import logging
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from common import (
    add_timing_arguments,
    collate,
    encode_split,
    encoder_flops,
    encoder_inputs,
    full_widths,
    inference_step,
    interleaved_times,
    kept_widths,
    load_average,
    medians,
)

from data.tasks import get_task
from models import SparseBertCls
from utils.artifacts.model_io import load_model, load_tokenizer
from utils.engine.batches import EpochBatches
from utils.engine.objectives import DistillObjective, SandwichObjective
from utils.engine.sharding import Placed
from utils.engine.step import MixedPrecision, backward_batch, build_optimizer, optimizer_step
from utils.maths.importance import build_sparsity_map, normalize_scores

logger = logging.getLogger("bench_sandwich")

ANCHOR_SECONDS = 3.78  # the reference's sandwich step, MiniLM-L6, 7 sparsities, MRPC, batch 16 x 128, 2 threads


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_dir", required=True,
                        help="sparsebert_cls or plain BERT checkpoint (MiniLM); its tokenizer is used too")
    parser.add_argument("--data_dir", required=True, help="folder holding mrpc/train.tsv")
    parser.add_argument("--task_name", default="mrpc")
    parser.add_argument("--random_weights", action="store_true", help="random weights of the checkpoint's shape")
    parser.add_argument("--sparsities", default="50,60,70,80,85,90,95", help="the sandwich's sparsity levels")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--pad_to", type=int, default=128, help="fixed padding of (a), also the max length")
    parser.add_argument("--num_batches", type=int, default=6, help="batches per timed call (first of epoch 0)")
    add_timing_arguments(parser, repeats=3)
    parser.add_argument("--seed", type=int, default=776)
    parser.add_argument("--learning_rate", type=float, default=1e-4)
    parser.add_argument("--anchor_seconds", type=float, default=ANCHOR_SECONDS)
    parser.add_argument("--memory_steps", type=int, default=3, help="steps per memory subprocess")
    parser.add_argument("--skip_speed", action="store_true")
    parser.add_argument("--skip_parts", action="store_true", help="skip (d)")
    parser.add_argument("--skip_memory", action="store_true", help="skip (e)")
    parser.add_argument("--profile", action="store_true", help="profile one (b) step (bf16 with --bf16) and print the top ops")
    parser.add_argument("--bf16", action="store_true", help="also time (b) and (c) in bf16 (--use_bf16) and (c) under plain autocast")
    parser.add_argument("--torch_compile", action="store_true", help="also time (c) with compiled layers")
    parser.add_argument("--fresh_shapes", action="store_true", help="also time (g): every call on batches never seen")
    parser.add_argument("--quick", action="store_true", help="2 batches, no warmup, 1 repeat, 2 memory steps")
    parser.add_argument("--memory_child", choices=("sandwich", "full"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.sparsities = sorted(int(s) for s in args.sparsities.split(","))
    if args.quick:
        args.num_batches, args.warmup, args.repeats, args.memory_steps = 2, 0, 1, 2
    return args


# --------------------------------------------------------------------------------------------
# Model and data


def build_teacher(args) -> SparseBertCls:
    """The sparsified teacher (eval mode): the checkpoint, with a sparsity map covering ``args.sparsities``."""
    # new_head: a plain pretrained encoder (no classifier) is accepted; every encoder weight must still load
    model = load_model("sparsebert_cls", args.model_dir, new_head=True)
    if args.random_weights:
        torch.manual_seed(args.seed)
        model = SparseBertCls(model.config)
    config = model.config
    missing = [s for s in args.sparsities if s not in config.sparsity_map]
    if missing:
        if config.sparsity_map:
            raise SystemExit(f"{args.model_dir} has a sparsity map without levels {missing}")
        generator = torch.Generator().manual_seed(args.seed)
        layers = config.num_hidden_layers
        heads = normalize_scores(torch.rand(layers, config.num_attention_heads, generator=generator))
        neurons = normalize_scores(torch.rand(layers, config.intermediate_size, generator=generator))
        config.sparsity_map = build_sparsity_map(heads, neurons, [0, *args.sparsities], neuron_multiple=8)
    if config.sparsity != 0:
        raise SystemExit(f"{args.model_dir} is already pruned to {config.sparsity}S; give a full-width teacher")
    return model.eval()


def load_batches(args, tokenizer, verbose: bool = True) -> dict[str, list[dict]]:
    """The first ``num_batches`` batches of epoch 0: padded to ``pad_to`` (a), dynamic (b), grouped (c)."""
    task = get_task(args.task_name)
    dataset = encode_split(task, args.data_dir, "train", tokenizer, args.pad_to)
    plain = EpochBatches(dataset.lengths, args.batch_size, args.seed).epoch(0)
    grouped = EpochBatches(dataset.lengths, args.batch_size, args.seed, group_by_length=True).epoch(0)

    def training_batch(indices):
        batch = collate(dataset, indices)
        batch.pop("feature_index")
        return batch

    padded_lengths = {name: statistics.mean(max(dataset.lengths[i] for i in b) for b in batches)
                      for name, batches in (("dynamic", plain), ("grouped", grouped))}
    batches = {
        "padded": [pad_batch(training_batch(b), args.pad_to, tokenizer.pad_token_id)
                   for b in plain[:args.num_batches]],
        "dynamic": [training_batch(b) for b in plain[:args.num_batches]],
        "grouped": [training_batch(b) for b in grouped[:args.num_batches]],
    }
    if not verbose:
        return batches
    print(f"{task.name} train: {len(dataset)} examples, mean {statistics.mean(dataset.lengths):.1f} tokens; "
          f"padded length per batch over the whole epoch: dynamic {padded_lengths['dynamic']:.1f}, "
          f"grouped {padded_lengths['grouped']:.1f}; in the {args.num_batches} timed batches: "
          + ", ".join(f"{k} {statistics.mean(b['input_ids'].shape[1] for b in v):.1f}" for k, v in batches.items()),
          flush=True)
    return batches


def trainable_copy(teacher, args, densify_to: int | None = None):
    """A copy of ``teacher`` in training mode (densified to sparsity ``densify_to`` when given) and
    the loop's AdamW over it."""
    model = copy.deepcopy(teacher).train()
    if densify_to is not None:
        model.sparsify(densify_to)
        model.densify()
    return model, build_optimizer(model, SimpleNamespace(learning_rate=args.learning_rate, weight_decay=0.01))


def pad_batch(batch: dict, length: int, pad_token_id: int) -> dict:
    """``batch`` right-padded to ``length`` tokens (the reference pads every batch to max_length)."""
    extra = length - batch["input_ids"].shape[1]
    values = {"input_ids": pad_token_id, "attention_mask": 0, "token_type_ids": 0}
    return {k: F.pad(v, (0, extra), value=values[k]) if k in values else v for k, v in batch.items()}


# --------------------------------------------------------------------------------------------
# Steps


def sandwich_objective(distill: DistillObjective, args) -> SandwichObjective:
    """The sandwich over ``args.sparsities``, leaving the student at full width (sparsity 0) after each step."""
    return SandwichObjective(distill, args.sparsities)


PRECISIONS = ("fp32", "bf16", "bf16 autocast")


def train_step(objective, module, optimizer, batches: list[dict], max_grad_norm: float = 1.0,
               precision: str = "fp32"):
    """One call = the loop's optimizer step on every batch of ``batches`` (one optimizer step each):
    the same :func:`utils.engine.step.backward_batch` and :func:`utils.engine.step.optimizer_step` the loop calls
    (one process, no accumulation, no schedule). ``precision`` (:data:`PRECISIONS`): fp32; bf16 as ``--use_bf16``
    runs it (one :class:`~utils.engine.step.MixedPrecision` for every call, as for a training stage); or plain
    autocast, which converts every weight slice at every pass."""
    placed = Placed(module, module, sharded=False, distributed=False)
    context = {"fp32": None, "bf16": MixedPrecision("cpu", torch.bfloat16),
               "bf16 autocast": torch.autocast("cpu", dtype=torch.bfloat16)}[precision]

    def step():
        if isinstance(context, MixedPrecision):  # the configurations share the student: others may have stepped it
            context.updated(module.parameters())
        for batch in batches:
            backward_batch(objective, placed, batch, autocast=context)
            optimizer_step(module, optimizer, max_grad_norm, precision=context)

    return step


def teacher_step(teacher, batches):
    return inference_step(lambda batch: teacher(**encoder_inputs(batch)), batches)


class CachedTeacher:
    """Stands in for the teacher with its precomputed outputs, so a step times the student alone."""

    def __init__(self, teacher, batches):
        self.outputs = {}
        with torch.no_grad():
            for batch in batches:
                self.outputs[id(batch["input_ids"])] = teacher(**encoder_inputs(batch))

    def eval(self):
        return self

    def __call__(self, input_ids, **_):
        return self.outputs[id(input_ids)]


def matmul_probe(size: int = 1024, calls: int = 4, dtype: torch.dtype = torch.float32):
    """A step that multiplies two fixed matrices; its speed says how much CPU the run is getting (in
    ``dtype``: the bf16 probe measures the CPU's bf16 matrix units)."""
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(size, size, generator=generator).to(dtype) for _ in range(2))

    def step():
        for _ in range(calls):
            torch.mm(a, b)

    step.flops = 2 * size**3 * calls
    return step


def step_flops(widths_per_level: list[dict], config, batches: list[dict], teacher: bool, backward: bool) -> int:
    """Matmul FLOPs of the encoders at the given kept widths over ``batches`` (x3 with backward),
    plus one full-width forward when ``teacher``; see :func:`common.encoder_flops` (projections and
    FFNs over the real tokens, as the encoder skips padding; attention over the padded batch)."""

    def forward(widths, batch):
        batch_size, seq_len = batch["input_ids"].shape
        return encoder_flops(widths, config, batch_size, seq_len, tokens=int(batch["attention_mask"].sum()))

    flops = 0
    for batch in batches:
        flops += sum(forward(w, batch) for w in widths_per_level) * (3 if backward else 1)
        flops += forward(full_widths(config), batch) if teacher else 0
    return flops


def report_round(repeats: int):
    """An ``after_round`` for :func:`common.interleaved_times` that prints progress and the load."""
    def after_round(round_index: int) -> None:
        print(f"  round {round_index + 1}/{repeats} done, load {load_average()}", flush=True)

    return after_round


def spread(values: list[float], per: int = 1) -> str:
    return f"[{min(values) / per:.3f}-{max(values) / per:.3f}]"


# --------------------------------------------------------------------------------------------
# Parts of the benchmark


def speed_configurations(args) -> list[tuple[str, str, str, bool]]:
    """The timed sandwich configurations: (label, batches, precision, compiled)."""
    configurations = [("(a) padded", "padded", "fp32", False), ("(b) dynamic", "dynamic", "fp32", False),
                      ("(c) grouped", "grouped", "fp32", False)]
    if args.bf16:
        configurations += [("(f) dynamic bf16", "dynamic", "bf16", False), ("(f) grouped bf16", "grouped", "bf16", False),
                           ("(f) grouped bf16 autocast", "grouped", "bf16 autocast", False)]
    if args.torch_compile:
        configurations.append(("(f) grouped compiled", "grouped", "fp32", True))
        if args.bf16:
            configurations.append(("(f) grouped compiled bf16", "grouped", "bf16", True))
    return configurations


def compiled_copy(teacher, args, batches: dict, steps: dict, configurations) -> None:
    """Replace the compiled configurations' steps by ones on a student whose layers are compiled, after
    running each once (the compilation), timed and printed."""
    student, optimizer = trainable_copy(teacher, args)
    student.compile_layers()
    sandwich = sandwich_objective(DistillObjective(teacher), args)
    for label, name, precision, compiled in configurations:
        if compiled:
            steps[label] = train_step(sandwich, student, optimizer, batches[name], precision=precision)
            start = time.perf_counter()
            steps[label]()
            print(f"{label}: the first call (compiling) took {time.perf_counter() - start:.1f}s", flush=True)


def bench_speed(args, teacher, batches) -> None:
    student, optimizer = trainable_copy(teacher, args)
    sandwich = sandwich_objective(DistillObjective(teacher), args)
    n = args.num_batches
    configurations = speed_configurations(args)
    steps = {label: train_step(sandwich, student, optimizer, batches[name], precision=precision)
             for label, name, precision, compiled in configurations if not compiled}
    if args.torch_compile:
        compiled_copy(teacher, args, batches, steps, configurations)
    singles = {}
    if not args.skip_parts:
        cached = CachedTeacher(teacher, batches["dynamic"])
        steps["(d) teacher forward"] = teacher_step(teacher, batches["dynamic"])
        for s in args.sparsities:
            single, single_optimizer = trainable_copy(teacher, args, densify_to=s)
            singles[s] = f"(d) single {s}S"
            steps[singles[s]] = train_step(DistillObjective(cached), single, single_optimizer, batches["dynamic"])
    probe = matmul_probe()
    steps["matmul probe"] = probe
    if args.bf16:
        steps["bf16 matmul probe"] = bf16_probe = matmul_probe(dtype=torch.bfloat16)
    print(f"speed: {n} batches per call, warmup {args.warmup}, {args.repeats} rounds, load {load_average()}",
          flush=True)
    times = interleaved_times(steps, args.warmup, args.repeats, after_round=report_round(args.repeats))
    median = {name: seconds / (1 if name.endswith("matmul probe") else n) for name, seconds in medians(times).items()}
    probe_gflops = probe.flops / median["matmul probe"] / 1e9
    print(f"matmul probe {probe_gflops:.1f} GFLOP/s {spread([probe.flops / t / 1e9 for t in times['matmul probe']])}"
          f" (the CPU share this run got; the anchor's step was measured where this probe ran 177 GFLOP/s idle)")
    if args.bf16:
        print(f"bf16 matmul probe {bf16_probe.flops / median['bf16 matmul probe'] / 1e9:.1f} GFLOP/s: the bf16 rows' "
              "'of probe' column is still against the fp32 probe")
    widths = [kept_widths(student, s) for s in args.sparsities]
    base = median["(a) padded"]
    print(f"{'configuration':26s} {'s/step':>7s} {'spread':>15s} {'ex/s':>6s} {'vs anchor':>9s} "
          f"{'vs (a)':>6s} {'achieved':>9s} {'of probe':>8s}")
    for label, name, _, _ in configurations:
        seconds = median[label]
        flops = step_flops(widths, student.config, batches[name], teacher=True, backward=True) / n
        print(f"{label:26s} {seconds:7.3f} {spread(times[label], n):>15s} {args.batch_size / seconds:6.2f} "
              f"{args.anchor_seconds / seconds:8.2f}x {base / seconds:5.2f}x {flops / seconds / 1e9:6.1f} GF/s "
              f"{flops / seconds / 1e9 / probe_gflops:7.0%}", flush=True)
    best = {}
    for precision, target in (("fp32", 3.0), ("bf16", 4.0)):
        labels = [label for label, _, kind, _ in configurations if kind == precision]
        if not labels:
            continue
        best[precision] = min(labels, key=lambda label: median[label])
        speedup = args.anchor_seconds / median[best[precision]]
        print(f"target {precision} >= {target:.0f}x the anchor's {args.batch_size / args.anchor_seconds:.2f} ex/s: "
              f"best {best[precision]} {speedup:.2f}x {'MET' if speedup >= target else 'MISSED'} (scaled to an idle "
              f"2-thread probe of 177 GFLOP/s, the anchor's machine: {speedup * 177 / probe_gflops:.2f}x)")
    if len(best) == 2:
        gain = median[best["fp32"]] / median[best["bf16"]]
        print(f"target bf16 >= 1.3x our fp32 step in this run: {best['bf16']} vs {best['fp32']} {gain:.2f}x "
              f"{'MET' if gain >= 1.3 else 'MISSED'}")
    if singles:
        parts = median["(d) teacher forward"] + sum(median[label] for label in singles.values())
        sandwich_seconds = median["(b) dynamic"]
        print("(d) on the (b) batches: teacher forward " f"{median['(d) teacher forward']:.3f}s; single-width steps "
              + ", ".join(f"{s}S {median[label]:.3f}s" for s, label in singles.items()))
        rates = {f"{s}S": step_flops([w], student.config, batches["dynamic"], teacher=False, backward=True) / n
                 / median[singles[s]] / 1e9 for s, w in zip(args.sparsities, widths, strict=True)}
        rates["teacher forward"] = step_flops([], student.config, batches["dynamic"], teacher=True,
                                              backward=False) / n / median["(d) teacher forward"] / 1e9
        needed = step_flops(widths, student.config, batches["dynamic"], teacher=True, backward=True) / n / (
            args.anchor_seconds / 3) / 1e9
        print("(d) achieved matmul rate of each part, of the probe: "
              + ", ".join(f"{name} {rate / probe_gflops:.0%}" for name, rate in rates.items())
              + f"; the 3x target needs the whole (b) step at {needed / probe_gflops:.0%} of the probe "
              f"({needed:.0f} GF/s)")
        print(f"(d) sandwich {sandwich_seconds:.3f}s vs teacher + sum of single-width steps {parts:.3f}s: "
              f"ratio {sandwich_seconds / parts:.2f} {'OK' if sandwich_seconds <= parts else 'WASTE'} "
              f"(the singles include {len(singles)} optimizer steps over the embeddings, the sandwich one)")
    print(f"load at the end {load_average()}", flush=True)


def bench_fresh_shapes(args, teacher, tokenizer, batches) -> None:
    """(g): each call of each precision on its own never-seen dynamic batches; seconds per token, scaled to the mean
    real tokens of the (b) batches."""
    calls = args.warmup + args.repeats
    precisions = ("fp32", "bf16", "bf16 autocast")
    wanted = argparse.Namespace(**{**vars(args), "num_batches": args.num_batches * (1 + calls * len(precisions))})
    epoch = load_batches(wanted, tokenizer, verbose=False)["dynamic"][args.num_batches:]
    tokens = statistics.mean(int(batch["attention_mask"].sum()) for batch in batches["dynamic"])
    per_token = {precision: [] for precision in precisions}
    for call in range(calls):
        for index, precision in enumerate(precisions if call % 2 == 0 else precisions[::-1]):
            start = (call * len(precisions) + index) * args.num_batches
            group = epoch[start:start + args.num_batches]
            student, optimizer = trainable_copy(teacher, args)
            step = train_step(sandwich_objective(DistillObjective(teacher), args), student, optimizer, group,
                              precision=precision)
            began = time.perf_counter()
            step()
            if call >= args.warmup:
                per_token[precision].append((time.perf_counter() - began) / sum(int(b["attention_mask"].sum())
                                                                                 for b in group))
    seconds = {precision: statistics.median(values) * tokens for precision, values in per_token.items()}
    print(f"(g) fresh shapes ({args.repeats} calls of {args.num_batches} never-seen batches each, per token, scaled to "
          f"the (b) batches' {tokens:.0f} tokens): " + ", ".join(
              f"{precision} {value:.3f} s/step ({args.anchor_seconds / value:.2f}x the anchor)"
              for precision, value in seconds.items())
          + f"; bf16 vs fp32 {seconds['fp32'] / seconds['bf16']:.2f}x (target >= 1.3), plain autocast vs fp32 "
          f"{seconds['fp32'] / seconds['bf16 autocast']:.2f}x", flush=True)


def profile_step(args, teacher, batches) -> None:
    from torch.profiler import ProfilerActivity, profile

    student, optimizer = trainable_copy(teacher, args)
    step = train_step(sandwich_objective(DistillObjective(teacher), args), student, optimizer, batches["dynamic"][:1],
                      precision="bf16" if args.bf16 else "fp32")
    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25), flush=True)


def memory_child(args, teacher, batches) -> None:
    """Run a few training steps and print the peak resident memory above the loaded models (JSON)."""
    student, optimizer = trainable_copy(teacher, args)
    distill = DistillObjective(teacher)
    objective = sandwich_objective(distill, args) if args.memory_child == "sandwich" else distill
    step = train_step(objective, student, optimizer, batches["dynamic"][:args.memory_steps])
    reset = Path("/proc/self/clear_refs")
    if reset.exists():
        reset.write_text("5")  # reset the high-water mark to the current RSS
    baseline = proc_status_kb("VmRSS")
    step()
    print(json.dumps({"config": args.memory_child, "baseline_kb": baseline, "peak_kb": proc_status_kb("VmHWM")}))


def proc_status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def bench_memory(args, argv) -> None:
    results = {}
    for config in ("full", "sandwich"):
        command = [sys.executable, __file__, *argv, "--memory_child", config]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        results[config] = json.loads(output.strip().splitlines()[-1])
    extra = {c: (r["peak_kb"] - r["baseline_kb"]) / 1024 for c, r in results.items()}
    print(f"(e) peak memory above the loaded teacher + student, {args.memory_steps} steps on the (b) batches: "
          f"full-width student alone {extra['full']:.0f} MiB, sandwich over {len(args.sparsities)} sparsities "
          f"{extra['sandwich']:.0f} MiB; ratio {extra['sandwich'] / extra['full']:.2f} "
          f"{'OK' if extra['sandwich'] <= 1.3 * extra['full'] else 'ABOVE'} (target <= 1.30); baselines "
          f"{results['full']['baseline_kb'] / 1024:.0f} / {results['sandwich']['baseline_kb'] / 1024:.0f} MiB",
          flush=True)


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    tokenizer = load_tokenizer(args.model_dir)
    teacher = build_teacher(args)
    if args.memory_child:
        memory_child(args, teacher, load_batches(args, tokenizer, verbose=False))
        return
    print(f"torch {torch.__version__}, threads {args.threads}, sparsities {args.sparsities}, batch {args.batch_size}, "
          f"model {args.model_dir}{' (random weights)' if args.random_weights else ''}, load {load_average()}",
          flush=True)
    batches = load_batches(args, tokenizer)
    if args.profile:
        profile_step(args, teacher, batches)
        return
    if not args.skip_speed:
        bench_speed(args, teacher, batches)
    if args.fresh_shapes:
        bench_fresh_shapes(args, teacher, tokenizer, batches)
    if not args.skip_memory:
        bench_memory(args, argv)


if __name__ == "__main__":
    main()
