"""TensorRT facts that need no TensorRT: the optimization profile and the equivalent trtexec line."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from ..core.options import BuilderOptions


# TensorRT runs FP8 on Hopper and Ada (compute capability 8.9 and 9.0+); earlier GPUs have no FP8 tensor cores.
FP8_MIN_CAPABILITY = (8, 9)


def unsupported_precision(precision: str, capability: str) -> str | None:
    """Why a GPU of this compute capability ("8.6") cannot run an engine of this precision, or None."""
    major, minor = (int(v) for v in capability.split(".")[:2])
    if precision == "fp8" and (major, minor) < FP8_MIN_CAPABILITY:
        return (f"FP8 engines need compute capability {FP8_MIN_CAPABILITY[0]}.{FP8_MIN_CAPABILITY[1]} or newer (Ada, "
                f"Hopper); this GPU is {capability}: use --int8 or --fp16")
    return None


@dataclass(frozen=True)
class Profile:
    """One optimization profile over the batch dimension (C/H/W are fixed in our graphs)."""

    input_name: str
    chw: tuple[int, int, int]
    min_batch: int = 1
    opt_batch: int = 8
    max_batch: int = 64

    def shape(self, batch: int) -> tuple[int, int, int, int]:
        return (batch, *self.chw)

    def trtexec_shape(self, batch: int) -> str:
        return f"{self.input_name}:{'x'.join(map(str, self.shape(batch)))}"

    def to_dict(self) -> dict:
        return {"input": self.input_name, "min": list(self.shape(self.min_batch)),
                "opt": list(self.shape(self.opt_batch)), "max": list(self.shape(self.max_batch))}


def trtexec_command(onnx_path: Path, plan: Path, profile: Profile, opts: BuilderOptions = BuilderOptions()) -> str:
    """The equivalent trtexec line (TensorRT 10 needs --stronglyTyped; 11 types every network strongly)."""
    args = ["trtexec", f"--onnx={onnx_path}", "--stronglyTyped", f"--minShapes={profile.trtexec_shape(profile.min_batch)}",
            f"--optShapes={profile.trtexec_shape(profile.opt_batch)}",
            f"--maxShapes={profile.trtexec_shape(profile.max_batch)}", f"--saveEngine={plan}"]
    if opts.timing_cache:
        args.append(f"--timingCacheFile={opts.timing_cache}")
    if opts.opt_level is not None:
        args.append(f"--builderOptimizationLevel={opts.opt_level}")
    if opts.workspace:
        args.append(f"--memPoolSize=workspace:{int(opts.workspace * 1024)}M")
    if opts.version_compatible:
        args.append("--versionCompatible")
    return " ".join(shlex.quote(a) for a in args)
