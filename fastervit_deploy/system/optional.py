"""Optional heavy dependencies: imported lazily, version-checked, with one line that says what is missing."""

from __future__ import annotations

import ctypes.util
import importlib.util
import logging
import platform
import warnings

from .errors import MissingDependency

def gpu_description() -> dict | None:
    """This machine's CUDA GPU as PyTorch sees it (name, compute capability, CUDA), or None."""
    import torch

    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability()
    return {"name": torch.cuda.get_device_name(), "compute_capability": f"{major}.{minor}", "cuda": torch.version.cuda}


def cuda_missing() -> str | None:
    """None where a CUDA GPU is visible, else why not (engines deserialize only with a CUDA driver). Without the
    driver's library it answers without importing torch (`fvdeploy formats` stays instant)."""
    if ctypes.util.find_library("cuda") is None:
        return "no CUDA driver"
    import torch

    return None if torch.cuda.is_available() else "no CUDA GPU"


def import_coremltools():
    # coremltools announces on import that its native runtime (macOS only) and some frontends are
    # missing: keep the output to our own progress lines.
    logging.getLogger("coremltools").setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import coremltools as ct
    except ImportError as err:
        raise MissingDependency("Core ML conversion needs coremltools (pip install 'fvdeploy[coreml]')") from err
    return ct


def coremltools_missing() -> str | None:
    return None if importlib.util.find_spec("coremltools") is not None else "coremltools is not installed"


def coreml_predict_missing() -> str | None:
    if platform.system() != "Darwin":
        return f"Core ML predictions need macOS (this is {platform.system()})"
    return coremltools_missing()


def onnxruntime_missing() -> str | None:
    return None if importlib.util.find_spec("onnxruntime") is not None else "onnxruntime is not installed"
