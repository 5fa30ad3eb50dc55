"""Run under torchrun by ``tests/test_distributed.py``: ``run_finetuning.main`` with every process crashing
after KEEP batches of its second epoch (``python crashing_run.py KEEP ARGS...``), as a killed run would."""

import sys

import run_finetuning
from tests.helpers import crashing_epochs

if __name__ == "__main__":
    keep, argv = int(sys.argv[1]), sys.argv[2:]
    with crashing_epochs(keep, when=lambda epoch, call: epoch == 1):
        run_finetuning.main(argv)
