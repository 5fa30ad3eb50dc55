"""Loading checkpoints: only supported architectures, every backbone weight present, with one-line errors."""

from __future__ import annotations

import re
from pathlib import Path

from transformers import AutoTokenizer, PretrainedConfig

from data.tasks import get_task
from models import MODEL_REGISTRY, get_model_class
from utils.errors import StageError

HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def supported_model_types() -> list[str]:
    """The HF ``model_type`` values whose checkpoints this project's model classes load."""
    return sorted({cls.config_class.model_type for cls in MODEL_REGISTRY.values()})


def data_types() -> list[str]:
    """The tokenisation pipelines (``--data_type``) of the registered families: ``bert_cls``, ``enct5_ner``, ..."""
    return sorted({cls.data_type for cls in MODEL_REGISTRY.values()})


def model_type_for(checkpoint_type: str, task) -> str:
    """Our model class name for a checkpoint of HF ``model_type`` ``checkpoint_type`` on ``task``:
    the family that loads that architecture, with a token head for token tasks, else a sequence head."""
    head = "_ner" if task.is_token_task else "_cls"
    for name, cls in MODEL_REGISTRY.items():
        if name.endswith(head) and cls.config_class.model_type == checkpoint_type:
            return name
    raise StageError(f"no model class for {checkpoint_type} checkpoints; supported: {', '.join(supported_model_types())}")


def check_model_path(path: str, flag: str) -> str:
    """The HF ``model_type`` of the checkpoint at ``path`` (given as ``flag``): a saved model directory or
    a hub name, of a supported architecture.

    Raises:
        StageError: no such directory, a file, no ``config.json``, an unreadable hub name, or another
            architecture; one line each.
    """
    folder = Path(path)
    if not folder.exists():
        if HUB_NAME.match(path):
            return check_architecture(path, flag)
        raise StageError(f"{flag} {path}: no such directory")
    if not folder.is_dir():
        raise StageError(f"{flag} {path} is a file; expected a directory holding a saved model")
    if not (folder / "config.json").is_file():
        raise StageError(f"{flag} {path} has no config.json: not a saved model directory")
    return check_architecture(path, flag)


def check_architecture(path: str, flag: str = "the checkpoint") -> str:
    """The config's ``model_type`` at ``path``; :class:`StageError` unless it is a supported one."""
    try:
        config, _ = PretrainedConfig.get_config_dict(path)
    except OSError as err:
        raise StageError(f"{flag} {path}: cannot read its config ({str(err).splitlines()[0]})") from None
    model_type = config.get("model_type")
    if model_type not in supported_model_types():
        raise StageError(f"{flag} {path} is a {model_type or 'untyped'} checkpoint (config model_type "
                         f"{model_type!r}); supported: {', '.join(supported_model_types())}")
    return model_type


def load_tokenizer(path: str):
    """The (fast) tokenizer saved with a model directory or named on the hub."""
    try:
        return AutoTokenizer.from_pretrained(path)
    except OSError as err:
        raise StageError(f"cannot load a tokenizer from {path!r}: {str(err).splitlines()[0]}") from None


def load_model(model_type: str, path: str, new_head: bool = False, **config_overrides):
    """``model_type``'s class loaded from a directory or hub name, with a one-line error if it cannot be.

    ``config_overrides`` are set on the loaded config first; ``new_head`` allows a task head of a
    different size than the checkpoint's, or none (fine-tuning a pretrained encoder on a new task).
    Every backbone weight (the family's ``is_backbone_key``: BERT's embeddings and encoder; EncT5's
    embeddings, encoder and decoder block) must come from the checkpoint: a missing, unexpected or
    mis-shaped one stops the load, as does a head weight unless ``new_head`` (weights of heads we do
    not use, such as a pretraining head, are ignored).

    Raises:
        StageError: unreadable path, unsupported architecture, or weights that do not fit.
    """
    cls = get_model_class(model_type)
    check_architecture(path)
    try:
        config = cls.config_class.from_pretrained(path)
        for key, value in config_overrides.items():
            setattr(config, key, value)
        model, info = cls.from_pretrained(path, config=config, ignore_mismatched_sizes=True,
                                          output_loading_info=True)
    except OSError as err:
        raise StageError(f"cannot load a {model_type} model from {path!r}: {str(err).splitlines()[0]}") from None
    backbone = cls.is_backbone_key
    mismatched = [k if isinstance(k, str) else k[0] for k in info.get("mismatched_keys", [])]
    problems = {
        "missing": [k for k in info["missing_keys"] if not new_head or backbone(k)],
        "unexpected": [k for k in info["unexpected_keys"] if backbone(k)],
        "mis-shaped": [k for k in mismatched if not new_head or backbone(k)],
    }
    problems = {kind: sorted(keys) for kind, keys in problems.items() if keys}
    if problems:
        detail = "; ".join(f"{len(keys)} {kind} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})"
                           for kind, keys in problems.items())
        hint = "" if new_head else " (fine-tune it first with run_finetuning.py if it is a pretrained encoder)"
        raise StageError(f"{path} does not hold a complete {model_type} model: {detail} weights{hint}")
    return model


def load_teacher(model_type: str, path: str, task):
    """The teacher of ``task`` at ``path``, checked to be one (labels, task name)."""
    teacher = load_model(model_type, path)
    check_model_task(teacher, task, path)
    return teacher


def check_model_task(model, task, path) -> None:
    """Raise unless ``model`` has ``task``'s label count and (when recorded) its task name."""
    recorded = getattr(model.config, "finetuning_task", None)
    if recorded and get_task(recorded).name != task.name:
        raise StageError(f"{path} was fine-tuned on {recorded}, not {task.name}: not a teacher of this task")
    if model.config.num_labels != task.num_labels:
        raise StageError(f"{path} predicts {model.config.num_labels} labels but task {task.name} has "
                         f"{task.num_labels}: not a teacher of this task")
