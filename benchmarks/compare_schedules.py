"""Direct distillation vs MiniDisc vs MaxiDisc to one target: wall-clock, training FLOPs, student scores.

From one fine-tuned and sparsified teacher (built here once, and reused), each seed runs, each as
its own process with the same per-stage budget and settings:

* ``direct``: ``run_distillation.py --layer_or_sparsity 90S`` (teacher → student);
* ``minidisc``: ``run_minidisc.py --target_sparsity 90`` as the reference runs it (every candidate
  width each step, iteration 2 a sandwich again);
* ``minidisc_sampled``: the same with ``--sandwich_sample K`` (both ends + K others per step) and
  ``--final_student alone`` (iteration 2 distils the assistant into the student alone);
* ``maxidisc``: ``run_maxidisc.py --layer_or_sparsity_path 90S --search_assistants`` (every
  assistant of the map between --trunc_sparsity and the target, plus the direct path), each
  method in its own folder, so no stage of another method is reused.

The candidate assistants are the same for MiniDisc and MaxiDisc: the map's levels in
[--trunc_sparsity, target) (50, 60, 70, 80, 85 for 90S); MiniDisc's sandwich also trains the levels
above the target (95), as the reference does. The methods' order rotates with the seed, and the
load average is printed with each run, so load from other processes does not favour one method.

Printed (and written to ``OUTPUT_DIR/compare.json`` and ``compare.md``): per method, the
wall-clock of the whole command, its split into training / evaluation / the rest (loading,
encoding, saving), its training FLOPs (per step: a teacher forward and 3x each trained width's
forward, at the mean training length; evaluation excluded), the student's dev score (mean ± std
over seeds, in points), each method's cost relative to MaxiDisc, and whether MiniDisc's assistant
is the one MaxiDisc found best. Re-running the command skips every finished run (delete a
method's folder to redo it).

Profiles (``--profile``): ``cpu`` fits a 2-core machine in about an hour (MRPC, 60 steps of batch
32 per stage, two evaluations each); ``gpu`` uses the budgets of the reference's MRPC scripts
(batch 16, lr 3e-5, 10 epochs, patience 5, evaluation every 10 steps on MiniLM or BERT-base).

Example::

    python benchmarks/compare_schedules.py --model_dir outputs/assets/all-MiniLM-L6-v2 \\
        --output_dir outputs/compare_schedules --seeds 1,2,3
    python benchmarks/compare_schedules.py --model_dir bert-base-uncased --profile gpu \\
        --output_dir outputs/compare_schedules_gpu --data_dir glue_data
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from common import REPO_ROOT, encode_split, load_average

from data.tasks import get_task
from utils.model_io import load_model, load_tokenizer
from utils.plots import plot_search
from utils.run import write_json_atomic

SHARED_GLUE = REPO_ROOT.parent / "shared" / "data" / "glue"
TRAINING = ("--do_train", "--group_by_length")  # flags of every training run
METHODS = ("direct", "minidisc", "minidisc_sampled", "maxidisc")
PROFILES = {
    "cpu": {"finetune": ["--num_train_epochs", "3", "--learning_rate", "5e-5", "--per_device_train_batch_size", "32",
                         "--log_interval", "115"],
            "stage": ["--max_steps", "60", "--log_interval", "30", "--learning_rate", "1e-4",
                      "--per_device_train_batch_size", "32"]},
    "gpu": {"finetune": ["--num_train_epochs", "5", "--learning_rate", "3e-5", "--per_device_train_batch_size", "16",
                         "--log_interval", "100"],
            "stage": ["--num_train_epochs", "10", "--num_patience_epochs", "5", "--log_interval", "10",
                      "--learning_rate", "3e-5", "--per_device_train_batch_size", "16", "--max_grad_norm", "5.0"]},
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_dir", required=True, help="pretrained encoder to fine-tune into the teacher")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--data_dir", default=None,
                        help="GLUE folder (default: ../shared/data/glue with MRPC when present, else datasets/ "
                             "with polarity)")
    parser.add_argument("--task_name", default=None, help="default: mrpc from --data_dir, polarity otherwise")
    parser.add_argument("--profile", choices=tuple(PROFILES), default="cpu")
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--target_sparsity", type=int, default=90)
    parser.add_argument("--trunc_sparsity", type=int, default=50)
    parser.add_argument("--lam", type=float, default=0.2)
    parser.add_argument("--sandwich_sample", type=int, default=1, help="K of minidisc_sampled")
    parser.add_argument("--max_length", type=int, default=128)
    parser.add_argument("--extra", default="", help="more flags for every distillation run (after the profile's, so "
                        "they win), e.g. '--use_bf16' or '--max_steps 4'")
    parser.add_argument("--finetune_extra", default="", help="more flags for the teacher's fine-tuning")
    parser.add_argument("--max_train_samples", type=int, default=None,
                        help="train on the first N examples only (a quick try of the benchmark itself)")
    args = parser.parse_args(argv)
    if args.data_dir is None:
        shared = (SHARED_GLUE / "MRPC" / "train.tsv").exists()
        args.data_dir = str(SHARED_GLUE if shared else REPO_ROOT / "datasets")
        args.task_name = args.task_name or ("mrpc" if shared else "polarity")
    args.task_name = args.task_name or "mrpc"
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.methods = args.methods.split(",")
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown:
        parser.error(f"--methods: unknown {unknown}; expected some of {METHODS}")
    return args


def run_script(script: str, flags: list[str], output_dir: Path, log: Path) -> dict:
    """Run ``script`` with ``flags`` into ``output_dir`` (afresh unless finished); return its timing record."""
    record_file = output_dir / "timing.json"
    if record_file.exists() and (output_dir / "results.json").exists():
        return json.loads(record_file.read_text())
    if output_dir.exists():
        shutil.rmtree(output_dir)  # an unfinished run: its partial wall-clock would not be comparable
    output_dir.mkdir(parents=True)
    command = [sys.executable, str(REPO_ROOT / script), *flags, "--output_dir", str(output_dir)]
    load_before = load_average()
    start = time.perf_counter()
    with open(log, "w") as stream:
        completed = subprocess.run(command, cwd=REPO_ROOT, stdout=stream, stderr=subprocess.STDOUT, check=False)
    seconds = time.perf_counter() - start
    if completed.returncode != 0:
        raise SystemExit(f"{script} failed (exit {completed.returncode}); its output is in {log}")
    record = {"command": " ".join([script, *flags]), "seconds": round(seconds, 1), "load_before": load_before,
              "load_after": load_average()}
    write_json_atomic(record_file, record)
    return record


def build_teacher(args, root: Path, common: list[str]) -> Path:
    """Fine-tune and sparsify the teacher once (``root/teacher``, ``root/sparse``); return the sparse model."""
    finetune = root / "teacher"
    run_script("run_finetuning.py", ["--model_name_or_path", args.model_dir, *common, *TRAINING, "--seed", "776",
                                     *PROFILES[args.profile]["finetune"],
                                     *args.finetune_extra.split()], finetune, root / "teacher.log")
    sparse = root / "sparse"
    run_script("run_sparsification.py", ["--teacher_model_path", str(finetune / "best"), *common],
               sparse, root / "sparse.log")
    return sparse / "model"


def method_flags(method: str, args) -> tuple[str, list[str]]:
    target = f"{args.target_sparsity}"
    if method == "direct":
        return "run_distillation.py", ["--layer_or_sparsity", f"{target}S"]
    if method == "maxidisc":
        return "run_maxidisc.py", ["--layer_or_sparsity_path", f"{target}S", "--search_assistants",
                                   "--trunc_sparsity", str(args.trunc_sparsity)]
    flags = ["--target_sparsity", target, "--trunc_sparsity", str(args.trunc_sparsity), "--lam", str(args.lam)]
    if method == "minidisc_sampled":
        flags += ["--sandwich_sample", str(args.sandwich_sample), "--final_student", "alone"]
    return "run_minidisc.py", flags


# --------------------------------------------------------------------------------------------
# Training FLOPs of a finished run, from its stages


class FlopCounter:
    """Forward FLOPs per example of the teacher at every width, at the training set's mean length."""

    def __init__(self, teacher_dir: Path, args, batch_size: int):
        train = encode_split(get_task(args.task_name), args.data_dir, "train", load_tokenizer(str(teacher_dir)),
                             args.max_length, args.max_train_samples)
        self.length = round(statistics.mean(train.lengths))
        self.batch_size = batch_size
        model = load_model("sparsebert_cls", str(teacher_dir))
        self.forward = {}
        for s in model.available_sparsities():
            model.sparsify(s)
            self.forward[s] = model.training_cost(self.length)["forward_flops"]

    def stage(self, steps: int, teacher: int, widths: list[int], passes: float | None = None) -> float:
        """A stage's training FLOPs: per example one teacher forward and 3x each trained width's forward
        (``passes`` of the widths per step, on average, for a sampled sandwich)."""
        per_width = statistics.mean(self.forward[s] for s in widths) * (passes or len(widths))
        return steps * self.batch_size * (self.forward[teacher] + 3 * per_width)


def stage_records(method: str, run_dir: Path) -> list[dict]:
    """Every trained stage of a run: its results.json with the stage's folder."""
    return [{**json.loads(path.read_text()), "dir": path.parent}
            for path in sorted(run_dir.rglob("iter_*/results.json"))] if method != "direct" else [
        {**json.loads((run_dir / "results.json").read_text()), "dir": run_dir}]


def training_flops(method: str, run_dir: Path, counter: FlopCounter, args) -> float:
    target, total = args.target_sparsity, 0.0
    if method == "direct":
        steps = json.loads((run_dir / "results.json").read_text())["train"]["steps"]
        return counter.stage(steps, 0, [target])
    if method == "maxidisc":
        for chain_dir in sorted(p for p in run_dir.iterdir() if p.is_dir() and (p / "iter_1").is_dir()):
            chain = [int(s) for s in chain_dir.name.rstrip("S").split(",")]
            teacher = 0
            for k, student in enumerate(chain, start=1):
                steps = json.loads((chain_dir / f"iter_{k}" / "results.json").read_text())["train"]["steps"]
                total += counter.stage(steps, teacher, [student])
                teacher = student
        return total
    schedule = json.loads((run_dir / "schedule.json").read_text())["iterations"]
    for k, iteration in enumerate(schedule, start=1):
        steps = json.loads((run_dir / f"iter_{k}" / "results.json").read_text())["train"]["steps"]
        teacher = iteration["teacher_sparsity"]
        if iteration["mode"] == "alone":
            total += counter.stage(steps, teacher, [target])
        else:
            widths = iteration["candidates"]
            sampled = method == "minidisc_sampled" and args.sandwich_sample + 2 < len(widths)
            total += counter.stage(steps, teacher, widths, passes=args.sandwich_sample + 2 if sampled else None)
    return total


def time_split(method: str, run_dir: Path, seconds: float) -> dict:
    """Wall-clock split into training, evaluation (with best/ saves) and the rest."""
    stages = stage_records(method, run_dir)
    train = sum(s["train"]["seconds"] for s in stages)
    evaluation = sum(s["train"].get("eval_seconds", 0.0) for s in stages)
    return {"train": round(train, 1), "eval": round(evaluation, 1), "other": round(seconds - train - evaluation, 1),
            "stages": {str(s["dir"].relative_to(run_dir)) or ".": [s["train"]["seconds"],
                                                                  s["train"].get("eval_seconds", 0.0)]
                       for s in stages}}


def outcome(method: str, run_dir: Path, metric: str) -> dict:
    """The student's dev ``metric`` (MiniDisc's best_score may be a λ-tradeoff τ, not a dev score) and
    the assistant on its path (None: direct)."""
    results = json.loads((run_dir / "results.json").read_text())
    score = results["best_dev"][metric]
    if method == "maxidisc":
        best = results["best_chain"]
        assistant = int(best.split(",")[0]) if "," in best else None
        return {"score": score, "assistant": assistant,
                "paths": {row["chain"]: row["dev"][metric] for row in results["chains_tried"]}}
    if method == "direct":
        return {"score": score, "assistant": None}
    assistants = results["assistants"]
    return {"score": score, "assistant": assistants[0] if assistants else None}


# --------------------------------------------------------------------------------------------
# Report


def assistant_name(sparsity: int | None) -> str:
    return "none" if sparsity is None else f"{sparsity}S"


def mean_std(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {std:.2f}"


def report(rows: list[dict], args, metric: str) -> str:
    lines = [f"{args.task_name}, target {args.target_sparsity}S, candidates from {args.trunc_sparsity}S, "
             f"λ {args.lam}, profile {args.profile}, seeds {args.seeds}; dev {metric} in points (×100)", "",
             "| method | seeds | wall clock (s) | train / eval / other (s) | training TFLOPs | wall vs MaxiDisc "
             "| FLOPs vs MaxiDisc | student dev | assistant(s) |",
             "|---|---|---|---|---|---|---|---|---|"]
    by_method = {m: [r for r in rows if r["method"] == m] for m in args.methods}
    maxi = by_method.get("maxidisc") or []
    maxi_seconds = statistics.mean(r["seconds"] for r in maxi) if maxi else None
    maxi_flops = statistics.mean(r["flops"] for r in maxi) if maxi else None
    for method, runs in by_method.items():
        if not runs:
            continue
        seconds = statistics.mean(r["seconds"] for r in runs)
        flops = statistics.mean(r["flops"] for r in runs)
        split = {k: statistics.mean(r["split"][k] for r in runs) for k in ("train", "eval", "other")}
        lines.append(
            f"| {method} | {len(runs)} | {seconds:.0f} | {split['train']:.0f} / {split['eval']:.0f} / "
            f"{split['other']:.0f} | {flops / 1e12:.1f} | "
            f"{f'{seconds / maxi_seconds:.2f}' if maxi_seconds else '—'} | "
            f"{f'{flops / maxi_flops:.2f}' if maxi_flops else '—'} | "
            f"{mean_std([100 * r['score'] for r in runs])} | "
            f"{', '.join(assistant_name(r['assistant']) for r in runs)} |")
    lines.append("")
    for method in ("minidisc", "minidisc_sampled"):
        runs = by_method.get(method) or []
        if runs:
            names = sorted({name for r in runs for name in r["split"]["stages"]})
            parts = {name: [statistics.mean(r["split"]["stages"][name][i] for r in runs if name in r["split"]["stages"])
                            for i in (0, 1)] for name in names}
            lines.append(f"- {method}, seconds per iteration (train + eval), seed mean: "
                         + "; ".join(f"{name.split('/')[0]} {t:.0f} + {e:.0f}" for name, (t, e) in parts.items()))
    for seed in args.seeds:
        found = {r["method"]: r for r in rows if r["seed"] == seed}
        if "maxidisc" not in found:
            continue
        best = found["maxidisc"]["assistant"]
        paths = ", ".join(f"{chain} {100 * score:.2f}" for chain, score in found["maxidisc"]["paths"].items())
        picks = "; ".join(f"{m} chose {assistant_name(found[m]['assistant'])}: "
                          f"{'the same' if found[m]['assistant'] == best else 'another'}"
                          for m in ("minidisc", "minidisc_sampled") if m in found)
        lines.append(f"- seed {seed}: MaxiDisc's paths {paths}; best {assistant_name(best)}; {picks}")
    return "\n".join(lines)


def draw_searches(rows: list[dict], root: Path, args, metric: str) -> None:
    """``seed{n}/search.png``: MaxiDisc's paths against their cost, its best and MiniDisc's choices circled."""
    for seed in args.seeds:
        found = {r["method"]: r for r in rows if r["seed"] == seed}
        if "maxidisc" not in found:
            continue
        chains = json.loads((root / f"seed{seed}" / "maxidisc" / "results.json").read_text())["chains_tried"]

        def chain(assistant):
            return f"{assistant},{args.target_sparsity}S" if assistant is not None else f"{args.target_sparsity}S"

        marks = {"MaxiDisc's best": chain(found["maxidisc"]["assistant"])}
        marks.update({f"{m}'s choice": chain(found[m]["assistant"]) for m in ("minidisc", "minidisc_sampled")
                      if m in found})
        plot_search([{**row, "score": row["dev"][metric]} for row in chains], root / f"seed{seed}" / "search.png",
                    metric, marks)


def main(argv=None) -> None:
    args = parse_args(argv)
    root = Path(args.output_dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    task = get_task(args.task_name)
    common = ["--task_name", args.task_name, "--data_dir", args.data_dir, "--max_length", str(args.max_length)]
    if args.max_train_samples:
        common += ["--max_train_samples", str(args.max_train_samples)]
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, load {load_average()}; task {args.task_name} from "
          f"{args.data_dir}; profile {args.profile}", flush=True)
    teacher = build_teacher(args, root, common)
    stage = PROFILES[args.profile]["stage"]
    batch_size = int(stage[stage.index("--per_device_train_batch_size") + 1])
    counter = FlopCounter(teacher, args, batch_size)
    rows = []
    for position, seed in enumerate(args.seeds):
        order = args.methods[position % len(args.methods):] + args.methods[:position % len(args.methods)]
        for method in order:
            script, flags = method_flags(method, args)
            run_dir = root / f"seed{seed}" / method
            flags = ["--teacher_model_path", str(teacher), *common, *TRAINING, *stage, "--seed", str(seed), *flags,
                     *args.extra.split()]
            if method == "maxidisc":
                flags += ["--reuse_dir", str(run_dir)]
            record = run_script(script, flags, run_dir, root / f"seed{seed}_{method}.log")
            row = {"method": method, "seed": seed, "seconds": record["seconds"],
                   "split": time_split(method, run_dir, record["seconds"]),
                   "flops": training_flops(method, run_dir, counter, args), **outcome(method, run_dir, task.selection_metric),
                   "load": [record["load_before"], record["load_after"]]}
            rows.append(row)
            print(f"seed {seed} {method:17s} {row['seconds']:7.1f}s  dev {100 * row['score']:.2f}  assistant "
                  f"{row['assistant']}  load {record['load_before']} -> {record['load_after']}", flush=True)
    draw_searches(rows, root, args, task.selection_metric)
    table = report(rows, args, task.selection_metric)
    print(table, flush=True)
    write_json_atomic(root / "compare.json", {"settings": {k: v for k, v in vars(args).items()},
                                              "stage_flags": stage, "mean_train_length": counter.length,
                                              "rows": rows})
    (root / "compare.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
