"""Ctrl-C and SIGTERM: fvdeploy ends within seconds, its child processes with it, and leaves no temporary file.

Python runs signal handlers in the main thread between bytecodes, so a main thread inside a long
onnxruntime or torch call would not notice a signal for as long as that call runs. Instead, the
console script blocks SIGINT and SIGTERM in every thread (threads and processes started later inherit
the mask) and one watcher thread waits for them with ``sigwait``:

1. while nothing needs cleaning up (no cleanup registered with ``on_end``: fvdeploy is importing,
   parsing, loading or checking), the signal ends fvdeploy at once. Interrupting the main thread there
   would be worse than useless: libraries swallow a ``KeyboardInterrupt`` raised while they import
   (torch while it imports numpy) and fail later on the half-imported module;
2. otherwise the first signal interrupts the main thread (``KeyboardInterrupt``, repeated every 0.25 s
   until fvdeploy's cleanup code acknowledges it): it unwinds normally, its ``finally`` blocks remove
   temporary folders and stop workers, and it prints ``interrupted``;
3. if it has not exited ``GRACE_S`` seconds later (still inside a C call), or a second signal comes,
   the watcher runs the registered cleanups (workers killed, temporary folders removed) and ends the
   process with the signal's exit code (130 for SIGINT, 143 for SIGTERM).

Worker processes call ``worker_signals()`` first: they ignore SIGINT (the terminal sends it to the
whole process group; the parent decides), take SIGTERM, and die with their parent.
"""

from __future__ import annotations

import _thread
import contextlib
import ctypes
import os
import signal
import sys
import threading
import time
from typing import TYPE_CHECKING, Callable, Iterator

if TYPE_CHECKING:
    import multiprocessing
    import subprocess

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}
GRACE_S = 3.0
_PR_SET_PDEATHSIG = 1

_cleanups: dict[object, Callable[[], None]] = {}  # what to undo if fvdeploy is ended, in registration order
_received: list[int] = []
_watched = set(EXIT_CODES)
_INTERRUPT = signal.SIGTERM  # run in the main thread by interrupt_main(); never delivered by the OS
_acknowledged = threading.Event()


def install() -> None:
    """Route SIGINT/SIGTERM to the watcher thread. Call once, first thing, from the console script.

    A SIGINT that was ignored when fvdeploy started (``nohup``, a background job) stays ignored."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        _watched.discard(signal.SIGINT)
    # The OS signals are blocked; the watcher interrupts the main thread by calling this handler there.
    signal.signal(_INTERRUPT, _raise_interrupt)
    signal.pthread_sigmask(signal.SIG_BLOCK, _watched)
    threading.Thread(target=_watch, name="fvdeploy-signals", daemon=True).start()


def _raise_interrupt(signum, frame) -> None:
    if not _received:
        # Not the watcher's doing: the OS delivered a real SIGTERM to a thread that does not block it (a library's
        # own thread, e.g. while the ModelOpt worker runs), and Python runs this handler in the main thread. It is
        # a SIGTERM all the same: exit 143, not 130.
        _received.append(signum)
    raise KeyboardInterrupt


def exit_code() -> int:
    """The exit code for the signal received (130 for Ctrl-C, also when no watcher is installed)."""
    return EXIT_CODES[_received[0]] if _received else EXIT_CODES[signal.SIGINT]


def interrupted() -> bool:
    """Whether SIGINT or SIGTERM has been received (a failure after it is the interruption's doing)."""
    return bool(_received)


def _watch() -> None:
    _received.append(signal.sigwait(_watched))
    if not _cleanups:
        _end_now()
    deadline = time.monotonic() + GRACE_S
    # Interrupt the main thread until it acknowledges: numpy swallows a KeyboardInterrupt raised while it
    # probes an object (PIL's __array_interface__), so one interruption can be lost.
    while not _acknowledged.is_set() and time.monotonic() < deadline:
        _thread.interrupt_main(_INTERRUPT)
        if signal.sigtimedwait(_watched, 0.25) is not None:
            break  # a second signal: no more grace
    else:  # the main thread cleans up and exits; if it is still here when the grace ends, end it now
        signal.sigtimedwait(_watched, max(0.0, deadline - time.monotonic()))
    _end_now()


def acknowledge() -> None:
    """The main thread is unwinding from the interruption: stop interrupting it (its cleanup must run)."""
    _acknowledged.set()


def _end_now() -> None:
    for cleanup in reversed(list(_cleanups.values())):  # the newest first: a server before its folder
        with contextlib.suppress(Exception):
            cleanup()
    with contextlib.suppress(OSError):
        os.write(2, b"interrupted\n")
    os._exit(exit_code())


@contextlib.contextmanager
def on_end(cleanup: Callable[[], None]) -> Iterator[None]:
    """Run ``cleanup`` if fvdeploy is ended while the block runs (the block cleans up after itself otherwise).

    Enter it before creating what ``cleanup`` removes: a signal while nothing is registered ends fvdeploy
    at once."""
    key = object()
    _cleanups[key] = cleanup
    try:
        yield
    except KeyboardInterrupt:
        acknowledge()
        raise
    finally:
        del _cleanups[key]


@contextlib.contextmanager
def worker(process: "subprocess.Popen | multiprocessing.Process") -> Iterator[None]:
    """Kill ``process`` if fvdeploy is ended while the block runs (the caller stops it otherwise)."""
    with on_end(process.kill):
        yield


def server_signals() -> None:
    """In a server process fvdeploy starts, before it executes: the signals fvdeploy blocks are its own again (a
    blocked SIGTERM would outlive any stop), and it gets SIGTERM when fvdeploy dies, however fvdeploy dies."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, EXIT_CODES)
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def worker_signals() -> None:
    """First thing in a worker process: SIGINT ignored, SIGTERM ends it, and so does its parent's death."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, EXIT_CODES)
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
