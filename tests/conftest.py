"""Shared test fixtures: a tiny odd-sized BERT config, a tokenizer from a local vocab, data paths.

Everything here is offline. Real GLUE/CoNLL files live in ``../shared/data`` beside the repository
(override with ``MINIDISC_SHARED_DATA``); tests that need them skip when the folder is absent.
"""

import json
import logging
import os
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, BertConfig

# Tiny models gain nothing from intra-op threads, and on a busy 2-core machine OpenMP's spinning
# threads make each small matmul orders of magnitude slower.
torch.set_num_threads(1)

FIXTURES = Path(__file__).parent / "fixtures"
REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MINIDISC_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))

requires_shared_data = pytest.mark.skipif(
    not SHARED_DATA.is_dir(), reason=f"real data folder {SHARED_DATA} is absent"
)


def make_tiny_config(**overrides) -> BertConfig:
    """4 layers, 4 heads of size 8, intermediate 37: odd sizes expose shape bugs."""
    kwargs = dict(
        vocab_size=sum(1 for _ in open(FIXTURES / "vocab.txt")),
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=64,
        type_vocab_size=2,
        hidden_act="gelu",
    )
    kwargs.update(overrides)
    return BertConfig(**kwargs)


def save_tiny_tokenizer(directory: Path) -> Path:
    """Write the local vocab as a loadable tokenizer directory (works on transformers 4.57+ and 5.x)."""
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(FIXTURES / "vocab.txt", directory / "vocab.txt")
    (directory / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": 64})
    )
    return directory


@pytest.fixture
def tiny_config() -> BertConfig:
    return make_tiny_config()


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    return save_tiny_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir):
    return AutoTokenizer.from_pretrained(str(tokenizer_dir))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _drop_run_log_handlers():
    """Remove the log handlers a script's ``start_run`` installed: they hold this test's captured
    stderr, which is closed once the test ends, and later log lines would hit it."""
    yield
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_minidisc", False)]:
        root.removeHandler(handler)
        handler.close()


def save_tiny_model(
    directory: Path, model_type: str = "sparsebert_cls", seed: int = 0, **config_overrides
) -> Path:
    """Save a random tiny ``model_type`` model (unsparsified) plus the local tokenizer into ``directory``."""
    from models import get_model_class

    torch.manual_seed(seed)
    model = get_model_class(model_type)(make_tiny_config(**config_overrides))
    model.save_pretrained(directory)
    save_tiny_tokenizer(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_teacher_dir(tmp_path_factory) -> Path:
    """A saved tiny ``sparsebert_cls`` teacher (2 labels) with its tokenizer: pass as ``--teacher_model_path``."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny_teacher"), "sparsebert_cls", num_labels=2)


@pytest.fixture(scope="session")
def tiny_ner_teacher_dir(tmp_path_factory) -> Path:
    """A saved tiny ``sparsebert_ner`` teacher (9 CoNLL tags) with its tokenizer."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny_ner_teacher"), "sparsebert_ner", num_labels=9)
