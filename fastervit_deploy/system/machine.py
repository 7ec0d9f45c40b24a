"""What this machine's CPU can do (the instruction sets integer kernels depend on), and its name."""

from __future__ import annotations

import functools
import os
import platform

# x86-64 flags (Linux /proc/cpuinfo) that decide onnxruntime's int8 kernels: VNNI dot products do not saturate.
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
REPORTED_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")


@functools.cache
def cpu() -> dict:
    """CPU name, cores, and the instruction-set flags relevant to integer inference (``vnni``: no u8s8 saturation)."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and name == (platform.processor() or platform.machine()):
                    name = value.strip()
                elif key.strip() in ("flags", "Features"):
                    flags |= set(value.split())
    except OSError:
        pass
    x86 = platform.machine().lower() in ("x86_64", "amd64", "i686")
    return {"cpu": name, "cores": os.cpu_count(), "arch": platform.machine(),
            "flags": sorted(f for f in REPORTED_FLAGS if f in flags),
            "vnni": any(f in flags for f in VNNI_FLAGS) if x86 else True}


def describe_machine() -> str:
    """The machine in one line, as figures are reported: CPU name, cores, the integer instruction sets."""
    facts = cpu()
    return f"{facts['cpu']}, {facts['cores']} cores, {' '.join(facts['flags']) or 'no AVX-512/VNNI flags'}"
