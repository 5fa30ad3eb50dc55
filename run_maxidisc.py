"""MaxiDisc: distil through a hand-given chain of teacher assistants, and the exhaustive baseline.

``--layer_or_sparsity_path 80,90S`` distils teacher → 80S assistant → 90S student; each stage's
best becomes the next teacher and each stage writes ``iter_k/`` with its own run files. Several
chains separated by ``;`` (or ``--search_assistants``, which tries every assistant of the teacher's
map between --trunc_sparsity and the target, plus the direct chain) run in turn, each in its own
folder, and ``results.json`` ranks them with their cost: the "maximal effort" baseline in one
command. A finished stage is reused, not retrained, wherever a stage with the same key (teacher,
chain prefix and training settings) has finished in this run's folder or under --reuse_dir.

Example::

    python run_maxidisc.py --teacher_model_path outputs/sparse_mrpc/model \\
        --task_name mrpc --layer_or_sparsity_path 90S --search_assistants \\
        --output_dir outputs/maxidisc_mrpc --learning_rate 3e-5 --per_device_train_batch_size 16 \\
        --num_train_epochs 10 --log_interval 10 --max_grad_norm 5.0 --num_patience_epochs 5 --do_train
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

from utils.artifacts.fingerprint import settings_key
from utils.artifacts.model_io import load_teacher, load_tokenizer
from utils.artifacts.plots import plot_search
from utils.artifacts.students import Chain, StudentSpec, build_student
from utils.artifacts.task_data import load_train_and_dev
from utils.command.args import (
    DistillScriptArguments,
    arg,
    parse_args,
)
from utils.command.cli import cli
from utils.command.planner import dry_run
from utils.command.results import close_stage, finish, read_stage, stage_settings, train_summary
from utils.command.run import end_run, start_run
from utils.engine.checkpoint import BEST_DIR
from utils.engine.distillation import build_distill_objective
from utils.engine.evaluation import MetricSelector
from utils.engine.loop import train
from utils.engine.sharding import place
from utils.errors import ArgumentError

logger = logging.getLogger("run_maxidisc")

STAGE_FILE = "stage.json"

# Flags that choose which chains run, not what a stage learns: left out of a stage's key, so a stage
# trained by one MaxiDisc command is reused by another with the same settings.
CHAIN_FLAGS = ("layer_or_sparsity_path", "search_assistants", "trunc_sparsity")


@dataclass
class MaxiDiscArguments:
    layer_or_sparsity_path: str = arg("6,4L", help="Chain of students ending in the final one, e.g. 80,90S or 6,4L; "
                                      "several chains separated by ';'.")
    search_assistants: bool = arg(False, help="For a one-stage chain such as 90S, try every assistant of the "
                                  "teacher's map between --trunc_sparsity and the target, plus the direct chain.")
    trunc_sparsity: int = arg(50, help="Smallest assistant sparsity tried by --search_assistants.")
    reuse_dir: str | None = arg(None, help="Folder searched for finished stages to reuse, e.g. the folder holding "
                                "earlier MaxiDisc runs (default: this run's --output_dir only).")
    chains: list[Chain] = field(init=False)

    def __post_init__(self):
        self.chains = [Chain.parse(text) for text in self.layer_or_sparsity_path.split(";") if text.strip()]
        if not self.chains:
            raise ArgumentError("--layer_or_sparsity_path is empty: expected e.g. 80,90S")
        if self.search_assistants and (len(self.chains) != 1 or len(self.chains[0]) != 1
                                       or self.chains[0].target.sparsity is None):
            raise ArgumentError("--search_assistants needs one target sparsity as the path, e.g. 90S")


@dataclass
class Arguments(DistillScriptArguments):
    maxidisc: MaxiDiscArguments


def expand_chains(options: MaxiDiscArguments, teacher) -> list[Chain]:
    """The chains to run: the given ones, or every assistant for the target with --search_assistants."""
    if not options.search_assistants:
        return options.chains
    target = options.chains[0].target
    low = max(options.trunc_sparsity, teacher.config.sparsity + 1)
    assistants = [s for s in teacher.available_sparsities() if low <= s < target.sparsity]
    return [Chain((StudentSpec(sparsity=s), target)) for s in assistants] + [options.chains[0]]


def stage_key(parent_key: str, spec: StudentSpec, run) -> str:
    """The key of a stage: its teacher (the content of the original teacher, or the previous stage's
    key), its student and the run's settings but the chain flags. Equal keys = interchangeable stages."""
    settings = {name: value for name, value in run.settings.items() if name not in CHAIN_FLAGS}
    return settings_key({"parent": parent_key, "student": str(spec), "settings": settings})


def find_finished_stage(reuse_dir: Path, key: str, exclude: Path) -> Path | None:
    """A finished stage folder with this key under ``reuse_dir`` (its best/ intact), or None."""
    for marker in sorted(reuse_dir.rglob(STAGE_FILE)):
        folder = marker.parent
        if folder == exclude:
            continue
        try:
            same = json.loads(marker.read_text()).get("key") == key
            finished = same and json.loads((folder / "results.json").read_text()).get("key") == key
        except (OSError, json.JSONDecodeError):
            continue
        if finished and (folder / BEST_DIR).is_dir():
            return folder
    return None


def run_chain(args, run, tokenizer, data, chain: Chain, chain_dir: Path, reuse_dir: Path) -> dict:
    """Distil along one chain; return the final student's summary with every stage's cost.

    A stage's ``stage.json`` (its key) is written only when the stage has finished, by training or
    by reuse, so a key always describes how the stage's model was made.
    """
    task, model_type, name = args.task, args.model.model_type, str(chain)
    teacher_path, parent_key, stages = args.distill.teacher_model_path, run.settings["teacher_model_path"], []
    for k, spec in enumerate(chain, start=1):
        stage_dir = chain_dir / f"iter_{k}"
        key = stage_key(parent_key, spec, run)
        settings = stage_settings(run, key=key)
        marker = {"key": key, "student": str(spec), "chain": name, "teacher": teacher_path}
        stage = read_stage(stage_dir, settings)
        source = None if stage else find_finished_stage(reuse_dir, key, stage_dir)
        if stage is None and source is not None:
            logger.info("stage %s of %s: reusing the finished stage %s", spec, name, source)
            stage = replace(read_stage(source), reused_from=str(source), settings=settings)
            close_stage(run, stage_dir, stage, {STAGE_FILE: {**marker, "reused_from": str(source)}})
        elif stage is None:
            logger.info("stage %d/%d of %s: %s → %s", k, len(chain), name, teacher_path, spec)
            teacher = load_teacher(model_type, teacher_path, task)
            student = build_student(model_type, teacher_path, spec, task)
            objective = build_distill_objective(place(teacher, run), args.distill, task.kind == "regression", run.fsdp)
            selector = MetricSelector(data["dev"], args.training.selection_metric,
                                      args.training.per_device_eval_batch_size, run)
            result = train(args.training, run, student, data["train"], objective, selector, tokenizer, stage_dir,
                           resume=True, extra_state={"key": key})
            stage = replace(train_summary(result, model_type), student=str(spec), key=key,
                            model_dir=str(stage_dir / BEST_DIR), settings=settings)
            close_stage(run, stage_dir, stage, {STAGE_FILE: marker})
        stages.append(stage)
        teacher_path = stage.model_dir
        parent_key = key
    trained = [s for s in stages if s.reused_from is None]
    assistants = [] if chain.target.sparsity is None else [spec.sparsity for spec in chain.assistants]
    return {**{k: v for k, v in stages[-1].to_json().items() if k not in ("settings", "reused_from")},
            "chain": name, "student_dir": teacher_path, "assistants": assistants,
            "reused_from": [s.reused_from for s in stages if s.reused_from is not None],
            "cost": {"stages_trained": len(trained), "stages_reused": len(stages) - len(trained),
                     "steps": sum(s.train["steps"] for s in trained),
                     "seconds": round(sum(s.train["seconds"] for s in trained), 2),
                     "steps_incl_reused": sum(s.train["steps"] for s in stages),
                     "seconds_incl_reused": round(sum(s.train["seconds"] for s in stages), 2)}}


def main(argv=None) -> dict:
    args = parse_args(Arguments, argv, description=__doc__)
    args.complete()
    if args.run.dry_run:
        return dry_run(args, args.distill.teacher_model_path, distils=True)
    task, training, options = args.task, args.training, args.maxidisc
    run = start_run(args, "run_maxidisc", training=training.do_train)
    summary, student_dir = {}, None
    if training.do_train:
        teacher_path = args.distill.teacher_model_path
        tokenizer = load_tokenizer(teacher_path)
        chains = expand_chains(options, load_teacher(args.model.model_type, teacher_path, task))
        data = load_train_and_dev(args.data, task, tokenizer)
        reuse_dir = Path(options.reuse_dir) if options.reuse_dir else run.output_dir
        outcomes = []
        for chain in chains:
            chain_dir = run.output_dir if len(chains) == 1 else run.output_dir / str(chain)
            outcomes.append(run_chain(args, run, tokenizer, data, chain, chain_dir, reuse_dir))
        best = max(outcomes, key=lambda o: o["best_score"])
        student_dir = Path(best["student_dir"])
        table = [{"chain": o["chain"], "score": o["best_score"], "dev": o["best_dev"], **o["cost"],
                  "reused_from": o["reused_from"]} for o in outcomes]
        for row in table:
            reused = f"  (reused {', '.join(row['reused_from'])})" if row["reused_from"] else ""
            logger.info("%-12s %s %.4f  steps %d  seconds %.1f%s", row["chain"], training.selection_metric,
                        row["score"], row["steps"], row["seconds"], reused)
        summary = {**best, "best_chain": best["chain"], "chains_tried": table,
                   "total_cost": {"steps": sum(r["steps"] for r in table),
                                  "seconds": round(sum(r["seconds"] for r in table), 2)}}
        summary["paths"] = {**best["paths"], "student": str(student_dir)}
        if run.is_main and len(table) > 1:
            picture = plot_search(table, run.output_dir / "search.png", training.selection_metric,
                                  {"best path": best["chain"]})
            summary["paths"]["search_picture"] = str(picture) if picture else None
    results = finish(args, run, task, run.output_dir, summary, model_dir=student_dir)
    end_run(run)
    return results


if __name__ == "__main__":
    sys.exit(cli(main))
