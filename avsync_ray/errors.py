"""The errors a command reports as one line (no traceback) because the user can fix them: the CLI maps each
family to its exit code (2: the arguments, config or inputs cannot be used; 1: the work itself failed)."""

from __future__ import annotations


class InputError(ValueError):
    """An argument or input a command was given that it cannot use; the message names it and what to do."""


class WorkFailedError(RuntimeError):
    """The command ran but its work failed in an expected way (e.g. the demo's models did not learn)."""


class IncompleteResultError(WorkFailedError):
    """The command wrote all of its outputs, but part of its result could not be computed (e.g. a metric that is
    undefined on this data): the CLI prints ``result`` as it would a success, then this message, and exits 1."""

    def __init__(self, message: str, result: dict):
        super().__init__(message)
        self.result = result
