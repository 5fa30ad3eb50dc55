"""What uniform widths cost: the same teacher, importance and budget, pruned by the global ranking or with every
layer keeping as many units (``run_sparsification.py --uniform_widths``, whose decoder students save as stock
architectures).

From one sparsified teacher (a ``run_sparsification.py`` output folder: its ``model/`` holds ``importance.json``),
this rebuilds both maps from the same importance scores (``--reuse_importance``, no second pass), prints the
two pruning curves (dev score and prunable parameters per level, by slicing, no training), then distils each to
``--target`` S with the same settings and seeds (``run_distillation.py``, each run its own process) and prints
the students' dev scores, the majority-class floor, the paired difference uniform − global per seed and, over
two or more seeds, its mean with a 95% t interval. Written to ``OUTPUT_DIR/compare.json``. Finished runs are
reused (delete a folder to redo it).

Example (the SmolLM2 teacher of the quick main job, its distillation settings)::

    python benchmarks/compare_uniform_widths.py \\
        --sparsified outputs/main_job_quick_smollm2/polarity/sparsify --data_dir datasets --task_name polarity \\
        --target 50 --seeds 1,2 --output_dir outputs/uniform_widths -- \\
        --use_bf16 --max_length 64 --max_eval_samples 200 --max_steps 300 --learning_rate 1e-3 --group_by_length
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from common import REPO_ROOT, dev_labels
from schedule_report import majority_floor
from scipy import stats

from data.tasks import get_task
from utils.command.results import read_results

MAPS = ("global", "uniform")


def run(command: list[str], log: Path) -> None:
    """Run one script as its own process, its output in ``log``; stop on failure."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as stream:
        completed = subprocess.run([sys.executable, *command], cwd=REPO_ROOT, stdout=stream, stderr=subprocess.STDOUT)
    if completed.returncode:
        raise SystemExit(f"{' '.join(command[:1])} failed (exit {completed.returncode}); see {log}")


def sparsify(args, name: str) -> Path:
    """The teacher with ``name``'s map, rebuilt from the source's importance scores."""
    folder = args.output_dir / name
    if not (folder / "results.json").exists():
        source = json.loads((args.sparsified / "results.json").read_text())
        command = ["run_sparsification.py", "--teacher_model_path", str(args.sparsified / "model"), "--reuse_importance",
                   "--sparsities", ",".join(map(str, source["sparsities"])), "--neuron_multiple",
                   str(source["neuron_multiple"]), "--task_name", args.task_name, "--data_dir", str(args.data_dir),
                   "--output_dir", str(folder), *args.data_args]
        run(command + (["--uniform_widths"] if name == "uniform" else []), folder.with_suffix(".log"))
    return folder


def distil(args, name: str, seed: int) -> dict:
    folder = args.output_dir / f"seed{seed}" / name
    if not (folder / "results.json").exists():
        run(["run_distillation.py", "--teacher_model_path", str(args.output_dir / name / "model"),
             "--layer_or_sparsity", f"{args.target}S", "--task_name", args.task_name, "--data_dir", str(args.data_dir),
             "--seed", str(seed), "--output_dir", str(folder), "--overwrite_output_dir", "--do_train", *args.data_args,
             *args.distil_args], folder.with_suffix(".log"))
    result = read_results(folder)
    config = json.loads((folder / "best" / "config.json").read_text())
    return {"dev": result["best_score"], "test": result.get("test"), "model": result["model"],
            "stock": "auto_map" not in config}


def floor(args) -> float:
    """The dev score of always predicting the majority label, on the dev examples the runs evaluate."""
    task = get_task(args.task_name)
    limit = args.data_args[args.data_args.index("--max_eval_samples") + 1] if "--max_eval_samples" in args.data_args \
        else None
    return majority_floor(task, dev_labels(task, str(args.data_dir), limit and int(limit)), task.selection_metric)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sparsified", type=Path, required=True, help="A run_sparsification.py output folder.")
    parser.add_argument("--data_dir", type=Path, required=True)
    parser.add_argument("--task_name", required=True)
    parser.add_argument("--target", type=int, default=50, help="The students' sparsity level (one of the map's).")
    parser.add_argument("--seeds", default="1,2", help="Comma-separated seeds of the distillation runs.")
    parser.add_argument("--output_dir", type=Path, required=True)
    parser.add_argument("--data_args", default="", help="Data flags for every script, e.g. '--max_length 64 "
                        "--max_eval_samples 200'.")
    parser.add_argument("distil_args", nargs=argparse.REMAINDER, help="After --: run_distillation.py's settings.")
    args = parser.parse_args(argv)
    args.data_args = args.data_args.split()
    args.distil_args = [a for a in args.distil_args if a != "--"]
    seeds = [int(s) for s in args.seeds.split(",")]
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    curves = {name: read_results(sparsify(args, name))["pruning_curve"] for name in MAPS}
    print(f"{'level':>5} | " + " | ".join(f"{name} dev  prunable" for name in MAPS))
    for rows in zip(*(curves[name] for name in MAPS), strict=True):
        metric = next(iter(rows[0]["dev"]))
        print(f"{rows[0]['sparsity']:>5} | " + " | ".join(f"{row['dev'][metric]:.4f} {row['prunable_parameters']:>11,}"
                                                        for row in rows))
    students = {seed: {name: distil(args, name, seed) for name in MAPS} for seed in seeds}
    lowest = floor(args)
    differences = [students[s]["uniform"]["dev"] - students[s]["global"]["dev"] for s in seeds]
    print(f"\nfloor (majority class on dev): {lowest:.4f}")
    print(f"{'seed':>4} | {'global':>7} | {'uniform':>7} | uniform - global | stock (global, uniform)")
    for seed, difference in zip(seeds, differences, strict=True):
        row = students[seed]
        print(f"{seed:>4} | {row['global']['dev']:.4f} | {row['uniform']['dev']:.4f} | {difference:+.4f} | "
              f"{row['global']['stock']}, {row['uniform']['stock']}")
    summary = {"floor": lowest, "differences": differences}
    if len(seeds) > 1:
        mean, spread = statistics.mean(differences), stats.sem(differences)
        if spread > 0:
            low, high = stats.t.interval(0.95, len(seeds) - 1, loc=mean, scale=spread)
            summary.update(mean=mean, interval=[low, high])
            print(f"mean uniform - global: {mean:+.4f} [{low:+.4f}, {high:+.4f}] (95% t, {len(seeds)} seeds)")
        else:  # the same difference in every seed: a t interval says nothing
            summary.update(mean=mean, interval=None)
            print(f"mean uniform - global: {mean:+.4f}, the same in all {len(seeds)} seeds (no interval)")
    parameters = {name: students[seeds[0]][name]["model"]["prunable_parameters"] for name in MAPS}
    print(f"prunable parameters at {args.target}S: " + ", ".join(f"{k} {v:,}" for k, v in parameters.items()))
    report = {"curves": curves, "students": students, "summary": summary, "parameters": parameters}
    (args.output_dir / "compare.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    return report


if __name__ == "__main__":
    main()
