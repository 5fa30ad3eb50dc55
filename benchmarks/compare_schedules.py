"""Direct distillation vs MiniDisc vs MaxiDisc to one target, and the paper's experiment: does τ(s) of an
assistant, read off MiniDisc's first iteration, predict the student distilled through it?

From one fine-tuned and sparsified teacher (built here once, and reused), each seed runs, each as
its own process with the same per-stage budget and settings:

* ``direct``: ``run_distillation.py --layer_or_sparsity 90S`` (teacher → student);
* ``minidisc``: ``run_minidisc.py --target_sparsity 90`` as the reference runs it (every candidate
  width each step, iteration 2 a sandwich again);
* ``minidisc_alone``: the same iteration 1, then ``--final_student alone`` (iteration 2 distils the
  assistant into the student alone, not a sandwich of every width from the assistant's);
* ``minidisc_sampled``: ``--sandwich_sample K`` (both ends + K others per step) and
  ``--final_student alone``;
* ``maxidisc``: ``run_maxidisc.py --layer_or_sparsity_path 90S --search_assistants`` (every
  assistant of the map between --trunc_sparsity and the target, plus the direct path), each
  method in its own folder, so no stage of another method is reused.

The candidate assistants are the same for MiniDisc and MaxiDisc: the map's levels in
[--trunc_sparsity, target) (50, 60, 70, 80, 85 for 90S); MiniDisc's sandwich also trains the levels
above the target (95), as the reference does. The methods' order rotates with the seed, and the
load average is printed with each run, so load from other processes does not favour one method.

Printed (and written to ``OUTPUT_DIR/compare.json`` and ``compare.md``):

* first, the **floor**: the dev score of always predicting the majority label, in the task's metric, on
  the dev examples every run evaluates (MRPC: acc_and_f1 of always "paraphrase"; regression: 0, no
  correlation);
* per method: the wall-clock of the whole command, its split into training / evaluation / the rest
  (loading, encoding, saving), its training FLOPs (per step: a teacher forward and 3x each trained
  width's forward, at the mean training length; evaluation excluded), the student's dev score (mean ±
  std over seeds, in points), each method's cost relative to MaxiDisc, and in how many seeds the
  student ends within 2 points of the floor (flagged ⚠: a comparison made at the floor measures
  nothing);
* per candidate assistant s: P(s) and τ(s) from MiniDisc's first iteration (``schedule.json``) and the
  dev score of the 90S student that MaxiDisc distilled through s (its ``chains_tried``), seed means;
  every seed's values are in compare.json;
* per seed, Spearman's rank correlation between τ(s) and that student score over the candidate
  assistants (nan, with the reason, when there are fewer than 3 pairs or either side is constant), for
  each MiniDisc variant that ran;
* over seeds, paired differences of the student's score with a 95% t interval: MiniDisc − direct and
  MiniDisc − MaxiDisc's best, the same for minidisc_sampled (the paper asks for ≥ 5 seeds);
* whether MiniDisc's assistant is the one MaxiDisc found best, per seed;
* the values of the paper's figure for the task, where we have them (:data:`PAPER_FIGURE`);
* how few dev examples would have kept MiniDisc's first choice (``benchmarks/dev_subset.py``, from the
  predictions its MiniDisc runs record with ``--record_predictions``).

Drawn: ``OUTPUT_DIR/paper_figure.png``, the reference README's figure for this run (the student through
each assistant against the assistant's scale 1 - s/100, every seed a point and the mean a line, the
direct student and the floor as lines, τ(s) on a second axis), and ``seed{n}/search.png`` (MaxiDisc's
paths against their cost). Re-running the command skips every finished run (delete a method's folder
to redo it) and redraws the report.

Profiles (``--profile``): ``cpu`` fits a 2-core machine (200 steps of batch 32 per stage, lr 1e-4,
four evaluations each: with the teacher cache, 60 steps left every 90S student at the majority class
on MRPC, see docs/results.md); ``gpu`` uses the budgets of the reference's MRPC scripts (batch 16, lr 3e-5, 10
epochs, patience 5, evaluation every 10 steps on MiniLM or BERT-base), the budgets behind the
paper's figure: run it on BERT-base to set its results beside :data:`PAPER_FIGURE`.

Data: ``--data_dir`` defaults to ``../shared/data/glue`` when it holds the task (MRPC unless
``--task_name`` says otherwise), else ``datasets/`` with polarity. ``--max_train_samples`` and
``--max_eval_samples`` pass through to every run (the scripts' own flags: the first N examples), and
the floor is computed on the same dev examples.

Examples (MRPC, then SST-2, from ../shared/data/glue, on 2 CPU cores)::

    python benchmarks/compare_schedules.py --model_dir outputs/assets/all-MiniLM-L6-v2 \\
        --output_dir outputs/compare_schedules/mrpc
    # SST-2's 67,349 training sentences would make the teacher's 3 epochs about 6,300 steps; its first
    # 3,200 make 300, and a stage's 200 steps are 2 epochs of them (the second served by the teacher
    # cache). Its 872 dev examples are single short sentences: all of them are used.
    python benchmarks/compare_schedules.py --model_dir outputs/assets/all-MiniLM-L6-v2 --task_name sst2 \\
        --max_train_samples 3200 --max_length 64 --output_dir outputs/compare_schedules/sst2
    python benchmarks/compare_schedules.py --model_dir bert-base-uncased --profile gpu \\
        --output_dir outputs/compare_schedules_gpu --data_dir glue_data
"""

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from common import REPO_ROOT, dev_labels, encode_split, load_average
from dev_subset import DRAWS, SIZES, study_run, summary_table
from schedule_report import (
    METHODS,
    MIN_SEEDS,
    MINIDISC_VARIANTS,
    PAPER_FIGURE,
    analyse,
    chain_assistant,
    majority_floor,
    report,
)

from data.tasks import get_task
from utils.artifacts.files import write_json_atomic
from utils.artifacts.model_io import load_model, load_tokenizer
from utils.artifacts.plots import plot_search, plot_students_through_assistants
from utils.artifacts.students import Chain

# the real GLUE files, where the tests look for them too (MINIDISC_SHARED_DATA overrides ../shared/data)
SHARED_GLUE = Path(os.environ.get("MINIDISC_SHARED_DATA", REPO_ROOT.parent / "shared" / "data")) / "glue"
TRAINING = ("--do_train", "--group_by_length")  # flags of every training run
PROFILES = {
    "cpu": {"finetune": ["--num_train_epochs", "3", "--learning_rate", "5e-5", "--per_device_train_batch_size", "32",
                         "--log_interval", "115"],
            "stage": ["--max_steps", "200", "--log_interval", "50", "--learning_rate", "1e-4",
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
                        help="GLUE folder (default: ../shared/data/glue when it holds the task, else datasets/)")
    parser.add_argument("--task_name", default=None,
                        help="a classification or regression task, e.g. mrpc or sst2 (default: mrpc when "
                             "../shared/data/glue holds it, polarity otherwise)")
    parser.add_argument("--profile", choices=tuple(PROFILES), default="cpu")
    parser.add_argument("--seeds", default="1,2,3,4,5", help=f"comma-separated; the intervals need at least 2, "
                        f"the paper's comparison {MIN_SEEDS}")
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
                        help="every run (the teacher's too) trains on the first N training examples only")
    parser.add_argument("--max_eval_samples", type=int, default=None,
                        help="every run evaluates on the first N dev examples only, and the floor is computed "
                             "on them (a large dev set on a small machine)")
    args = parser.parse_args(argv)
    if args.data_dir is None:
        task = get_task(args.task_name or "mrpc")
        shared = any((SHARED_GLUE / folder / "train.tsv").exists() for folder in task.folders)
        args.data_dir = str(SHARED_GLUE if shared else REPO_ROOT / "datasets")
        args.task_name = args.task_name or ("mrpc" if shared else "polarity")
    args.task_name = args.task_name or "mrpc"
    if get_task(args.task_name).kind not in ("classification", "regression"):
        parser.error(f"--task_name {args.task_name}: the comparison runs sentence(-pair) tasks, not "
                     f"{get_task(args.task_name).kind}")
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
    flags = ["--target_sparsity", target, "--trunc_sparsity", str(args.trunc_sparsity), "--lam", str(args.lam),
             "--record_predictions"]
    if method == "minidisc_sampled":
        flags += ["--sandwich_sample", str(args.sandwich_sample)]
    if method in ("minidisc_alone", "minidisc_sampled"):
        flags += ["--final_student", "alone"]
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
            chain = [spec.sparsity for spec in Chain.parse(chain_dir.name)]
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
    """The student's dev ``metric`` (MiniDisc's best_score may be a λ-tradeoff τ, not a dev score), the
    assistant on its path (None: direct), MaxiDisc's ``paths`` ({chain: student score}) and MiniDisc's
    ``iteration_1`` (P(s) and τ(s) as its schedule.json has them, keyed by sparsity strings)."""
    results = json.loads((run_dir / "results.json").read_text())
    score = results["best_dev"][metric]
    if method == "maxidisc":
        return {"score": score, "assistant": chain_assistant(results["best_chain"]),
                "paths": {row["chain"]: row["dev"][metric] for row in results["chains_tried"]}}
    if method == "direct":
        return {"score": score, "assistant": None}
    assistants = results["assistants"]
    first = json.loads((run_dir / "schedule.json").read_text())["iterations"][0]
    return {"score": score, "assistant": assistants[0] if assistants else None,
            "iteration_1": {"performance": {s: v["score"] for s, v in first["performance"].items()},
                            "tradeoff": first["tradeoff"], "selected": first["selected"]}}


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
        marks.update({f"{m}'s choice": chain(found[m]["assistant"]) for m in MINIDISC_VARIANTS if m in found})
        plot_search([{**row, "score": row["dev"][metric]} for row in chains], root / f"seed{seed}" / "search.png",
                    metric, marks)


def draw_paper_figure(rows: list[dict], analysis: dict, root: Path, args, metric: str, floor: float | None) -> None:
    """``paper_figure.png``: the student through each assistant, the direct student, the floor and τ(s)."""
    points_by_seed = [{"seed": seed, **c} for seed, table in analysis["candidates"].items() for c in table]
    direct = [r["score"] for r in rows if r["method"] == "direct"]
    if not direct:  # MaxiDisc's own direct path is the same distillation
        direct = [r["paths"][f"{args.target_sparsity}S"] for r in rows
                  if r["method"] == "maxidisc" and f"{args.target_sparsity}S" in r["paths"]]
    plot_students_through_assistants(
        points_by_seed, root / "paper_figure.png", metric, direct=direct, floor=floor,
        paper=PAPER_FIGURE.get(args.task_name) if args.profile == "gpu" else None,
        title=f"{args.task_name}: the {args.target_sparsity}S student through each assistant "
              f"({args.profile} profile, {len(args.seeds)} seeds)")


def json_ready(value):
    """``value`` with every nan replaced by None: compare.json stays strict JSON (nan is what the report
    prints, with its reason)."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: json_ready(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(item) for item in value]
    return value


def dev_subset_studies(root: Path, args) -> dict[str, list[dict]]:
    """How few dev examples would have kept MiniDisc's choice (``benchmarks/dev_subset.py``), from each seed's
    first recorded iteration 1 (minidisc and minidisc_alone share it): ``{"seed{n}/{variant}": rows}``."""
    studies = {}
    for seed in args.seeds:
        for variant in ("minidisc_alone", "minidisc", "minidisc_sampled"):
            rows = study_run(root / f"seed{seed}" / variant, args.data_dir, SIZES, DRAWS) \
                if (root / f"seed{seed}" / variant / "schedule.json").exists() else None
            if rows:
                studies[f"seed{seed}/{variant}"] = rows
                break
    return studies


def main(argv=None) -> None:
    args = parse_args(argv)
    root = Path(args.output_dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    task = get_task(args.task_name)
    metric = task.selection_metric
    common = ["--task_name", args.task_name, "--data_dir", args.data_dir, "--max_length", str(args.max_length)]
    for flag in ("max_train_samples", "max_eval_samples"):
        if getattr(args, flag):
            common += [f"--{flag}", str(getattr(args, flag))]
    floor = majority_floor(task, dev_labels(task, args.data_dir, args.max_eval_samples), metric)
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, load {load_average()}; task {args.task_name} from "
          f"{args.data_dir}; profile {args.profile}; floor (majority class): dev {metric} {100 * floor:.2f}",
          flush=True)
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
                   "flops": training_flops(method, run_dir, counter, args), **outcome(method, run_dir, metric),
                   "load": [record["load_before"], record["load_after"]]}
            rows.append(row)
            print(f"seed {seed} {method:17s} {row['seconds']:7.1f}s  dev {100 * row['score']:.2f}  assistant "
                  f"{row['assistant']}  load {record['load_before']} -> {record['load_after']}", flush=True)
    analysis = analyse(rows, args.trunc_sparsity, args.target_sparsity)
    draw_searches(rows, root, args, metric)
    draw_paper_figure(rows, analysis, root, args, metric, floor)
    table = report(rows, analysis, args, metric, floor)
    subsets = dev_subset_studies(root, args)
    if subsets:
        table += "\n".join(["", "", f"Iteration 1's choice on a dev subset ({', '.join(subsets)}; "
                             "benchmarks/dev_subset.py):", "", *summary_table(subsets)])
    print(table, flush=True)
    write_json_atomic(root / "compare.json", {"settings": {k: v for k, v in vars(args).items()},
                                              "stage_flags": stage, "mean_train_length": counter.length,
                                              "floor": floor, "paper_figure": PAPER_FIGURE.get(args.task_name),
                                              "rows": rows, "analysis": json_ready(analysis),
                                              "dev_subset": json_ready(subsets)})
    (root / "compare.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
