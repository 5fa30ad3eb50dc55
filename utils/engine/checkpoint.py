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
import logging
import os
import pickle
import random
import re
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from models.standalone import write_standalone
from utils.artifacts.files import write_json_atomic
from utils.artifacts.fingerprint import check_settings
from utils.artifacts.model_card import save_card
from utils.engine.loop_state import LoopState, RunningMean
from utils.engine.state_signature import sign_folder, verify_folder
from utils.errors import RunError

BEST_DIR = "best"
SHARDED_PREFIX = "sharded-step-"
STATE_DIR = "checkpoint"
STATE_FILE = "state.pt"
SELECTION_FILE = "selection.json"
METRICS_FILE = "metrics.jsonl"

logger = logging.getLogger(__name__)


def save_model_atomic(model, tokenizer, directory: Path, files: dict | None = None, run_dir: Path | None = None) -> None:
    """Save ``model`` (+ tokenizer, + JSON ``files`` {name: payload}) so ``directory`` is never half-written;
    with the modeling file and ``auto_map`` that let transformers load it alone (:mod:`models.standalone`),
    and its model card (:mod:`utils.artifacts.model_card`; how it was made is read from ``run_dir``'s ``args.json``).

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


def set_seed(seed: int) -> None:
    """Seed every random generator a run draws from (Python, NumPy, torch on the CPU and every GPU)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


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


def save_state(path: Path, placed, optimization, state: LoopState, selector, losses: RunningMean, run,
               settings: dict, extra: dict) -> None:
    """Write the resumable state of the :class:`~utils.engine.sharding.Placed` model and its
    :class:`~utils.engine.step.Optimization`; a finished run keeps only its counters and selection (no weights).

    Each process's random state and running training loss are gathered, so every rank resumes its own.
    """
    per_rank = {"rng": _rng_state(), "loss": losses.state_dict()}
    if run.distributed:
        gathered = [None] * run.world_size
        dist.all_gather_object(gathered, per_rank)
    else:
        gathered = [per_rank]
    sharded = None
    if placed.sharded and not state.finished:
        # Sharded weights and optimizer state: each process writes its shards (torch.distributed.checkpoint)
        # into a folder named by the step, which the state file below then points to.
        sharded = f"{SHARDED_PREFIX}{state.step}"
        save_sharded(path / sharded, placed.module, optimization.optimizer)
    if not run.is_main:
        return
    path.mkdir(parents=True, exist_ok=True)
    payload = {"loop": asdict(state), "selector": selector.state_dict(), "ranks": gathered,
               "settings": settings, "extra": extra, "sharded": sharded}
    if not state.finished:
        payload.update(scheduler=optimization.scheduler.state_dict(), scaler=optimization.scaler.state_dict())
        if sharded is None:
            payload.update(model=placed.module.state_dict(), optimizer=optimization.optimizer.state_dict())
    tmp = path / (STATE_FILE + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path / STATE_FILE)
    for old in path.glob(f"{SHARDED_PREFIX}*"):
        if old.name != sharded:
            shutil.rmtree(old, ignore_errors=True)


def save_sharded(path: Path, module, optimizer) -> None:
    """Every process writes its shards of ``module`` (FSDP2) and ``optimizer`` into ``path``; rank 0 then
    signs the folder (:mod:`utils.engine.state_signature`), as its metadata is a pickle."""
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


def resume(output_dir: Path, enabled: bool, run, settings: dict, placed, optimization, selector,
           objective) -> tuple[LoopState, RunningMean, dict | None]:
    """Where a stage starts: ``(counters, running loss, best record)``, from ``output_dir/checkpoint`` when
    ``enabled`` and a state was saved there (its weights, optimizer, schedule, scaler, selector, objective and
    every process's random state restored into the given objects), else from the beginning.

    A fresh stage reseeds, so it trains the same whatever ran before it in the process (how many models were
    built, earlier stages): MaxiDisc's stage reuse relies on it. Evaluations logged after the state continued
    from (or by a run that died before its first save) are dropped from ``metrics.jsonl``, as this run repeats
    them. A ``best/`` saved after the state (by a run that then died) is taken as the best.

    Raises:
        RunError: the state was written by an older version of this code, or with(out) ``--fsdp`` unlike now.
        SettingsMismatch: the state was saved under other ``settings``.
    """
    saved = load_state(output_dir) if enabled else None
    if saved is None:
        set_seed(run.seed)
    elif "settings" not in saved:
        raise RunError(f"{output_dir / STATE_DIR} was written by an older version of this code and cannot be "
                       "resumed: pass --overwrite_output_dir to start afresh, or choose another --output_dir")
    else:
        check_settings(saved["settings"], settings, output_dir / STATE_DIR, "resumable state")
    truncate_metrics(output_dir / METRICS_FILE, saved["loop"]["step"] if saved else -1, run)
    state, losses, best_record = LoopState(), RunningMean(), None
    if saved is not None:
        state = LoopState(**saved["loop"])
        if not state.finished:
            _restore_training(saved, output_dir, placed, optimization)
        selector.load_state_dict(saved["selector"])
        mine = saved["ranks"][run.rank] if run.rank < len(saved["ranks"]) else saved["ranks"][0]
        restore_rng_state(mine["rng"])
        losses.load_state_dict(mine["loss"])
        best_record = saved["extra"].get("best_record")
        objective.load_state_dict(saved["extra"].get("objective", {}))
        logger.info("resumed from step %d (epoch %d, batch %d); best %.4f at step %d", state.step, state.epoch,
                    state.batch_in_epoch, state.best_score, state.best_step)
    newer = newer_best(output_dir, state.best_step)
    if newer is not None:
        state.best_score, state.best_step, best_record = newer["score"], newer["step"], newer
        selector.accept(newer)
        logger.info("best/ was saved at step %d after the last checkpoint: keeping it as the best", newer["step"])
    return state, losses, best_record


def _restore_training(saved: dict, output_dir: Path, placed, optimization) -> None:
    """Load an unfinished state's weights, optimizer, schedule and scaler."""
    if bool(saved.get("sharded")) != placed.sharded:
        raise RunError(f"{output_dir / STATE_DIR} was saved {'with' if saved.get('sharded') else 'without'} "
                       f"--fsdp: resume it the same way, or pass --overwrite_output_dir to start afresh")
    if placed.sharded:
        load_sharded(output_dir / STATE_DIR / saved["sharded"], placed.module, optimization.optimizer)
    else:
        placed.module.load_state_dict(saved["model"])
        optimization.optimizer.load_state_dict(saved["optimizer"])
    optimization.scheduler.load_state_dict(saved["scheduler"])
    optimization.scaler.load_state_dict(saved["scaler"])


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
