"""Distillation objectives side by side: one sparsified teacher, one student, the same budget, several seeds.

Each (objective, seed) is one ``run_distillation.py`` process into ``OUTPUT_DIR/{objective}/seed{n}``
(a finished run is reused when the command is run again). Printed, and written to
``OUTPUT_DIR/objectives.md`` and ``objectives.json``: per objective the student's best dev score
(mean ± std over seeds, in points), its mean paired difference to the first objective listed, the
training wall-clock, and a flag when the student ends within 2 points of the majority-class score
(a comparison at that floor measures nothing).

Example (the BERT row of docs/results.md's table; the teacher comes from the quick main job)::

    python benchmarks/compare_objectives.py --teacher_model_path outputs/main_job_quick/polarity/sparsify/model \\
        --task_name polarity --data_dir datasets --output_dir outputs/objectives_minilm \\
        --extra "--max_length 64 --num_train_epochs 3 --learning_rate 1e-4 --per_device_train_batch_size 32"
"""

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import REPO_ROOT, dev_labels
from compare_schedules import majority_floor

from data.tasks import get_task
from utils.artifacts.files import write_json_atomic

FLOOR_MARGIN = 2.0  # points


def run(objective: str, seed: int, args, out: Path) -> dict:
    results_file = out / "results.json"
    if not results_file.exists():
        command = [sys.executable, str(REPO_ROOT / "run_distillation.py"), "--teacher_model_path",
                   args.teacher_model_path, "--task_name", args.task_name, "--data_dir", args.data_dir,
                   "--layer_or_sparsity", args.student, "--objective", objective, "--seed", str(seed),
                   "--output_dir", str(out), "--overwrite_output_dir", "--do_train", *args.extra.split()]
        out.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        with open(out.parent / f"seed{seed}.log", "w") as log:
            done = subprocess.run(command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, check=False)
        if done.returncode != 0:
            raise SystemExit(f"{objective}, seed {seed} failed (exit {done.returncode}): see {log.name}")
        write_json_atomic(out / "wall.json", {"seconds": round(time.perf_counter() - started, 1)})
    results = json.loads(results_file.read_text())
    return {"objective": objective, "seed": seed, "score": 100 * results["best_score"],
            "step": results["best_step"], "seconds": json.loads((out / "wall.json").read_text())["seconds"]}


def table(rows: list[dict], objectives: list[str], floor: float) -> str:
    """The Markdown table of :func:`main`: per objective, scores over seeds, the mean paired difference to
    the first objective, time, and whether the mean is within ``FLOOR_MARGIN`` points of ``floor``."""
    by = {o: {r["seed"]: r for r in rows if r["objective"] == o} for o in objectives}
    base = by[objectives[0]]
    lines = ["| objective | seeds | student dev (mean ± std) | paired Δ vs " + objectives[0] + " | per seed | "
             "wall-clock (s) | at the floor? |", "|---|---|---|---|---|---|---|"]
    for objective in objectives:
        runs = by[objective]
        scores = [runs[s]["score"] for s in sorted(runs)]
        std = statistics.stdev(scores) if len(scores) > 1 else 0.0
        deltas = [runs[s]["score"] - base[s]["score"] for s in sorted(runs) if s in base]
        low = statistics.mean(scores) < floor + FLOOR_MARGIN
        lines.append(f"| {objective} | {len(scores)} | {statistics.mean(scores):.2f} ± {std:.2f} | "
                     f"{statistics.mean(deltas):+.2f} | {', '.join(f'{x:.2f}' for x in scores)} | "
                     f"{statistics.mean(r['seconds'] for r in runs.values()):.0f} | "
                     f"{'**yes**' if low else 'no'} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher_model_path", required=True, help="a sparsified teacher (run_sparsification's model/)")
    parser.add_argument("--task_name", required=True)
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--student", default="90S")
    parser.add_argument("--objectives", default="hidden_kd,hidden_cos,logit_kd")
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--extra", default="", help="more run_distillation flags (budget, lengths, precision)")
    parser.add_argument("--max_eval_samples", type=int, default=None,
                        help="the dev examples the runs evaluate (pass it here, not in --extra), for the floor")
    args = parser.parse_args(argv)
    if args.max_eval_samples:
        args.extra += f" --max_eval_samples {args.max_eval_samples}"
    objectives, seeds = args.objectives.split(","), [int(s) for s in args.seeds.split(",")]
    task = get_task(args.task_name)
    floor = 100 * majority_floor(task, dev_labels(task, args.data_dir, args.max_eval_samples), task.selection_metric)
    root = Path(args.output_dir)
    rows = []
    for seed in seeds:  # seed-major, so a partial run already pairs every objective
        for objective in objectives:
            rows.append(run(objective, seed, args, root / objective / f"seed{seed}"))
            print(f"seed {seed} {objective:10s} dev {rows[-1]['score']:.2f} ({rows[-1]['seconds']:.0f} s)", flush=True)
    text = (f"{args.task_name}, {args.student} student, run_distillation {args.extra}; dev "
            f"{task.selection_metric} in points; majority-class floor "
            f"{floor:.2f}\n\n{table(rows, objectives, floor)}")
    print(text)
    root.mkdir(parents=True, exist_ok=True)
    (root / "objectives.md").write_text(text + "\n")
    write_json_atomic(root / "objectives.json", {"settings": vars(args), "floor": floor, "rows": rows})


if __name__ == "__main__":
    main()
