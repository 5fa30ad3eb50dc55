"""The project's input errors: what ``cli`` turns into one line on stderr (exit status 2).

Anything else that goes wrong is a bug in our code and keeps its traceback. The data and model
layers define their own input errors (they import nothing from ``utils``); this module gathers them.
"""

from __future__ import annotations

from data.tasks import DataError
from models.sparsity_map import ModelConfigError


class UserError(ValueError):
    """Input a script cannot work with: a flag, a folder, a checkpoint; the message says which and why."""


class ArgumentError(UserError):
    """A flag value that cannot work; the message names the flag and what was expected."""


class RunError(UserError):
    """A run that cannot start as asked (finished output dir, an output dir that is a file, ...)."""


class SettingsMismatch(RunError):
    """An interrupted or finished run (or stage) that was started with other settings than this command's."""


class StageError(UserError):
    """Input a stage cannot work with (wrong teacher, missing map, bad student spec, unsupported checkpoint)."""


USER_ERRORS = (UserError, DataError, ModelConfigError)
