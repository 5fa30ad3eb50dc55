"""What a run's results depend on, recorded so that resuming or reusing a run can be checked against it.

A run's *settings* are every flag that can change what it trains or selects, with each model it
starts from (``--model_name_or_path``, ``--teacher_model_path``, a student directory) replaced by a
hash of the model's files, plus the number of processes and the effective batch. They are written
into ``args.json``, every resumable state and every finished stage; a command that would continue
or reuse a run under other settings stops with :class:`~utils.errors.SettingsMismatch` instead of
silently mixing the two.

Example::

    settings = run_settings(flag_values(args), world_size=1)
    check_settings(saved["settings"], settings, output_dir)   # raises SettingsMismatch on a difference
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from utils.errors import SettingsMismatch

# Flags that cannot change what a run trains or selects: where it writes, what it scores after
# training, how often it saves (resuming is exact), the evaluation batch (each example is scored
# on its own real tokens), the device choice and launcher plumbing, and where MaxiDisc looks for
# stages to reuse (a reused stage is checked by its own key), the planner's flags (a dry run trains nothing),
# activation checkpointing (recomputation gives the same values) and sharding (N processes train as one).
NOT_SETTINGS = frozenset({
    "output_dir", "overwrite_output_dir", "do_train", "do_test", "do_infer", "eval_model_path",
    "per_device_eval_batch_size", "save_steps", "use_cpu", "local_rank", "model_suffix", "reuse_dir",
    "dry_run", "dry_run_devices", "gradient_checkpointing", "fsdp", "torch_compile",
    "report_to",
})
# Flags naming a model a run starts from: recorded by the content of its files, not its path.
MODEL_FLAGS = ("model_name_or_path", "teacher_model_path", "layer_or_sparsity")
WEIGHT_PATTERNS = ("config.json", "*.safetensors", "*.bin", "*.pt", "*.gguf")

_identity_cache: dict[tuple, str] = {}


def model_identity(path: str | Path) -> str:
    """``sha256:…`` of a model directory's config and weight files (names and bytes, in name order), or of
    a GGUF file.

    A value that is not a directory (a hub name such as ``bert-base-uncased``, or a student spec
    such as ``90S``) is its own identity: the hub versions what a name points to. Hashes are cached
    per file size and modification time within the process.
    """
    folder = Path(path)
    if folder.is_file() and folder.suffix == ".gguf":
        files = [folder]
    elif not folder.is_dir():
        return str(path)
    else:
        files = sorted({f for pattern in WEIGHT_PATTERNS for f in folder.glob(pattern) if f.is_file()})
    stamp = tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    key = (str(folder.resolve()), stamp)
    if key not in _identity_cache:
        digest = hashlib.sha256()
        for f in files:
            digest.update(f.name.encode() + b"\0")
            with open(f, "rb") as handle:
                while chunk := handle.read(1 << 23):
                    digest.update(chunk)
        _identity_cache[key] = "sha256:" + digest.hexdigest()
    return _identity_cache[key]


def run_settings(flags: dict, world_size: int) -> dict:
    """The settings of a run (JSON-able) with ``flags`` ``{name: value}``: its result-changing flags,
    models by content, processes, effective batch."""
    settings = {}
    for name, value in sorted(flags.items()):
        if name in NOT_SETTINGS:
            continue
        settings[name] = model_identity(value) if name in MODEL_FLAGS and value is not None else value
    settings["world_size"] = world_size
    if "per_device_train_batch_size" in settings:
        settings["effective_batch_size"] = (settings["per_device_train_batch_size"] * world_size
                                            * settings.get("num_grad_accum_steps", 1))
    return settings


def settings_key(settings: dict) -> str:
    """A short stable hash of ``settings`` (JSON with sorted keys)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def _flatten(settings: dict, prefix: str = "") -> dict:
    """``{"run": {"lam": 0.2}}`` → ``{"run.lam": 0.2}``."""
    flat = {}
    for name, value in settings.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{name}."))
        else:
            flat[prefix + name] = value
    return flat


_ABSENT = object()


def differences(saved: dict, current: dict) -> list[str]:
    """``["learning_rate 0.001 -> 0.002", "run.lam 0.0 -> 0.3", ...]`` for every setting that differs
    (nested settings by their dotted name; a setting one side lacks shows as ``unset``)."""
    saved, current = _flatten(saved), _flatten(current)

    def show(value):
        return "unset" if value is _ABSENT else json.dumps(value)

    return [f"{name} {show(saved.get(name, _ABSENT))} -> {show(current.get(name, _ABSENT))}"
            for name in sorted(set(saved) | set(current)) if saved.get(name, _ABSENT) != current.get(name, _ABSENT)]


def check_settings(saved: dict | None, current: dict, where: str | Path, what: str = "run") -> None:
    """Raise :class:`SettingsMismatch` (one line, with the two ways out) unless ``saved == current``.

    ``saved`` None (a run written before settings were recorded) is not checked.
    """
    if saved is None:
        return
    changed = differences(saved, current)
    if changed:
        raise SettingsMismatch(
            f"{where} holds a {what} started with other settings ({'; '.join(changed)}): re-run the same command "
            "to continue it, pass --overwrite_output_dir to start afresh, or choose another --output_dir")
