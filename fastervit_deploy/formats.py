"""The one table of artifact formats: key, files, precisions, the jobs that make it (and the converter
that runs each), its runner, what this machine can do with it, and how Triton serves it.

It drives artifact detection, running a plan's stages, runner choice for verify/benchmark/predict/
evaluate, `fvdeploy formats`, default file names and the suffix check of every output path, and
Triton's platform and file names. Converters and runners are heavy (torch, onnxruntime, tensorrt,
coremltools): the table reaches them through functions that import on call, so reading it costs nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from .core.options import CoreMLOptions, Provider, RunOptions
from .core.precision import Precision, QuantTarget
from .core.record import FormatKey, IdentityReader
from .coreml.job import CoreMLJob
from .coreml.metadata import PACKAGE_MARKER
from .onnx.job import ExportJob
from .quantize.job import QuantizeJob
from .system.errors import FvdeployError
from .system.optional import coreml_predict_missing, coremltools_missing, onnxruntime_missing, tensorrt_missing
from .tensorrt.job import BuildJob

if TYPE_CHECKING:
    from .core.record import ArtifactRecord
    from .core.runner import Runner
    from .system.progress import Steps


def _export_onnx(job: ExportJob, steps: Steps) -> ArtifactRecord:
    from .onnx.export import export_onnx

    return export_onnx(job, steps)


def _quantize(job: QuantizeJob, steps: Steps) -> ArtifactRecord:
    from .quantize.convert import quantize

    return quantize(job, steps)


def _build_engine(job: BuildJob, steps: Steps) -> ArtifactRecord:
    from .tensorrt.build import build_engine

    return build_engine(job, steps)


def _export_coreml(job: CoreMLJob, steps: Steps) -> ArtifactRecord:
    from .coreml.export import export_coreml

    return export_coreml(job, steps)


def _onnx_identity(path: Path) -> dict | None:
    from .onnx.metadata import read_identity

    return read_identity(path)


def _coreml_identity(path: Path) -> dict | None:
    from .coreml.metadata import read_identity

    return read_identity(path)


def _onnx_runner(path: Path, record: ArtifactRecord, opts: RunOptions) -> Runner:
    from .onnx.runner import OnnxRuntimeRunner

    return OnnxRuntimeRunner(path, record, opts.provider, opts.threads, spinning=opts.spinning)


def _tensorrt_runner(path: Path, record: ArtifactRecord, opts: RunOptions) -> Runner:
    from .tensorrt.runner import TensorRTRunner

    return TensorRTRunner(path, record)


def _coreml_runner(path: Path, record: ArtifactRecord, opts: RunOptions) -> Runner:
    from .coreml.runner import CoreMLRunner

    return CoreMLRunner(path, record)


@dataclass(frozen=True)
class TritonServing:
    platform: str  # config.pbtxt's platform
    model_file: str  # the file name in the version folder


@dataclass(frozen=True)
class Format:
    key: FormatKey
    suffixes: tuple[str, ...]  # the first is the default
    description: str
    precisions: tuple[Precision, ...]
    made_by: tuple[str, ...]  # the fvdeploy commands that make it
    jobs: tuple[tuple[type, Callable[..., ArtifactRecord]], ...]  # (job type, converter: job, steps -> record)
    runner: Callable[[Path, ArtifactRecord, RunOptions], Runner]
    missing_to_make: Callable[[], str | None]  # None when this machine can make it, else why not
    missing_to_run: Callable[[], str | None]
    identity: IdentityReader = lambda _: None  # the record's identity the file embeds, if the format can carry one
    package: str | None = None  # for artifacts that are folders: the file that marks one
    triton: TritonServing | None = None
    runs_on_providers: bool = False  # onnxruntime's --provider applies

    def file_name(self, stem: str) -> str:
        return stem + self.suffixes[0]

    def open_runner(self, path: Path, record: ArtifactRecord, opts: RunOptions = RunOptions()) -> Runner:
        if opts.provider is not Provider.cpu and not self.runs_on_providers:
            raise FvdeployError(f"--provider chooses onnxruntime's execution provider: {path.name} is a {self.description}")
        return self.runner(path, record, opts)


FORMATS: dict[FormatKey, Format] = {f.key: f for f in (
    Format(FormatKey.onnx, (".onnx",), "ONNX graph (onnxruntime)", tuple(Precision),
           ("export-onnx", "quantize"), ((ExportJob, _export_onnx), (QuantizeJob, _quantize)), _onnx_runner,
           lambda: None, onnxruntime_missing, _onnx_identity, triton=TritonServing("onnxruntime_onnx", "model.onnx"),
           runs_on_providers=True),
    Format(FormatKey.tensorrt, (".plan", ".engine"), "TensorRT engine", tuple(Precision),
           ("build-trt",), ((BuildJob, _build_engine),), _tensorrt_runner, tensorrt_missing, tensorrt_missing,
           triton=TritonServing("tensorrt_plan", "model.plan")),
    Format(FormatKey.coreml, (".mlpackage",), "Core ML ML Program", CoreMLOptions.declaration("precision").choices,
           ("coreml",), ((CoreMLJob, _export_coreml),), _coreml_runner, coremltools_missing, coreml_predict_missing,
           _coreml_identity, package=PACKAGE_MARKER),
)}


def runtime_mismatch(path: Path, record: ArtifactRecord, opts: RunOptions) -> str | None:
    """One line when an ONNX artifact runs on a provider it was not made for (its record's target), else None."""
    if record.format is not FormatKey.onnx or record.target is None:
        return None
    if record.target is QuantTarget.tensorrt and opts.provider is not Provider.tensorrt:
        return (f"note: {path.name} ({record.precision}) was made for TensorRT: onnxruntime's {opts.provider} provider "
                "runs its FP16 and Q/DQ parts through casts, slower than the FP32 graph (for CPUs: quantize --int8 "
                "--target onnxruntime-cpu)")
    if record.target is QuantTarget.onnxruntime_cpu and opts.provider is not Provider.cpu:
        return (f"note: {path.name} ({record.precision}) was made for onnxruntime's CPU kernels (uint8 activations, "
                f"the rest FP32), not for the {opts.provider} provider (for TensorRT: quantize --target tensorrt)")
    return None


def format_for(path: str | Path) -> Format:
    """The format of a file, by its suffix."""
    suffix = Path(path).suffix.lower()
    for fmt in FORMATS.values():
        if suffix in fmt.suffixes:
            return fmt
    known = ", ".join(s for f in FORMATS.values() for s in f.suffixes)
    raise FvdeployError(f"unknown artifact type '{suffix or Path(path).name}' (known: {known})")


def run_job(job, steps: Steps) -> ArtifactRecord:
    """Run one plan stage with the converter its format names."""
    for fmt in FORMATS.values():
        for kind, convert in fmt.jobs:
            if isinstance(job, kind):
                return convert(job, steps)
    raise TypeError(f"no format converts a {type(job).__name__}")
