"""`fvdeploy export-onnx` as a plan stage: everything it does, resolved (light: plan.CONVERTERS names the converter that does the work, in export.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..core.options import BatchProfile, ImagesOption, OnnxOptions

if TYPE_CHECKING:
    from ..core.model_spec import ModelDescription

TRACE_BATCH = 2  # the graph is traced at this batch; parity runs at others (1 and 3)


@dataclass(frozen=True)
class ExportJob:
    model: ModelDescription
    output: Path
    onnx: OnnxOptions = field(default_factory=OnnxOptions)
    batch: BatchProfile = field(default_factory=BatchProfile)
    images: ImagesOption = field(default_factory=ImagesOption)
    overwrite: bool = False

    def argv(self) -> tuple[str, ...]:
        return ("export-onnx", *self.model.cli_args(), *self.batch.argv(), *self.onnx.argv(), *self.images.argv(),
                "--output", str(self.output))

    @property
    def verify(self) -> bool:
        return not self.onnx.no_verify

    @property
    def verify_batches(self) -> list[int]:
        """Two sizes, at least one different from the batch the graph was traced with."""
        return sorted({self.batch.clip(1), self.batch.clip(3)})

