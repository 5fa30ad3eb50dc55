"""What a saved model needs to load with transformers alone: one generated modeling file and ``auto_map``.

A pruned model's ``config.json`` names a stock ``model_type`` (``bert``, ``t5``, ``llama``, ...)
with per-layer widths that the stock classes cannot hold. Every saved model folder therefore also
gets ``modeling_minidisc.py`` and, in its config, ``auto_map`` naming the task model's class in it,
so that in any environment with torch and transformers::

    AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)
    pipeline("text-classification", model=folder, trust_remote_code=True)

build this project's model (token classification likewise). Without ``trust_remote_code=True``
transformers would build its stock class from the same config and could not load the pruned
weights: always pass it.

The modeling file is generated, not kept by hand: :func:`modeling_source` concatenates the sources
of this package's modules in dependency order, without their relative imports (the names they import
are then defined above them in the same file). The package imports nothing but the standard
library, torch and transformers, which keeps the file self-contained.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

MODELING_FILE = "modeling_minidisc.py"
# This package's modules, each after the ones it imports.
MODULES = ("sparsity_map", "fast_ops", "packing", "units", "core", "outputs", "task", "sparse_bert", "enc_t5", "decoder",
           "heads")
# Names every module may define for itself.
PER_MODULE = frozenset({"logger"})
AUTO_CLASSES = {"Cls": "AutoModelForSequenceClassification", "Ner": "AutoModelForTokenClassification",
                "LM": "AutoModelForCausalLM"}


def auto_class(model_class: type) -> str:
    """The transformers Auto class that loads ``model_class`` (a ``...Cls``, ``...Ner`` or ``...LM`` task model)."""
    for suffix, name in AUTO_CLASSES.items():
        if model_class.__name__.endswith(suffix):
            return name
    raise TypeError(f"{model_class.__name__} is not a task model (expected a name ending in Cls, Ner or LM)")


def stock_class(model_type: str, model_class: type) -> str:
    """The name of transformers' own class of ``model_type`` for the task of ``model_class`` (what a stock
    checkpoint's ``architectures`` names, e.g. ``LlamaForSequenceClassification``)."""
    from transformers.models.auto import modeling_auto

    task = auto_class(model_class).removeprefix("AutoModelFor")
    names = {"SequenceClassification": modeling_auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
             "TokenClassification": modeling_auto.MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES,
             "CausalLM": modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES}[task]
    return names[model_type]


def _top_level_names(tree: ast.Module) -> set[str]:
    names = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
    return names


def modeling_source(package: Path = Path(__file__).parent, modules: tuple[str, ...] = MODULES) -> str:
    """The self-contained modeling file: every module of ``modules`` (in ``package``), relative imports removed.

    Raises:
        RuntimeError: when two modules define the same top-level name (one would silently shadow the other).
    """
    parts, owners = [], {}
    for name in modules:
        source = (package / f"{name}.py").read_text()
        tree = ast.parse(source)
        for defined in _top_level_names(tree) - PER_MODULE:
            if defined in owners:
                raise RuntimeError(f"{name}.py and {owners[defined]}.py both define {defined!r}: "
                                   f"rename one, or {MODELING_FILE} would keep only the last")
            owners[defined] = name
        dropped = set()
        for index, node in enumerate(tree.body):
            docstring = index == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
            relative = isinstance(node, ast.ImportFrom) and (node.level > 0 or node.module == "__future__")
            if docstring or relative:
                dropped.update(range(node.lineno, node.end_lineno + 1))
        kept = [line for number, line in enumerate(source.splitlines(), start=1) if number not in dropped]
        parts.append(f"# ---- models/{name}.py " + "-" * (90 - len(name)) + "\n" + "\n".join(kept).strip() + "\n")
    header = ('"""MiniDisc\'s prunable models, self-contained so that transformers alone loads a compressed model\n'
              '(``trust_remote_code=True``). Generated from the MiniDisc re-implementation\'s models/ package by\n'
              'models/standalone.py: do not edit; regenerate instead."""\n\nfrom __future__ import annotations\n')
    return header + "\n\n".join(parts)


def write_standalone(directory: Path, model) -> None:
    """Make the saved model folder ``directory`` load with transformers alone.

    A decoder whose layers all have the same widths (``model.stock_sizes()``: a student of ``--uniform_widths``,
    or any full-width decoder) is its family's stock architecture: its config gets the pruned sizes in the stock
    fields (``num_attention_heads``, ``num_key_value_heads``, ``intermediate_size``, ``head_dim``) and the full
    ones in ``pruned_from`` (which this project reads back), and no code: ``AutoModelFor...`` loads it without
    ``trust_remote_code``, and so do tools that read stock checkpoints. Any other model gets
    :data:`MODELING_FILE` and ``auto_map`` naming ``model``'s class in it."""
    directory = Path(directory)
    config_file = directory / "config.json"
    config = json.loads(config_file.read_text())
    sizes = model.stock_sizes() if hasattr(model, "stock_sizes") else None
    if sizes is None:
        (directory / MODELING_FILE).write_text(modeling_source())
        config["auto_map"] = {auto_class(type(model)): f"{MODELING_FILE.removesuffix('.py')}.{type(model).__name__}"}
    else:
        full = {**{field: config[field] for field in sizes if field in config}, **(config.get("pruned_from") or {})}
        config.pop("auto_map", None)
        config.pop("pruned_from", None)
        if any(full.get(field, value) != value for field, value in sizes.items()):
            config["pruned_from"] = {field: full[field] for field in sizes if field in full and field != "head_dim"}
        config.update(sizes)
        config["architectures"] = [stock_class(config["model_type"], type(model))]
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
