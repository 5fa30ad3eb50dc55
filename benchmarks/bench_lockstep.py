"""What running a sandwich's widths in lockstep could save: a measurement of its upper bound.

Lockstep (issue 27) would run the widths of a MiniDisc sandwich layer by layer together: each width's matmuls on
its own weight slices, as now, but the element-wise work at full hidden size (dropout, residual add, LayerNorm,
the per-layer state loss) as one operation over every width's rows, then one backward. It changes nothing in the
matmuls, so what it can save is bounded by the difference between that element-wise work run width by width and
run once over the concatenated rows (plus the concatenation it needs). This script measures both, forward and
backward, on the shapes of the real step (the packed tokens of the first MRPC batches, MiniLM's hidden size, its
6 layers, 7 widths), and the real sandwich step (``bench_sandwich.py``'s (b) configuration, fp32 and bf16) in the
same process, calls interleaved, and prints the saving as a share of the step and the memory lockstep would add
(every width's activations alive at once instead of one width's).

Example:
    python benchmarks/bench_lockstep.py --model_dir outputs/assets/all-MiniLM-L6-v2 --data_dir ../shared/data/glue
"""

import argparse
import statistics

import bench_sandwich
import torch
import torch.nn.functional as F
from common import add_timing_arguments, interleaved_times, load_average, medians

from models.fast_ops import dropout
from utils.artifacts.model_io import load_tokenizer
from utils.engine.objectives import DistillObjective


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_dir", required=True, help="MiniLM (or any BERT) checkpoint, as bench_sandwich.py")
    parser.add_argument("--data_dir", required=True, help="folder holding mrpc/train.tsv")
    parser.add_argument("--num_batches", type=int, default=2, help="batches per timed call")
    add_timing_arguments(parser, repeats=5)
    args = parser.parse_args(argv)
    # the rest of bench_sandwich's settings at their defaults (sparsities, batch size, seed, learning rate)
    defaults = bench_sandwich.parse_args(["--model_dir", args.model_dir, "--data_dir", args.data_dir,
                                          "--num_batches", str(args.num_batches)])
    for key, value in vars(defaults).items():
        setattr(args, key, getattr(args, key, value))
    return args


def elementwise_step(tokens: list[int], hidden: int, layers: int, widths: int, p: float, lockstep: bool):
    """The element-wise work of the students' layers in one sandwich step over batches of ``tokens`` packed tokens:
    per layer two residual blocks (dropout of the projection, residual add, LayerNorm) and the state loss (MSE
    against the teacher's state), forward and backward; width by width, or once over the ``widths`` widths'
    concatenated rows (the concatenation of the projections included)."""
    norm = torch.nn.LayerNorm(hidden)
    generator = torch.Generator().manual_seed(0)
    data = [(torch.randn(n, hidden, generator=generator), torch.randn(n, hidden, generator=generator))
            for n in tokens]

    def run(states: torch.Tensor, projections: list[torch.Tensor], target: torch.Tensor) -> None:
        x, loss = states, 0.0
        for _ in range(layers):
            for _ in range(2):  # attention block, FFN block
                projected = projections[0] if len(projections) == 1 else torch.cat(projections)
                x = norm(x + dropout(projected, p, True))
            loss = loss + F.mse_loss(x, target)
        loss.backward()

    def step():
        for states, target in data:
            if lockstep:
                rows = states.repeat(widths, 1).requires_grad_()
                projections = [states.clone().requires_grad_() for _ in range(widths)]
                run(rows, projections, target.repeat(widths, 1))
            else:
                for _ in range(widths):
                    run(states.clone().requires_grad_(), [states.clone().requires_grad_()], target)

    return step


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    teacher = bench_sandwich.build_teacher(args)
    batches = bench_sandwich.load_batches(args, load_tokenizer(args.model_dir))["dynamic"]
    tokens = [int(batch["attention_mask"].sum()) for batch in batches]
    config, widths = teacher.config, len(args.sparsities)
    print(f"threads {args.threads}, {widths} widths, {config.num_hidden_layers} layers, hidden {config.hidden_size}, "
          f"packed tokens per batch {tokens}, load {load_average()}", flush=True)
    steps = {}
    for precision in ("fp32", "bf16"):
        student, optimizer = bench_sandwich.trainable_copy(teacher, args)
        sandwich = bench_sandwich.sandwich_objective(DistillObjective(teacher), args)
        steps[f"sandwich step {precision}"] = bench_sandwich.train_step(sandwich, student, optimizer, batches,
                                                                        precision=precision)
    p = config.hidden_dropout_prob
    for lockstep in (False, True):
        steps["element-wise, " + ("lockstep" if lockstep else "width by width")] = elementwise_step(
            tokens, config.hidden_size, config.num_hidden_layers, widths, p, lockstep)
    times = interleaved_times(steps, args.warmup, args.repeats)
    median = {name: seconds / len(batches) for name, seconds in medians(times).items()}
    for name, seconds in median.items():
        spread = [t / len(batches) for t in times[name]]
        print(f"{name:34s} {seconds:7.3f} s/step  [{min(spread):.3f}-{max(spread):.3f}]")
    saving = median["element-wise, width by width"] - median["element-wise, lockstep"]
    for precision in ("fp32", "bf16"):
        step = median[f"sandwich step {precision}"]
        print(f"lockstep could save at most {saving:.3f} s of the {precision} step's {step:.3f} s "
              f"({saving / step:.1%}): it would run at <= {step / (step - saving):.2f}x")
    activations = statistics.mean(tokens) * config.hidden_size * 4 * config.num_hidden_layers
    print(f"memory: the states kept for backward grow {widths}x (every width's at once), about "
          f"{activations * (widths - 1) * 10 / 2**20:.0f} MiB more per batch at ~10 saved [tokens, hidden] fp32 "
          f"tensors per layer; load at the end {load_average()}")


if __name__ == "__main__":
    main()
