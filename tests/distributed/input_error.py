"""Run by ``tests/test_distributed.py`` as one of several processes started without torchrun's agent:
``python input_error.py RANK_THAT_FAILS ARGS...`` runs ``run_finetuning`` through the command-line entry
point, the given rank (-1: none) meeting an input error of its own while its run is set up."""

import os
import sys

import run_finetuning
import utils.command.run
from utils.command.cli import cli
from utils.errors import RunError

if __name__ == "__main__":
    failing, argv = int(sys.argv[1]), sys.argv[2:]
    if failing >= 0 and int(os.environ["RANK"]) == failing:
        def refuse(options, device):
            raise RunError(f"rank {failing} cannot use this machine's set-up")

        utils.command.run._amp_dtype = refuse
    sys.exit(cli(run_finetuning.main, argv))
