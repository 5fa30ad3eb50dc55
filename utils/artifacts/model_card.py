"""A model card in every saved model folder: ``README.md`` in the Hugging Face format, rendered from ``card.json``.

``card.json`` holds the facts, gathered where they become known:

* when the model is saved (:func:`utils.engine.checkpoint.save_model_atomic`): what the model is (class,
  sparsity, heads and neurons kept per layer, parameters), the dev scores it was selected on, and
  how it was made (script, command, package versions, task, its teacher's card: the teacher's size
  and scores, the importance data, the pretrained model at the root);
* when the run finishes (:func:`utils.command.results.finish`): the final dev (and test) scores and the
  assistants on its path (MiniDisc, MaxiDisc);
* when the main job's summary measures it (:mod:`tools.report`): latency in PyTorch and ONNX Runtime,
  with the hardware.

:func:`update_card` merges new facts and renders ``README.md`` again, so the card always says
everything known about the model in its folder.
"""

from __future__ import annotations

import json
import platform
import shlex
from pathlib import Path

from models.standalone import auto_class
from utils.artifacts.files import ARGS_FILE, write_json_atomic

CARD_FILE = "README.md"
FACTS_FILE = "card.json"
GLUE = "nyu-mll/glue"
DATASETS = {"polarity": "cornell-movie-review-data/rotten_tomatoes", "conll": "eriktks/conll2003"}
# Our metric keys -> the Hub's metric ids.
HUB_METRICS = {"acc": "accuracy", "f1": "f1", "matthews_corrcoef": "matthews_correlation",
               "pearson_corr": "pearsonr", "spearman_corr": "spearmanr", "precision": "precision", "recall": "recall"}


def model_facts(model) -> dict:
    """What ``model`` is: class, family, sparsity, per-layer widths and parameter counts."""
    counts, widths, config = model.count_parameters(), model.kept_widths(), model.config
    facts = {"class": type(model).__name__, "auto_class": auto_class(type(model)),
             "model_type": config.model_type, "sparsity": model.current_sparsity, "layers": model.depth,
             "heads_per_layer": widths["head"], "neurons_per_layer": widths["neuron"],
             "prunable_parameters": counts["prunable"], "total_parameters": counts["total"]}
    if getattr(config, "importance_split", None):  # set by run_sparsification, kept by every model pruned from it
        facts["importance"] = {"split": config.importance_split,
                               "samples": getattr(config, "importance_samples", None)}
    return facts


def read_facts(directory) -> dict | None:
    """The facts of the model saved in ``directory``, or None when it has no card (e.g. a hub checkpoint)."""
    path = Path(directory) / FACTS_FILE if directory else None
    return json.loads(path.read_text()) if path is not None and path.is_file() else None


def run_facts(run_dir: Path) -> dict:
    """How the run in ``run_dir`` made its models (from its ``args.json``), with its teacher's card."""
    path = Path(run_dir) / ARGS_FILE
    if not path.is_file():
        return {}
    record = json.loads(path.read_text())
    args = record["args"]
    made = {"script": record["script"], "command": shlex.join(record.get("command", [])),
            "versions": record.get("versions", {}), "git_revision": record.get("git_revision"),
            "device": record.get("device"), "amp_dtype": record.get("amp_dtype"), "task": args.get("task_name"),
            "seed": args.get("seed")}
    for name in ("lam", "target_sparsity", "layer_or_sparsity", "layer_or_sparsity_path", "sandwich_sample",
                 "objective"):
        if args.get(name) is not None:
            made[name] = args[name]
    facts = {"made_by": made}
    parent_path = args.get("teacher_model_path") or args.get("model_name_or_path")
    parent = read_facts(parent_path)
    if parent is None:
        facts["base_model"] = parent_path
    else:
        facts["base_model"] = parent.get("base_model")
        facts["teacher"] = {"path": str(parent_path), "model": parent["model"], "dev": parent.get("dev"),
                            "made_by": parent.get("made_by", {}).get("script")}
    return facts


def save_card(directory: Path, model, run_dir: Path | None, selection: dict | None) -> None:
    """Write ``card.json`` and ``README.md`` for ``model`` being saved into ``directory``."""
    facts = {"model": model_facts(model), **(run_facts(run_dir) if run_dir is not None else {})}
    if selection is not None:
        facts["dev"] = selection.get("metrics") or selection.get("sparsities", {}).get(str(selection.get("choice")))
        facts["selected_at_step"] = selection.get("step")
    _write(directory, facts)


def update_card(directory: Path, **facts) -> None:
    """Merge ``facts`` into the card of ``directory`` (which must have one) and render it again."""
    current = read_facts(directory)
    if current is None:
        raise FileNotFoundError(f"{Path(directory) / FACTS_FILE} does not exist: save the model with "
                                "utils.engine.checkpoint.save_model_atomic first")
    _write(directory, {**current, **facts})


def _write(directory: Path, facts: dict) -> None:
    write_json_atomic(Path(directory) / FACTS_FILE, facts)
    (Path(directory) / CARD_FILE).write_text(render(facts, Path(directory).name.removesuffix(".tmp")))


def _hub_id(name: str | None) -> str | None:
    """``name`` when it reads as a Hub model id (``org/model`` or ``model``, not a local folder)."""
    if not name or Path(name).exists() or name.startswith((".", "/", "~")):
        return None
    return name


def format_count(n: int | None) -> str:
    """A parameter count: ``10637568`` → ``"10.64M"``, ``31234`` → ``"31.2K"``; None → ``"–"``."""
    if n is None:
        return "–"
    return f"{n / 1e6:.2f}M" if n >= 100_000 else f"{n / 1e3:.1f}K"


def _scores(scores: dict | None) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in (scores or {}).items() if isinstance(v, int | float)) or "—"


def render(facts: dict, name: str) -> str:
    """The model card (YAML metadata, then Markdown) of ``facts``."""
    model, made = facts["model"], facts.get("made_by", {})
    task = made.get("task")
    token = model["auto_class"].endswith("TokenClassification")
    dataset = DATASETS.get(task, GLUE if task else None)
    metrics = sorted({HUB_METRICS[k] for k in (facts.get("dev") or {}) if k in HUB_METRICS})
    meta = ["---", "library_name: transformers"]
    base = _hub_id(facts.get("base_model"))
    if base:
        meta.append(f"base_model: {base}")
    meta += ["tags:", "- minidisc", "- pruning", "- knowledge-distillation", "- custom_code"]
    if dataset:
        meta += ["datasets:", f"- {dataset}"]
    if metrics:
        meta += ["metrics:", *(f"- {m}" for m in metrics)]
    meta += [f"pipeline_tag: {'token-classification' if token else 'text-classification'}", "---", ""]

    role = {"run_finetuning": "fine-tuned teacher", "run_sparsification": "sparsified teacher"}.get(
        made.get("script"), "distilled model")
    lines = [f"# A {model['sparsity']}% sparse {model['model_type']} {role} for {task or 'its task'} ({name})", "",
             f"Made by the MiniDisc re-implementation's `{made.get('script', 'save')}.py`: "
             f"{model['layers']} layers, {sum(model['heads_per_layer'])} attention heads and "
             f"{sum(model['neurons_per_layer'])} FFN neurons kept, {format_count(model['prunable_parameters'])} prunable "
             f"and {format_count(model['total_parameters'])} parameters in all. The weights are physically pruned; "
             "each layer keeps its own widths, which the stock architecture cannot hold, so the folder carries "
             "its modeling code.", "", "## Use", "", "```python",
             f"from transformers import {model['auto_class']}, AutoTokenizer, pipeline", "",
             'folder = "path/to/this/folder"  # or its Hub id once pushed',
             f"model = {model['auto_class']}.from_pretrained(folder, trust_remote_code=True)",
             "tokenizer = AutoTokenizer.from_pretrained(folder)",
             f'classify = pipeline("{"token-classification" if token else "text-classification"}", model=folder, '
             'trust_remote_code=True)', "```", "",
             "`trust_remote_code=True` is required: without it transformers builds its stock class, which cannot "
             "hold the pruned widths. (The pipeline logs that this class is \"not supported\" for the task: it "
             "checks the name against its built-in classes only, and works.)", "", "## How it was made", ""]
    teacher = facts.get("teacher")
    if teacher:
        t = teacher["model"]
        lines.append(f"- Teacher: `{teacher['path']}` ({t['sparsity']}% sparse, {format_count(t['total_parameters'])} "
                     f"parameters; dev {_scores(teacher.get('dev'))}).")
    if facts.get("base_model"):
        lines.append(f"- Pretrained model at the root: `{facts['base_model']}`.")
    if "assistants" in facts:
        path = " → ".join(["teacher", *(f"{s}S assistant" for s in facts["assistants"]), f"{model['sparsity']}S"])
        lines.append(f"- Distillation path: {path}.")
    for key, label in (("lam", "λ of the λ-tradeoff"), ("target_sparsity", "target sparsity"),
                       ("layer_or_sparsity_path", "chain"), ("sandwich_sample", "sampled sandwich K"),
                       ("objective", "objective"), ("seed", "seed")):
        if key in made:
            lines.append(f"- {label}: {made[key]}")
    importance = model.get("importance")
    if importance:
        samples = importance.get("samples")
        lines.append(f"- Head and neuron importance (|gradient| of their masks) scored on the {task} "
                     f"`{importance['split']}` split{f' ({samples} examples)' if samples else ''}.")
    if made.get("command"):
        lines += ["", "Command:", "", "```bash", made["command"], "```"]
    lines += ["", "## Size", "", "| | this model | teacher |", "|---|---:|---:|"]
    t = (teacher or {}).get("model", {})
    for key, label in (("prunable_parameters", "prunable parameters"), ("total_parameters", "parameters")):
        lines.append(f"| {label} | {format_count(model[key])} | {format_count(t.get(key))} |")
    for key, label in (("heads_per_layer", "attention heads"), ("neurons_per_layer", "FFN neurons")):
        lines.append(f"| {label} | {sum(model[key])} | {sum(t[key]) if key in t else '—'} |")
    lines += ["", "Kept per layer:", "", "| layer | " + " | ".join(map(str, range(model["layers"]))) + " |",
              "|---|" + "---:|" * model["layers"],
              "| heads | " + " | ".join(map(str, model["heads_per_layer"])) + " |",
              "| neurons | " + " | ".join(map(str, model["neurons_per_layer"])) + " |", "", "## Scores", ""]
    lines.append(f"- dev: {_scores(facts.get('dev'))}" + (f" (selected at step {facts['selected_at_step']})"
                                                         if facts.get("selected_at_step") is not None else ""))
    if facts.get("test"):
        lines.append(f"- test: {_scores(facts['test'])}")
    latency = facts.get("latency")
    if latency:
        lines += ["", "## Latency", "", f"Measured on {latency.get('hardware', platform.processor() or 'a CPU')}: "
                  f"{latency.get('setting', '')}", "", "| runtime | ms per batch |", "|---|---:|"]
        lines += [f"| {runtime} | {ms:.1f} |" for runtime, ms in latency.get("ms_per_batch", {}).items()]
    versions = made.get("versions")
    if versions:
        lines += ["", "## Versions", "", ", ".join(f"{k} {v}" for k, v in versions.items() if v)
                  + (f"; code revision {made['git_revision']}" if made.get("git_revision") else "")]
    return "\n".join(meta + lines) + "\n"
