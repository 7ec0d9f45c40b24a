"""Optional heavy dependencies: imported lazily, version-checked, with one line that says what is missing."""

from __future__ import annotations

import importlib.util
import logging
import platform
import warnings

from .errors import MissingDependency

TENSORRT_MAJORS = (10, 11)


def import_tensorrt(hint: str = ""):
    """``tensorrt`` 10.x or 11.x with a usable CUDA GPU; ``hint`` says how to go on without them."""
    try:
        import tensorrt as trt
    except ImportError as err:
        raise MissingDependency(f"TensorRT is not installed (Python package `tensorrt`, 10.x or 11.x, on a CUDA "
                                f"machine){hint}") from err
    if tensorrt_major(trt) not in TENSORRT_MAJORS:
        raise MissingDependency(f"TensorRT {trt.__version__} is not supported (need 10.x or 11.x){hint}")
    import torch

    if not torch.cuda.is_available():
        raise MissingDependency(f"no CUDA GPU is visible to PyTorch (TensorRT {trt.__version__} is installed){hint}")
    return trt


def tensorrt_major(trt) -> int:
    return int(trt.__version__.split(".")[0])


def gpu_description() -> dict:
    import torch

    major, minor = torch.cuda.get_device_capability()
    return {"name": torch.cuda.get_device_name(), "compute_capability": f"{major}.{minor}", "cuda": torch.version.cuda}


def tensorrt_missing() -> str | None:
    """None where TensorRT engines can be built and run here, else why not."""
    if importlib.util.find_spec("tensorrt") is None:
        return "the tensorrt package is not installed"
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
