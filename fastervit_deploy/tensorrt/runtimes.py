"""The two TensorRT runtimes fvdeploy builds with, and every difference between them, in one table.

TensorRT (``tensorrt`` 10.x/11.x) builds on, and for, the GPU it runs on; its engines run in TensorRT and in
Triton's TensorRT backend. TensorRT for RTX (``tensorrt_rtx``) has the same builder, network, ONNX parser,
optimization-profile and progress-monitor API, types every network strongly, and builds ahead of time for
chosen compute capabilities on a machine without a GPU (its compiler finishes kernels on the target GPU);
its engines run only in TensorRT for RTX. Neither can load an engine without a CUDA driver.

Nothing here imports a runtime until one is asked for (``load``), so reading the table costs nothing.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass

from ..core.options import TensorRTRuntime as RuntimeKey
from ..system.errors import FvdeployError, MissingDependency
from ..system.optional import cuda_missing


@dataclass(frozen=True)
class Runtime:
    key: RuntimeKey
    module: str  # the Python module
    title: str  # how messages name it
    pip: str  # what installs it
    majors: tuple[int, ...]  # the major versions fvdeploy is written for
    strongly_typed_flag: bool  # needs NetworkDefinitionCreationFlag.STRONGLY_TYPED (TensorRT 10; 11 ignores it)
    ahead_of_time: bool  # builds for chosen compute capabilities, with no GPU needed
    timing_cache: bool  # config.set_timing_cache does something (TensorRT for RTX: a deprecated no-op)
    # Compute capabilities it compiles for ahead of time, "major.minor" -> its trt.ComputeCapability member.
    capabilities: tuple[tuple[str, str], ...] = ()

    def installed(self) -> bool:
        return importlib.util.find_spec(self.module) is not None

    def load(self, hint: str = ""):
        """The runtime's module, version-checked; ``hint`` says how to go on without it (exit 3)."""
        try:
            trt = importlib.import_module(self.module)
        except ImportError as err:
            raise MissingDependency(f"{self.title} is not installed ({self.pip}){hint}") from err
        if major(trt) not in self.majors:
            supported = " or ".join(f"{m}.x" for m in self.majors)
            raise MissingDependency(f"{self.title} {trt.__version__} is not supported (need {supported}){hint}")
        return trt

    def capability_member(self, trt, capability: str):
        """``trt.ComputeCapability.SM89`` for ``"8.9"``."""
        return getattr(trt.ComputeCapability, dict(self.capabilities)[capability])


RUNTIMES: dict[RuntimeKey, Runtime] = {r.key: r for r in (
    Runtime(RuntimeKey.tensorrt, "tensorrt", "TensorRT", "Python package `tensorrt`, 10.x or 11.x, on a CUDA machine",
            (10, 11), strongly_typed_flag=True, ahead_of_time=False, timing_cache=True),
    # cu12: its engines run with any NVIDIA driver for CUDA 12 (R525 and later); the cu13 wheel needs R580+.
    Runtime(RuntimeKey.tensorrt_rtx, "tensorrt_rtx", "TensorRT for RTX", "pip install tensorrt-rtx-cu12==1.7.1.116",
            (1,), strongly_typed_flag=False, ahead_of_time=True, timing_cache=False,
            capabilities=(("7.5", "SM75"), ("8.0", "SM80"), ("8.6", "SM86"), ("8.9", "SM89"), ("12.0", "SM120"),
                          ("12.1", "SM121"))),
)}


def major(trt) -> int:
    return int(trt.__version__.split(".")[0])


def check_capabilities(runtime: Runtime, capabilities: tuple[str, ...]) -> tuple[str, ...]:
    """The compute capabilities asked for, each one the runtime compiles for (``"8.9"``, ``"12.0"``)."""
    if capabilities and not runtime.ahead_of_time:
        raise FvdeployError(f"{runtime.title} builds for the GPU it runs on: --compute-capability is for --runtime "
                            f"{RuntimeKey.tensorrt_rtx}")
    known = [c for c, _ in runtime.capabilities]
    for capability in capabilities:
        if capability not in known:
            raise FvdeployError(f"--compute-capability {capability}: {runtime.title} compiles for {', '.join(known)}")
    if len(set(capabilities)) != len(capabilities):
        raise FvdeployError(f"--compute-capability names {', '.join(capabilities)}: each capability once")
    return capabilities


def parsing_runtime():
    """(Runtime, module) of the first installed runtime whose parser works here (TensorRT first), or None."""
    for runtime in RUNTIMES.values():
        if not runtime.installed():
            continue
        try:
            trt = runtime.load()
            trt.Builder(trt.Logger(trt.Logger.ERROR))  # TensorRT proper needs a CUDA device even for this
        except Exception:  # noqa: BLE001 - any failure: try the next runtime
            continue
        return runtime, trt
    return None


def missing_to_build(key: RuntimeKey) -> str | None:
    """None where this machine can build the runtime's engines, else why not."""
    runtime = RUNTIMES[key]
    if not runtime.installed():
        return f"{runtime.title} is not installed ({runtime.pip})"
    return None if runtime.ahead_of_time else cuda_missing()


def missing_to_run(key: RuntimeKey) -> str | None:
    """None where this machine can run the runtime's engines, else why not."""
    runtime = RUNTIMES[key]
    if not runtime.installed():
        return f"{runtime.title} is not installed ({runtime.pip})"
    if cuda_missing():
        return ("it runs on an RTX-class NVIDIA GPU with TensorRT for RTX, and no CUDA GPU is visible here"
                if runtime.ahead_of_time else "it runs on a CUDA GPU, and none is visible here")
    return None
