"""Export a saved model to ONNX, check ONNX Runtime against PyTorch, and time both.

``python -m tools.export_onnx DIR`` writes ``DIR/onnx/model.onnx`` (inputs ``input_ids``,
``attention_mask`` and, for BERT, ``token_type_ids``; output ``logits``; batch and sequence axes
dynamic), then:

* **agreement**: on real inputs (the task's first dev batches with ``--data_dir``/``--task_name``,
  otherwise random ones with padding) the largest absolute difference between ONNX Runtime's and
  PyTorch's logits at the real tokens must be at most ``--atol`` (default 1e-4; fp32 both sides);
  a larger one is an error (exit 1), so a wrong export is never timed;
* **latency**: milliseconds per batch of PyTorch (eval, inference mode) and of ONNX Runtime (CPU
  provider, ``--threads`` intra-op threads) over a grid of batch sizes × sequence lengths of random
  tokens, interleaved, median of ``--repeats`` after ``--warmup`` untimed passes.

The numbers go to ``DIR/onnx/report.json`` and into the folder's model card (``README.md``). The
exported graph keeps padding and masks it (the eager model instead drops padded tokens), so one graph
serves every input. Needs the ``onnx``, ``onnxscript`` and ``onnxruntime`` packages
(in ``requirements.txt``).

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
import platform
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from utils.errors import USER_ERRORS, UserError

logger = logging.getLogger(__name__)

ONNX_DIR = "onnx"
ONNX_FILE = "model.onnx"
REPORT_FILE = "report.json"


class ExportError(UserError):
    """A folder that cannot be exported, a missing package, or ONNX Runtime disagreeing with PyTorch."""


def input_names(model) -> list[str]:
    """The inputs the exported graph takes: BERT's also reads segment ids."""
    return ["input_ids", "attention_mask", *(["token_type_ids"] if model.config.model_type == "bert" else [])]


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
    """An ONNX Runtime session called like the model: ``session(**batch)`` returns the logits (a tensor)."""

    def __init__(self, path: Path, names: Sequence[str], threads: int | None = None):
        try:
            import onnxruntime
        except ImportError:
            raise ExportError("onnxruntime is not installed: pip install -r requirements.txt") from None
        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.names = list(names)

    def eval(self):
        return self

    def __call__(self, **batch) -> torch.Tensor:
        feeds = {name: batch[name].numpy() for name in self.names}
        return torch.from_numpy(self.session.run(["logits"], feeds)[0])


def max_difference(model, session: OnnxModel, batches: Sequence[Mapping[str, torch.Tensor]]) -> float:
    """The largest |ONNX - PyTorch| of the logits at real tokens over ``batches``."""
    worst = 0.0
    with torch.inference_mode():
        for batch in batches:
            ours, theirs = model(**batch).logits, session(**batch)
            if ours.dim() == 3:  # token logits: padding positions are not outputs of either
                real = batch["attention_mask"].bool()
                ours, theirs = ours[real], theirs[real]
            worst = max(worst, (ours - theirs).abs().max().item())
    return worst


def random_batches(vocab_size: int, batch_size: int, length: int, count: int = 1, seed: int = 0) -> list[dict]:
    """``count`` batches of random tokens; every second row is padded from 2/3 of ``length`` on."""
    generator, batches = torch.Generator().manual_seed(seed), []
    for _ in range(count):
        input_ids = torch.randint(5, vocab_size, (batch_size, length), generator=generator)
        attention_mask = torch.ones_like(input_ids)
        attention_mask[1::2, max(1, 2 * length // 3):] = 0
        batches.append({"input_ids": input_ids * attention_mask, "attention_mask": attention_mask,
                        "token_type_ids": torch.zeros_like(input_ids)})
    return batches


def hardware() -> str:
    """The CPU's model name and the threads torch uses."""
    name = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    return f"{name}, {torch.get_num_threads()} threads"


def export_and_check(folder: Path, args) -> dict:
    """Export ``folder``'s model, check it against PyTorch and time both; the report (also written to disk)."""
    from utils.model_card import FACTS_FILE, update_card
    from utils.model_io import load_model, load_tokenizer

    model_type = model_type_of(folder)
    model = load_model(model_type, str(folder)).eval()
    names = input_names(model)
    from tools.report import dev_batches, measure_latency

    if args.data_dir:
        tokenizer = load_tokenizer(str(folder))
        check = dev_batches(args.task_name, args.data_dir, tokenizer, args.max_length, 8, 4)
        source = f"the first {sum(len(b['input_ids']) for b in check)} {args.task_name} dev examples"
    else:
        check = random_batches(model.config.vocab_size, 4, 24, count=3)
        source = "3 random padded batches of 4 × 24 tokens"
    path = export(model, folder / ONNX_DIR / ONNX_FILE, check[0])
    session = OnnxModel(path, names, args.threads)
    difference = max_difference(model, session, check)
    logger.info("ONNX Runtime vs PyTorch on %s: max |logits difference| %.2e (tolerance %.0e)", source, difference,
                args.atol)
    if difference > args.atol:
        raise ExportError(f"{path}: ONNX Runtime's logits differ from PyTorch's by {difference:.2e} on {source} "
                          f"(tolerance {args.atol:.0e})")
    grid = {}
    for batch_size in args.batch_sizes:
        for length in args.lengths:
            batches = random_batches(model.config.vocab_size, batch_size, length)
            grid[f"{batch_size}x{length}"] = measure_latency({"pytorch": model, "onnxruntime": session}, batches,
                                                             args.warmup, args.repeats)
            logger.info("batch %d × %d tokens: PyTorch %.2f ms, ONNX Runtime %.2f ms", batch_size, length,
                        grid[f"{batch_size}x{length}"]["pytorch"], grid[f"{batch_size}x{length}"]["onnxruntime"])
    report = {"onnx": str(path), "inputs": names, "check": {"inputs": source, "max_abs_difference": difference,
                                                            "tolerance": args.atol},
              "latency": {"hardware": hardware(), "unit": "ms per batch, median", "warmup": args.warmup,
                          "repeats": args.repeats, "grid": grid}}
    (folder / ONNX_DIR / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    if (folder / FACTS_FILE).is_file():
        rows = {f"{runtime}, batch {key.replace('x', ' × ')} tokens": ms
                for key, times in grid.items() for runtime, ms in times.items()}
        update_card(folder, latency={"hardware": report["latency"]["hardware"],
                                     "setting": f"random tokens, median of {args.repeats} passes after "
                                                f"{args.warmup} warm-up ones; ONNX checked on {source} "
                                                f"(max |difference| {difference:.1e})",
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
    parser.add_argument("--atol", type=float, default=1e-4, help="largest |logits difference| accepted")
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
        torch.set_num_threads(args.threads)
    try:
        report = export_and_check(args.folder, args)
    except (*USER_ERRORS, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"{report['onnx']}: max |logits difference| {report['check']['max_abs_difference']:.1e} on "
          f"{report['check']['inputs']}")
    print("| batch × tokens | PyTorch ms | ONNX Runtime ms | speedup |\n|---|---:|---:|---:|")
    for key, times in report["latency"]["grid"].items():
        print(f"| {key.replace('x', ' × ')} | {times['pytorch']:.2f} | {times['onnxruntime']:.2f} | "
              f"{times['pytorch'] / times['onnxruntime']:.2f}× |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
