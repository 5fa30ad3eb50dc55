"""What a run's results depend on, recorded so that resuming or reusing a run can be checked against it.

A run's *settings* are every flag that can change what it trains or selects, with each model it
starts from (``--model_name_or_path``, ``--teacher_model_path``, a student directory) replaced by a
hash of the model's and its tokenizer's files and ``--data_dir`` by a hash of each data file the run
reads, plus the number of processes, the effective batch, the device type and whether sharding casts
weights to the mixed-precision dtype. They are written
into ``args.json``, every resumable state and every finished stage; a command that would continue
or reuse a run under other settings stops with :class:`~utils.errors.SettingsMismatch` instead of
silently mixing the two.

Example::

    settings = run_settings(flag_values(args), world_size=1, device_type="cpu")
    check_settings(saved["settings"], settings, output_dir)   # raises SettingsMismatch on a difference
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from data.readers import MissingDataError, find_split_files
from data.tasks import DataError, get_task
from utils.errors import SettingsMismatch

# Flags that cannot change what a run trains or selects: where it writes, what it scores after
# training, how often it saves (resuming is exact), the evaluation batch (each example is scored
# on its own real tokens), launcher plumbing, and where MaxiDisc looks for stages to reuse (a reused
# stage is checked by its own key), the planner's flags (a dry run trains nothing), activation
# checkpointing (recomputation gives the same values). What ``--use_cpu`` and ``--fsdp`` change is
# recorded as what they cause: the device type (CPU and CUDA draw dropout from other random streams
# and run other kernels) and sharded mixed precision (FSDP2 casts the norms and heads that DDP's autocast
# keeps in fp32); in fp32, N sharded processes train as N DDP ones. ``--torch_compile`` is a setting:
# compiled layers replace the CPU fast paths' dropout with torch's, which draws other random numbers.
NOT_SETTINGS = frozenset({
    "output_dir", "overwrite_output_dir", "do_train", "do_test", "do_infer", "eval_model_path",
    "per_device_eval_batch_size", "save_steps", "use_cpu", "local_rank", "model_suffix", "reuse_dir",
    "dry_run", "dry_run_devices", "gradient_checkpointing", "fsdp",
    "report_to",
})
# Flags naming a model a run starts from: recorded by the content of its files, not its path.
MODEL_FLAGS = ("model_name_or_path", "teacher_model_path", "layer_or_sparsity")
WEIGHT_PATTERNS = ("config.json", "*.safetensors", "*.bin", "*.pt", "*.gguf")
# The tokenizer saved beside a model (WordPiece, sentencepiece, byte-level BPE): it decides the input ids.
TOKENIZER_PATTERNS = ("tokenizer*", "vocab*", "merges.txt", "*.model", "special_tokens_map.json",
                      "added_tokens.json")
# The splits a training run reads (sparsification's importance pass reads one of them); the test
# split is only scored afterwards.
DATA_SPLITS = ("train", "dev")

_identity_cache: dict[tuple, str] = {}


def _files_identity(files: list[Path]) -> str:
    """``sha256:…`` of ``files``' names and bytes, in the given order; cached per path, size and mtime."""
    key = tuple((str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    if key not in _identity_cache:
        digest = hashlib.sha256()
        for f in files:
            digest.update(f.name.encode() + b"\0")
            with open(f, "rb") as handle:
                while chunk := handle.read(1 << 23):
                    digest.update(chunk)
        _identity_cache[key] = "sha256:" + digest.hexdigest()
    return _identity_cache[key]


def model_identity(path: str | Path) -> str:
    """``sha256:…`` of a model directory's config, weight and tokenizer files (names and bytes, in name
    order), or of a GGUF file (which holds its tokenizer).

    A value that is not a directory (a hub name such as ``bert-base-uncased``, or a student spec
    such as ``90S``) is its own identity: the hub versions what a name points to. Hashes are cached
    per file size and modification time within the process.
    """
    folder = Path(path)
    if folder.is_file() and folder.suffix == ".gguf":
        return _files_identity([folder])
    if not folder.is_dir():
        return str(path)
    patterns = WEIGHT_PATTERNS + TOKENIZER_PATTERNS
    return _files_identity(sorted({f for pattern in patterns for f in folder.glob(pattern) if f.is_file()}))


def data_identity(task_name: str, data_dir: str | Path) -> dict:
    """``{split: "sha256:…"}`` of the files each of :data:`DATA_SPLITS` is read from (one for the tasks' tables,
    every text file of an ``lm`` split; None where there is none: the reader then says so), so that the data count
    by content, not by path."""
    try:
        task = get_task(task_name)
    except DataError:  # the script refuses the task with its own message
        return {split: None for split in DATA_SPLITS}
    identity = {}
    for split in DATA_SPLITS:
        try:
            identity[split] = _files_identity(find_split_files(task, data_dir, split))
        except MissingDataError:
            identity[split] = None
    return identity


def run_settings(flags: dict, world_size: int, device_type: str) -> dict:
    """The settings of a run (JSON-able) with ``flags`` ``{name: value}`` on ``world_size`` processes of
    ``device_type`` (``"cpu"``, ``"cuda"``): its result-changing flags, models and data by content,
    processes, effective batch, device type and sharded mixed precision."""
    settings = {}
    for name, value in sorted(flags.items()):
        if name in NOT_SETTINGS:
            continue
        settings[name] = model_identity(value) if name in MODEL_FLAGS and value is not None else value
    if "data_dir" in settings and "task_name" in settings:
        settings["data_dir"] = data_identity(settings["task_name"], settings["data_dir"])
    settings["world_size"] = world_size
    if "per_device_train_batch_size" in settings:
        settings["effective_batch_size"] = (settings["per_device_train_batch_size"] * world_size
                                            * settings.get("num_grad_accum_steps", 1))
    settings["device_type"] = device_type
    settings["sharded_mixed_precision"] = bool(flags.get("fsdp") and world_size > 1
                                               and (flags.get("use_bf16") or flags.get("use_fp16")))
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
