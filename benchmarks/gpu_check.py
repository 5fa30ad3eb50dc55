"""GPU check: fine-tuning and MiniDisc sandwich steps in fp32, bf16 and fp16, on one GPU or sharded with FSDP2.

Two random-init models: a BERT-base-sized classifier (110 M) and a ~1.1 B-parameter Llama-style decoder
(TinyLlama's shape: 22 layers, hidden 2048, 32 query over 4 KV heads, SwiGLU 5632). For each model and
precision it runs ``--steps`` fine-tuning steps and ``--steps`` sandwich steps (widths 0, 50 and 90S,
a frozen copy as teacher) on random tokens, through the same step functions as the training loop,
and prints per-step time, peak GPU memory and the first step's losses against fp32's (they must agree
within 5% relative). Under ``torchrun --nproc_per_node N ... --fsdp`` the models are sharded as
``--fsdp`` shards them; rank 0 prints.

    bash benchmarks/gpu_check.sh                 # what a CUDA machine runs (under 8 minutes)
    python benchmarks/gpu_check.py --device cpu --tiny --steps 2   # the CPU smoke test CI runs

Random weights: the numbers measure speed, memory and numerical agreement, not accuracy.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import get_model_class  # noqa: E402
from utils.command.planner import uniform_map  # noqa: E402
from utils.engine.objectives import DistillObjective, SandwichObjective, TaskObjective  # noqa: E402
from utils.engine.sharding import Placed, shard  # noqa: E402
from utils.engine.step import MixedPrecision, backward_batch, build_optimizer, optimizer_step  # noqa: E402

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
LEVELS = (0, 50, 90)


def configs(tiny: bool) -> dict:
    """``{name: (model type, config)}``: BERT-base and a 1.1 B decoder, or tiny stand-ins (``tiny``)."""
    from transformers import BertConfig, LlamaConfig

    if tiny:
        return {"bert-tiny": ("sparsebert_cls", BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                                           intermediate_size=37, vocab_size=100)),
                "llama-tiny": ("sparsedecoder_cls", LlamaConfig(hidden_size=48, num_hidden_layers=2,
                                                                num_attention_heads=6, num_key_value_heads=2,
                                                                intermediate_size=37, vocab_size=100))}
    return {"bert-base": ("sparsebert_cls", BertConfig()),
            "llama-1.1b": ("sparsedecoder_cls", LlamaConfig(hidden_size=2048, num_hidden_layers=22,
                                                            num_attention_heads=32, num_key_value_heads=4,
                                                            intermediate_size=5632, vocab_size=32000))}


class Run:
    """What the step functions and :func:`utils.engine.sharding.shard` read of a run."""

    def __init__(self, device, amp_dtype, world_size: int):
        self.device, self.amp_dtype, self.world_size = device, amp_dtype, world_size


def build(model_type: str, config, device, seed: int = 0):
    torch.manual_seed(seed)
    config = copy.deepcopy(config)
    config.num_labels = 2
    model = get_model_class(model_type)(config)
    model.config.sparsity_map = uniform_map(model, LEVELS)
    return model.to(device)


def batch_of(config, batch_size: int, seq_len: int, device, rank: int, seed: int) -> dict:
    generator = torch.Generator().manual_seed(seed + rank)
    ids = torch.randint(3, config.vocab_size, (batch_size, seq_len), generator=generator)
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device),
            "token_type_ids": torch.zeros_like(ids).to(device),
            "labels": torch.randint(0, 2, (batch_size,), generator=generator).to(device)}


def measure(model_type, config, precision, args, device, rank, world, sandwich: bool) -> dict:
    """``args.steps`` steps of fine-tuning (or of a sandwich) at ``precision``: times, peak memory, losses."""
    amp_dtype = PRECISIONS[precision]
    run = Run(device, amp_dtype, world)
    student = build(model_type, config, device).train()
    objective = TaskObjective()
    if sandwich:
        teacher = build(model_type, config, device).eval()
        distill = DistillObjective(teacher, "hidden_kd", 1.0, False, sharded=args.fsdp)
        objective = SandwichObjective(distill, list(LEVELS))
    if args.fsdp:
        for model in [student, *objective.frozen_models()]:
            shard(model, run)
    placed = Placed(student, student, sharded=args.fsdp, distributed=False)
    optimizer = build_optimizer(student, argparse.Namespace(weight_decay=0.01, learning_rate=1e-5))
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype is torch.float16)
    # as the loop runs it: autocast with the weights converted once per step (plain autocast under FSDP2)
    autocast = MixedPrecision(device.type, amp_dtype, cast_once=not args.fsdp) if amp_dtype else nullcontext()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times, losses = [], []
    for step in range(args.steps):
        batch = batch_of(config, args.batch_size, args.seq_len, device, rank, step)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        losses.append(backward_batch(objective, placed, batch, autocast=autocast, scaler=scaler))
        optimizer_step(student, optimizer, 1.0, None, scaler if amp_dtype is torch.float16 else None, autocast)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) / 1024 ** 3 if device.type == "cuda" else None
    steady = times[1:] or times
    return {"step_seconds": round(sorted(steady)[len(steady) // 2], 4), "peak_gib": peak and round(peak, 2),
            "first_loss": losses[0]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny stand-in models (the CPU smoke test)")
    parser.add_argument("--fsdp", action="store_true", help="shard with FSDP2 (run under torchrun)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--seq_len", type=int, default=128)
    parser.add_argument("--precisions", default="fp32,bf16,fp16")
    args = parser.parse_args(argv)
    distributed = "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1
    if args.fsdp and not distributed:
        parser.error("--fsdp needs several processes: run under torchrun --nproc_per_node N")
    if distributed:
        dist.init_process_group("nccl" if args.device == "cuda" else "gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    device = torch.device(args.device, int(os.environ.get("LOCAL_RANK", 0))) if args.device == "cuda" else \
        torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    precisions = args.precisions.split(",")
    if device.type != "cuda":
        precisions = [p for p in precisions if p != "fp16"]  # fp16 autocast with a scaler is CUDA-only here
    results = []
    for name, (model_type, config) in configs(args.tiny).items():
        for sandwich in (False, True):
            reference = None
            for precision in precisions:
                row = measure(model_type, config, precision, args, device, rank, world, sandwich)
                reference = reference if reference is not None else row["first_loss"]
                relative = abs(row["first_loss"] - reference) / max(abs(reference), 1e-12)
                row.update(model=name, step="sandwich 0/50/90S" if sandwich else "fine-tuning", precision=precision,
                           processes=world, fsdp=args.fsdp, loss_vs_fp32=round(relative, 5),
                           agrees=relative < 0.05)
                results.append(row)
                if rank == 0:
                    print(json.dumps(row), flush=True)
    if distributed:
        dist.destroy_process_group()
    return 0 if all(row["agrees"] for row in results) else 1


if __name__ == "__main__":
    sys.exit(main())
