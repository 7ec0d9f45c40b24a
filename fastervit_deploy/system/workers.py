"""Work in a child process that ends with fvdeploy (Ctrl-C, SIGTERM, or the parent's death)."""

from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import Any, Callable

from . import lifecycle
from .errors import FvdeployError


def _child(conn, fn, args, tmpdir) -> None:
    import os
    import sys
    import tempfile

    lifecycle.worker_signals()
    if tmpdir is not None:  # the worker's own temporary files go where fvdeploy's go, and go with them
        os.environ["TMPDIR"] = tempfile.tempdir = str(tmpdir)
    # Results and errors come back through ``conn``: the worker's own prints and logs would interleave
    # with the parent's progress display.
    sys.stdout = sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - for the child's whole life
    try:
        conn.send((True, fn(*args)))
    except BaseException as err:  # noqa: BLE001 - everything goes back to the parent as one line
        conn.send((False, f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"))


def in_child_process(fn: Callable[..., Any], *args: Any, what: str = "worker", tmpdir: Path | None = None) -> Any:
    """Run ``fn(*args)`` in a fresh interpreter and return its result.

    For libraries that change process-wide state while they run (ModelOpt rewrites onnxruntime's
    quantization registries). The child is stopped, within seconds, whenever the parent stops waiting;
    its temporary files go to ``tmpdir``."""
    ctx = multiprocessing.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_child, args=(send, fn, args, tmpdir), daemon=True)
    process.start()
    send.close()
    with lifecycle.worker(process):
        try:
            while not receive.poll(0.2):  # short waits: Ctrl-C and SIGTERM are handled at once
                if not process.is_alive():
                    raise FvdeployError(f"the {what} process died (exit code {process.exitcode})")
            ok, value = receive.recv()
            if not ok:
                raise FvdeployError(f"{what} failed: {value}")
            return value
        finally:
            if process.is_alive():
                process.terminate()
                process.join(2)
                if process.is_alive():
                    process.kill()
            process.join()
