"""`fvdeploy quantize` as a plan stage (light: formats.FORMATS names the converter that does the work, in convert.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..core.options import AccuracyTarget, CalibrationOptions, ImagesOption, LoweringOptions, PrecisionFlags
from ..core.precision import Precision, Tolerance

if TYPE_CHECKING:
    from ..core.record import RecordedArtifact


@dataclass(frozen=True)
class QuantizeJob:
    source: Path  # the FP32 ONNX (written by an earlier stage of the same plan, or given)
    precision: Precision
    output: Path
    calibration: CalibrationOptions = field(default_factory=CalibrationOptions)
    tolerance: Tolerance = field(default_factory=Tolerance)  # overrides of the per-precision defaults
    lowering: LoweringOptions = field(default_factory=LoweringOptions)
    images: ImagesOption = field(default_factory=ImagesOption)  # images for the parity figures
    target: AccuracyTarget = field(default_factory=AccuracyTarget)
    overwrite: bool = False
    # The source as the plan read it (hashed once); None when an earlier stage writes it.
    source_artifact: RecordedArtifact | None = field(default=None, compare=False)

    def argv(self) -> tuple[str, ...]:
        quantized = Precision(self.precision).quantized
        calibration = [*self.calibration.argv(), *self.target.argv()] if quantized else []
        return ("quantize", str(self.source), *PrecisionFlags.of(self.precision).argv(), *calibration,
                *self.lowering.argv(), *self.tolerance.argv(), *self.images.argv(), "--output", str(self.output))

