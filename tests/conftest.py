"""Shared pytest fixtures: the tiny config and tokenizer, tiny task folders and teachers built once per
session and shared read-only, and per-test hygiene (seed, log handlers). The builders are in ``helpers.py``.

A shared folder must only be read. A test that writes (resumes a run, rewrites a teacher's weights)
builds its own folder under its ``tmp_path`` with the builders in ``helpers.py``.
"""

import logging
import os
from functools import partial
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, BertConfig

from tests.helpers import (
    make_tiny_config,
    save_tiny_teacher,
    save_tiny_tokenizer,
    write_conll_task,
    write_sst2_task,
)
from utils.engine.state_signature import KEY_ENV

# Tiny models gain nothing from intra-op threads, and on a busy 2-core machine OpenMP's spinning
# threads make each small matmul orders of magnitude slower.
torch.set_num_threads(1)

# A map at every 10% and at 85 and 95: room for MiniDisc's candidates and MaxiDisc's paths.
FINE_GRID = (0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 85, 95)


@pytest.fixture
def tiny_config() -> BertConfig:
    return make_tiny_config()


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    return save_tiny_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir):
    return AutoTokenizer.from_pretrained(str(tokenizer_dir))


@pytest.fixture(autouse=True, scope="session")
def _resume_key(tmp_path_factory):
    """Sign sharded states with a key of the session's own (the scripts' processes inherit it), not the user's."""
    os.environ[KEY_ENV] = str(tmp_path_factory.mktemp("resume_key") / "resume.key")


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


# ---- folders built once and shared read-only -----------------------------------------------------


def _snapshot(folder: Path) -> dict:
    files = sorted(folder.rglob("*"))
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in files}


@pytest.fixture(scope="session")
def shared_folder(tmp_path_factory):
    """``shared_folder(builder, **kwargs)``: a folder filled by ``builder(folder, **kwargs)``, built once per
    session for each distinct call and shared by every test that asks for it. Tests must only read it: the
    session fails at its end if any shared folder changed."""
    built: dict = {}

    def get(builder, **kwargs) -> Path:
        key = (builder.__module__, builder.__qualname__, tuple(sorted(kwargs.items())))
        if key not in built:
            folder = tmp_path_factory.mktemp(builder.__name__)
            builder(folder, **kwargs)
            built[key] = folder, _snapshot(folder)
        return built[key][0]

    yield get
    changed = [str(folder) for folder, before in built.values() if _snapshot(folder) != before]
    assert not changed, f"tests wrote into folders shared read-only: {changed}"


@pytest.fixture(scope="session")
def make_sst2_task(shared_folder):
    """``make_sst2_task(n_train=..., ...)``: a shared tiny SST-2 task folder (see ``write_sst2_task``)."""
    return partial(shared_folder, write_sst2_task)


@pytest.fixture(scope="session")
def make_teacher(shared_folder):
    """``make_teacher(levels=..., ...)``: a shared tiny saved teacher (see ``save_tiny_teacher``)."""
    return partial(shared_folder, save_tiny_teacher)


@pytest.fixture(scope="session")
def make_conll_task(shared_folder):
    """``make_conll_task(n_train=..., ...)``: a shared tiny CoNLL task folder (see ``write_conll_task``)."""
    return partial(shared_folder, write_conll_task)


@pytest.fixture(scope="session")
def sst2_task(make_sst2_task) -> Path:
    """Tiny SST-2 (40 train, 16 dev, 8 test): pass as ``--data_dir``."""
    return make_sst2_task()


@pytest.fixture(scope="session")
def short_sst2_task(make_sst2_task) -> Path:
    """Tiny SST-2 with 24 train and 12 dev examples: 3 batches of 8 an epoch."""
    return make_sst2_task(n_train=24, n_dev=12)


@pytest.fixture(scope="session")
def conll_task(make_conll_task) -> Path:
    """Tiny CoNLL-2003 (8 train, 4 dev, 4 test sentences): pass as ``--data_dir``."""
    return make_conll_task(n_train=8, n_dev=4)


@pytest.fixture(scope="session")
def plain_teacher(make_teacher) -> Path:
    """A tiny ``sparsebert_cls`` teacher (2 labels) with its tokenizer and no sparsity map."""
    return make_teacher()


@pytest.fixture(scope="session")
def ner_teacher(make_teacher) -> Path:
    """A tiny ``sparsebert_ner`` teacher (9 CoNLL tags) with its tokenizer and no sparsity map."""
    return make_teacher(model_type="sparsebert_ner", num_labels=9)


@pytest.fixture(scope="session")
def sparse_teacher(make_teacher) -> Path:
    """A tiny sparsified teacher (2 labels): a map at 0, 50 and 90 (not 80)."""
    return make_teacher(levels=(0, 50, 90))


@pytest.fixture(scope="session")
def fine_grid_teacher(make_teacher) -> Path:
    """A tiny sparsified teacher (2 labels) with a map at every level of ``FINE_GRID``."""
    return make_teacher(levels=FINE_GRID)
