"""What a run keeps on disk while it trains: the best model (swapped in atomically), the resumable
state (weights, optimizer, counters, every process's random state) and the evaluation log.

Files in a stage's folder (rank 0 only):

* ``metrics.jsonl``  one line per evaluation: step, epoch, metrics, score, elapsed seconds;
* ``best/``          the best model (densified) + tokenizer + ``selection.json``, replaced atomically;
* ``checkpoint/``    the resumable state, replaced atomically every ``--save_steps`` steps and at each
  epoch end, removed once the run's results are written.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import random
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from models.standalone import write_standalone
from utils.errors import RunError
from utils.model_card import save_card
from utils.run import write_json_atomic
from utils.state_signature import sign_folder, verify_folder

BEST_DIR = "best"
SHARDED_PREFIX = "sharded-step-"
STATE_DIR = "checkpoint"
STATE_FILE = "state.pt"
SELECTION_FILE = "selection.json"
METRICS_FILE = "metrics.jsonl"


def save_model_atomic(model, tokenizer, directory: Path, files: dict | None = None, run_dir: Path | None = None) -> None:
    """Save ``model`` (+ tokenizer, + JSON ``files`` {name: payload}) so ``directory`` is never half-written;
    with the modeling file and ``auto_map`` that let transformers load it alone (:mod:`models.standalone`),
    and its model card (:mod:`utils.model_card`; how it was made is read from ``run_dir``'s ``args.json``).

    The new copy is written beside the target and swapped in by renames; if a crash interrupts
    the swap, :func:`recover_model_dir` restores the previous copy.
    """
    directory = Path(directory)
    tmp, old = directory.with_name(directory.name + ".tmp"), directory.with_name(directory.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    write_standalone(tmp, model)  # loadable by transformers alone (trust_remote_code=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    for name, payload in (files or {}).items():
        write_json_atomic(tmp / name, payload)
    save_card(tmp, model, run_dir, (files or {}).get(SELECTION_FILE))
    shutil.rmtree(old, ignore_errors=True)
    if directory.exists():
        os.replace(directory, old)
    os.replace(tmp, directory)
    shutil.rmtree(old, ignore_errors=True)


def recover_model_dir(directory: Path) -> None:
    """Undo a swap that a crash interrupted: bring ``X.old`` back when ``X`` is missing."""
    directory = Path(directory)
    old = directory.with_name(directory.name + ".old")
    if not directory.exists() and old.exists():
        os.replace(old, directory)
    shutil.rmtree(directory.with_name(directory.name + ".tmp"), ignore_errors=True)


def _rng_state() -> dict:
    """This process's random state as tensors and plain types, so the state file loads with ``weights_only=True``."""
    name, key, position, has_gauss, cached_gaussian = np.random.get_state()
    state = {"python": random.getstate(),  # (version, a tuple of 625 ints, a float or None)
             "numpy": {"name": name, "key": torch.from_numpy(key.astype(np.int64)), "position": int(position),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    """Restore what :func:`_rng_state` returned."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy = state["numpy"]
    np.random.set_state((numpy["name"], numpy["key"].numpy().astype(np.uint32), numpy["position"],
                         numpy["has_gauss"], numpy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class RunningMean:
    """Mean per-step training loss since the last evaluation (a step sums its passes and micro-batches)."""

    def __init__(self):
        self.total, self.count = 0.0, 0

    def add(self, value: float) -> None:
        self.total += value
        self.count += 1

    def mean(self, run=None) -> float | None:
        """The mean, averaged over processes when ``run`` is distributed (every rank must call it)."""
        total, count = self.total, self.count
        if run is not None and run.distributed:
            both = torch.tensor([total, count], dtype=torch.float64, device=run.device)
            dist.all_reduce(both)
            total, count = both.tolist()
        return round(total / count, 6) if count else None

    def reset(self) -> None:
        self.total, self.count = 0.0, 0

    def state_dict(self) -> dict:
        return {"total": self.total, "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.total, self.count = state["total"], state["count"]


@dataclass
class LoopState:
    """Counters that, with the weights and optimizer, fully describe where training is."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    best_score: float = -math.inf
    best_step: int = -1
    last_eval_step: int = -1
    examples_seen: int = 0
    train_seconds: float = 0.0
    eval_seconds: float = 0.0  # evaluations and best/ saves, not counted in train_seconds
    finished: bool = False
    stop_reason: str = ""


def save_state(path: Path, module, optimizer, scheduler, scaler, state: LoopState, selector, losses, run,
                settings: dict, extra: dict) -> None:
    """Write the resumable state; a finished run keeps only its counters and selection (no weights).

    Each process's random state and running training loss are gathered, so every rank resumes its own.
    """
    per_rank = {"rng": _rng_state(), "loss": losses.state_dict()}
    if run.distributed:
        gathered = [None] * run.world_size
        dist.all_gather_object(gathered, per_rank)
    else:
        gathered = [per_rank]
    sharded = None
    if run.fsdp and not state.finished:
        # Sharded weights and optimizer state: each process writes its shards (torch.distributed.checkpoint)
        # into a folder named by the step, which the state file below then points to.
        sharded = f"{SHARDED_PREFIX}{state.step}"
        save_sharded(path / sharded, module, optimizer)
    if not run.is_main:
        return
    path.mkdir(parents=True, exist_ok=True)
    payload = {"loop": asdict(state), "selector": selector.state_dict(), "ranks": gathered,
               "settings": settings, "extra": extra, "sharded": sharded}
    if not state.finished:
        payload.update(scheduler=scheduler.state_dict(), scaler=scaler.state_dict())
        if sharded is None:
            payload.update(model=module.state_dict(), optimizer=optimizer.state_dict())
    tmp = path / (STATE_FILE + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path / STATE_FILE)
    for old in path.glob(f"{SHARDED_PREFIX}*"):
        if old.name != sharded:
            shutil.rmtree(old, ignore_errors=True)


def save_sharded(path: Path, module, optimizer) -> None:
    """Every process writes its shards of ``module`` (FSDP2) and ``optimizer`` into ``path``; rank 0 then
    signs the folder (:mod:`utils.state_signature`), as its metadata is a pickle."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optimizer_state = get_state_dict(module, optimizer)
    # dcp.save returns on every rank once the coordinator has written the metadata after all shards
    dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=str(path))
    if not dist.is_initialized() or dist.get_rank() == 0:
        sign_folder(path)


def load_sharded(path: Path, module, optimizer) -> None:
    """Load what :func:`save_sharded` wrote into the sharded ``module`` and its ``optimizer``.

    Rank 0 first checks the folder's signature under its key (every rank reads the same folder; the
    key lives where rank 0's account keeps it) and every rank stops with its message if it fails.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    refusal = None
    if not dist.is_initialized() or dist.get_rank() == 0:
        try:
            verify_folder(path)
        except RunError as error:
            refusal = str(error)
    if dist.is_initialized():
        shared = [refusal]
        dist.broadcast_object_list(shared, src=0)
        refusal = shared[0]
    if refusal is not None:
        raise RunError(refusal)
    model_state, optimizer_state = get_state_dict(module, optimizer)
    state = {"model": model_state, "optimizer": optimizer_state}
    dcp.load(state, checkpoint_id=str(path))
    set_state_dict(module, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])


def load_state(output_dir: Path) -> dict | None:
    """The resumable state saved in ``output_dir/checkpoint``, or None.

    It is read with ``weights_only=True`` (tensors and plain values only): a file that holds anything
    else (a pickled callable, or a state written by an older version of this code) is refused unread.
    """
    path = Path(output_dir) / STATE_DIR / STATE_FILE
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        named = re.search(r"(?:unsupported|Unsupported global:) GLOBAL (\S+)", str(error))
        raise RunError(f"{path} holds more than tensors and plain values{f' ({named[1]})' if named else ''}, so it was "
                       "not written by this version of the code, and loading it could run code: refusing to load "
                       "it; pass --overwrite_output_dir to start afresh, or choose another --output_dir") from None


def remove_state(output_dir: Path) -> None:
    """Delete the resumable state once a run's results are written (it holds optimizer moments)."""
    shutil.rmtree(Path(output_dir) / STATE_DIR, ignore_errors=True)


def newer_best(output_dir: Path, best_step: int) -> dict | None:
    """The record of ``best/`` when it was saved after step ``best_step`` (by a run that then died), else None."""
    path = Path(output_dir) / BEST_DIR / SELECTION_FILE
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    return record if record["step"] > best_step else None


def append_jsonl(run, path: Path, payload: dict) -> None:
    """Append one JSON line (rank 0 only)."""
    if run.is_main:
        with open(path, "a") as f:
            f.write(json.dumps(payload) + "\n")


def truncate_metrics(path: Path, step: int, run) -> None:
    """Drop evaluations logged after the resumed state's step: the resumed run repeats them."""
    if not run.is_main or not path.exists():
        return
    lines = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in lines))
