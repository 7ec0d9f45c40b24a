"""Errors the CLI reports as one line, and their exit codes.

Known failures are fvdeploy's own (``FvdeployError`` and its kinds), the model package's input errors
(``fastervit.FasterViTError``: configurations, resolutions, checkpoints, model names), what the
operating system refuses (``OSError``: a full disk, a read-only folder) and allocations that fail.
Anything else is a bug in fvdeploy: it is reported as an internal error, exit 1, with the advice to
rerun with ``--debug``, which shows the traceback with its whole chain of causes.
"""

from __future__ import annotations

import sys

EXIT_OK, EXIT_FAILED_CHECK, EXIT_BAD_INPUT, EXIT_MISSING_DEPENDENCY = 0, 1, 2, 3
EXIT_INTERNAL = 1
EXIT_BROKEN_PIPE = 141  # what a shell reports for a process that SIGPIPE ended: the reader stopped reading


def reader_gone() -> int:
    """stdout's reader went away (``fvdeploy ... | head -1``): not a failure of fvdeploy's, so no message; stdout
    now points at /dev/null so that the interpreter's last flush does not fail again."""
    import os
    import sys

    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return EXIT_BROKEN_PIPE


class FvdeployError(Exception):
    """A user-facing failure: bad input, missing dependency, failed check."""

    exit_code = EXIT_BAD_INPUT


class CheckFailed(FvdeployError):
    """The artifact was produced but does not meet its parity/graph requirements."""

    exit_code = EXIT_FAILED_CHECK


class MissingDependency(FvdeployError):
    exit_code = EXIT_MISSING_DEPENDENCY


# How torch's and onnxruntime's allocators report a failed allocation (a RuntimeError or their own type).
_OUT_OF_MEMORY = ("can't allocate memory", "Failed to allocate memory", "bad_alloc", "out of memory")


def out_of_memory(err: BaseException) -> bool:
    return isinstance(err, MemoryError) or any(marker in str(err) for marker in _OUT_OF_MEMORY)


def _model_error(err: BaseException) -> bool:
    model = sys.modules.get("fastervit.config")  # not imported at start-up; if absent, nothing raised one
    return model is not None and isinstance(err, model.FasterViTError)


def exit_code_of(err: BaseException) -> int | None:
    """The exit code of a known failure; None for an internal error (a bug)."""
    if isinstance(err, FvdeployError):
        return err.exit_code
    if out_of_memory(err) or isinstance(err, OSError) or _model_error(err):
        return EXIT_BAD_INPUT
    return None


def one_line(err: BaseException) -> str:
    if out_of_memory(err):
        return "out of memory (try a smaller resolution or batch)"
    if isinstance(err, OSError) and err.strerror:
        return f"{err.strerror}: {err.filename}" if err.filename else err.strerror
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def internal_error_line(err: BaseException) -> str:
    """The line an unexpected exception gets: what it was, and how to see where."""
    return (f"internal error: {type(err).__name__}: {one_line(err)} (a bug in fvdeploy: rerun with --debug for "
            "the traceback and report it)")
