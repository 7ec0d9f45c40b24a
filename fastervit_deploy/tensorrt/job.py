"""`fvdeploy build-trt` as a plan stage (light: formats.FORMATS names the converter that does the work, in build.py, which needs TensorRT)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..core.options import BuilderOptions, OnnxSource, TunedBatchProfile
from .profile import Profile, trtexec_command

if TYPE_CHECKING:
    from ..core.model_spec import ModelDescription
    from ..core.record import RecordedArtifact


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
    def trt_profile(self) -> Profile:
        return Profile(self.model.input.name, self.model.input.shape, self.profile.min_batch, self.profile.tuned,
                       self.profile.max_batch)

    def argv(self) -> tuple[str, ...]:
        return ("build-trt", *OnnxSource(self.source).argv(), *self.profile.argv(), *self.builder.argv(),
                "--output", str(self.output))

    def trtexec(self) -> str:
        return trtexec_command(self.source, self.output, self.trt_profile, self.builder)

