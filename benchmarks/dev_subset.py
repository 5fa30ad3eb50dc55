"""How few dev examples keep MiniDisc's choice of assistant? Measured from one recorded run, for free.

MiniDisc's first iteration evaluates every candidate width on the dev set at each evaluation and
keeps P(s), the best score so far at sparsity s; τ(s) = P(s) + λ·s/100 picks the assistant. Training
does not depend on what is evaluated, so a run made with ``--record_predictions`` (every evaluated
width's predictions at every evaluation, in ``iter_1/dev_predictions.jsonl``) tells exactly what the
same run would have chosen had it scored the candidates on a subset of the dev examples (up to the
patience rule, which stops a run on the score it sees, and ``best/``, saved at the step where the
subset's τ rose).

For each subset size N this prints, over the runs given:

* the fixed subset ``--search_eval_samples N`` draws (the same examples in every run): whether it
  chooses the same assistant as the whole dev set, and Spearman's ρ between its P(s) and the whole
  set's;
* over ``--draws`` random subsets of N per run: how often the choice is the same, the mean ρ, and the
  mean loss of τ, τ_all(choice_all) − τ_all(choice_N), in points of the whole set's τ (what choosing on
  the subset costs in the quantity the choice maximises).

Example (the runs of ``benchmarks/compare_schedules.py``, whose MiniDisc runs record their predictions)::

    python benchmarks/dev_subset.py outputs/compare_schedules/sst2/seed*/minidisc_alone \\
        --data_dir ../shared/data/glue
"""

import argparse
import json
import math
import random
import statistics
from pathlib import Path

from common import dev_labels, rank_correlation

from data.tasks import get_task
from utils.engine.schedule import PREDICTIONS_FILE, fixed_subset
from utils.maths.metrics import compute_metrics
from utils.maths.tradeoff import select_assistant, tradeoff

SIZES = (50, 100, 200, 400)
DRAWS = 200


def read_recording(path: Path) -> dict[int, dict[int, list]]:
    """``{step: {sparsity: predictions}}`` from a ``dev_predictions.jsonl`` (a later line for the same step
    and sparsity, from a resumed run's repeated evaluation, replaces the earlier)."""
    evaluations: dict[int, dict[int, list]] = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        evaluations.setdefault(record["step"], {})[record["sparsity"]] = record["predictions"]
    return evaluations


def performance_on(evaluations: dict[int, dict[int, list]], references: list, indices: list[int], task,
                   metric: str) -> dict[int, float]:
    """P(s) had the run scored only the examples at ``indices``: the best score at s over its evaluations."""
    labels = [references[i] for i in indices]
    best: dict[int, float] = {}
    for per_width in evaluations.values():
        for s, predictions in per_width.items():
            score = compute_metrics(task, [predictions[i] for i in indices], labels)[metric]
            best[s] = max(best.get(s, -math.inf), score)
    return best


def subset_study(evaluations, references: list, task, metric: str, lam: float, low: int, target: int,
                 sizes=SIZES, draws: int = DRAWS, seed: int = 0) -> list[dict]:
    """One row per size N below the dev set's size: the fixed subset's choice and ρ, and over ``draws``
    random subsets the rate of the same choice, the mean ρ and the mean τ loss (fractions, not points)."""
    every = list(range(len(references)))
    full = performance_on(evaluations, references, every, task, metric)
    choice, _ = select_assistant(full, lam, low, target)
    tau_full = {s: tradeoff(p, s, lam) for s, p in full.items() if low <= s <= target}

    def outcome(indices):
        part = performance_on(evaluations, references, indices, task, metric)
        picked, _ = select_assistant(part, lam, low, target)
        rho = rank_correlation([part[s] for s in sorted(full)], [full[s] for s in sorted(full)])[0]
        return picked, rho, tau_full[choice] - tau_full[picked]

    rng = random.Random(seed)
    rows = []
    for size in sizes:
        if size >= len(references):
            continue
        fixed = outcome(fixed_subset(len(references), size))
        drawn = [outcome(sorted(rng.sample(every, size))) for _ in range(draws)]
        rhos = [rho for _, rho, _ in drawn if not math.isnan(rho)]
        rows.append({"size": size, "choice_all": choice, "fixed_choice": fixed[0], "fixed_rho": fixed[1],
                     "same_rate": sum(picked == choice for picked, _, _ in drawn) / draws,
                     "mean_rho": statistics.mean(rhos) if rhos else math.nan,
                     "mean_tau_loss": statistics.mean(loss for _, _, loss in drawn)})
    return rows


def mean_defined(values) -> float:
    """The mean of the values that are not nan (nan when none is)."""
    defined = [v for v in values if not math.isnan(v)]
    return statistics.mean(defined) if defined else math.nan


def summary_table(studies: dict[str, list[dict]]) -> list[str]:
    """Markdown: per size, over the runs, the fixed subset's agreement and the random subsets' means."""
    sizes = sorted({row["size"] for rows in studies.values() for row in rows})
    lines = ["| dev examples N | runs | fixed subset: same choice | fixed subset: ρ(P_N, P) | random subsets: "
             "same choice | random: mean ρ | random: mean τ loss (points) |", "|---|---|---|---|---|---|---|"]
    for size in sizes:
        rows = [row for rows in studies.values() for row in rows if row["size"] == size]
        same = sum(row["fixed_choice"] == row["choice_all"] for row in rows)
        fixed_rho = mean_defined(row["fixed_rho"] for row in rows)
        rho = mean_defined(row["mean_rho"] for row in rows)
        rate = statistics.mean(row["same_rate"] for row in rows)
        loss = statistics.mean(row["mean_tau_loss"] for row in rows)
        lines.append(f"| {size} | {len(rows)} | {same}/{len(rows)} | {fixed_rho:+.2f} | {100 * rate:.0f}% | "
                     f"{rho:+.2f} | {100 * loss:.2f} |")
    return lines


def study_run(run_dir: Path, data_dir: str, sizes, draws: int) -> list[dict] | None:
    """The study of one MiniDisc run folder (its args.json gives task, λ, target and dev limit); None when
    its first iteration recorded no predictions."""
    recording = run_dir / "iter_1" / PREDICTIONS_FILE
    if not recording.exists():
        return None
    args = json.loads((run_dir / "args.json").read_text())["args"]
    task = get_task(args["task_name"])
    limit = args.get("max_eval_samples")
    references = dev_labels(task, data_dir or args["data_dir"], limit)
    if args.get("search_eval_samples"):
        raise SystemExit(f"{run_dir}: its candidates were scored on a subset already (--search_eval_samples); "
                         "record a run on the whole dev set")
    schedule = json.loads((run_dir / "schedule.json").read_text())["iterations"][0]
    low, target = schedule["range"]
    return subset_study(read_recording(recording), references, task, args["selection_metric"], schedule["lam"], low,
                        target, sizes, draws)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+", type=Path, help="MiniDisc output folders run with --record_predictions")
    parser.add_argument("--data_dir", default=None, help="where the dev files are (default: each run's --data_dir)")
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    parser.add_argument("--draws", type=int, default=DRAWS)
    parser.add_argument("--output", type=Path, default=None, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    sizes = [int(size) for size in args.sizes.split(",")]
    studies = {}
    for run_dir in args.run_dirs:
        rows = study_run(run_dir, args.data_dir, sizes, args.draws)
        if rows is None:
            print(f"{run_dir}: no {PREDICTIONS_FILE} in iter_1 (run it with --record_predictions); skipped")
            continue
        studies[str(run_dir)] = rows
    if not studies:
        raise SystemExit("no run recorded its predictions")
    print("\n".join(summary_table(studies)))
    if args.output:
        args.output.write_text(json.dumps(studies, indent=1))


if __name__ == "__main__":
    main()
