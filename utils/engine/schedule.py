"""MiniDisc's schedule: evaluating every sparsity of a sandwich-trained supernet, choosing the assistant
by the λ-tradeoff, and reporting the schedule (``schedule.json`` and a picture).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from utils.artifacts.plots import pyplot
from utils.engine.checkpoint import save_model_atomic
from utils.engine.evaluation import Selector, evaluate_predictions, unwrap
from utils.engine.sharding import to_save
from utils.maths.tradeoff import DEFAULT_LAMBDA_GRID, lambda_sweep, select_assistant, tradeoff

logger = logging.getLogger(__name__)

SUBSET_SEED = 0  # the dev subset of --search_eval_samples: the same examples in every run and seed
PREDICTIONS_FILE = "dev_predictions.jsonl"


@dataclass
class ScheduleRecord:
    """One iteration of MiniDisc's schedule (an entry of ``schedule.json``): its teacher, how it trained
    (``mode``: the sandwich, or the student distilled ``alone``), what it selected and in which ``role``
    (an ``assistant`` for the next iteration, or the ``student``); for a sandwich, what the choice was read
    from (:meth:`SandwichSelector.summary`: the candidates, P(s) with its step, τ(s), the λ sweep).

    Kept typed in memory and written as JSON (str sparsity keys) only by :meth:`to_json`.
    """

    iteration: int
    teacher: str
    teacher_sparsity: int
    mode: str
    selected: int
    role: str
    candidates: list[int] | None = None
    evaluated: list[int] | None = None
    performance: dict[int, dict] | None = None  # s -> {"score": P(s), "step": the step that reached it}
    tradeoff: dict[int, float] | None = None
    lam: float | None = None
    range: list[int] | None = None
    selected_score: float | None = None
    selected_step: int | None = None
    lambda_sweep: list[dict] | None = None

    def to_json(self) -> dict:
        record = {key: value for key, value in asdict(self).items() if value is not None}
        for key in ("performance", "tradeoff"):
            if key in record:
                record[key] = {str(s): value for s, value in record[key].items()}
        return record

    @classmethod
    def from_json(cls, payload: dict) -> ScheduleRecord:
        record = dict(payload)
        for key in ("performance", "tradeoff"):
            if record.get(key) is not None:
                record[key] = {int(s): value for s, value in record[key].items()}
        return cls(**record)


def fixed_subset(num_examples: int, size: int) -> list[int]:
    """``size`` of the indices ``0..num_examples-1``, drawn without replacement with a fixed seed, sorted
    (all of them when ``size`` is not smaller)."""
    if size >= num_examples:
        return list(range(num_examples))
    return sorted(random.Random(SUBSET_SEED).sample(range(num_examples), size))


class SandwichSelector(Selector):
    """Scores every candidate sparsity of a supernet; P(s) is the best dev score so far at sparsity s.

    With ``choose_assistant`` each evaluation's ``choice`` is the λ-tradeoff's s* among
    ``low ≤ s ≤ target`` and its score τ(s*); otherwise (the final student) the choice is the target
    and the score P(target). The loop keeps an evaluation only when its score strictly beats the best
    so far; then (:meth:`accept`) its choice becomes ``selected`` and ``best/`` receives a densified
    copy of the supernet at that sparsity. ``selected`` therefore changes only together with ``best/``:
    a later evaluation that merely ties τ(s*) with another sparsity keeps the saved assistant. Since P is
    a running maximum, a strict rise of τ(s*) means s* itself improved at that evaluation, so the
    saved weights score P(selected) at the saved step. With ``export_dir`` each sparsity's best is also
    written there as a standalone densified checkpoint (``{s}S/``).

    Only the sparsities a decision reads are evaluated (``evaluated``): those between ``low`` and
    ``target`` when choosing the assistant, the target alone for the final student; every trained
    sparsity with ``export_dir``. The others are trained (they shape the shared weights) but their dev
    scores would choose nothing, and evaluating them cost a full dev pass each. With
    ``predictions_path`` every evaluated width's predictions are appended there as a JSON line
    ``{"step", "sparsity", "predictions"}``.

    ``scale`` multiplies the dev metric into P(s): 1 for the tasks' own metrics, already in [0, 1]; a language
    model's is its inverse perplexity and ``scale`` the teacher's perplexity, so that P(s) = teacher perplexity /
    student perplexity, 1 at the teacher.
    """

    def __init__(self, dataset, metric: str, batch_size: int, run, sparsities, lam: float, low: int,
                 target: int, choose_assistant: bool, export_dir: Path | None = None, tokenizer=None,
                 predictions_path: Path | None = None, scale: float = 1.0):
        self.dataset, self.metric, self.batch_size, self.run = dataset, metric, batch_size, run
        self.scale = scale
        self.predictions_path = predictions_path
        self.sparsities = sorted(sparsities)
        self.lam, self.low, self.target = lam, low, target
        self.choose_assistant = choose_assistant
        self.export_dir, self.tokenizer = export_dir, tokenizer
        if export_dir is not None:
            self.evaluated = self.sparsities
        elif choose_assistant:
            self.evaluated = [s for s in self.sparsities if low <= s <= target]
        else:
            self.evaluated = [target]
        if target not in self.sparsities:
            raise ValueError(f"the target sparsity {target} is not among the candidates {self.sparsities}")
        self.performance: dict[int, float] = {}
        self.performance_step: dict[int, int] = {}
        self.selected: int | None = None
        self.selected_score: float | None = None
        self.selected_step: int | None = None

    def evaluate(self, model, step):
        module = unwrap(model)
        per_sparsity, improved, recorded = {}, [], []
        for s in self.evaluated:
            with module.at_sparsity(s):
                metrics, predictions = evaluate_predictions(model, self.dataset, self.batch_size, self.run,
                                                            desc=f"eval {s}S")
            per_sparsity[s] = metrics
            recorded.append({"step": step, "sparsity": s, "predictions": predictions})
            value = metrics[self.metric] * self.scale
            if value > self.performance.get(s, -math.inf):
                self.performance[s], self.performance_step[s] = value, step
                improved.append(s)
        if self.choose_assistant:
            choice, score = select_assistant(self.performance, self.lam, self.low, self.target)
        else:
            choice, score = self.target, self.performance[self.target]
        if self.export_dir is not None and improved:
            source = to_save(module, self.run.fsdp)  # every rank takes part in gathering
            for s in improved if self.run.is_main else ():
                save_model_atomic(self._densified(source, s), self.tokenizer, self.export_dir / f"{s}S",
                                  {"selection.json": {"step": step, "sparsity": s, "metrics": per_sparsity[s]}},
                                  run_dir=self.run.output_dir)
        if self.predictions_path is not None and self.run.is_main:
            with open(self.predictions_path, "a") as stream:
                stream.writelines(json.dumps(line) + "\n" for line in recorded)
        return {
            "sparsities": {str(s): m for s, m in per_sparsity.items()},
            "performance": {str(s): p for s, p in sorted(self.performance.items())},
            "tradeoff": {str(s): round(tradeoff(p, s, self.lam), 6) for s, p in sorted(self.performance.items())
                         if self.low <= s <= self.target},
            "choice": choice,
            "score": score,
        }

    def accept(self, record):
        self.selected, self.selected_score, self.selected_step = record["choice"], record["score"], record["step"]

    @staticmethod
    def _densified(module, sparsity: int):
        clone = copy.deepcopy(module)
        clone.sparsify(sparsity)
        clone.densify()
        return clone

    def model_to_save(self, module):
        return self._densified(module, self.selected)

    def state_dict(self):
        return {"performance": dict(self.performance), "performance_step": dict(self.performance_step),
                "selected": self.selected, "selected_score": self.selected_score, "selected_step": self.selected_step}

    def load_state_dict(self, state):
        self.performance = {int(k): v for k, v in state["performance"].items()}
        self.performance_step = {int(k): v for k, v in state["performance_step"].items()}
        self.selected, self.selected_score, self.selected_step = (state["selected"], state["selected_score"],
                                                                  state["selected_step"])

    def summary(self, lams=DEFAULT_LAMBDA_GRID) -> dict:
        """The fields of a :class:`ScheduleRecord` this selector knows: P(s) with the step that reached it,
        τ(s), the saved choice with its score and step, and the λ sweep."""
        return {
            "candidates": self.sparsities,
            "evaluated": self.evaluated,
            "performance": {s: {"score": self.performance[s], "step": self.performance_step[s]}
                            for s in sorted(self.performance)},
            "tradeoff": {s: round(tradeoff(p, s, self.lam), 6) for s, p in sorted(self.performance.items())
                         if self.low <= s <= self.target},
            "lam": self.lam,
            "range": [self.low, self.target],
            "selected": self.selected,
            "selected_score": self.selected_score,
            "selected_step": self.selected_step,
            "lambda_sweep": lambda_sweep(self.performance, lams, self.low, self.target) if self.performance else [],
        }


def schedule_panels(iterations: list[dict], student_score: float | None = None
                    ) -> tuple[list[dict], tuple[int, float] | None]:
    """What :func:`plot_schedule` draws: the iterations that get a panel, and the student (sparsity, score).

    A panel is an iteration that scored two sparsities or more (a choice among candidates); the final
    iteration of a sandwich evaluates only the target, so it is no panel of its own (when none scored two,
    every iteration that scored one is drawn). The student is the last iteration whose choice is the
    target (``role`` ``student``), scored ``student_score`` when given, else its P(target); None when
    neither is known (``--final_student alone`` records no P: pass the student's dev score).
    """
    scored = [it for it in iterations if it.get("performance")]
    panels = [it for it in scored if len(it["performance"]) >= 2] or scored
    students = [it for it in iterations if it.get("role") == "student"]
    if not students:
        return panels, None
    sparsity = students[-1]["selected"]
    if student_score is None:
        student_score = (students[-1].get("performance") or {}).get(str(sparsity), {}).get("score")
    return panels, None if student_score is None else (sparsity, student_score)


def draw_schedule(plt, iterations: list[dict], metric: str, student_score: float | None = None,
                  teacher_score: float | None = None, direct_score: float | None = None):
    """The figure of :func:`plot_schedule` (returned open, so that a test can read its artists), or None
    when no iteration scored a sparsity."""
    panels, student = schedule_panels(iterations, student_score)
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 5.5), squeeze=False)
    for ax, it in zip(axes[0], panels, strict=True):
        perf = {int(s): v["score"] for s, v in it["performance"].items()}
        ax.plot([1 - s / 100 for s in sorted(perf)], [perf[s] for s in sorted(perf)], "o-", color="tab:blue",
                label=f"P(s): dev {metric} of each width")
        chosen = it.get("selected")
        if chosen is not None and chosen in perf:
            ax.axvline(1 - chosen / 100, color="red", alpha=0.4)
            ax.annotate(f"{it['role']} {chosen}S", (1 - chosen / 100, perf[chosen]), textcoords="offset points",
                        xytext=(5, 8), color="red")
        # the student, the teacher and the direct student on P's axis: the scores a reader compares
        if student is not None:
            ax.plot([1 - student[0] / 100], [student[1]], "*", color="black", markersize=14, zorder=5,
                    label=f"student {student[0]}S: {student[1]:.4f}")
        if teacher_score is not None:
            ax.axhline(teacher_score, color="tab:green", linestyle="-", alpha=0.7,
                       label=f"teacher: {teacher_score:.4f}")
        if direct_score is not None:
            ax.axhline(direct_score, color="tab:gray", linestyle=":", label=f"direct student: {direct_score:.4f}")
        ax.margins(y=0.08)  # a teacher line at the top of the range stays inside the frame
        ax.set_ylabel(f"dev {metric}")
        ax.set_xlabel("scale (fraction of prunable encoder weights kept)")
        ax.set_title(f"iteration {it['iteration']} (teacher {it.get('teacher_sparsity', 0)}S)")
        ax.invert_xaxis()
        ax.grid(alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        if it.get("tradeoff"):  # τ on its own axis: it is P plus up to λ, and would squeeze P's spread
            tau = {int(s): v for s, v in it["tradeoff"].items()}
            twin = ax.twinx()
            twin.plot([1 - s / 100 for s in sorted(tau)], [tau[s] for s in sorted(tau)], "s--", color="tab:orange",
                      label=f"τ(s) = P + {it['lam']}·s/100 (right axis)")
            twin.set_ylabel("τ(s)", color="tab:orange")
            extra_handles, extra_labels = twin.get_legend_handles_labels()
            handles, labels = handles + extra_handles, labels + extra_labels
        # below the panel: inside it would hide whichever of the two curves it does not know about
        ax.legend(handles, labels, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
    fig.tight_layout()
    return fig


def plot_schedule(iterations: list[dict], path: Path, metric: str, student_score: float | None = None,
                  teacher_score: float | None = None, direct_score: float | None = None) -> Path | None:
    """Draw P(s) and τ(s) against scale (1 - s/100) for each iteration that chose among candidates, the
    choice marked, the student a star at its scale, the teacher's and the direct student's dev scores as
    horizontal lines when known; a PNG (see :func:`schedule_panels` for what is drawn)."""
    if not schedule_panels(iterations)[0]:
        return None
    plt = pyplot("schedule")
    if plt is None:
        return None
    fig = draw_schedule(plt, iterations, metric, student_score, teacher_score, direct_score)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
