"""Run set-up shared by every entry script: processes, device, output folder, logging, run files.

A run owns ``--output_dir`` literally. Its files:

* ``args.json``  every argument, package versions, git revision, world size;
* ``log.txt``    the console log (appended to when a run resumes);
* ``metrics.jsonl``, ``results.json``, ``best/``, ``checkpoint/``: written by :mod:`utils.engine.loop`.

Only rank 0 writes. A finished run (``results.json`` present) is never overwritten without
``--overwrite_output_dir``; an interrupted one (``checkpoint/`` present) is resumed.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import torch
import torch.distributed as dist

from utils.artifacts.files import ARGS_FILE, write_json_atomic
from utils.artifacts.fingerprint import check_settings, run_settings
from utils.command.args import flag_values
from utils.engine.checkpoint import set_seed
from utils.errors import USER_ERRORS, RunError

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("torch", "transformers", "tokenizers", "numpy", "scikit-learn", "scipy", "seqeval", "safetensors")


@dataclass
class Run:
    """Where and how this process runs.

    Attributes:
        output_dir: the run's folder, taken literally.
        device: the device of this process.
        rank, world_size, local_rank: torch.distributed coordinates (0, 1, 0 when single-process).
        amp_dtype: ``torch.float16``/``torch.bfloat16`` under mixed precision, else None.
        fsdp: whether models are sharded across the processes (``--fsdp`` with several of them).
        resume: True when ``checkpoint/`` was found and training continues from it.
        seed: the run's seed (data order, initialisation, dropout).
        settings: what the run's results depend on (:func:`utils.artifacts.fingerprint.run_settings`).
    """

    output_dir: Path
    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    amp_dtype: torch.dtype | None = None
    fsdp: bool = False
    resume: bool = False
    seed: int = 0
    settings: dict | None = None
    started: float = field(default_factory=time.time)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def write_json(self, name: str, payload) -> None:
        """Write ``output_dir/name`` atomically (rank 0 only)."""
        if self.is_main:
            write_json_atomic(self.output_dir / name, payload)


def git_revision() -> str | None:
    """The code's git revision (``+dirty`` when the tree has changes), or None outside a checkout."""
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def package_versions() -> dict:
    versions = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _init_distributed(args) -> tuple[int, int, int]:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); NCCL on GPUs, gloo on CPU."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return 0, 1, 0
    local_rank = int(os.environ.get("LOCAL_RANK", args.local_rank if args.local_rank >= 0 else 0))
    use_cuda = torch.cuda.is_available() and not args.use_cpu
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return dist.get_rank(), dist.get_world_size(), local_rank


def _pick_device(args, local_rank: int) -> torch.device:
    if torch.cuda.is_available() and not args.use_cpu:
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def _amp_dtype(args, device: torch.device) -> torch.dtype | None:
    """The ``torch.autocast`` dtype of ``--use_fp16``/``--use_bf16`` on ``device``, or None (fp32).

    Weights and optimizer stay fp32 either way. ``--use_bf16`` works on CUDA and on the CPU;
    ``--use_fp16`` needs CUDA (float16 autocast with a gradient scaler) and is refused elsewhere.
    """
    if args.use_fp16:
        if device.type != "cuda":
            raise RunError(f"--use_fp16 needs CUDA (float16 autocast with a gradient scaler), but this run is on "
                           f"the {device.type.upper()}; use --use_bf16 for mixed precision on the CPU")
        return torch.float16
    if args.use_bf16:
        return torch.bfloat16
    return None


def _has_progress(output_dir: Path) -> bool:
    """Whether ``output_dir`` holds training to continue: a resumable state, a saved best model or a
    finished stage of a schedule (a run that failed before training has none)."""
    return (any(output_dir.rglob("state.pt")) or any(output_dir.rglob("selection.json"))
            or any(p.parent != output_dir for p in output_dir.rglob("results.json")))


def _prepare_output_dir(output_dir: Path, overwrite: bool, resumable: bool, training: bool, settings: dict) -> bool:
    """Check the output folder; return True when an interrupted run is to be resumed.

    Training refuses a finished run (unless ``overwrite``, which deletes it) and a run in progress
    that was started with other settings. A run that only scores (``--do_test``/``--do_infer``
    without ``--do_train``) never deletes or refuses anything: it reads the model it scores.
    """
    if output_dir.exists() and not output_dir.is_dir():
        raise RunError(f"--output_dir {output_dir} is a file, not a directory: choose another --output_dir")
    if not training:
        return False
    if overwrite and output_dir.exists():
        shutil.rmtree(output_dir)
        return False
    if (output_dir / "results.json").exists():
        raise RunError(f"{output_dir} holds a finished run (results.json); pass --overwrite_output_dir "
                       "to replace it or choose another --output_dir")
    if resumable and output_dir.is_dir() and _has_progress(output_dir) and (output_dir / ARGS_FILE).exists():
        check_settings(json.loads((output_dir / ARGS_FILE).read_text()).get("settings"), settings, output_dir)
    return resumable and (output_dir / "checkpoint").is_dir()


def setup_logging(output_dir: Path | None, is_main: bool) -> None:
    """Console logging for every rank (warnings only off rank 0), plus ``log.txt`` on rank 0."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_minidisc", False):
            root.removeHandler(handler)
            handler.close()
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S")
    handlers = [logging.StreamHandler(sys.stderr)]
    if output_dir is not None and is_main:
        handlers.append(logging.FileHandler(output_dir / "log.txt", mode="a"))
    for handler in handlers:
        handler.setFormatter(fmt)
        handler._minidisc = True
        root.addHandler(handler)
    root.setLevel(logging.INFO if is_main else logging.WARNING)
    for noisy in ("transformers", "urllib3", "filelock", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not sys.stderr.isatty():
        # transformers' per-file "Loading weights"/"Writing model shards" bars only clutter log files.
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def start_run(args, script: str, resumable: bool = True, training: bool = True) -> Run:
    """Set up processes, device, output folder, logging, seeds and ``args.json`` for one script run.

    ``args`` is the script's parsed arguments (:func:`utils.command.args.parse_args`); its ``run`` group says
    where and how to run, and every flag goes into ``args.json`` and the run's settings.

    ``training`` False (``--do_test``/``--do_infer`` alone) scores an existing model: the folder's
    training record is kept, nothing is deleted, and the command is recorded in the log only.
    """
    options, flags = args.run, flag_values(args)
    rank, world_size, local_rank = _init_distributed(options)
    device = _pick_device(options, local_rank)
    output_dir = Path(options.output_dir)
    resume, settings, amp_dtype, error = False, None, None, None
    try:
        amp_dtype = _amp_dtype(options, device)
        if rank == 0:
            settings = run_settings(flags, world_size, device.type)
            resume = _prepare_output_dir(output_dir, options.overwrite_output_dir, resumable, training, settings)
            output_dir.mkdir(parents=True, exist_ok=True)
    except USER_ERRORS as err:
        if world_size == 1:
            raise
        error = err
    if world_size > 1:
        # Every rank reports how its checks went (rank 0's include the output folder's), so an input error
        # on any rank stops every rank at once with the same line: a rank that raised alone would leave the
        # others waiting in their next collective until the process group's timeout.
        reports = [None] * world_size
        dist.all_gather_object(reports, (resume, settings, None if error is None else str(error)))
        resume, settings = reports[0][:2]
        first = next((message for _, _, message in reports if message is not None), None)
        if first is not None:
            dist.destroy_process_group()  # no rank runs another collective
            if error is not None and str(error) == first:
                raise error
            raise RunError(first)
    setup_logging(output_dir, rank == 0)
    run = Run(output_dir=output_dir, device=device, rank=rank, world_size=world_size, local_rank=local_rank,
              amp_dtype=amp_dtype, resume=resume, seed=options.seed, settings=settings,
              fsdp=options.fsdp and world_size > 1)
    if options.fsdp and world_size == 1:
        logger.warning("--fsdp with one process: nothing to shard, the model is trained as it is")
    set_seed(options.seed)
    record = {
        "script": script,
        "args": flags,
        "settings": settings,
        "world_size": world_size,
        "device": str(device),
        "amp_dtype": str(run.amp_dtype) if run.amp_dtype else None,
        "versions": package_versions(),
        "git_revision": git_revision(),
        "command": [sys.executable, *sys.argv],
    }
    if rank == 0:
        if (output_dir / ARGS_FILE).exists() and (not training or _has_progress(output_dir)):
            # The same run continues (its settings were checked), or a finished one is only scored:
            # keep the record of how it was trained.
            logger.info("%s in %s: %s", "continuing the run" if training else "scoring the run", output_dir,
                        " ".join(record["command"]))
        else:
            run.write_json(ARGS_FILE, record)
    logger.info("%s: output_dir=%s device=%s world_size=%d", script, output_dir, device, world_size)
    return run


def end_run(run: Run) -> None:
    """Leave the process group (if any) cleanly."""
    if run.distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
