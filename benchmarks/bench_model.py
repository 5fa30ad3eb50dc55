"""Benchmark the SparseBERT encoder against HF ``BertModel`` and densified models against the FLOP ideal.

Two parts, measured in one run on the same random inputs (CPU, median over repeats after warmup):

1. Full width, ours vs HF ``BertModel`` (same weights, no pooler on either side), on a BERT-base shape
   (12L, 768, 12 heads, 3072) and a MiniLM shape (6L, 384, 12 heads, 1536): forward+backward and
   inference (no_grad). Prints ours/HF time ratios (< 1 means ours is faster).
2. Inference latency of densified BERT-base-shaped models at several sparsities: measured speedup over
   0S against the ideal speedup from the encoder FLOP count (Q/K/V/O and FFN matmuls plus the attention
   score and context matmuls). Prints measured / ideal.
3. Ours in float32 against ours under bfloat16 autocast (what ``--use_bf16`` does: fp32 weights,
   bf16 matmuls), forward+backward and inference, per shape. Prints bf16/fp32 time ratios (< 1 means
   bf16 is faster; expect ~1 or worse on a CPU without bf16 matrix units).

Example:
    python benchmarks/bench_model.py                       # full run (several minutes on 2 cores)
    python benchmarks/bench_model.py --quick               # small shapes, few repeats, ~1 minute
"""

import argparse
import copy
import logging
from functools import partial

import torch
from common import add_timing_arguments, encoder_flops, inference_step, interleaved_times, medians
from transformers import BertConfig, BertModel

from models import SparseBertModel

logger = logging.getLogger("bench_model")

SHAPES = {
    "bert-base": dict(num_hidden_layers=12, hidden_size=768, num_attention_heads=12, intermediate_size=3072),
    "minilm": dict(num_hidden_layers=6, hidden_size=384, num_attention_heads=12, intermediate_size=1536),
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_timing_arguments(parser, repeats=5)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--seq_len", type=int, default=128)
    parser.add_argument("--shapes", default="bert-base,minilm", help=f"comma list of {sorted(SHAPES)}")
    parser.add_argument("--sparsities", default="0,50,70,90,95", help="densified levels for part 2")
    parser.add_argument("--sparsity_shape", default="bert-base", help="shape used for part 2")
    parser.add_argument("--padded", action="store_true",
                        help="random lengths in [seq_len/2, seq_len] (ours then skips the padding outside attention)")
    parser.add_argument("--skip_hf", action="store_true", help="skip part 1")
    parser.add_argument("--skip_sparse", action="store_true", help="skip part 2")
    parser.add_argument("--skip_bf16", action="store_true", help="skip part 3")
    parser.add_argument("--quick", action="store_true", help="batch 8 x 64, 1 warmup, 2 repeats")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch_size, args.seq_len, args.warmup, args.repeats = 8, 64, 1, 2
    return args


def make_config(shape: str) -> BertConfig:
    return BertConfig(**SHAPES[shape], hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def make_inputs(args, vocab_size: int) -> dict:
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(1000, vocab_size, (args.batch_size, args.seq_len), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    if args.padded:
        lengths = torch.randint(args.seq_len // 2, args.seq_len + 1, (args.batch_size,), generator=generator)
        attention_mask = (torch.arange(args.seq_len)[None, :] < lengths[:, None]).long()
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def last_hidden(model, inputs) -> torch.Tensor:
    if isinstance(model, SparseBertModel):
        return model(**inputs)[-1]
    return model(**inputs).last_hidden_state


def train_step(model, inputs):
    def step():
        model.zero_grad(set_to_none=True)
        last_hidden(model, inputs).square().mean().backward()

    return step


def infer_step(model, inputs):
    return inference_step(partial(last_hidden, model), [inputs])


def bench_against_hf(args) -> None:
    for shape in args.shapes.split(","):
        config = make_config(shape)
        torch.manual_seed(0)
        hf = BertModel(config, add_pooling_layer=False).train()
        ours = SparseBertModel(make_config(shape)).train()
        ours.load_state_dict(hf.state_dict(), strict=False)
        inputs = make_inputs(args, config.vocab_size)
        with torch.no_grad():
            real = inputs["attention_mask"].bool()  # ours is zero at padding, HF's is meaningless there
            diff = (last_hidden(ours, inputs)[real] - last_hidden(hf, inputs)[real]).abs().max().item()
        for mode, make_step in (("fwd+bwd", train_step), ("inference", infer_step)):
            steps = {"hf": make_step(hf, inputs), "ours": make_step(ours, inputs)}
            times = medians(interleaved_times(steps, args.warmup, args.repeats))
            print(
                f"{shape:10s} {mode:9s}  HF {times['hf']:7.3f}s  ours {times['ours']:7.3f}s  "
                f"ours/HF {times['ours'] / times['hf']:.3f}   (max |diff| {diff:.1e})",
                flush=True,
            )
        del hf, ours


def autocast_step(make_step, model, inputs):
    """``make_step``'s step run under bfloat16 autocast on the CPU."""
    inner = make_step(model, inputs)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            inner()

    return step


def bench_bf16(args) -> None:
    for shape in args.shapes.split(","):
        config = make_config(shape)
        torch.manual_seed(0)
        ours = SparseBertModel(config).train()
        inputs = make_inputs(args, config.vocab_size)
        with torch.no_grad():
            real = inputs["attention_mask"].bool()
            fp32 = last_hidden(ours, inputs)[real]
            with torch.autocast("cpu", dtype=torch.bfloat16):
                bf16 = last_hidden(ours, inputs)[real].float()
            error = ((bf16 - fp32).norm() / fp32.norm()).item()
        for mode, make_step in (("fwd+bwd", train_step), ("inference", infer_step)):
            steps = {"fp32": make_step(ours, inputs), "bf16": autocast_step(make_step, ours, inputs)}
            times = medians(interleaved_times(steps, args.warmup, args.repeats))
            print(
                f"{shape:10s} {mode:9s}  fp32 {times['fp32']:7.3f}s  bf16 {times['bf16']:7.3f}s  "
                f"bf16/fp32 {times['bf16'] / times['fp32']:.3f}   (relative error {error:.1e})",
                flush=True,
            )
        del ours


def uniform_global_map(config: BertConfig, levels) -> dict:
    """A sparsity map from an identity importance order ranked globally: each layer loses its tail."""
    num_layers = config.num_hidden_layers
    sparsity_map = {}
    for level in levels:
        entry = {}
        for unit, size in (("head", config.num_attention_heads), ("neuron", config.intermediate_size)):
            ranked = sorted(
                ((position, layer) for layer in range(num_layers) for position in range(size)), reverse=True
            )
            counts = {}
            for _, layer in ranked[: round(level / 100 * num_layers * size)]:
                counts[layer] = counts.get(layer, 0) + 1
            entry[unit] = counts
        sparsity_map[level] = entry
    return sparsity_map


def bench_densified(args) -> None:
    levels = [int(s) for s in args.sparsities.split(",")]
    config = make_config(args.sparsity_shape)
    config.sparsity_map = uniform_global_map(config, [s for s in levels if s])
    torch.manual_seed(0)
    full = SparseBertModel(config).eval()
    inputs = make_inputs(args, config.vocab_size)
    models = {}
    for level in levels:
        model = copy.deepcopy(full)
        model.sparsify(level)
        model.densify()
        models[level] = model
    del full
    times = medians(interleaved_times(
        {level: infer_step(model, inputs) for level, model in models.items()}, args.warmup, args.repeats
    ))
    flops = {
        level: encoder_flops(model.kept_widths(), config, args.batch_size, args.seq_len)
        for level, model in models.items()
    }
    base = levels[0]
    for level, model in models.items():
        measured, ideal = times[base] / times[level], flops[base] / flops[level]
        counts = model.count_parameters()
        print(
            f"{args.sparsity_shape} {level:3d}S  prunable {counts['prunable'] / 1e6:6.2f}M  "
            f"total {counts['total'] / 1e6:6.2f}M  {times[level]:7.3f}s  speedup over {base}S {measured:5.2f}x  "
            f"ideal {ideal:5.2f}x  measured/ideal {measured / ideal:.2f}",
            flush=True,
        )


def main(argv=None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, threads {args.threads}, batch {args.batch_size} x {args.seq_len}, "
        f"padded={args.padded}, warmup {args.warmup}, median of {args.repeats}",
        flush=True,
    )
    if not args.skip_hf:
        bench_against_hf(args)
    if not args.skip_sparse:
        bench_densified(args)
    if not args.skip_bf16:
        bench_bf16(args)


if __name__ == "__main__":
    main()
