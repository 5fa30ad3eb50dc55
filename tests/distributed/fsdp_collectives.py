"""Run under torchrun by ``tests/test_distributed.py``: the collectives FSDP2 issues in one step of one
width, of a sandwich of two and of four widths, counted with the profiler; rank 0 prints them as JSON."""

import json

import torch
import torch.distributed as dist
from torch.profiler import ProfilerActivity, profile

from tests.helpers import padded_batch, tiny_model
from utils.engine.sharding import pass_context, shard


class Run:
    amp_dtype, world_size = None, 2


def main() -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    model = shard(tiny_model("sparsebert_cls", 3, levels=(30, 60, 90), seed=1).train(), Run())
    batch = {k: v[rank::world] for k, v in padded_batch(torch.Generator().manual_seed(2), 4, 10, {1: 6}).items()}
    labels = torch.tensor([0, 2, 1, 1])[rank::world]
    counts = {}
    for widths in ([0], [60, 0], [90, 60, 30, 0]):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for i, level in enumerate(widths):
                model.sparsify(level)
                with pass_context(model, i == len(widths) - 1, several=len(widths) > 1):
                    model(**batch, labels=labels).loss.backward()
        events = [e.name for e in prof.events()]
        counts[len(widths)] = {"all_gather": events.count("c10d::_allgather_base_"),
                               "reduce_scatter": events.count("c10d::_reduce_scatter_base_")}
    if rank == 0:
        print(json.dumps(counts))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
