"""Errors the CLI reports as one line (anything else is a bug and keeps its traceback with --debug)."""

from fastervit import CheckpointError, UnknownModelError, UnsupportedResolutionError


class FvdeployError(Exception):
    """A user-facing failure: bad input, missing dependency, failed check."""

    exit_code = 2


class CheckFailed(FvdeployError):
    """The artifact was produced but does not meet its parity/graph requirements."""

    exit_code = 1


class MissingDependency(FvdeployError):
    exit_code = 3


# What the CLI turns into `error: <message>` without a traceback.
USER_ERRORS = (FvdeployError, CheckpointError, UnknownModelError, UnsupportedResolutionError, ValueError,
               FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)
