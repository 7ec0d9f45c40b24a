"""`fvdeploy coreml` as a plan stage (light: plan.CONVERTERS names the converter that does the work, in export.py, which needs coremltools)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..core.options import CoreMLOptions
from ..core.tensors import TensorKind, TensorSpec
from ..system.errors import FvdeployError

if TYPE_CHECKING:
    from ..core.model_spec import ModelDescription


@dataclass(frozen=True)
class CoreMLJob:
    model: ModelDescription
    output: Path
    options: CoreMLOptions = field(default_factory=CoreMLOptions)
    extra: tuple[ModelDescription, ...] = ()  # options.resolutions resolved: one function each
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.extra and not self.model.config.any_res:
            raise FvdeployError("--resolutions needs an _any_res model")

    def argv(self) -> tuple[str, ...]:
        return ("coreml", *self.model.cli_args(), *self.options.argv(), "--output", str(self.output))

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        n = self.model.config.num_classes
        if self.model.config.features_only:  # a backbone: one MultiArray per level, as in the ONNX
            return self.model.outputs
        if self.options.raw_logits:
            return (TensorSpec("logits", (n,), TensorKind.logits),)
        return (TensorSpec("classLabel_probs", (n,), TensorKind.probabilities),)

