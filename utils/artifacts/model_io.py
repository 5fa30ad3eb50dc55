"""Loading checkpoints: only supported architectures, every backbone weight present, with one-line errors."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from transformers import AutoConfig, AutoTokenizer, PretrainedConfig

from data.tasks import get_task
from models import MODEL_REGISTRY, checkpoint_types, get_model_class
from utils.errors import StageError

logger = logging.getLogger(__name__)

HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
# Where a run folder keeps the model it saved: run_sparsification's model/, the training scripts' best/.
SAVED_MODEL_DIRS = ("model", "best")


def supported_model_types() -> list[str]:
    """The HF ``model_type`` values whose checkpoints this project's model classes load."""
    return sorted({kind for cls in MODEL_REGISTRY.values() for kind in checkpoint_types(cls)})


def data_types() -> list[str]:
    """The tokenisation pipelines (``--data_type``) of the registered families: ``bert_cls``, ``enct5_ner``, ..."""
    return sorted({cls.data_type for cls in MODEL_REGISTRY.values()})


def model_type_for(checkpoint_type: str, task) -> str:
    """Our model class name for a checkpoint of HF ``model_type`` ``checkpoint_type`` on ``task``:
    the family that loads that architecture, with a language-model head for ``lm``, a token head for token tasks,
    else a sequence head."""
    head = "_lm" if task.is_lm_task else "_ner" if task.is_token_task else "_cls"
    for name, cls in MODEL_REGISTRY.items():
        if name.endswith(head) and checkpoint_type in checkpoint_types(cls):
            return name
    raise StageError(f"no model class for {checkpoint_type} checkpoints; supported: {', '.join(supported_model_types())}")


def gguf_location(path: str) -> tuple[str, dict]:
    """``(folder or hub name, loading keyword arguments)``: a ``*.gguf`` file is read from its folder with
    transformers' GGUF loader (``gguf_file=``), anything else as it is."""
    if str(path).endswith(".gguf") and Path(path).is_file():
        return str(Path(path).parent), {"gguf_file": Path(path).name}
    return str(path), {}


def check_model_path(path: str, flag: str) -> str:
    """The HF ``model_type`` of the checkpoint at ``path`` (given as ``flag``): a saved model directory, a
    GGUF file, or a hub name, of a supported architecture.

    Raises:
        StageError: no such directory, another file, no ``config.json``, an unreadable hub name, or another
            architecture; one line each.
    """
    folder = Path(path)
    if str(path).endswith(".gguf") and folder.is_file():
        return check_architecture(path, flag)
    if not folder.exists():
        if HUB_NAME.match(path):
            return check_architecture(path, flag)
        raise StageError(f"{flag} {path}: no such directory")
    if not folder.is_dir():
        raise StageError(f"{flag} {path} is a file; expected a directory holding a saved model")
    if not (folder / "config.json").is_file():
        # A run folder given for the model it saved (sparsification's model/, a training run's best/)
        inner = [folder / name for name in SAVED_MODEL_DIRS if (folder / name / "config.json").is_file()]
        if inner:
            raise StageError(f"{flag} {path} has no config.json, but {inner[0] / 'config.json'} exists: "
                             f"it is a run folder; pass {flag} {inner[0]}")
        raise StageError(f"{flag} {path} has no config.json: not a saved model directory")
    return check_architecture(path, flag)


def check_architecture(path: str, flag: str = "the checkpoint") -> str:
    """The config's ``model_type`` at ``path``; :class:`StageError` unless it is a supported one."""
    location, gguf = gguf_location(path)
    try:
        config, _ = PretrainedConfig.get_config_dict(location, **gguf)
    except (OSError, ImportError) as err:
        raise StageError(f"{flag} {path}: cannot read its config ({str(err).splitlines()[0]})") from None
    model_type = config.get("model_type")
    if model_type not in supported_model_types():
        raise StageError(f"{flag} {path} is a {model_type or 'untyped'} checkpoint (config model_type "
                         f"{model_type!r}); supported: {', '.join(supported_model_types())}")
    return model_type


def load_tokenizer(path: str):
    """The (fast) tokenizer saved with a model directory or named on the hub. A tokenizer without a pad
    token (most decoder LLMs') pads with its end-of-sequence token: padding is masked out anyway."""
    location, gguf = gguf_location(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, **gguf)
    except (OSError, ImportError) as err:
        raise StageError(f"cannot load a tokenizer from {path!r}: {str(err).splitlines()[0]}") from None
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise StageError(f"the tokenizer of {path} has neither a pad nor an end-of-sequence token to pad with")
        tokenizer.pad_token = tokenizer.eos_token
        logger.info("the tokenizer of %s has no pad token: padding with %r (masked out)", path, tokenizer.eos_token)
    return tokenizer


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
    location, gguf = gguf_location(path)
    try:
        config = AutoConfig.from_pretrained(location, **gguf)
        for key, value in config_overrides.items():
            setattr(config, key, value)
        model, info = cls.from_pretrained(location, config=config, ignore_mismatched_sizes=True,
                                          output_loading_info=True, **gguf)
    except (OSError, ImportError) as err:
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
    if gguf:
        # Dequantised on load: the weights are plain fp32 now, and the model saves like any other.
        model.hf_quantizer = None
        for holder in (model.config, config):
            if hasattr(holder, "quantization_config"):
                del holder.quantization_config
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
    if task.is_lm_task:
        if not hasattr(model, "output_weight"):
            raise StageError(f"{path} is not a language model (its head predicts labels): not a teacher of {task.name}")
        return
    if model.config.num_labels != task.num_labels:
        raise StageError(f"{path} predicts {model.config.num_labels} labels but task {task.name} has "
                         f"{task.num_labels}: not a teacher of this task")
