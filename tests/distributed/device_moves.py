"""Run under torchrun by ``tests/test_distributed.py``: ``python device_moves.py OUT SCRIPT ARGS...`` runs
``SCRIPT.main(ARGS)`` (``run_distillation``, ...) and writes, per process, ``OUT/rank{R}.json`` with

* ``moves``: every ``nn.Module.to`` call that names a device, with the bytes of the whole (not sharded)
  parameters it put there: under ``--fsdp`` a process must only ever move its own shards;
* ``sharded``: every model :func:`utils.engine.sharding.shard` sharded: its parameters' bytes, all of them and
  this process's share.

On the CPU the training device is where the models are loaded, so a whole copy on it cannot be seen
from memory; what is recorded is what the code moves there, which on a GPU would be device memory.
"""

import importlib
import json
import os
import sys
from pathlib import Path

import torch
from torch.distributed.tensor import DTensor

import utils.engine.sharding


def size(tensor) -> int:
    """Bytes of ``tensor`` (of the whole tensor for a DTensor)."""
    return tensor.numel() * tensor.element_size()


def main() -> None:
    out, script, argv = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
    moves, sharded = [], []
    module_to, shard = torch.nn.Module.to, utils.engine.sharding.shard

    def recording_to(self, *args, **kwargs):
        device = torch._C._nn._parse_to(*args, **kwargs)[0]
        if device is not None:
            whole = sum(size(p) for p in self.parameters() if not isinstance(p, DTensor))
            moves.append({"module": type(self).__name__, "device": str(device), "whole_bytes": whole})
        return module_to(self, *args, **kwargs)

    def recording_shard(model, run):
        name, full = type(model).__name__, sum(size(p) for p in model.parameters())
        result = shard(model, run)
        mine = sum(size(p.to_local()) for p in model.parameters())
        sharded.append({"module": name, "full_bytes": full, "local_bytes": mine})
        return result

    torch.nn.Module.to = recording_to
    utils.engine.sharding.shard = recording_shard
    try:
        importlib.import_module(script).main(argv)  # imported after the patches, so it sees them
    finally:
        out.mkdir(parents=True, exist_ok=True)
        (out / f"rank{os.environ['RANK']}.json").write_text(json.dumps({"moves": moves, "sharded": sharded}))


if __name__ == "__main__":
    main()
