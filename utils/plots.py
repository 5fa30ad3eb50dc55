"""Pictures written next to the JSON of a run: the pruning curve of run_sparsification and MaxiDisc's
search (MiniDisc's schedule is drawn by :func:`utils.schedule.plot_schedule`, the main job's trade-off
by :mod:`tools.report`). Plain matplotlib on the Agg backend, so they render without a display."""

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
