"""Resources are estimated before they are used: a model whose activations cannot fit is refused at once."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import sys

from fastervit import FasterViTConfig, estimate_memory

from .errors import FvdeployError

# The largest batch fvdeploy itself runs in-process (parity checks at batch 1 and 3, calibration chunks).
IN_PROCESS_BATCH = 4


def available_memory() -> int | None:
    """Bytes the system can give without swapping (Linux MemAvailable); None where unknown."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _gib(n: float) -> str:
    return f"{n / 2**40:.1f} TiB" if n >= 2**40 else f"{n / 2**30:.1f} GiB"


def check_fits(name: str, config: FasterViTConfig) -> None:
    """Refuse, naming the estimate, a resolution or window whose tensors would not fit in memory."""
    estimate = estimate_memory(config)
    need, available = estimate.peak(IN_PROCESS_BATCH), available_memory()
    if available is not None and need > available:
        h, w = config.resolution
        largest = estimate.per_image_what if estimate.per_image * IN_PROCESS_BATCH >= estimate.buffers else estimate.buffers_what
        raise FvdeployError(f"{name} at {h}x{w} with windows {','.join(map(str, config.window_size))} needs about "
                            f"{_gib(need)} of memory (largest tensor: {largest}); this machine has {_gib(available)} "
                            "available: choose a smaller resolution or window")


def release_memory() -> None:
    """Give freed heap memory back to the OS before a memory-hungry child process starts.

    onnxruntime and numpy free their buffers, but glibc keeps the pages in its arenas: without this the
    parent sits on ~0.5 GiB of freed calibration buffers while the ModelOpt worker runs."""
    gc.collect()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)
