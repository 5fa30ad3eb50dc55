"""The entry point of every script: bad input becomes one line on stderr, a bug keeps its traceback."""

from __future__ import annotations

import os
import sys

from utils.errors import USER_ERRORS


def cli(main, argv=None) -> int:
    """Run a script's ``main`` and turn bad input into one line on stderr (exit status 2).

    Only the project's input errors (:data:`utils.errors.USER_ERRORS`) are caught: anything else is
    a bug and keeps its traceback. Set ``MINIDISC_DEBUG=1`` to see the traceback of input errors too.
    """
    try:
        main(argv)
    except SystemExit as err:  # argparse has already printed its one line
        return err.code if isinstance(err.code, int) else 2
    except USER_ERRORS as err:
        if os.environ.get("MINIDISC_DEBUG"):
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
