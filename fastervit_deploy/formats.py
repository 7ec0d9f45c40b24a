"""One table of deployment formats: drives artifact detection, runner choice, help and benchmarks."""

from __future__ import annotations

import importlib
import importlib.util
import platform
from dataclasses import dataclass
from pathlib import Path

from .errors import FvdeployError


@dataclass(frozen=True)
class Format:
    key: str
    suffixes: tuple[str, ...]
    description: str
    runner: str  # "module:Class" of the runner, imported only when used
    precisions: tuple[str, ...]
    needs: str  # what must be present to run it

    def runnable_here(self) -> bool:
        if self.key == "onnx":
            return importlib.util.find_spec("onnxruntime") is not None
        if self.key == "tensorrt":
            import torch

            return importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available()
        return platform.system() == "Darwin" and importlib.util.find_spec("coremltools") is not None


FORMATS: tuple[Format, ...] = (
    Format("onnx", (".onnx",), "ONNX (onnxruntime on CPU)", "fastervit_deploy.runners:OnnxRuntimeRunner",
           ("fp32", "fp16", "int8"), "onnxruntime"),
    Format("tensorrt", (".plan", ".engine"), "TensorRT engine", "fastervit_deploy.trt_runtime:TensorRTRunner",
           ("fp32", "fp16", "int8"), "TensorRT and a CUDA GPU"),
    Format("coreml", (".mlpackage",), "Core ML ML Program", "fastervit_deploy.coreml_export:CoreMLRunner",
           ("fp16", "fp32"), "macOS with coremltools"),
)


def format_for(path: str | Path) -> Format:
    suffix = Path(path).suffix.lower()
    for fmt in FORMATS:
        if suffix in fmt.suffixes:
            return fmt
    known = ", ".join(s for f in FORMATS for s in f.suffixes)
    raise FvdeployError(f"unknown artifact type '{suffix or Path(path).name}' (known: {known})")


def runner_for(path: str | Path, **kwargs):
    path = Path(path)
    fmt = format_for(path)
    if not path.exists():
        raise FvdeployError(f"artifact not found: {path}")
    module, cls = fmt.runner.split(":")
    return getattr(importlib.import_module(module), cls)(path, **kwargs)
