"""The one place that imports TensorRT: lazy, version-gated, with a useful message when it is absent."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from .errors import MissingDependency

SUPPORTED_MAJORS = (10, 11)


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


def trtexec_command(onnx_path: Path, plan: Path, profile: Profile, timing_cache: Path | None = None,
                    opt_level: int | None = None, workspace_gib: float | None = None,
                    version_compatible: bool = False) -> str:
    """The equivalent trtexec line (TensorRT 10 needs --stronglyTyped; 11 types every network strongly)."""
    args = ["trtexec", f"--onnx={onnx_path}", "--stronglyTyped", f"--minShapes={profile.trtexec_shape(profile.min_batch)}",
            f"--optShapes={profile.trtexec_shape(profile.opt_batch)}",
            f"--maxShapes={profile.trtexec_shape(profile.max_batch)}", f"--saveEngine={plan}"]
    if timing_cache:
        args.append(f"--timingCacheFile={timing_cache}")
    if opt_level is not None:
        args.append(f"--builderOptimizationLevel={opt_level}")
    if workspace_gib:
        args.append(f"--memPoolSize=workspace:{int(workspace_gib * 1024)}M")
    if version_compatible:
        args.append("--versionCompatible")
    return " ".join(shlex.quote(a) for a in args)


def import_tensorrt(hint: str = ""):
    """Import ``tensorrt`` (10.x or 11.x) and check that a CUDA GPU is usable; explain what is missing."""
    try:
        import tensorrt as trt
    except ImportError:
        raise MissingDependency(f"TensorRT is not installed (Python package `tensorrt`, 10.x or 11.x, on a CUDA machine){hint}") from None
    major = int(trt.__version__.split(".")[0])
    if major not in SUPPORTED_MAJORS:
        raise MissingDependency(f"TensorRT {trt.__version__} is not supported (need 10.x or 11.x){hint}")
    import torch

    if not torch.cuda.is_available():
        raise MissingDependency(f"no CUDA GPU is visible to PyTorch (TensorRT {trt.__version__} is installed){hint}")
    return trt


def tensorrt_major(trt) -> int:
    return int(trt.__version__.split(".")[0])


def gpu_description() -> dict:
    import torch

    major, minor = torch.cuda.get_device_capability()
    return {"name": torch.cuda.get_device_name(), "compute_capability": f"{major}.{minor}",
            "cuda": torch.version.cuda}
