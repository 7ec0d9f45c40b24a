"""Hyper-parameters of one FasterViT model and the preprocessing its weights expect."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Sequence

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

NUM_STAGES = 4
TRANSFORMER_STAGES = (2, 3)  # stages 0 and 1 are convolutional in every variant


class FasterViTError(ValueError):
    """Input the model package cannot take (a configuration, resolution, checkpoint or model name)."""


def _four(value: int | Sequence[int], name: str) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * NUM_STAGES
    value = tuple(int(v) for v in value)
    if len(value) != NUM_STAGES:
        raise FasterViTError(f"{name} needs {NUM_STAGES} values (one per stage), got {len(value)}")
    return value


def as_hw(resolution: int | Sequence[int]) -> tuple[int, int]:
    """Accept ``224`` or ``[H, W]`` the way the official factories do."""
    if isinstance(resolution, int):
        return (resolution, resolution)
    values = tuple(int(v) for v in resolution)
    if len(values) == 1:
        return (values[0], values[0])
    if len(values) != 2:
        raise FasterViTError(f"resolution must be one size or [H, W], got {list(values)}")
    return values  # type: ignore[return-value]


@dataclass(frozen=True)
class FasterViTConfig:
    """Constructor hyper-parameters (names follow the official factories, SPEC.md §1)."""

    dim: int = 64
    in_dim: int = 64
    depths: tuple[int, ...] = (2, 3, 6, 5)
    num_heads: tuple[int, ...] = (2, 4, 8, 16)
    window_size: tuple[int, ...] = (7, 7, 7, 7)
    ct_size: int = 2
    mlp_ratio: float = 4.0
    resolution: tuple[int, int] = (224, 224)
    num_classes: int = 1000
    in_chans: int = 3
    layer_scale: float | None = None
    layer_scale_conv: float | None = None
    hat: tuple[bool, ...] = (False, False, True, False)
    do_propagation: bool = False
    drop_path_rate: float = 0.2
    qkv_bias: bool = True
    qk_scale: float | None = None
    # The any-resolution family pads stage maps to whole windows and builds carriers from the padded
    # size; the 224 family needs stage maps divisible by the window (SPEC.md §4).
    any_res: bool = False
    # Backbone form (timm's ``features_only``): the stages whose outputs, before their downsampler, the
    # model returns (strides 4, 8, 16, 32). None: the classifier. ``feature_norms``: a channel LayerNorm
    # on each returned map (``norm0``, ``norm1``, ``norm2``, ``norm``), as detection checkpoints have.
    out_indices: tuple[int, ...] | None = None
    feature_norms: bool = False

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass)
        set_("depths", _four(self.depths, "depths"))
        set_("num_heads", _four(self.num_heads, "num_heads"))
        set_("window_size", _four(self.window_size, "window_size"))
        set_("hat", tuple(bool(h) for h in _four(tuple(self.hat), "hat")))
        set_("resolution", as_hw(self.resolution))
        if self.out_indices is not None:
            indices = tuple(sorted({int(i) for i in self.out_indices}))
            if not indices or indices[0] < 0 or indices[-1] >= NUM_STAGES:
                raise FasterViTError(f"out_indices must be stages 0..{NUM_STAGES - 1}, got {list(self.out_indices)}")
            set_("out_indices", indices)
        elif self.feature_norms:
            raise FasterViTError("feature_norms needs out_indices (a backbone)")
        if self.layer_scale_conv is not None:
            raise FasterViTError("layer_scale_conv is not supported: no released FasterViT uses it")
        if min(self.resolution) <= 0:
            raise FasterViTError(f"resolution must be positive, got {list(self.resolution)}")
        if min(self.window_size) <= 0 or self.ct_size <= 0:
            raise FasterViTError("window_size and ct_size must be positive")
        if self.dim <= 0 or self.in_dim <= 0 or min(self.num_heads) <= 0:
            raise FasterViTError("dim, in_dim and num_heads must be positive")
        for i in TRANSFORMER_STAGES:
            if (self.dim * 2**i) % self.num_heads[i]:
                raise FasterViTError(f"stage {i}: width {self.dim * 2**i} is not divisible by {self.num_heads[i]} heads")

    def replace(self, **overrides: Any) -> "FasterViTConfig":
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise FasterViTError(f"unknown model option(s) {unknown}; known: {sorted(known)}")
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def stage_width(self, stage: int) -> int:
        return self.dim * 2**stage

    @property
    def features_only(self) -> bool:
        return self.out_indices is not None

    def feature_stride(self, stage: int) -> int:
        return 4 * 2**stage

    @property
    def num_features(self) -> int:
        return self.dim * 2 ** (NUM_STAGES - 1)


@dataclass(frozen=True)
class PretrainedCfg:
    """Evaluation preprocessing of the released weights (SPEC.md §1.3)."""

    input_size: tuple[int, int, int] = (3, 224, 224)
    crop_pct: float = 0.875
    crop_mode: str = "center"
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    num_classes: int = 1000
    checkpoint_file: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ModelEntry:
    name: str
    config: FasterViTConfig
    pretrained: PretrainedCfg = field(default_factory=PretrainedCfg)
    description: str = ""
