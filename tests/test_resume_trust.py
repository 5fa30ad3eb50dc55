"""Resuming trusts nothing in the run folder that could run code: the state file holds only tensors and
plain values, and a sharded state loads only when its signature verifies under a key kept outside it."""

import os
import pickle
import random
import shlex

import numpy as np
import pytest
import torch

import run_finetuning
from tests.helpers import finetune_args
from utils.command.cli import cli
from utils.engine.checkpoint import (
    STATE_DIR,
    STATE_FILE,
    _rng_state,
    load_sharded,
    restore_rng_state,
    save_sharded,
)
from utils.engine.state_signature import KEY_ENV, SIGNATURE_FILE
from utils.errors import RunError

# torch.distributed.checkpoint used by one process without a process group, as here, says so
pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")


class Payload:
    """Unpickling this creates ``marker``: what a crafted checkpoint would run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(self.marker)}",)


@pytest.fixture(autouse=True)
def _own_key(tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, str(tmp_path / "key" / "resume.key"))


def test_a_pickled_payload_as_the_state_file_is_refused_in_one_line_and_never_runs(sparse_teacher, sst2_task,
                                                                                  tmp_path, capsys):
    marker = tmp_path / "payload-ran"
    out = tmp_path / "run"
    (out / STATE_DIR).mkdir(parents=True)
    torch.save({"loop": Payload(marker)}, out / STATE_DIR / STATE_FILE)
    assert cli(run_finetuning.main, finetune_args(sparse_teacher, sst2_task, out, "--max_steps", "2")) == 2
    assert not marker.exists()
    lines = capsys.readouterr().err.strip().splitlines()
    err = lines[-1]
    assert err.startswith("error: ") and not any("Traceback" in line for line in lines)
    assert str(out / STATE_DIR / STATE_FILE) in err and "posix.system" in err and "--overwrite_output_dir" in err


def test_the_random_state_round_trips_through_a_weights_only_load(tmp_path):
    random.seed(3), np.random.seed(3), torch.manual_seed(3)
    np.random.normal()  # numpy then holds a cached gaussian
    torch.save(_rng_state(), tmp_path / "rng.pt")
    expected = (random.random(), np.random.normal(), np.random.rand(3).tolist(), torch.rand(3).tolist())
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (random.random(), np.random.normal(), np.random.rand(3).tolist(), torch.rand(3).tolist()) == expected


def _sharded_state(path):
    """A plain module and AdamW after one step, saved as torch.distributed.checkpoint shards (one process)."""
    module = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(module.parameters())
    module(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    save_sharded(path, module, optimizer)
    return module


def _fresh():
    module = torch.nn.Linear(3, 2)
    return module, torch.optim.AdamW(module.parameters())


def test_a_signed_sharded_state_loads(tmp_path):
    saved = _sharded_state(tmp_path / "sharded")
    assert (tmp_path / "sharded" / SIGNATURE_FILE).is_file()
    module, optimizer = _fresh()
    load_sharded(tmp_path / "sharded", module, optimizer)
    assert torch.equal(module.weight, saved.weight)
    assert optimizer.state[module.weight]["exp_avg"].abs().sum() > 0


def test_a_pickled_payload_in_the_sharded_metadata_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "payload-ran"
    _sharded_state(tmp_path / "sharded")
    (tmp_path / "sharded" / ".metadata").write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(RunError, match="is not signed by the resume key"):
        load_sharded(tmp_path / "sharded", *_fresh())
    assert not marker.exists()


def test_a_sharded_state_with_a_forged_signature_or_without_the_key_is_refused(tmp_path, monkeypatch):
    _sharded_state(tmp_path / "sharded")
    shard = next(p for p in (tmp_path / "sharded").iterdir() if p.suffix == ".distcp")
    shard.write_bytes(shard.read_bytes() + b"\0")
    with pytest.raises(RunError, match="is not signed"):
        load_sharded(tmp_path / "sharded", *_fresh())
    # the folder's writer signs with its own key: without ours, the signature does not verify
    _sharded_state(tmp_path / "theirs")
    monkeypatch.setenv(KEY_ENV, str(tmp_path / "other.key"))
    _sharded_state(tmp_path / "ours")
    with pytest.raises(RunError, match="is not signed"):
        load_sharded(tmp_path / "theirs", *_fresh())
    load_sharded(tmp_path / "ours", *_fresh())
    monkeypatch.setenv(KEY_ENV, str(tmp_path / "absent.key"))
    with pytest.raises(RunError, match="resume key .*absent.key is missing"):
        load_sharded(tmp_path / "ours", *_fresh())
