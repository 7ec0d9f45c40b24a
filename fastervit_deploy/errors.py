"""Errors the CLI reports as one line, and their exit codes (anything else is a bug: traceback)."""

from __future__ import annotations

import sys

EXIT_FAILED_CHECK, EXIT_BAD_INPUT, EXIT_MISSING_DEPENDENCY = 1, 2, 3


class FvdeployError(Exception):
    """A user-facing failure: bad input, missing dependency, failed check."""

    exit_code = EXIT_BAD_INPUT


class CheckFailed(FvdeployError):
    """The artifact was produced but does not meet its parity/graph requirements."""

    exit_code = EXIT_FAILED_CHECK


class MissingDependency(FvdeployError):
    exit_code = EXIT_MISSING_DEPENDENCY


# Bad input or an environment that cannot take the work (a full disk, a read-only folder, too little
# memory), raised by the model package (its errors are ValueErrors, and UnknownModelError) or the
# standard library: one line, exit 2.
_BAD_INPUT = (ValueError, OSError, MemoryError)


# How torch's and onnxruntime's allocators report a failed allocation (a RuntimeError or their own type).
_OUT_OF_MEMORY = ("can't allocate memory", "Failed to allocate memory", "bad_alloc", "out of memory")


def out_of_memory(err: BaseException) -> bool:
    return isinstance(err, MemoryError) or any(marker in str(err) for marker in _OUT_OF_MEMORY)


def exit_code_of(err: BaseException) -> int | None:
    """The exit code of a known failure; None for a bug."""
    if isinstance(err, FvdeployError):
        return err.exit_code
    if out_of_memory(err):
        return EXIT_BAD_INPUT
    model = sys.modules.get("fastervit")  # not imported at start-up: it loads torch
    if isinstance(err, _BAD_INPUT) or (model is not None and isinstance(err, model.UnknownModelError)):
        return EXIT_BAD_INPUT
    return None


def one_line(err: BaseException) -> str:
    if out_of_memory(err):
        return "out of memory (try a smaller resolution or batch)"
    if isinstance(err, OSError) and err.strerror:
        return f"{err.strerror}: {err.filename}" if err.filename else err.strerror
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
