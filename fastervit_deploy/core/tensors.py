"""The inputs and outputs of an artifact: names, shapes without the batch, element types and what they hold."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from .declare import Choice


class TensorKind(Choice):
    image = "image"  # normalised NCHW float
    rgb_image = "rgb-image"  # 8-bit RGB pixels (Core ML's image input)
    logits = "logits"
    probabilities = "probabilities"
    features = "features"  # a backbone's stage map

    @property
    def classes(self) -> bool:
        """Scores over classes (top-k makes sense)."""
        return self in (TensorKind.logits, TensorKind.probabilities)


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of an artifact, without the batch dimension."""

    name: str
    shape: tuple[int, ...]
    kind: TensorKind
    dtype: str = "float32"

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", TensorKind(self.kind))
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "kind": self.kind.value, "dtype": self.dtype}

    @classmethod
    def from_dict(cls, d: Mapping) -> "TensorSpec":
        return cls(d["name"], tuple(d["shape"]), d["kind"], d.get("dtype", "float32"))

    def describe(self) -> str:
        return f"{self.name} [N, {', '.join(map(str, self.shape))}] {self.dtype}"


def class_output(outputs: tuple[TensorSpec, ...]) -> TensorSpec | None:
    """The output holding class scores (a classifier's), or None (a backbone)."""
    return next((o for o in outputs if o.kind.classes), None)
