"""Summarise a MiniDisc run: teacher, chosen assistant(s) and student side by side, with CPU latency.

``python -m tools.report --minidisc_dir DIR [--teacher_dir DIR] [--data_dir DIR --task_name TASK]``
prints a table and writes it to ``DIR/summary.md`` and ``DIR/summary.json``. One row per model:
its dev score on the run's selection metric, sparsity, prunable-encoder and total parameters,
measured inference latency and speedup over the teacher; the schedule picture's path follows. For a
language model (``--task_name lm``): its dev perplexity, tokens per second instead of the ONNX columns, and
every model's greedy continuation of a few prompts (``--prompts``, ``--new_tokens``) side by side.

* Scores come from the run files, never recomputed: the teacher's is ``teacher_dev`` of MiniDisc's
  ``results.json``, an assistant's is ``best_dev`` of its iteration's ``iter_k/results.json``,
  the student's is ``best_dev`` of MiniDisc's ``results.json``.
* Sizes are counted on the saved models (loaded with :func:`utils.artifacts.model_io.load_model`); students and
  assistants are saved densified, so their tensors really are smaller.
* Latency is milliseconds per batch of inference on the CPU (eval mode, no autograd): the median
  of ``--repeats`` timed passes after ``--warmup`` untimed ones. The models take turns within each
  repeat, so load from other processes slows them alike. Input: with ``--data_dir``/``--task_name``,
  the first ``--num_batches`` dev batches of ``--batch_size`` (padded to the longest in the batch,
  at most the run's ``--max_length``); otherwise one random batch of ``--batch_size`` ×
  ``--seq_length`` tokens. On a CPU shared with other jobs, run with ``OMP_WAIT_POLICY=PASSIVE``
  (``bert_scripts/common.sh`` sets it): spinning OpenMP threads of competing processes starve each
  other and the numbers become noise (on 2 busy cores, a 90S student timed 786 ms spinning against
  107 ms passive). The policy in force is recorded with the numbers.
* ONNX Runtime (unless ``--no_onnx``) runs every model exported to ``PATH/onnx/model.onnx`` with
  PyTorch's thread count and spin policy (:func:`tools.latency.timing_setup`). How closely its
  logits follow PyTorch's on the timed batches is a column of the table, explained under it: a
  disagreement is reported, never an error, since the run it summarises has finished.
* The exported graph computes every token, padding included, and masks the padding; the eager BERT
  runs everything but attention on the real tokens only. Dev batches in file order are about half
  padding, so the eager model does about half the graph's work: most of why ONNX Runtime looked
  1.3-2.5× slower than PyTorch (measured in docs/deploying.md). With ONNX, PyTorch is therefore also
  timed with the padding kept (:class:`tools.export_onnx.PaddedPyTorch`, the graph's work): the column
  to compare ONNX Runtime with. The note under the table says what each column runs and how much of
  the timed batches is padding.

Example::

    python -m tools.report --minidisc_dir outputs/main_job_quick/polarity/minidisc_90S \\
        --data_dir datasets --task_name polarity --threads 2
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from tools.export_onnx import RUNTIMES, ExportError, OnnxModel, PaddedPyTorch, agreement, export, input_names
from tools.latency import describe_setup, dev_batches, hardware, measure_latency, random_batch, timing_setup
from utils.artifacts.model_card import format_count
from utils.errors import USER_ERRORS, UserError

logger = logging.getLogger(__name__)

class ReportError(UserError):
    """A run folder the report cannot read (not a finished MiniDisc run, missing models); one line."""


# --------------------------------------------------------------------------------------------
# Pure helpers


def speedup(reference_ms: float | None, ms: float | None) -> float | None:
    """How many times faster than the reference a model runs (``reference_ms / ms``); None if unmeasured."""
    if reference_ms is None or ms is None or ms <= 0:
        return None
    return reference_ms / ms


def format_table(rows: Sequence[Mapping], metric: str) -> str:
    """A Markdown table of the summary rows (``name``, ``sparsity``, ``dev``, ``prunable_parameters``,
    ``total_parameters``, ``latency_ms``, ``speedup``, ``padded_ms`` (PyTorch with the padding kept),
    ``onnx_ms`` and ``onnx_agreement``, the latter as
    "relative difference, same predictions/compared" with "differs" when it is more than round-off;
    missing values print as ``–``).
    """
    header = ["model", "sparsity", f"dev {metric}", "prunable params", "total params", "latency ms/batch",
              "speedup", "PyTorch padded ms/batch", "ONNX Runtime ms/batch", "ONNX vs PyTorch"]
    if any(row.get("tokens_per_s") is not None for row in rows):  # a language model: no ONNX, its throughput
        header[7:] = ["tokens/s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for row in rows:
        cells = [
            row["name"],
            f"{row['sparsity']}%",
            "–" if row.get("dev") is None else f"{row['dev']:.4f}",
            format_count(row.get("prunable_parameters")),
            format_count(row.get("total_parameters")),
            "–" if row.get("latency_ms") is None else f"{row['latency_ms']:.1f}",
            "–" if row.get("speedup") is None else f"{row['speedup']:.2f}×",
            "–" if row.get("padded_ms") is None else f"{row['padded_ms']:.1f}",
            "–" if row.get("onnx_ms") is None else f"{row['onnx_ms']:.1f}",
            _agreement_cell(row.get("onnx_agreement")),
        ]
        if len(header) == 8:
            cells[7:] = ["–" if row.get("tokens_per_s") is None else f"{row['tokens_per_s']:,.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _agreement_cell(agreement: Mapping | None) -> str:
    if agreement is None:
        return "–"
    cell = (f"{agreement['relative_difference']:.1e}, {agreement['same_predictions']}/{agreement['predictions']} "
            "same")
    return cell if agreement["ok"] else cell + " (differs)"


# --------------------------------------------------------------------------------------------
# Reading the run


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise ReportError(f"{path} is missing: is {path.parent} a finished run?")
    return json.loads(path.read_text())


def _model_dir(recorded: str | None, fallback: Path) -> Path:
    """The recorded model folder, or ``fallback`` when the run was moved (recorded paths are literal)."""
    if recorded and Path(recorded).is_dir():
        return Path(recorded)
    if fallback.is_dir():
        return fallback
    raise ReportError(f"no model at {recorded or fallback}")


def read_minidisc_run(minidisc_dir: Path, teacher_dir: Path | None = None) -> dict:
    """The rows (teacher, assistants, student) and settings of a finished MiniDisc run, from its files.

    Returns ``{"task", "metric", "model_type", "max_length", "schedule_picture", "rows"}``; each row has
    ``role``, ``name``, ``path``, ``sparsity`` and ``dev`` (the selection metric's dev value).
    """
    minidisc_dir = Path(minidisc_dir)
    results = _read_json(minidisc_dir / "results.json")
    run_args = _read_json(minidisc_dir / "args.json")["args"]
    if "teacher_dev" not in results or "schedule" not in results:
        raise ReportError(f"{minidisc_dir}/results.json is not a MiniDisc run trained with --do_train")
    metric = results["selection_metric"]
    if "perplexity" in results["teacher_dev"]:  # a language model: show its perplexity, not 1 / perplexity
        metric = "perplexity"
    teacher = Path(teacher_dir) if teacher_dir else Path(run_args["teacher_model_path"])
    if not teacher.is_dir():
        raise ReportError(f"no teacher at {teacher}: pass --teacher_dir")
    rows = [{"role": "teacher", "name": "teacher", "path": str(teacher), "sparsity": 0,
             "dev": results["teacher_dev"][metric]}]
    for entry in results["schedule"]:
        if entry["role"] != "assistant":
            continue
        stage_dir = minidisc_dir / f"iter_{entry['iteration']}"
        stage = _read_json(stage_dir / "results.json")
        rows.append({"role": "assistant", "name": f"assistant {entry['selected']}S (iteration {entry['iteration']})",
                     "path": str(_model_dir(stage["paths"].get("best"), stage_dir / "best")),
                     "sparsity": entry["selected"], "dev": stage["best_dev"][metric],
                     "tradeoff": entry.get("tradeoff", {}).get(str(entry["selected"]))})
    for exported in sorted((minidisc_dir / "iter_1" / "export").glob("*S")):  # with --export_all: every width
        selection = _read_json(exported / "selection.json")
        rows.append({"role": "width", "name": f"width {selection['sparsity']}S (iteration 1)", "path": str(exported),
                     "sparsity": selection["sparsity"], "dev": selection["metrics"][metric]})
    last = results["schedule"][-1]
    student_fallback = minidisc_dir / f"iter_{last['iteration']}" / "best"
    rows.append({"role": "student", "name": f"student {results['model']['sparsity']}S", "sparsity":
                 results["model"]["sparsity"], "path": str(_model_dir(results["paths"].get("student"), student_fallback)),
                 "dev": results["best_dev"][metric]})
    picture = minidisc_dir / "schedule.png"
    return {"task": results["task"], "metric": metric, "model_type": run_args["model_type"],
            "max_length": run_args["max_length"], "lam": run_args.get("lam"),
            "schedule_picture": str(picture) if picture.is_file() else None, "rows": rows}


# --------------------------------------------------------------------------------------------
# Latency


# --------------------------------------------------------------------------------------------
# The command


def build_report(args) -> dict:
    """Read the run, load every model, measure latency (unless --no_latency); the summary as a dict."""
    from utils.artifacts.model_io import load_model, load_tokenizer
    from utils.artifacts.students import describe_model

    run = read_minidisc_run(Path(args.minidisc_dir), args.teacher_dir)
    models = {}
    for row in run["rows"]:
        model = load_model(run["model_type"], row["path"])
        row.update({key: value for key, value in describe_model(model).items()
                    if key in ("num_layers", "heads_kept", "neurons_kept", "prunable_parameters", "total_parameters")})
        models[row["name"]] = model
    language_model = run["metric"] == "perplexity"
    if language_model:
        run["samples"] = greedy_samples(models, load_tokenizer(run["rows"][0]["path"]), args.prompts,
                                        args.new_tokens)
    latency = None
    if not args.no_latency:
        if args.threads:
            torch.set_num_threads(args.threads)
        teacher = models["teacher"]
        if args.data_dir and args.task_name:
            tokenizer = load_tokenizer(run["rows"][0]["path"])
            batches = dev_batches(args.task_name, args.data_dir, tokenizer, run["max_length"], args.batch_size,
                                  args.num_batches)
            shape = f"{len(batches)} dev batches of {args.batch_size} (max length {run['max_length']})"
        else:
            batches = [random_batch(teacher.config.vocab_size, args.batch_size, args.seq_length)]
            shape = f"random {args.batch_size} × {args.seq_length} tokens"
        setup = timing_setup(torch.get_num_threads())
        sessions = {} if args.no_onnx or language_model else onnx_sessions(run["rows"], models, batches, args.rtol,
                                                                           setup)
        # the exported graph computes the padding: time PyTorch on that work too, for a like-for-like comparison
        padded = {name + PADDED_SUFFIX: PaddedPyTorch(models[name]) for name in models if name + ONNX_SUFFIX in sessions}
        logger.info("measuring latency on %s, %d threads, %d repeats", shape, torch.get_num_threads(), args.repeats)
        ms = measure_latency({**models, **padded, **sessions}, batches, args.warmup, args.repeats)
        for row in run["rows"]:
            row["latency_ms"] = ms[row["name"]]
            row["speedup"] = speedup(ms["teacher"], ms[row["name"]])
            row["padded_ms"] = ms.get(row["name"] + PADDED_SUFFIX)
            row["onnx_ms"] = ms.get(row["name"] + ONNX_SUFFIX)
            if language_model:
                tokens = sum(int(batch["attention_mask"].sum()) for batch in batches) / len(batches)
                row["tokens_per_s"] = tokens / (ms[row["name"]] / 1000)
        latency = {"input": shape, "padding": padding_fraction(batches), "threads": torch.get_num_threads(),
                   "warmup": args.warmup, "repeats": args.repeats, "unit": "ms per batch, median", "hardware": hardware(),
                   "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset"), "timing_setup": setup,
                   "rtol": args.rtol}
        add_to_cards(run["rows"], latency)
    return {**run, "minidisc_dir": str(args.minidisc_dir), "latency": latency}


PROMPTS = ("The film", "In the morning, the", "She said that")


@torch.no_grad()
def greedy_samples(models: Mapping[str, torch.nn.Module], tokenizer, prompts: Sequence[str],
                   new_tokens: int) -> list[dict]:
    """Each language model's greedy continuation of each prompt (``new_tokens`` tokens, one full forward per
    token: the models of uneven widths have no key-value cache): ``[{"prompt", "continuations": {name: text}}]``."""
    samples = []
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        continuations = {}
        for name, model in models.items():
            model.eval()
            out = ids
            for _ in range(new_tokens):
                out = torch.cat([out, model(input_ids=out).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
            continuations[name] = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        samples.append({"prompt": prompt, "continuations": continuations})
    return samples


ONNX_SUFFIX = " (ONNX Runtime)"
PADDED_SUFFIX = " (PyTorch, padding kept)"


def padding_fraction(batches: Sequence[Mapping[str, torch.Tensor]]) -> float:
    """The fraction of the batches' token positions that are padding."""
    total = sum(batch["attention_mask"].numel() for batch in batches)
    return 1.0 - sum(int(batch["attention_mask"].sum()) for batch in batches) / total


def onnx_sessions(rows, models, batches, rtol: float, setup: dict) -> dict:
    """Export every model to ``PATH/onnx/model.onnx`` and check it on ``batches``; ONNX Runtime sessions (with
    ``setup``'s threads and spin policy) by row name.

    Nothing here fails the report: each row gets ``onnx_agreement`` (:class:`tools.export_onnx.Agreement`),
    and a model that cannot be exported (a missing package) gets ``onnx_error`` and no session.
    """

    sessions = {}
    for row in rows:
        model = models[row["name"]]
        try:
            path = export(model, Path(row["path"]) / "onnx" / "model.onnx", batches[0])
            session = OnnxModel(path, input_names(model), setup["threads"]["onnxruntime"])
        except ExportError as err:
            logger.warning("%s: not timed in ONNX Runtime: %s", row["name"], err)
            row["onnx_error"] = str(err)
            continue
        agreed = agreement(model, session, batches, rtol)
        row["onnx_agreement"], row["onnx_max_difference"] = agreed.as_dict(), agreed.max_abs_difference
        (logger.info if agreed.ok else logger.warning)("%s in ONNX Runtime: %s", row["name"], agreed.meaning())
        sessions[row["name"] + ONNX_SUFFIX] = session
    return sessions


def add_to_cards(rows, latency: dict) -> None:
    """Write each model's measured latency into its model card (folders saved by the scripts have one)."""
    from utils.artifacts.model_card import FACTS_FILE, update_card

    for row in rows:
        if not (Path(row["path"]) / FACTS_FILE).is_file():
            continue
        times = {"PyTorch": row["latency_ms"]}
        if row.get("padded_ms") is not None:
            times["PyTorch, padding kept (the exported graph's work)"] = row["padded_ms"]
        if row.get("onnx_ms") is not None:
            times["ONNX Runtime"] = row["onnx_ms"]
        update_card(Path(row["path"]), latency={
            "hardware": latency["hardware"], "ms_per_batch": times,
            "setting": f"{latency['input']}, median of {latency['repeats']} passes after {latency['warmup']} "
                       f"warm-up ones, {describe_setup(latency['timing_setup'])}"})


def plot_tradeoff(summary: dict, path: Path) -> Path | None:
    """Dev score against total parameters and against latency, one point per model; a PNG (None without
    matplotlib)."""
    from utils.artifacts.plots import pyplot

    plt = pyplot("trade-off")
    if plt is None:
        return None
    rows = summary["rows"]
    panels = [("total_parameters", "total parameters (millions)", 1e6)]
    if all(row.get("latency_ms") is not None for row in rows):
        panels.append(("latency_ms", "PyTorch latency (ms per batch)", 1.0))
    if all(row.get("onnx_ms") is not None for row in rows):
        panels.append(("onnx_ms", "ONNX Runtime latency (ms per batch)", 1.0))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    styles = {"teacher": ("s", "black"), "assistant": ("D", "tab:orange"), "student": ("*", "tab:red"),
              "width": ("o", "tab:blue")}
    for ax, (key, label, scale) in zip(axes[0], panels, strict=True):
        for role, (marker, color) in styles.items():
            points = [row for row in rows if row["role"] == role]
            if points:
                ax.scatter([row[key] / scale for row in points], [row["dev"] for row in points], marker=marker,
                           color=color, s=90 if role == "student" else 45, label=role, zorder=3)
            for row in points:
                ax.annotate(f"{row['sparsity']}S", (row[key] / scale, row["dev"]), textcoords="offset points",
                            xytext=(4, 4), fontsize=8)
        ax.set_xlabel(label)
        ax.set_ylabel(f"dev {summary['metric']}")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"MiniDisc on {summary['task']}: score against size and speed")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def render(summary: dict) -> str:
    """The Markdown summary: title, table, and where the schedule picture and settings are."""
    lines = [f"# MiniDisc summary: {summary['task']}", "", format_table(summary["rows"], summary["metric"]), ""]
    assistants = [f"{row['sparsity']}S" for row in summary["rows"] if row["role"] == "assistant"]
    lines.append(f"Assistants chosen by the λ-tradeoff (λ = {summary['lam']}): {', '.join(assistants) or 'none'}.")
    if summary["latency"]:
        lat = summary["latency"]
        padding = f", {lat['padding']:.0%} of their token positions padding" if lat.get("padding") is not None else ""
        lines.append(f"Latency: CPU, {describe_setup(lat['timing_setup'])}, {lat['input']}{padding}, median of "
                     f"{lat['repeats']} after {lat['warmup']} warm-up passes, the models taking turns.")
        lines.extend(_onnx_notes(summary["rows"], lat["rtol"]))
    for sample in summary.get("samples", []):
        lines += ["", f"Greedy continuations of “{sample['prompt']}”:", ""]
        lines += [f"* {name}: {text.strip()!r}" for name, text in sample["continuations"].items()]
    if summary.get("samples"):
        lines.append("")
    lines.append(f"Schedule picture: {summary['schedule_picture'] or 'none (matplotlib missing?)'}; "
                 f"trade-off picture: {summary.get('tradeoff_picture') or 'none'}")
    return "\n".join(lines) + "\n"


def _onnx_notes(rows, rtol: float) -> list[str]:
    """What the ONNX columns mean, which models' exports differ from PyTorch, and which were not exported."""
    lines = []
    if any(row.get("padded_ms") is not None for row in rows):
        lines.append(f"Columns: 'latency ms/batch' and its speedup: PyTorch as the scripts run it, {RUNTIMES['pytorch']}; "
                     f"'PyTorch padded': {RUNTIMES['pytorch_padded']}; 'ONNX Runtime': {RUNTIMES['onnxruntime']}. "
                     "On padded batches the eager model does less work than the graph, so 'ONNX Runtime' against "
                     "'latency' mixes the runtime with the padding; against 'PyTorch padded' it compares the "
                     "runtimes alone.")
    if any(row.get("onnx_agreement") for row in rows):
        lines.append("ONNX Runtime: each model exported to PATH/onnx/model.onnx (dynamic batch and length) and run "
                     "on the timed batches. 'ONNX vs PyTorch' is the largest |logits difference| as a fraction of "
                     "the largest |logit|, and how many predictions (argmax) are the same: up to "
                     f"{rtol:.0e} with every prediction the same is fp32 round-off between two correct runtimes.")
    differing = [row["name"] for row in rows if row.get("onnx_agreement") and not row["onnx_agreement"]["ok"]]
    if differing:
        lines.append(f"The export of {', '.join(differing)} differs from PyTorch by more than round-off: that graph "
                     "computes something else, so its ONNX Runtime time is not the model's (its PyTorch numbers "
                     "stand); check it with python -m tools.export_onnx.")
    lines.extend(f"{row['name']} was not timed in ONNX Runtime: {row['onnx_error']}" for row in rows
                 if row.get("onnx_error"))
    return lines


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tools.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minidisc_dir", type=Path, required=True, help="output folder of a finished run_minidisc.py")
    parser.add_argument("--teacher_dir", type=Path, default=None,
                        help="teacher model folder (default: the run's --teacher_model_path)")
    parser.add_argument("--data_dir", default=None, help="with --task_name: time on the task's dev batches")
    parser.add_argument("--task_name", default=None, help="task whose dev set is timed (with --data_dir)")
    parser.add_argument("--batch_size", type=int, default=32, help="examples per timed batch")
    parser.add_argument("--num_batches", type=int, default=4, help="dev batches per timed pass")
    parser.add_argument("--seq_length", type=int, default=64, help="tokens per example of the random batch")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed passes before timing")
    parser.add_argument("--repeats", type=int, default=10, help="timed passes; the median is reported")
    parser.add_argument("--no_latency", action="store_true", help="skip the latency measurement")
    parser.add_argument("--no_onnx", action="store_true", help="do not export to ONNX and time ONNX Runtime")
    parser.add_argument("--prompts", nargs="+", default=list(PROMPTS),
                        help="language models: prompts whose greedy continuations every model prints")
    parser.add_argument("--new_tokens", type=int, default=24, help="language models: tokens of each continuation")
    parser.add_argument("--rtol", type=float, default=1e-3,
                        help="largest |logits difference| between ONNX Runtime and PyTorch, as a fraction of the "
                             "largest |logit|, that is round-off (a larger one is reported as a disagreement)")
    args = parser.parse_args(argv)
    if bool(args.data_dir) != bool(args.task_name):
        parser.error("--data_dir and --task_name go together")
    for name in ("batch_size", "num_batches", "seq_length", "repeats", "new_tokens"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be a positive integer")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Write summary.md and summary.json into the run folder and print the table; 1 on a bad run folder."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        summary = build_report(args)
    except (*USER_ERRORS, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    picture = plot_tradeoff(summary, args.minidisc_dir / "summary.png")
    summary["tradeoff_picture"] = str(picture) if picture else None
    text = render(summary)
    (args.minidisc_dir / "summary.md").write_text(text)
    (args.minidisc_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(text, end="")
    print(f"written: {args.minidisc_dir / 'summary.md'} and summary.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
