"""The one table of artifact formats: key, files, precisions, the commands that make it, its runner, what
this machine can do with it, and how Triton serves it.

It drives artifact detection, runner choice for verify/benchmark/predict/evaluate, `fvdeploy formats`, default
file names and the suffix check of every output path, and Triton's platform and file names. Runners and identity readers are heavy (torch, onnxruntime, tensorrt,
coremltools): the table names them as ``"module:attribute"`` strings, imported when first used
(``system.lazy.load``), so reading it costs nothing. The converter of each plan stage is named in
``plan.CONVERTERS``, beside the job classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from .core.options import CoreMLOptions, Provider, RunOptions
from .core.precision import Precision, QuantTarget
from .core.record import FormatKey
from .coreml.metadata import PACKAGE_MARKER
from .system.errors import FvdeployError
from .system.lazy import load
from .system.optional import coreml_predict_missing, coremltools_missing, onnxruntime_missing
from .tensorrt.runtimes import RuntimeKey, missing_to_build, missing_to_run

if TYPE_CHECKING:
    from .core.record import ArtifactRecord
    from .core.runner import Runner


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
    made_by: tuple[str, ...]  # the fvdeploy commands that make it (plan.CONVERTERS: which function does)
    runner: str  # "module:Class.factory" (path, record, RunOptions) -> Runner, imported when a runner is opened
    missing_to_make: Callable[[], str | None]  # None when this machine can make it, else why not
    missing_to_run: Callable[[], str | None]
    identity: str | None = None  # "module:function" path -> the record's identity the file embeds, or None
    package: str | None = None  # for artifacts that are folders: the file that marks one
    triton: TritonServing | None = None
    runs_on_providers: bool = False  # onnxruntime's --provider applies

    def file_name(self, stem: str) -> str:
        return stem + self.suffixes[0]

    def open_runner(self, path: Path, record: ArtifactRecord, opts: RunOptions = RunOptions()) -> Runner:
        if opts.provider is not Provider.cpu and not self.runs_on_providers:
            raise FvdeployError(f"--provider chooses onnxruntime's execution provider: {path.name} is a {self.description}")
        return load(self.runner)(path, record, opts)

    def read_identity(self, path: Path) -> dict | None:
        """The record's identity the file embeds (an IdentityReader), if the format carries one."""
        return load(self.identity)(path) if self.identity else None


FORMATS: dict[FormatKey, Format] = {f.key: f for f in (
    Format(FormatKey.onnx, (".onnx",), "ONNX graph (onnxruntime)", tuple(Precision), ("export-onnx", "quantize"),
           "fastervit_deploy.onnx.runner:OnnxRuntimeRunner.open", lambda: None, onnxruntime_missing,
           "fastervit_deploy.onnx.metadata:read_identity", triton=TritonServing("onnxruntime_onnx", "model.onnx"),
           runs_on_providers=True),
    Format(FormatKey.tensorrt, (".plan", ".engine"), "TensorRT engine", tuple(Precision), ("build-trt",),
           "fastervit_deploy.tensorrt.runner:TensorRTRunner.open", lambda: missing_to_build(RuntimeKey.tensorrt),
           lambda: missing_to_run(RuntimeKey.tensorrt), triton=TritonServing("tensorrt_plan", "model.plan")),
    # Runs only in TensorRT for RTX (not in TensorRT, not in Triton's TensorRT backend): its own suffix says so.
    Format(FormatKey.tensorrt_rtx, (".rtx.engine",), "TensorRT for RTX engine", tuple(Precision),
           ("build-trt --runtime tensorrt-rtx",), "fastervit_deploy.tensorrt.runner:TensorRTRunner.open",
           lambda: missing_to_build(RuntimeKey.tensorrt_rtx), lambda: missing_to_run(RuntimeKey.tensorrt_rtx)),
    Format(FormatKey.coreml, (".mlpackage",), "Core ML ML Program", CoreMLOptions.declaration("precision").choices,
           ("coreml",), "fastervit_deploy.coreml.runner:CoreMLRunner.open", coremltools_missing,
           coreml_predict_missing, "fastervit_deploy.coreml.metadata:read_identity", package=PACKAGE_MARKER),
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
    return _matched(path)[0]


def stem(path: str | Path) -> str:
    """The file name without its format's suffix (``m.rtx.engine`` → ``m``)."""
    return Path(path).name[:-len(_matched(path)[1])]


def _matched(path: str | Path) -> tuple[Format, str]:
    """The format and the suffix a file name ends in: the longest that matches (x.rtx.engine is not a TensorRT
    engine, though it ends in .engine)."""
    name = Path(path).name.lower()
    matches = [(suffix, fmt) for fmt in FORMATS.values() for suffix in fmt.suffixes if name.endswith(suffix)]
    if not matches:
        known = ", ".join(s for f in FORMATS.values() for s in f.suffixes)
        raise FvdeployError(f"unknown artifact type '{Path(path).suffix or Path(path).name}' (known: {known})")
    suffix, fmt = max(matches, key=lambda m: len(m[0]))
    return fmt, suffix
