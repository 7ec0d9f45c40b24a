"""One table of deployment formats: each entry holds its backend (converter, runner, availability).

It drives artifact detection, runner choice for verify/benchmark/predict, `fvdeploy formats`, and
the suffix checks of every output path. Backends are heavy (torch, onnx, coremltools, tensorrt): the
table reaches them through functions that import on call, so reading the table costs nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from .errors import FvdeployError
from .optional import coreml_predict_missing, coremltools_missing, onnxruntime_missing, tensorrt_missing
from .options import Provider, RunOptions

if TYPE_CHECKING:
    from .progress import Steps
    from .record import ArtifactRecord
    from .runners import Runner


def _kinds(record: ArtifactRecord) -> dict[str, str]:
    return {o.name: o.kind for o in record.outputs}


def _onnx_runner(path: Path, record: ArtifactRecord, opts: RunOptions) -> Runner:
    from .runners import OnnxRuntimeRunner

    return OnnxRuntimeRunner(path, opts.provider, opts.threads, _kinds(record), record.batch_range)


def _tensorrt_runner(path: Path, record: ArtifactRecord, opts: RunOptions) -> Runner:
    from .runners import TensorRTRunner

    return TensorRTRunner(path, _kinds(record))


def _coreml_runner(path: Path, record: ArtifactRecord, opts: RunOptions) -> Runner:
    from .runners import CoreMLRunner

    pre = record.model.preprocessing
    return CoreMLRunner(path, pre.mean, pre.std, record.model.input, record.outputs, record.batch_range)


def _export_onnx(job, steps: Steps) -> ArtifactRecord:
    from .onnx_export import export_onnx

    return export_onnx(job, steps)


def _build_engine(job, steps: Steps) -> ArtifactRecord:
    from .tensorrt_build import build_engine

    return build_engine(job, steps)


def _export_coreml(job, steps: Steps) -> ArtifactRecord:
    from .coreml_export import export_coreml

    return export_coreml(job, steps)


@dataclass(frozen=True)
class Backend:
    key: str
    suffixes: tuple[str, ...]
    description: str
    precisions: tuple[str, ...]
    command: str  # the fvdeploy command that makes it
    convert: Callable[..., ArtifactRecord]  # job, steps -> record
    runner: Callable[[Path, ArtifactRecord, RunOptions], Runner]
    missing_to_convert: Callable[[], str | None]  # None when this machine can make it, else why not
    missing_to_run: Callable[[], str | None]

    def open_runner(self, path: Path, record: ArtifactRecord, opts: RunOptions = RunOptions()) -> Runner:
        if opts.provider is not Provider.cpu and self.key != "onnx":
            raise FvdeployError(f"--provider chooses onnxruntime's execution provider: {path.name} is a {self.description}")
        return self.runner(path, record, opts)


FORMATS: tuple[Backend, ...] = (
    Backend("onnx", (".onnx",), "ONNX graph (onnxruntime)", ("fp32", "fp16", "int8"), "export-onnx, quantize",
            _export_onnx, _onnx_runner, lambda: None, onnxruntime_missing),
    Backend("tensorrt", (".plan", ".engine"), "TensorRT engine", ("fp32", "fp16", "int8"), "build-trt",
            _build_engine, _tensorrt_runner, tensorrt_missing, tensorrt_missing),
    Backend("coreml", (".mlpackage",), "Core ML ML Program", ("fp16", "fp32"), "coreml",
            _export_coreml, _coreml_runner, coremltools_missing, coreml_predict_missing),
)


def backend_for(path: str | Path) -> Backend:
    suffix = Path(path).suffix.lower()
    for fmt in FORMATS:
        if suffix in fmt.suffixes:
            return fmt
    known = ", ".join(s for f in FORMATS for s in f.suffixes)
    raise FvdeployError(f"unknown artifact type '{suffix or Path(path).name}' (known: {known})")


def suffixes(key: str) -> tuple[str, ...]:
    return next(f.suffixes for f in FORMATS if f.key == key)
