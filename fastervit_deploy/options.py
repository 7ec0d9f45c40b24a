"""What a command was asked to do, as plain immutable dataclasses and enums.

The CLI's option groups parse into these; the plan and the backends read them. This module imports
nothing heavy (no torch, onnx or numpy), so a command line is parsed, and its output paths checked,
before any of those load: a bad path is refused at once.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any, Mapping

from .errors import FvdeployError


@dataclass(frozen=True)
class ModelRequest:
    """Which model was asked for; ``None`` means the variant's default (or, for verify, the artifact's)."""

    name: str | None = None
    checkpoint: Path | None = None
    resolution: tuple[int, int] | None = None
    window_size: tuple[int, ...] | None = None
    ct_size: int | None = None
    seed: int = 0
    features: tuple[int, ...] | None = None  # backbone: the stages whose maps are the outputs
    checkpoint_prefix: str = ""  # take the checkpoint's keys under this prefix (a detector's backbone.0.)
    overrides: Mapping[str, Any] = field(default_factory=dict)  # API only: further constructor options

    @property
    def given(self) -> bool:
        """True when any model option was given (verify then rebuilds from them, not from the record)."""
        return any(v is not None for v in (self.name, self.checkpoint, self.resolution, self.window_size,
                                           self.ct_size, self.features)) or bool(self.overrides)


@dataclass(frozen=True)
class OutputTarget:
    """Where an artifact goes (``None``: named after the model and resolution)."""

    path: Path | None = None
    overwrite: bool = False

    def or_default(self, default: str | Path) -> Path:
        return Path(self.path) if self.path is not None else Path(default)


DEFAULT_MAX_BATCH = 64
DEFAULT_OPT_BATCH = 8


@dataclass(frozen=True)
class BatchProfile:
    """The batch sizes an artifact serves; ``opt`` is the size TensorRT tunes for."""

    min: int = 1
    max: int = DEFAULT_MAX_BATCH
    opt: int | None = None  # default: 8, kept inside the range

    def __post_init__(self) -> None:
        if self.min < 1 or self.max < self.min:
            raise FvdeployError(f"batch range {self.min}..{self.max} is invalid (need 1 <= --min-batch <= --max-batch)")
        if self.opt is not None and not self.min <= self.opt <= self.max:
            raise FvdeployError(f"need --min-batch <= --opt-batch <= --max-batch, got {self.min}, {self.opt}, {self.max}")

    @property
    def range(self) -> tuple[int, int]:
        return (self.min, self.max)

    @property
    def tuned(self) -> int:
        return self.opt if self.opt is not None else self.clip(DEFAULT_OPT_BATCH)

    def clip(self, batch: int) -> int:
        return min(max(batch, self.min), self.max)

    def argv(self, with_opt: bool = False) -> list[str]:
        args = ["--min-batch", str(self.min), "--max-batch", str(self.max)]
        return args + (["--opt-batch", str(self.tuned)] if with_opt else [])


def _coerce(obj: object, **enums: type[Enum]) -> None:
    """Frozen dataclasses accept enum values as strings too (API callers): convert them in place."""
    for name, kind in enums.items():
        object.__setattr__(obj, name, kind(getattr(obj, name)))


# The TorchScript exporter writes opsets up to 20; the dynamo exporter cannot down-convert FasterViT
# to 17 (ecosystem.md), and 17 is what TensorRT 8.6+ recipes use.
SUPPORTED_OPSETS = (17, 18, 19, 20)


class Simplifier(str, Enum):
    onnxslim = "onnxslim"
    onnxsim = "onnxsim"
    none = "none"


DEFAULT_SIMPLIFIER = Simplifier.onnxslim


@dataclass(frozen=True)
class OnnxOptions:
    opset: int = 17
    simplify: Simplifier = DEFAULT_SIMPLIFIER
    external_data: bool | None = None  # None: only when the weights approach the 2 GiB protobuf limit

    def __post_init__(self) -> None:
        if self.opset not in SUPPORTED_OPSETS:
            raise FvdeployError(f"opset {self.opset} is not supported (choose {', '.join(map(str, SUPPORTED_OPSETS))})")
        _coerce(self, simplify=Simplifier)

    def argv(self) -> list[str]:
        args = ["--opset", str(self.opset), "--simplify", self.simplify.value]
        if self.external_data is not None:
            args.append("--external-data" if self.external_data else "--no-external-data")
        return args


class CalibrationMethod(str, Enum):
    entropy = "entropy"
    max = "max"
    percentile = "percentile"


class QuantBackend(str, Enum):
    auto = "auto"
    modelopt = "modelopt"
    onnxruntime = "onnxruntime"


@dataclass(frozen=True)
class CalibrationOptions:
    folder: Path | None = None
    images: int = 512
    method: CalibrationMethod = CalibrationMethod.entropy
    cache: Path | None = None
    backend: QuantBackend = QuantBackend.auto
    exclude: tuple[str, ...] = ()  # fnmatch patterns over node names kept out of INT8

    def __post_init__(self) -> None:
        _coerce(self, method=CalibrationMethod, backend=QuantBackend)
        if self.images < 1:
            raise FvdeployError("--calib-images must be at least 1")

    @property
    def cache_hit(self) -> bool:
        return self.cache is not None and Path(self.cache).is_file()

    def argv(self) -> list[str]:
        args = ["--calib-dir", str(self.folder)] if self.folder is not None else []
        args += ["--calib-images", str(self.images), "--method", self.method.value, "--backend", self.backend.value]
        if self.cache is not None:
            args += ["--calib-cache", str(self.cache)]
        for pattern in self.exclude:
            args += ["--exclude", pattern]
        return args


# Op types every FP16 or INT8 graph computes in fp32 (precision policy: LayerNorm statistics).
DEFAULT_FP32_OPS = ("LayerNormalization",)


@dataclass(frozen=True)
class Tolerance:
    max_abs: float | None = None
    min_cosine: float | None = None
    min_top1: float | None = None  # fraction 0..1 (classifier outputs only)

    def override(self, other: "Tolerance") -> "Tolerance":
        """``other``'s values where it has one (command-line overrides over per-precision defaults)."""
        return replace(self, **{k: v for k, v in asdict(other).items() if v is not None})

    def argv(self) -> list[str]:
        args = []
        for name, value in (("--max-abs", self.max_abs), ("--min-cosine", self.min_cosine),
                            ("--min-top1", self.min_top1)):
            if value is not None:
                args += [name, repr(value)]
        return args


@dataclass(frozen=True)
class BuilderOptions:
    """TensorRT builder settings (the batch profile is a BatchProfile)."""

    timing_cache: Path | None = None
    workspace_gib: float | None = None
    opt_level: int | None = None  # builder optimization level 0-5 (TensorRT's default: 3)
    version_compatible: bool = False

    def __post_init__(self) -> None:
        if self.opt_level is not None and not 0 <= self.opt_level <= 5:
            raise FvdeployError("--opt-level must be 0..5")
        if self.workspace_gib is not None and self.workspace_gib <= 0:
            raise FvdeployError("--workspace must be positive (GiB)")

    def argv(self) -> list[str]:
        args = ["--timing-cache", str(self.timing_cache)] if self.timing_cache is not None else []
        if self.workspace_gib is not None:
            args += ["--workspace", f"{self.workspace_gib:g}"]
        if self.opt_level is not None:
            args += ["--opt-level", str(self.opt_level)]
        return args + (["--version-compatible"] if self.version_compatible else [])


class CoreMLPrecision(str, Enum):
    fp16 = "fp16"
    fp32 = "fp32"


class ComputeUnits(str, Enum):
    all = "all"
    cpu_and_ne = "cpu_and_ne"
    cpu_and_gpu = "cpu_and_gpu"
    cpu_only = "cpu_only"


class DeploymentTarget(str, Enum):
    iOS16 = "iOS16"
    iOS17 = "iOS17"
    iOS18 = "iOS18"
    macOS13 = "macOS13"
    macOS14 = "macOS14"
    macOS15 = "macOS15"


MULTIFUNCTION_TARGETS = (DeploymentTarget.iOS18, DeploymentTarget.macOS15)


@dataclass(frozen=True)
class CoreMLOptions:
    precision: CoreMLPrecision = CoreMLPrecision.fp16
    max_batch: int = 1
    compute_units: ComputeUnits = ComputeUnits.all
    deployment_target: DeploymentTarget = DeploymentTarget.iOS17
    raw_logits: bool = False

    def __post_init__(self) -> None:
        _coerce(self, precision=CoreMLPrecision, compute_units=ComputeUnits, deployment_target=DeploymentTarget)
        if self.max_batch < 1:
            raise FvdeployError("--max-batch must be at least 1")

    def argv(self) -> list[str]:
        args = ["--precision", self.precision.value, "--max-batch", str(self.max_batch), "--compute-units",
                self.compute_units.value, "--deployment-target", self.deployment_target.value]
        return args + (["--raw-logits"] if self.raw_logits else [])


class Provider(str, Enum):
    """onnxruntime execution providers fvdeploy can ask for."""

    cpu = "cpu"
    cuda = "cuda"
    tensorrt = "tensorrt"


@dataclass(frozen=True)
class RunOptions:
    provider: Provider = Provider.cpu
    threads: int | None = None

    def __post_init__(self) -> None:
        _coerce(self, provider=Provider)


class TritonBackend(str, Enum):
    auto = "auto"  # tensorrt for .plan, onnxruntime for .onnx
    tensorrt = "tensorrt"
    onnxruntime = "onnxruntime"
    python = "python"  # the ONNX on onnxruntime inside Triton's Python backend (CPU hosts, tests)


class InstanceKind(str, Enum):
    auto = "auto"  # GPU for plans and the onnxruntime backend, CPU for the python backend
    cpu = "cpu"
    gpu = "gpu"


@dataclass(frozen=True)
class TritonOptions:
    repository: Path
    version: int = 1
    instances: int = 1
    max_queue_delay_us: int = 100
    preferred_batch: tuple[int, ...] = ()
    backend: TritonBackend = TritonBackend.auto
    instance_kind: InstanceKind = InstanceKind.auto
    ort_tensorrt: bool = False  # the onnxruntime backend's TensorRT accelerator (FP16, engine cache)
    preprocess: bool = False  # add a Python preprocessing model and an ensemble taking encoded images
    overwrite: bool = False
