"""`fvdeploy build-trt` as a plan stage (light: plan.CONVERTERS names the converter that does the work, in build.py,
which needs a TensorRT runtime)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..core.options import BuilderOptions, OnnxSource, TensorRTRuntime, TunedBatchProfile
from ..core.record import FormatKey
from .profile import Profile, trtexec_command

if TYPE_CHECKING:
    from ..core.model_spec import ModelDescription
    from ..core.record import RecordedArtifact


def engine_format(builder: BuilderOptions) -> FormatKey:
    """The engine's format: a TensorRT for RTX engine is its own (it runs nowhere else)."""
    return FormatKey.tensorrt_rtx if builder.runtime is TensorRTRuntime.tensorrt_rtx else FormatKey.tensorrt


@dataclass(frozen=True)
class BuildJob:
    source: Path  # the precision-ready ONNX (written by an earlier stage of the same plan, or given)
    model: ModelDescription
    profile: TunedBatchProfile
    output: Path
    builder: BuilderOptions = field(default_factory=BuilderOptions)
    overwrite: bool = False
    source_artifact: RecordedArtifact | None = field(default=None, compare=False)

    @property
    def format(self) -> FormatKey:
        return engine_format(self.builder)

    @property
    def trt_profile(self) -> Profile:
        return Profile(self.model.input.name, self.model.input.shape, self.profile.min_batch, self.profile.tuned,
                       self.profile.max_batch)

    def argv(self) -> tuple[str, ...]:
        return ("build-trt", *OnnxSource(self.source).argv(), *self.profile.argv(), *self.builder.argv(),
                "--output", str(self.output))

    def trtexec(self) -> str:
        return trtexec_command(self.source, self.output, self.trt_profile, self.builder)

