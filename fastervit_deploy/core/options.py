"""What a command was asked to do: option groups, each option declared once (``core.declare``).

The CLI builds its parameters from these declarations; the plan and the backends read the parsed,
immutable groups; every job writes its reproducing command line from them. This module imports
nothing heavy (no torch, onnx or numpy), so a command line is parsed, and its output paths checked,
before any of those load: a bad path is refused at once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping

from ..system.errors import FvdeployError
from ..system.hub import remote_checkpoint
from .declare import Choice, OptionGroup, ints, joined, option
from .precision import FP32_OPS, Precision, QuantTarget


def _checkpoint_words(path: Path) -> list[str]:
    """A checkpoint as a command line gives it again (a hub file as hf://..., which a Path spells hf:/...)."""
    remote = remote_checkpoint(path)
    return [remote.uri if remote is not None else str(path)]


@dataclass(frozen=True)
class ModelRequest(OptionGroup):
    """Which model was asked for; ``None`` means the variant's default (or, for an artifact, its record's)."""

    PANEL = "Model"

    model: str | None = option(None, "Registered variant (see `fvdeploy models`).", flags=("--model", "-m"))
    pretrained: bool = option(False, "NVIDIA's published weights of the variant (the file its configuration is "
                                     "initialised from), fetched once into the Hugging Face cache and checked "
                                     "against the hub's sha256; HF_HOME, HF_ENDPOINT, HF_HUB_OFFLINE apply.",
                              flags=("--pretrained",))
    checkpoint: Path | None = option(None, "Official .pth.tar or fvdeploy checkpoint: a file, hf://OWNER/REPO/FILE "
                                           "or a hub's https://.../resolve/... URL; without it (or --pretrained), "
                                           "seeded checkpoint-like random weights.", text=_checkpoint_words)
    resolution: tuple[int, int] | None = option(None, "Input height and width (one value: square; default: the "
                                                      "variant's).", metavar="H W", one_for_both=True)
    window_size: tuple[int, ...] | None = option(
        None, "Window size: one value or four comma-separated (stage 0..3), e.g. 7,7,12,6 (any-res default: "
              "chosen to fit).", cli_type=str, parse=ints("--window-size"), text=joined)
    ct_size: int | None = option(None, "Carrier tokens per window side (official: 2).", min=1)
    seed: int = option(0, "Seed of the random weights used without --checkpoint.", min=0)
    features: tuple[int, ...] | None = option(
        None, "Backbone: output the feature maps of these stages (comma-separated, 0..3; bare --features: all "
              "four) as feat_s4..feat_s32 instead of logits.", cli_type=str, metavar="[INDICES]",
        parse=ints("--features"), text=joined, bare="0,1,2,3")
    checkpoint_prefix: str = option("", "Take the checkpoint's keys under this prefix, e.g. a detector's "
                                        "backbone.0.")
    labels: Path | None = option(None, "Class names, one per line in output order (default: the checkpoint's; "
                                       "ImageNet's for a 1000-class head).")
    overrides: Mapping[str, Any] = field(default_factory=dict)  # API only: further constructor options

    @property
    def any_given(self) -> bool:
        """True when any model option was given (an artifact's record is then checked against them)."""
        return bool(self.given) or bool(self.overrides)


@dataclass(frozen=True)
class OutputTarget(OptionGroup):
    """Where an artifact goes (``None``: named after the model and resolution)."""

    PANEL = "Output"

    output: Path | None = option(None, "Artifact path (default: named after the model and resolution).",
                                 flags=("--output", "-o"), reproduce=False)
    overwrite: bool = option(False, "Replace existing outputs (never a folder that is not a Core ML package).",
                             reproduce=False)

    def or_default(self, default: str | Path) -> Path:
        return Path(self.output) if self.output is not None else Path(default)


DEFAULT_OPT_BATCH = 8  # the batch TensorRT tunes for, kept inside the range


@dataclass(frozen=True)
class BatchProfile(OptionGroup):
    """The batch sizes an artifact serves."""

    PANEL = "Batch range"

    min_batch: int = option(1, "Smallest batch the artifact must serve.", min=1)
    max_batch: int = option(64, "Largest batch the artifact must serve.", min=1)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_batch < self.min_batch:
            raise FvdeployError(f"batch range {self.min_batch}..{self.max_batch} is invalid (need 1 <= --min-batch "
                                "<= --max-batch)")

    @property
    def range(self) -> tuple[int, int]:
        return (self.min_batch, self.max_batch)

    def clip(self, batch: int) -> int:
        return min(max(batch, self.min_batch), self.max_batch)


@dataclass(frozen=True)
class TunedBatchProfile(BatchProfile):
    """A TensorRT optimization profile: the batch range and the batch the builder tunes for."""

    opt_batch: int | None = option(None, f"Batch TensorRT tunes for (default {DEFAULT_OPT_BATCH}, within the range).",
                                   min=1)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.opt_batch is not None and not self.min_batch <= self.opt_batch <= self.max_batch:
            raise FvdeployError(f"need --min-batch <= --opt-batch <= --max-batch, got {self.min_batch}, "
                                f"{self.opt_batch}, {self.max_batch}")

    @property
    def tuned(self) -> int:
        return self.opt_batch if self.opt_batch is not None else self.clip(DEFAULT_OPT_BATCH)

    def untuned(self) -> BatchProfile:
        return BatchProfile(self.min_batch, self.max_batch)


# The TorchScript exporter writes opsets up to 20; the dynamo exporter cannot down-convert FasterViT
# to 17 (ecosystem.md), and 17 is what TensorRT 8.6+ recipes use.
SUPPORTED_OPSETS = (17, 18, 19, 20)


class Simplifier(Choice):
    onnxslim = "onnxslim"
    onnxsim = "onnxsim"
    none = "none"


@dataclass(frozen=True)
class OnnxOptions(OptionGroup):
    PANEL = "ONNX"

    opset: int = option(17, "ONNX opset.", min=min(SUPPORTED_OPSETS), max=max(SUPPORTED_OPSETS))
    simplify: Simplifier = option(Simplifier.onnxslim, "Graph simplifier.")
    external_data: bool | None = option(None, "Weights in a .data file (default: only above 2 GB).",
                                        flags=("--external-data/--no-external-data",), negatable=True)
    no_verify: bool = option(False, "Skip the onnxruntime parity check of the export.")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.opset not in SUPPORTED_OPSETS:
            raise FvdeployError(f"opset {self.opset} is not supported (choose {', '.join(map(str, SUPPORTED_OPSETS))})")


@dataclass(frozen=True)
class PrecisionFlags(OptionGroup):
    """The precision a quantize or build-trt command makes (at most one flag)."""

    PANEL = "Precision"

    fp16: bool = option(False, "FP16 graph (fp32 inputs and outputs).", flags=("--fp16",))
    int8: bool = option(False, "INT8 Q/DQ graph, the rest FP16 (TensorRT) or FP32 (--target onnxruntime-cpu); needs "
                               "calibration images or a cache.", flags=("--int8",))
    fp8: bool = option(False, "FP8 E4M3 Q/DQ graph for TensorRT on Hopper and Ada GPUs (compute capability 8.9+), "
                              "the rest FP16; needs calibration images or a cache.", flags=("--fp8",))

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.chosen) > 1:
            raise FvdeployError(f"choose one of {' and '.join(self.flag(n) for n in self.chosen)}")

    @property
    def chosen(self) -> tuple[str, ...]:
        return tuple(name for name, on in self.values().items() if on)

    @property
    def precision(self) -> Precision | None:
        return Precision(self.chosen[0]) if self.chosen else None

    @classmethod
    def of(cls, precision: Precision) -> "PrecisionFlags":
        return cls(**{Precision(precision).value: True})




@dataclass(frozen=True)
class TargetOptions(OptionGroup):
    """What the reduced-precision graph is made for, and what of it stays fp32."""

    PANEL = "Precision"

    target: QuantTarget = option(QuantTarget.tensorrt, "tensorrt: Q/DQ where TensorRT fuses them, the rest FP16; "
                                                       "onnxruntime-cpu: INT8 where onnxruntime's CPU kernels run "
                                                       "it, the rest FP32.")
    keep_fp32: tuple[str, ...] = option(FP32_OPS, "Op type kept in fp32 besides LayerNormalization "
                                                          "(repeatable).", repeat=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        # The policy's fp32 ops always stay: --keep-fp32 adds to them (README), it never lowers a LayerNorm.
        object.__setattr__(self, "keep_fp32", tuple(dict.fromkeys((*FP32_OPS, *self.keep_fp32))))


class CalibrationMethod(Choice):
    entropy = "entropy"
    max = "max"
    percentile = "percentile"
    auto = "auto"  # one calibration pass for all three; the one with the best held-out figures is kept


class QuantBackend(Choice):
    auto = "auto"
    modelopt = "modelopt"
    onnxruntime = "onnxruntime"


@dataclass(frozen=True)
class CalibrationOptions(OptionGroup):
    PANEL = "INT8 calibration"

    calib_dir: Path | None = option(None, "Folder of real calibration images.")
    calib_images: int = option(512, "Use at most this many calibration images.", min=1)
    method: CalibrationMethod = option(CalibrationMethod.entropy, "Calibration method (--fp8: max unless given).")
    calib_cache: Path | None = option(None, "Scales cache: written after calibrating, reused (validated) when present.")
    backend: QuantBackend = option(QuantBackend.auto, "auto: ModelOpt if installed, else onnxruntime.")
    exclude: tuple[str, ...] = option((), "Node-name pattern kept out of INT8 (repeatable).", repeat=True)

    @property
    def cache_hit(self) -> bool:
        return self.calib_cache is not None and Path(self.calib_cache).is_file()


class Fallback(Choice):
    off = "off"
    auto = "auto"  # keep the most sensitive site groups in FP16 until the target is met


@dataclass(frozen=True)
class LabelledData(OptionGroup):
    """Labelled images (evaluate, debug, and quantize's accuracy target): one declaration of where they are."""

    PANEL = "Labelled data"

    data: Path | None = option(None, "Labelled images: one folder per class (ImageFolder), or a flat folder with "
                                     "--labels-file.")
    labels_file: Path | None = option(None, "'file label' lines or CSV (ImageNet's validation layout) for a flat "
                                            "--data folder; labels: class names, synsets or indices.")
    limit: int | None = option(None, "Use a seeded subset of this many labelled images, spread over the classes "
                                     "(default: all for evaluate, 64 for debug, 256 for quantize).", min=1)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.labels_file is not None and self.data is None:
            raise FvdeployError("--labels-file goes with --data")

    def limit_or(self, default: int | None) -> int | None:
        """The subset size: the one given, else the command's own default."""
        return self.limit if self.limit is not None else default


@dataclass(frozen=True)
class AccuracyTarget(LabelledData):
    """What a quantized graph must keep: the tolerances (a Tolerance group), and accuracy on labelled images."""

    PANEL = "Accuracy target"

    # quantize's trials run every candidate graph on the subset: 256 images keep a trial to seconds
    DEFAULT_LIMIT: ClassVar[int] = 256

    fallback: Fallback = option(Fallback.off, "auto: when the INT8 graph misses the tolerances (or --max-drop on "
                                              "--data), keep its most sensitive site groups in FP16 until it meets them.")
    max_drop: float = option(1.0, "With --data: the largest top-1 drop (points) against the FP32 graph.", min=0.0)
    max_fallback: int | None = option(None, "--fallback auto keeps at most this many site groups in FP16 (default: "
                                            "as many as it takes).", min=1)


class TensorRTRuntime(Choice):
    """The runtime an engine is built with and runs in (tensorrt/runtimes.py: what differs between them)."""

    tensorrt = "tensorrt"
    tensorrt_rtx = "tensorrt-rtx"


def _capabilities(text: str | list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    """``"8.9,12.0"`` (or a repeated option's list) → ``("8.9", "12.0")``."""
    if not text:
        return ()
    parts = [text] if isinstance(text, str) else list(text)
    words = tuple(w for part in parts for w in str(part).replace(",", " ").split())
    for word in words:
        major, _, minor = word.partition(".")
        if not (major.isdigit() and minor.isdigit()):
            raise FvdeployError(f"--compute-capability takes MAJOR.MINOR values such as 8.9 or 12.0, got {word!r}")
    return words


@dataclass(frozen=True)
class BuilderOptions(OptionGroup):
    """TensorRT builder settings (the batch profile is a TunedBatchProfile)."""

    PANEL = "TensorRT builder"

    runtime: TensorRTRuntime = option(TensorRTRuntime.tensorrt, "tensorrt: an engine for TensorRT (and Triton) on this "
                                                                "machine's GPU; tensorrt-rtx: an engine for TensorRT "
                                                                "for RTX, built ahead of time for --compute-capability "
                                                                "(no GPU needed to build; it runs only in TensorRT for "
                                                                "RTX).")
    compute_capability: tuple[str, ...] = option(
        (), "TensorRT for RTX: the GPUs' compute capabilities, comma-separated (several make one engine for all), "
            "e.g. 8.9 or 8.9,12.0 (default with a GPU: this GPU's).", cli_type=str, metavar="CC[,CC...]",
        parse=_capabilities, text=lambda caps: [",".join(caps)])
    timing_cache: Path | None = option(None, "Timing cache file: loaded if present, saved after.")
    workspace: float | None = option(None, "Workspace memory limit in GiB.", min=0.0)
    opt_level: int | None = option(None, "Builder optimization level (TensorRT's default 3).", min=0, max=5)
    version_compatible: bool = option(False, "Engine loadable by later TensorRT versions.")

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "compute_capability", _capabilities(self.compute_capability))
        if self.workspace is not None and self.workspace <= 0:
            raise FvdeployError("--workspace must be positive (GiB)")


class ComputeUnits(Choice):
    all = "all"
    cpu_and_ne = "cpu_and_ne"
    cpu_and_gpu = "cpu_and_gpu"
    cpu_only = "cpu_only"


class DeploymentTarget(Choice):
    iOS16 = "iOS16"
    iOS17 = "iOS17"
    iOS18 = "iOS18"
    macOS13 = "macOS13"
    macOS14 = "macOS14"
    macOS15 = "macOS15"


MULTIFUNCTION_TARGETS = (DeploymentTarget.iOS18, DeploymentTarget.macOS15)


def _hw(texts: tuple[str, ...] | list[str] | None) -> tuple[tuple[int, int], ...]:
    sizes = []
    for text in texts or ():
        if isinstance(text, tuple):
            sizes.append(text)
            continue
        try:
            h, w = (int(v) for v in text.lower().split("x"))
        except ValueError as err:
            raise FvdeployError(f"--resolutions takes HxW, got {text!r}") from err
        sizes.append((h, w))
    return tuple(sizes)


@dataclass(frozen=True)
class CoreMLOptions(OptionGroup):
    PANEL = "Core ML"

    precision: Precision = option(Precision.fp16, "Compute precision.", choices=(Precision.fp16, Precision.fp32))
    max_batch: int = option(1, "Flexible batch 1..N (1: fixed).", min=1)
    compute_units: ComputeUnits = option(ComputeUnits.all, "Default compute units when loading.")
    deployment_target: DeploymentTarget = option(DeploymentTarget.iOS17, "Minimum OS.")
    raw_logits: bool = option(False, "Output logits instead of a classifier.")
    resolutions: tuple[tuple[int, int], ...] = option(
        (), "Extra HxW (any-res; one function each; needs --deployment-target iOS18 or macOS15).", cli_type=list[str],
        repeat=True, parse=_hw, text=lambda hw: [f"{hw[0]}x{hw[1]}"])

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.precision not in self.declaration("precision").choices:
            raise FvdeployError(f"Core ML computes in fp16 or fp32, not {self.precision}")
        if self.resolutions and self.deployment_target not in MULTIFUNCTION_TARGETS:
            raise FvdeployError("several resolutions make a multifunction package: use --deployment-target iOS18 "
                                "or macOS15")


class Provider(Choice):
    """onnxruntime execution providers fvdeploy can ask for."""

    cpu = "cpu"
    cuda = "cuda"
    tensorrt = "tensorrt"


@dataclass(frozen=True)
class RunOptions(OptionGroup):
    PANEL = "Runtime"

    provider: Provider = option(Provider.cpu, "onnxruntime execution provider (cuda and tensorrt need "
                                              "onnxruntime-gpu).")
    threads: int | None = option(None, "CPU threads for onnxruntime and PyTorch (at most this machine's cores).",
                                 min=1)
    # Interleaved timing (benchmark, evaluate --speed): onnxruntime's idle intra-op threads spin-wait after a
    # run and take the cores from the next runner; measured, identical graphs then timed 1.17x vs 1.42x.
    spinning: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        cores = os.cpu_count() or 1
        if self.threads is not None and self.threads > cores:  # it ran, slower, without a word
            raise FvdeployError(f"--threads {self.threads}: this machine has {cores} cores (more threads than cores "
                                "only take turns on them)")


@dataclass(frozen=True)
class OnnxSource(OptionGroup):
    """build-trt's input graph (or --model to export one first)."""

    onnx: Path | None = option(None, "ONNX to build (from export-onnx or quantize).", flags=("--onnx",))


@dataclass(frozen=True)
class ImagesOption(OptionGroup):
    images: Path | None = option(None, "Folder of images for the parity figures (default: scikit-image's photos).")


class TritonBackend(Choice):
    auto = "auto"  # tensorrt for .plan, onnxruntime for .onnx
    tensorrt = "tensorrt"
    onnxruntime = "onnxruntime"
    python = "python"  # the ONNX on onnxruntime inside Triton's Python backend (CPU hosts, tests)


class InstanceKind(Choice):
    auto = "auto"  # GPU for plans and the onnxruntime backend, CPU for the python backend
    cpu = "cpu"
    gpu = "gpu"


@dataclass(frozen=True)
class TritonOptions(OptionGroup):
    PANEL = "Triton"

    repository: Path | None = option(None, "Model repository folder (created if missing).", required=True)
    name: tuple[str, ...] = option((), "Model name, one per artifact (default: model, resolution and precision).",
                                   repeat=True)
    version: int = option(1, "Version folder.", min=1)
    instances: int = option(1, "Model instances (instance_group count).", min=1)
    max_queue_delay_us: int = option(100, "Dynamic batching: longest wait to fill a batch.", min=0)
    preferred_batch: tuple[int, ...] = option((), "Preferred batch sizes (default: 4, 8, 16, 32 within the batch "
                                                  "range).", cli_type=list[str], repeat=True,
                                              parse=lambda v: ints("--preferred-batch")(v) or ())
    backend: TritonBackend = option(TritonBackend.auto, "auto: tensorrt for .plan, onnxruntime for .onnx; python: "
                                                        "the ONNX on onnxruntime in Triton's Python backend (CPU).")
    instance_kind: InstanceKind = option(InstanceKind.auto, "auto: GPU, CPU for the python backend.")
    ort_tensorrt: bool = option(False, "onnxruntime backend on a GPU host: TensorRT accelerator, FP16, engine cache.",
                                flags=("--ort-tensorrt",))
    preprocess: bool = option(False, "Add a preprocessing model and an ensemble that take encoded JPEG/PNG bytes.",
                              flags=("--preprocess",))
    overwrite: bool = option(False, "Replace models of the same name.")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.repository is None:
            raise FvdeployError("give --repository DIR")


@dataclass(frozen=True)
class ServerOptions(OptionGroup):
    """How a served model (``triton://HOST:PORT/MODEL``) is talked to: verify, evaluate, benchmark, predict."""

    PANEL = "Served model (triton://)"

    timeout: float = option(30.0, "Seconds a Triton server may take to answer one request, connecting included, "
                                  "before the command ends with one line.", min=0.01)
    # Requests in flight at once (evaluate --concurrency; benchmark sweeps its own list).
    concurrency: int = 1
