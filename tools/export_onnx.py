"""Export a saved model to ONNX, check ONNX Runtime against PyTorch, and time both.

``python -m tools.export_onnx DIR`` writes ``DIR/onnx/model.onnx`` (inputs ``input_ids``,
``attention_mask`` and, for BERT, ``token_type_ids``; output ``logits``; batch and sequence axes
dynamic), then:

* **agreement** (:func:`agreement`): on real inputs (the task's first dev batches with
  ``--data_dir``/``--task_name``, otherwise random ones with padding) the largest absolute difference
  between ONNX Runtime's and PyTorch's logits at the real tokens, relative to the largest |logit|, must
  be at most ``--rtol`` (default 1e-3; fp32 both sides), and every prediction (argmax) must be the same.
  Two correct fp32 runtimes differ by round-off that grows with depth and with the logits' size (a
  30-layer decoder: 4.9e-4 in absolute terms), so a fixed absolute tolerance fails correct exports; a
  wrong export differs by a sizeable fraction of the logits. A disagreement is an error (exit 1), so
  a wrong export is never timed;
* **latency**: milliseconds per batch of PyTorch (eval, inference mode), of PyTorch with the padding
  kept (:class:`PaddedPyTorch`) and of ONNX Runtime (CPU provider) over a grid of batch sizes × sequence
  lengths of random tokens (every second row 1/3 padding), interleaved, median of ``--repeats`` after
  ``--warmup`` untimed passes. All get the same intra-op thread count (``--threads``, default torch's)
  and the same spin policy (:func:`spin_policy`), both recorded.

The numbers go to ``DIR/onnx/report.json`` and into the folder's model card (``README.md``). The
exported graph keeps padding and masks it (the eager BERT instead runs everything but attention on the
real tokens only), so one graph serves every input. On padded batches the eager model therefore does
less work than the graph: compare ONNX Runtime with the padded PyTorch time (the same work), not with
the eager one. Needs the ``onnx``, ``onnxscript`` and ``onnxruntime`` packages (in ``requirements.txt``).

Example::

    python -m tools.export_onnx outputs/main_job_quick/polarity/minidisc_90S/iter_2/best \\
        --data_dir datasets --task_name polarity --threads 2
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import logging
import sys
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from tools.latency import (
    describe_setup,
    dev_batches,
    hardware,
    measure_latency,
    random_batches,
    spin_policy,
    timing_setup,
)
from utils.errors import USER_ERRORS, UserError

logger = logging.getLogger(__name__)

ONNX_DIR = "onnx"
ONNX_FILE = "model.onnx"
REPORT_FILE = "report.json"
RUNTIMES = {  # what each timed runtime runs (report.json, the model card, the summary's note)
    "pytorch": "the eager model, which skips padding where it can (BERT runs everything but attention on the "
               "real tokens only; no family masks a batch without padding)",
    "pytorch_padded": "the eager model with the padding kept and masked, the work the exported graph does "
                      "(compare ONNX Runtime with this)",
    "onnxruntime": "the exported graph (padding kept and masked) in ONNX Runtime's CPU provider",
}


class ExportError(UserError):
    """A folder that cannot be exported, a missing package, or ONNX Runtime disagreeing with PyTorch."""


def input_names(model) -> list[str]:
    """The inputs the exported graph takes: BERT's also reads segment ids."""
    return ["input_ids", "attention_mask", *(["token_type_ids"] if model.reads_token_types else [])]


class _Logits(torch.nn.Module):
    """``model``'s logits as a function of positional inputs (what the exporter traces)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).logits


def export(model, path: Path, example: Mapping[str, torch.Tensor]) -> Path:
    """Export ``model`` (eval) to ``path`` with dynamic batch and sequence axes; return ``path``."""
    if importlib.util.find_spec("onnxscript") is None:
        raise ExportError("onnxscript is not installed (torch's ONNX exporter needs it): pip install -r requirements.txt")
    names = input_names(model)
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with quiet_exporter():
        torch.onnx.export(_Logits(model.eval()), tuple(example[n] for n in names), str(tmp), dynamo=True,
                          input_names=names, output_names=["logits"],
                          dynamic_shapes={n: {0: batch, 1: sequence} for n in names}, external_data=False,
                          verbose=False)
    tmp.replace(path)
    return path


@contextlib.contextmanager
def quiet_exporter():
    """Silence the exporter's chatter (a log line per deduplicated initializer, missing torchvision ops,
    deprecation notes); its errors still surface."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnx_ir", "onnxscript", "torch.export",
                                                   "torch._dynamo", "torch.fx.experimental.symbolic_shapes")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


class OnnxModel:
    """An ONNX Runtime session called like the model: ``session(**batch)`` returns the logits (a tensor).

    ``threads`` intra-op threads (ONNX Runtime's default is every core, torch's may be fewer: pass torch's
    for a fair comparison) and the spin policy of :func:`spin_policy`.
    """

    def __init__(self, path: Path, names: Sequence[str], threads: int | None = None):
        try:
            import onnxruntime
        except ImportError:
            raise ExportError("onnxruntime is not installed: pip install -r requirements.txt") from None
        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.add_session_config_entry("session.intra_op.allow_spinning",
                                         "1" if spin_policy()["allow_spinning"] else "0")
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.names = list(names)

    def eval(self):
        return self

    def __call__(self, **batch) -> torch.Tensor:
        feeds = {name: batch[name].numpy() for name in self.names}
        return torch.from_numpy(self.session.run(["logits"], feeds)[0])


class PaddedPyTorch:
    """``model`` called on the exported graph's path (:func:`models.packing.keep_padding`): every token,
    padding included, computed and the padding masked in attention, as ONNX Runtime runs the exported
    graph. The eager default skips padded tokens outside attention, so on padded batches it does less work
    than the graph; timing this instead compares the two runtimes on equal work."""

    def __init__(self, model):
        self.model = model

    def eval(self):
        self.model.eval()
        return self

    def __call__(self, **batch):
        from models.packing import keep_padding

        with keep_padding():
            return self.model(**batch)


@dataclass
class Agreement:
    """How closely ONNX Runtime's logits follow PyTorch's on some batches (at the real tokens)."""

    max_abs_difference: float  # largest |ONNX - PyTorch| of a logit
    logit_scale: float  # largest |PyTorch logit|
    predictions: int  # rows (sequence tasks) or real tokens (token tasks) compared
    same_predictions: int  # of them, those whose argmax is the same in both
    rtol: float  # the largest max_abs_difference / logit_scale accepted

    @property
    def relative_difference(self) -> float:
        return self.max_abs_difference / self.logit_scale if self.logit_scale > 0 else self.max_abs_difference

    @property
    def ok(self) -> bool:
        return self.relative_difference <= self.rtol and self.same_predictions == self.predictions

    def meaning(self) -> str:
        """One sentence: the numbers and what they say about the export."""
        numbers = (f"largest |logits difference| {self.max_abs_difference:.1e}, {self.relative_difference:.1e} of "
                   f"the largest |logit| {self.logit_scale:.3g} (tolerance {self.rtol:.0e}); "
                   f"{self.same_predictions}/{self.predictions} predictions the same")
        if self.ok:
            return f"{numbers}: fp32 round-off between two correct runtimes, the export is faithful"
        return f"{numbers}: more than round-off, the exported graph computes something else than the model"

    def as_dict(self) -> dict:
        """The fields, the relative difference, the verdict and its meaning (JSON-able)."""
        return {**asdict(self), "relative_difference": self.relative_difference, "ok": self.ok,
                "meaning": self.meaning()}


def agreement(model, session: OnnxModel, batches: Sequence[Mapping[str, torch.Tensor]],
              rtol: float = 1e-3) -> Agreement:
    """Compare ``session``'s logits with ``model``'s over ``batches`` (token logits at real tokens only)."""
    worst, scale, total, same = 0.0, 0.0, 0, 0
    with torch.inference_mode():
        for batch in batches:
            ours, theirs = model(**batch).logits.float(), session(**batch).float()
            if ours.dim() == 3:  # token logits: padding positions are not outputs of either
                real = batch["attention_mask"].bool()
                ours, theirs = ours[real], theirs[real]
            worst = max(worst, (ours - theirs).abs().max().item())
            scale = max(scale, ours.abs().max().item())
            total += ours.shape[0]
            same += int((ours.argmax(-1) == theirs.argmax(-1)).sum())
    return Agreement(worst, scale, total, same, rtol)


def max_difference(model, session: OnnxModel, batches: Sequence[Mapping[str, torch.Tensor]]) -> float:
    """The largest |ONNX - PyTorch| of the logits at real tokens over ``batches``."""
    return agreement(model, session, batches).max_abs_difference


def export_and_check(folder: Path, args) -> dict:
    """Export ``folder``'s model, check it against PyTorch and time both; the report (also written to disk)."""
    from utils.artifacts.model_card import FACTS_FILE, update_card
    from utils.artifacts.model_io import load_model, load_tokenizer

    model_type = model_type_of(folder)
    model = load_model(model_type, str(folder)).eval()
    names = input_names(model)
    if args.data_dir:
        tokenizer = load_tokenizer(str(folder))
        check = dev_batches(args.task_name, args.data_dir, tokenizer, args.max_length, 8, 4)
        source = f"the first {sum(len(b['input_ids']) for b in check)} {args.task_name} dev examples"
    else:
        check = random_batches(model.config.vocab_size, 4, 24, count=3)
        source = "3 random padded batches of 4 × 24 tokens"
    path = export(model, folder / ONNX_DIR / ONNX_FILE, check[0])
    setup = timing_setup(torch.get_num_threads())
    session = OnnxModel(path, names, setup["threads"]["onnxruntime"])
    agreed = agreement(model, session, check, args.rtol)
    logger.info("ONNX Runtime vs PyTorch on %s: %s", source, agreed.meaning())
    if not agreed.ok:
        raise ExportError(f"{path}: ONNX Runtime disagrees with PyTorch on {source}: {agreed.meaning()}")
    difference = agreed.max_abs_difference
    grid = {}
    for batch_size in args.batch_sizes:
        for length in args.lengths:
            batches = random_batches(model.config.vocab_size, batch_size, length)
            times = measure_latency({"pytorch": model, "pytorch_padded": PaddedPyTorch(model), "onnxruntime": session},
                                    batches, args.warmup, args.repeats)
            grid[f"{batch_size}x{length}"] = times
            logger.info("batch %d × %d tokens: PyTorch %.2f ms (padding kept %.2f ms), ONNX Runtime %.2f ms",
                        batch_size, length, times["pytorch"], times["pytorch_padded"], times["onnxruntime"])
    report = {"onnx": str(path), "inputs": names, "check": {"inputs": source, **agreed.as_dict()},
              "latency": {"hardware": hardware(), "unit": "ms per batch, median", "warmup": args.warmup,
                          "runtimes": RUNTIMES,
                          "repeats": args.repeats, **setup, "grid": grid}}
    (folder / ONNX_DIR / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    if (folder / FACTS_FILE).is_file():
        rows = {f"{runtime}, batch {key.replace('x', ' × ')} tokens": ms
                for key, times in grid.items() for runtime, ms in times.items()}
        update_card(folder, latency={"hardware": report["latency"]["hardware"],
                                     "setting": f"random tokens (every second row 1/3 padding), median of "
                                                f"{args.repeats} passes after {args.warmup} warm-up ones, "
                                                f"{describe_setup(setup)}; ONNX "
                                                f"checked on {source} (max |difference| {difference:.1e}, "
                                                f"{agreed.relative_difference:.1e} of the largest |logit|); "
                                                f"{RUNTIMES['pytorch_padded']}",
                                     "ms_per_batch": rows})
    return report


def model_type_of(folder: Path) -> str:
    """The registry name of the model saved in ``folder``, from its config's ``auto_map``."""
    from models import MODEL_REGISTRY

    config = folder / "config.json"
    if not config.is_file():
        raise ExportError(f"{folder} has no config.json: expected a saved model folder (best/, model/, export/…)")
    classes = list(json.loads(config.read_text()).get("auto_map", {}).values())
    by_class = {cls.__name__: name for name, cls in MODEL_REGISTRY.items()}
    for reference in classes:
        if reference.rsplit(".", 1)[-1] in by_class:
            return by_class[reference.rsplit(".", 1)[-1]]
    raise ExportError(f"{config} names no model of this project in auto_map: was it saved by these scripts?")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tools.export_onnx", description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="a saved model folder (best/, model/, export/{s}S/)")
    parser.add_argument("--data_dir", default=None, help="with --task_name: check on the task's dev examples")
    parser.add_argument("--task_name", default=None)
    parser.add_argument("--max_length", type=int, default=128, help="of the dev examples checked")
    parser.add_argument("--batch_sizes", default="1,8,32", help="timed batch sizes")
    parser.add_argument("--lengths", default="16,64,128", help="timed sequence lengths")
    parser.add_argument("--threads", type=int, default=None, help="threads of both runtimes (default: torch's)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--rtol", type=float, default=1e-3,
                        help="largest |logits difference| accepted, as a fraction of the largest |logit|")
    args = parser.parse_args(argv)
    if bool(args.data_dir) != bool(args.task_name):
        parser.error("--data_dir and --task_name go together")
    try:
        args.batch_sizes = [int(x) for x in args.batch_sizes.split(",")]
        args.lengths = [int(x) for x in args.lengths.split(",")]
    except ValueError:
        parser.error("--batch_sizes and --lengths take comma-separated integers, e.g. 1,8,32")
    if min(args.batch_sizes) < 1 or min(args.lengths) < 2 or args.repeats < 1:
        parser.error("--batch_sizes and --repeats must be positive, --lengths at least 2")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)  # ONNX Runtime gets torch's thread count either way
    try:
        report = export_and_check(args.folder, args)
    except (*USER_ERRORS, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"{report['onnx']}: on {report['check']['inputs']}, {report['check']['meaning']}")
    print(f"timed with {describe_setup(report['latency'])}")
    print("| batch × tokens | PyTorch ms | PyTorch padded ms | ONNX Runtime ms | ONNX Runtime vs padded PyTorch |\n"
          "|---|---:|---:|---:|---:|")
    for key, times in report["latency"]["grid"].items():
        print(f"| {key.replace('x', ' × ')} | {times['pytorch']:.2f} | {times['pytorch_padded']:.2f} | "
              f"{times['onnxruntime']:.2f} | {times['onnxruntime'] / times['pytorch_padded']:.2f}× |")
    print(f"pytorch_padded: {RUNTIMES['pytorch_padded']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
