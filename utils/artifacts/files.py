"""Files written so that a reader never sees half of one."""

from __future__ import annotations

import json
import os
from pathlib import Path

ARGS_FILE = "args.json"  # a run's flags and settings, written by utils.command.run


def write_json_atomic(path: Path, payload) -> None:
    """Write JSON to a temporary file and rename it over ``path``: readers never see half a file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2, sort_keys=False)
        f.write("\n")
    os.replace(tmp, path)
