"""Pictures written next to the JSON of a run: the pruning curve of run_sparsification, MaxiDisc's
search, and benchmarks/compare_schedules.py's version of the paper's figure (MiniDisc's schedule is drawn
by :func:`utils.engine.schedule.plot_schedule`, the main job's trade-off by :mod:`tools.report`). Plain
matplotlib on the Agg backend, so they render without a display."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

logger = logging.getLogger(__name__)


def pyplot(what: str):
    """``matplotlib.pyplot`` on the Agg backend, or None (with a warning naming ``what``) when matplotlib is
    missing: it is in requirements.txt, and a stripped install still gets every JSON file."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed: no %s picture", what)
        return None
    return plt


def plot_pruning_curve(rows: Sequence[Mapping], path: Path, metric: str) -> Path | None:
    """Dev ``metric`` against sparsity (sliced, before any training), and the attention heads and FFN
    neurons kept; a PNG."""
    plt = pyplot("pruning curve")
    if plt is None:
        return None
    sparsities = [row["sparsity"] for row in rows]
    fig, (score, heads) = plt.subplots(1, 2, figsize=(10, 4))
    score.plot(sparsities, [row["dev"][metric] for row in rows], "o-")
    score.set_ylabel(f"dev {metric} (sliced, no training)")
    heads.plot(sparsities, [row["heads_kept"] for row in rows], "o-", color="tab:blue", label="attention heads")
    heads.set_ylabel("attention heads kept", color="tab:blue")
    neurons = heads.twinx()
    neurons.plot(sparsities, [row["neurons_kept"] for row in rows], "s--", color="tab:orange", label="FFN neurons")
    neurons.set_ylabel("FFN neurons kept", color="tab:orange")
    for ax in (score, heads):
        ax.set_xlabel("sparsity (% of prunable parameters removed)")
        ax.grid(alpha=0.3)
    fig.suptitle("Pruning curve: the importance order sliced at every level")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_search(paths: Sequence[Mapping], path: Path, metric: str, marks: Mapping[str, str] | None = None
                ) -> Path | None:
    """MaxiDisc's search: each path's student dev ``metric`` against its training cost (seconds and steps
    trained, reused stages included), with ``marks`` {label: chain} circled (the best path, MiniDisc's
    choice); a PNG. ``paths``: rows with ``chain``, ``score``, ``steps_incl_reused`` and
    ``seconds_incl_reused``."""
    plt = pyplot("search")
    if plt is None:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    colors = ("tab:red", "tab:green", "tab:purple")
    for ax, key, label in ((axes[0], "seconds_incl_reused", "seconds trained"),
                           (axes[1], "steps_incl_reused", "optimizer steps")):
        ax.scatter([row[key] for row in paths], [row["score"] for row in paths], color="tab:blue", zorder=3)
        for row in paths:
            ax.annotate(row["chain"], (row[key], row["score"]), textcoords="offset points", xytext=(4, 4),
                        fontsize=8)
        for (name, chain), color in zip((marks or {}).items(), colors, strict=False):
            chosen = [row for row in paths if row["chain"] == chain]
            ax.scatter([row[key] for row in chosen], [row["score"] for row in chosen], s=220, facecolors="none",
                       edgecolors=color, linewidths=2, label=name, zorder=4)
        ax.set_xlabel(f"training cost ({label}, all stages of the path)")
        ax.set_ylabel(f"student dev {metric}")
        ax.grid(alpha=0.3)
    if marks:
        axes[0].legend(fontsize=8)
    fig.suptitle("MaxiDisc: every distillation path to the target")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_students_through_assistants(rows: Sequence[Mapping], path: Path, metric: str, direct: Sequence[float] = (),
                                     floor: float | None = None, paper: Mapping | None = None, title: str = ""
                                     ) -> Path | None:
    """The reference README's figure for one task: the dev ``metric`` of the student distilled through each
    assistant s against the assistant's scale (1 - s/100), every seed a faint point and the seed mean a
    line; the direct student (mean of ``direct``, one score per seed) and the ``floor`` (majority class) as
    horizontal lines; the seed mean of τ(s) on a second axis; with ``paper`` ({"direct", "best",
    "best_scale"}) the paper's direct student as a line and its best student as a star. ``rows``: {"seed",
    "assistant", "student", "tau"}, None where a run did not give the value; a PNG, or None when no row
    has a student or a τ (see :func:`draw_students_through_assistants`)."""
    if not any(row.get("student") is not None or row.get("tau") is not None for row in rows):
        return None
    plt = pyplot("students through assistants")
    if plt is None:
        return None
    fig = draw_students_through_assistants(plt, rows, metric, direct, floor, paper, title)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def draw_students_through_assistants(plt, rows: Sequence[Mapping], metric: str, direct: Sequence[float] = (),
                                     floor: float | None = None, paper: Mapping | None = None, title: str = ""):
    """The figure of :func:`plot_students_through_assistants`, returned open (a test reads its artists).

    A floor far below the students (more than twice their spread, and at least 2 points, under the
    lowest) is named in the legend instead of drawn: on an axis down to it, students a point apart
    would look the same."""
    known = [row for row in rows if row.get("student") is not None or row.get("tau") is not None]

    def means(key: str) -> tuple[list[float], list[float]]:
        by_scale: dict[float, list[float]] = {}
        for row in known:
            if row.get(key) is not None:
                by_scale.setdefault(1 - row["assistant"] / 100, []).append(row[key])
        scales = sorted(by_scale)
        return scales, [sum(by_scale[x]) / len(by_scale[x]) for x in scales]

    fig, ax = plt.subplots(figsize=(7, 5.5))
    students = [row for row in known if row.get("student") is not None]
    ax.scatter([1 - row["assistant"] / 100 for row in students], [row["student"] for row in students],
               color="tab:blue", alpha=0.35, s=18, label="student through s, each seed")
    scales, values = means("student")
    seeds = len({row["seed"] for row in students})
    ax.plot(scales, values, "o-", color="tab:blue", label=f"student through s, mean of {seeds} seeds")
    drawn = [row["student"] for row in students]
    if direct:
        mean = sum(direct) / len(direct)
        drawn.append(mean)
        ax.axhline(mean, color="tab:gray", linestyle="--", label=f"direct student, mean: {mean:.4f}")
    if paper:
        drawn += [paper["direct"], paper["best"]]
        ax.axhline(paper["direct"], color="tab:purple", linestyle="-.", alpha=0.6,
                   label=f"paper's direct student: {paper['direct']}")
        ax.plot([paper["best_scale"]], [paper["best"]], "*", color="tab:purple", markersize=13,
                label=f"paper's best student: {paper['best']}")
    if floor is not None:
        spread = max(drawn) - min(drawn) if drawn else 0.0
        if drawn and floor < min(drawn) - max(2 * spread, 0.02):
            ax.plot([], [], ":", color="black", label=f"majority class: {floor:.4f} (far below the axis)")
        else:
            ax.axhline(floor, color="black", linestyle=":", label=f"majority class: {floor:.4f}")
    ax.margins(y=0.15)
    ax.set_xlabel("assistant's scale (fraction of prunable encoder weights kept)")
    ax.set_ylabel(f"student dev {metric}")
    ax.invert_xaxis()
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    scales, values = means("tau")
    if values:
        twin = ax.twinx()
        twin.plot(scales, values, "s--", color="tab:orange",
                  label="τ(s) of MiniDisc's iteration 1, mean (right axis)")
        twin.set_ylabel("τ(s)", color="tab:orange")
        extra_handles, extra_labels = twin.get_legend_handles_labels()
        handles, labels = handles + extra_handles, labels + extra_labels
    ax.legend(handles, labels, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig
