"""`fvdeploy quantize` as a plan stage (light: plan.CONVERTERS names the converter that does the work, in convert.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..core.options import AccuracyTarget, CalibrationOptions, ImagesOption, PrecisionFlags, QuantBackend, TargetOptions
from ..core.precision import Precision, QuantTarget, Tolerance
from ..system.errors import FvdeployError

if TYPE_CHECKING:
    from ..core.record import RecordedArtifact
    from ..graph.policy import Scheme


def refuse_backend(scheme: Scheme, backend: QuantBackend) -> None:
    """Each scheme has the writers that make it: the plan refuses any other before reading a file."""
    if scheme.target is QuantTarget.onnxruntime_cpu and backend is QuantBackend.modelopt:
        raise FvdeployError("--target onnxruntime-cpu graphs are written by onnxruntime's quantizer: ModelOpt "
                            "writes TensorRT graphs (leave out --backend, or use --backend onnxruntime)")
    if scheme.precision is Precision.fp8 and backend is QuantBackend.onnxruntime:
        raise FvdeployError("--fp8 graphs are made as ModelOpt's FP8 mode makes them: leave out --backend")


@dataclass(frozen=True)
class QuantizeJob:
    source: Path  # the FP32 ONNX (written by an earlier stage of the same plan, or given)
    precision: Precision
    output: Path
    calibration: CalibrationOptions = field(default_factory=CalibrationOptions)
    tolerance: Tolerance = field(default_factory=Tolerance)  # overrides of the per-precision defaults
    target: TargetOptions = field(default_factory=TargetOptions)
    images: ImagesOption = field(default_factory=ImagesOption)  # images for the parity figures
    accuracy: AccuracyTarget = field(default_factory=AccuracyTarget)
    overwrite: bool = False
    # The source as the plan read it (hashed once); None when an earlier stage writes it.
    source_artifact: RecordedArtifact | None = field(default=None, compare=False)

    def argv(self) -> tuple[str, ...]:
        quantized = Precision(self.precision).quantized
        calibration = [*self.calibration.argv(), *self.accuracy.argv()] if quantized else []
        return ("quantize", str(self.source), *PrecisionFlags.of(self.precision).argv(), *calibration,
                *self.target.argv(), *self.tolerance.argv(), *self.images.argv(), "--output", str(self.output))

