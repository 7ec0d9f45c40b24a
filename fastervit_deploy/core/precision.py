"""Numeric precisions of artifacts, and the tolerances that judge them against FP32."""

from __future__ import annotations

from dataclasses import dataclass, replace

from .declare import Choice, OptionGroup, option


class Precision(Choice):
    fp32 = "fp32"
    fp16 = "fp16"
    int8 = "int8"
    fp8 = "fp8"  # E4M3, Hopper and Ada GPUs (TensorRT)

    @property
    def quantized(self) -> bool:
        """Q/DQ graphs (calibrated scales)."""
        return self in (Precision.int8, Precision.fp8)


# Op types every FP16, INT8 and FP8 graph computes in fp32 (the precision policy's rule 6: LayerNorm statistics).
FP32_OPS = ("LayerNormalization",)


class QuantTarget(Choice):
    """What a reduced-precision graph is made for: its Q/DQ placement, types and float part follow it."""

    tensorrt = "tensorrt"  # TensorRT's fusions; the rest FP16
    onnxruntime_cpu = "onnxruntime-cpu"  # onnxruntime's CPU integer kernels; the rest FP32


@dataclass(frozen=True)
class Tolerance(OptionGroup):
    PANEL = "Tolerances (default: per precision)"

    max_abs: float | None = option(None, "Maximum |Δ| of any output value.", min=0.0)
    min_cosine: float | None = option(None, "Minimum cosine per image.", min=-1.0, max=1.0)
    min_top1: float | None = option(None, "Minimum top-1 agreement, a fraction (0.95 = 95 %).", min=0.0, max=1.0)

    def override(self, other: "Tolerance") -> "Tolerance":
        """``other``'s values where it has one (command-line overrides over per-precision defaults)."""
        return replace(self, **{k: v for k, v in other.values().items() if v is not None})

    def to_dict(self) -> dict:
        return self.values()


# fp32 must match to rounding; reduced precisions are judged by direction (cosine) and decisions.
TOLERANCES = {
    Precision.fp32: Tolerance(max_abs=1e-4, min_cosine=0.99999, min_top1=1.0),
    Precision.fp16: Tolerance(min_cosine=0.999, min_top1=0.9),
    Precision.int8: Tolerance(min_cosine=0.99, min_top1=0.8),
    Precision.fp8: Tolerance(min_cosine=0.99, min_top1=0.8),
}
