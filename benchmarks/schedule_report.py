"""The analysis and the report of ``benchmarks/compare_schedules.py``: pure functions of its rows (one per
method and seed), from the paired differences, intervals, floor checks and rank correlations to the lines of
Markdown it prints. Tested in ``tests/test_compare_schedules.py``."""

import math
import statistics
from collections import Counter

from common import rank_correlation
from scipy import stats

from utils.artifacts.students import Chain
from utils.maths.metrics import compute_metrics

METHODS = ("direct", "minidisc", "minidisc_alone", "minidisc_sampled", "maxidisc")
MINIDISC_VARIANTS = ("minidisc", "minidisc_alone", "minidisc_sampled")
FLOOR_MARGIN = 0.02  # a student within 2 points of the majority-class score is flagged
MIN_SEEDS = 5  # the paper's comparison asks for at least 5 seeds
# The reference README's figure (BERT-base teachers, 90S students, the reference's per-task budgets, which
# the gpu profile's stage flags follow for MRPC), read off the figure: the direct student and the best
# student through an assistant, at that assistant's scale 1 - s/100. Printed beside every run of the task
# and drawn on paper_figure.png with the gpu profile. The figure gives no other task.
PAPER_FIGURE = {
    "mrpc": {"model": "BERT-base", "direct": 0.867, "best": 0.874, "best_scale": 0.3},
    "qqp": {"model": "BERT-base", "direct": 0.844, "best": 0.847, "best_scale": 0.2},
}

# --------------------------------------------------------------------------------------------
# Analysis: pure functions of the rows (one per method and seed), tested in tests/test_compare_schedules.py


def chain_assistant(chain: str) -> int | None:
    """The first assistant of a MaxiDisc chain (``"70,90S"`` → 70); None for the direct path (``"90S"``)."""
    assistants = Chain.parse(chain).assistants
    return assistants[0].sparsity if assistants else None


def candidate_rows(first_iteration: dict | None, paths: dict[str, float] | None, low: int, target: int
                   ) -> list[dict]:
    """One row per candidate assistant s (``low`` ≤ s < ``target``): P(s) and τ(s) of MiniDisc's first
    iteration (``first_iteration``: ``{"performance": {"s": P}, "tradeoff": {"s": τ}}``) and the dev score of
    the student MaxiDisc distilled through s (``paths``: ``{chain: score}``); None where a run is missing."""
    first_iteration = first_iteration or {}
    performance = {int(s): p for s, p in first_iteration.get("performance", {}).items()}
    tau = {int(s): t for s, t in first_iteration.get("tradeoff", {}).items()}
    students = {chain_assistant(chain): score for chain, score in (paths or {}).items()}
    found = set(performance) | set(tau) | {s for s in students if s is not None}
    return [{"assistant": s, "P": performance.get(s), "tau": tau.get(s), "student": students.get(s)}
            for s in sorted(found) if low <= s < target]


def t_interval(values: list[float], confidence: float = 0.95) -> dict:
    """Mean of ``values`` and its two-sided ``confidence`` t interval (``n - 1`` degrees of freedom):
    ``{"n", "mean", "low", "high"}``, the bounds nan below 2 values."""
    n = len(values)
    mean = statistics.mean(values) if n else math.nan
    if n < 2:
        return {"n": n, "mean": mean, "low": math.nan, "high": math.nan}
    half = stats.t.ppf((1 + confidence) / 2, n - 1) * statistics.stdev(values) / math.sqrt(n)
    return {"n": n, "mean": mean, "low": mean - half, "high": mean + half}


def paired_differences(rows: list[dict], minuend: str, subtrahend: str) -> dict[int, float]:
    """Per seed in which both methods ran: the student score of ``minuend`` minus that of ``subtrahend``."""
    scores = {(r["method"], r["seed"]): r["score"] for r in rows}
    return {seed: scores[minuend, seed] - scores[subtrahend, seed]
            for seed in sorted({r["seed"] for r in rows}) if (minuend, seed) in scores and (subtrahend, seed) in scores}


def majority_floor(task, labels: list, metric: str) -> float:
    """The dev ``metric`` of a model that always predicts the most frequent of ``labels`` (of several as
    frequent, the one that scores best), for classification; 0 (no correlation) for regression."""
    if task.kind == "regression":
        return 0.0
    if task.kind != "classification":
        raise ValueError(f"task {task.name}: no majority-class floor for {task.kind}")
    counts = Counter(labels)
    most = max(counts.values())
    return max(compute_metrics(task, [label] * len(labels), labels)[metric]
               for label in sorted(counts) if counts[label] == most)


def at_floor(score: float, floor: float, margin: float = FLOOR_MARGIN) -> bool:
    """Whether ``score`` ends within ``margin`` of the floor (or below it): a student there tells nothing."""
    return score <= floor + margin + 1e-9  # 1e-9: 0.768 is within 0.02 of 0.748 despite rounding


def analyse(rows: list[dict], low: int, target: int) -> dict:
    """The paper's experiment from the rows: per seed the candidate table (:func:`candidate_rows`) and
    Spearman's ρ(τ, student) for each MiniDisc variant; the paired differences with their intervals."""
    seeds = sorted({r["seed"] for r in rows})
    found = {(r["method"], r["seed"]): r for r in rows}

    def tables(method: str) -> dict[int, list[dict]]:
        return {seed: candidate_rows(found[method, seed].get("iteration_1"),
                                     found.get(("maxidisc", seed), {}).get("paths"), low, target)
                for seed in seeds if (method, seed) in found}

    by_variant = {variant: tables(variant) for variant in MINIDISC_VARIANTS}
    # the table shows full MiniDisc's P and τ, else the sampled variant's, else MaxiDisc's students alone
    candidates = (by_variant["minidisc"] or by_variant["minidisc_alone"] or by_variant["minidisc_sampled"]
                  or tables("maxidisc"))
    correlations = {}
    for variant, per_seed in by_variant.items():
        for seed, table in per_seed.items():
            rho, note = rank_correlation([c["tau"] for c in table], [c["student"] for c in table],
                                         ("τ(s)", "the student's score"))
            correlations.setdefault(variant, {})[seed] = {"rho": rho, "note": note}
    differences = {}
    for variant in MINIDISC_VARIANTS:
        for baseline, name in (("direct", "direct"), ("maxidisc", "MaxiDisc's best")):
            per_seed = paired_differences(rows, variant, baseline)
            if per_seed:
                differences[f"{variant} − {name}"] = {"per_seed": per_seed,
                                                       **t_interval(list(per_seed.values()))}
    # the final iteration alone or as a sandwich, from the same first iteration: what --final_student decides
    per_seed = paired_differences(rows, "minidisc_alone", "minidisc")
    if per_seed:
        differences["minidisc_alone − minidisc"] = {"per_seed": per_seed, **t_interval(list(per_seed.values()))}
    return {"candidates": candidates, "correlations": correlations, "differences": differences}


# --------------------------------------------------------------------------------------------
# Report: lines of Markdown from the rows and the analysis (scores in points, ×100)


def assistant_name(sparsity: int | None) -> str:
    return "none" if sparsity is None else f"{sparsity}S"


def mean_std(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {std:.2f}"


def points(value: float | None, digits: int = 2) -> str:
    """A score in points (×100), '—' when unknown, 'nan' when undefined."""
    if value is None:
        return "—"
    return "nan" if math.isnan(value) else f"{100 * value:.{digits}f}"


def floor_mark(scores: list[float], floor: float | None) -> str:
    """'⚠ k/n' when k of the ``scores`` end within 2 points of the floor, else 'no'."""
    if floor is None or not scores:
        return "—"
    k = sum(at_floor(score, floor) for score in scores)
    return f"⚠ {k}/{len(scores)}" if k else "no"


def method_table(rows: list[dict], methods: list[str], floor: float | None) -> list[str]:
    """The cost and outcome of every method, seed means, relative to MaxiDisc, floor-flagged."""
    lines = ["| method | seeds | wall clock (s) | train / eval / other (s) | training TFLOPs | wall vs MaxiDisc "
             "| FLOPs vs MaxiDisc | student dev | at the floor (+2) | assistant(s) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    by_method = {m: [r for r in rows if r["method"] == m] for m in methods}
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
            f"{mean_std([100 * r['score'] for r in runs])} | {floor_mark([r['score'] for r in runs], floor)} | "
            f"{', '.join(assistant_name(r['assistant']) for r in runs)} |")
    return lines


def iteration_lines(rows: list[dict]) -> list[str]:
    """MiniDisc's seconds per iteration (train + eval), seed means."""
    lines = []
    for method in MINIDISC_VARIANTS:
        runs = [r for r in rows if r["method"] == method]
        if runs:
            names = sorted({name for r in runs for name in r["split"]["stages"]})
            parts = {name: [statistics.mean(r["split"]["stages"][name][i] for r in runs if name in r["split"]["stages"])
                            for i in (0, 1)] for name in names}
            lines.append(f"- {method}, seconds per iteration (train + eval), seed mean: "
                         + "; ".join(f"{name.split('/')[0]} {t:.0f} + {e:.0f}" for name, (t, e) in parts.items()))
    return lines


def seed_lines(rows: list[dict], seeds: list[int]) -> list[str]:
    """Per seed: MaxiDisc's paths, its best, and whether each MiniDisc variant chose the same assistant."""
    lines = []
    for seed in seeds:
        found = {r["method"]: r for r in rows if r["seed"] == seed}
        if "maxidisc" not in found:
            continue
        best = found["maxidisc"]["assistant"]
        paths = ", ".join(f"{chain} {100 * score:.2f}" for chain, score in found["maxidisc"]["paths"].items())
        picks = "; ".join(f"{m} chose {assistant_name(found[m]['assistant'])}: "
                          f"{'the same' if found[m]['assistant'] == best else 'another'}"
                          for m in MINIDISC_VARIANTS if m in found)
        lines.append(f"- seed {seed}: MaxiDisc's paths {paths}; best {assistant_name(best)}; {picks}")
    return lines


def candidate_table(candidates: dict[int, list[dict]], floor: float | None) -> list[str]:
    """Per candidate assistant (scale 1 - s/100): P(s), τ(s) and the student through it, over seeds."""
    assistants = sorted({c["assistant"] for table in candidates.values() for c in table})
    if not assistants:
        return []
    lines = ["| assistant | scale | P(s) | τ(s) | student through s (MaxiDisc) | at the floor (+2) |",
             "|---|---|---|---|---|---|"]
    for s in assistants:
        found = [c for table in candidates.values() for c in table if c["assistant"] == s]
        cells = {}
        for key in ("P", "tau", "student"):
            values = [c[key] for c in found if c[key] is not None]
            cells[key] = mean_std([100 * v for v in values]) if values else "—"
        students = [c["student"] for c in found if c["student"] is not None]
        lines.append(f"| {s}S | {1 - s / 100:.2f} | {cells['P']} | {cells['tau']} | {cells['student']} | "
                     f"{floor_mark(students, floor)} |")
    return lines


def correlation_lines(correlations: dict[str, dict[int, dict]]) -> list[str]:
    """Spearman's ρ(τ(s), student through s) per seed, and its mean over the seeds where it is defined."""
    lines = []
    for variant, per_seed in correlations.items():
        cells = [f"seed {seed} " + (f"nan ({c['note']})" if c["note"] else f"{c['rho']:+.2f}")
                 for seed, c in per_seed.items()]
        defined = [c["rho"] for c in per_seed.values() if not math.isnan(c["rho"])]
        mean = f"mean {statistics.mean(defined):+.2f} over {len(defined)} seeds" if defined else "undefined in every seed"
        lines.append(f"- Spearman ρ(τ(s) of {variant}, student through s): {'; '.join(cells)}; {mean}")
    return lines


def difference_table(differences: dict[str, dict]) -> list[str]:
    """Paired differences of the student's score per seed, their mean and 95% t interval, in points."""
    if not differences:
        return []
    lines = ["| difference (points) | seeds | mean | 95% interval | per seed |", "|---|---|---|---|---|"]
    for name, d in differences.items():
        per_seed = ", ".join(f"{seed}: {100 * v:+.2f}" for seed, v in d["per_seed"].items())
        interval = "—" if math.isnan(d["low"]) else f"[{100 * d['low']:+.2f}, {100 * d['high']:+.2f}]"
        lines.append(f"| {name} | {d['n']} | {100 * d['mean']:+.2f} | {interval} | {per_seed} |")
    return lines


def paper_lines(task_name: str, profile: str) -> list[str]:
    """The paper's figure values for the task, where we have them, with what budget they compare to."""
    paper = PAPER_FIGURE.get(task_name)
    if paper is None:
        return []
    best = round(100 - 100 * paper["best_scale"])
    note = ("this profile uses the reference's budgets" if profile == "gpu"
            else "the gpu profile's budgets are the reference's; this profile's are smaller")
    return [f"- paper ({paper['model']}, the reference README's figure; {note}): direct student "
            f"{points(paper['direct'])}, best through an assistant {points(paper['best'])} at scale "
            f"{paper['best_scale']} ({best}S)"]


def report(rows: list[dict], analysis: dict, args, metric: str, floor: float | None) -> str:
    """The whole Markdown report of a run."""
    floor_text = "unknown" if floor is None else points(floor)
    lines = [f"{args.task_name}, target {args.target_sparsity}S, candidates from {args.trunc_sparsity}S, "
             f"λ {args.lam}, profile {args.profile}, seeds {args.seeds}; dev {metric} in points (×100); "
             f"floor (majority class, or chance) {floor_text}", ""]
    lines += method_table(rows, args.methods, floor) + [""]
    lines += iteration_lines(rows) + seed_lines(rows, args.seeds)
    candidates = candidate_table(analysis["candidates"], floor)
    if candidates:
        lines += ["", "MiniDisc's first iteration and MaxiDisc's student through each assistant (seed mean ± std):",
                  "", *candidates, ""]
    lines += correlation_lines(analysis["correlations"])
    differences = difference_table(analysis["differences"])
    if differences:
        lines += ["", *differences]
        if len(args.seeds) < MIN_SEEDS:
            lines.append(f"\n(fewer than {MIN_SEEDS} seeds: the paper's comparison asks for at least {MIN_SEEDS})")
    paper = paper_lines(args.task_name, args.profile)
    if paper:
        lines += ["", *paper]
    return "\n".join(lines)
