"""Stage geometry decided at construction: map sizes, padding, windows, carrier tokens.

Everything the forward pass needs to reshape is computed here once, as Python ints, so that an
export sees constant shapes (only the batch stays dynamic). The same plan validates a resolution
and explains why one cannot work.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .config import NUM_STAGES, TRANSFORMER_STAGES, FasterViTConfig, FasterViTError


class UnsupportedResolutionError(FasterViTError):
    """The architecture cannot run at the requested input size."""


class CarrierSizeError(UnsupportedResolutionError):
    """The carrier-token size cannot work with the windows, at any input size."""


def check_carrier_size(cfg: FasterViTConfig) -> None:
    """Carrier tokens pool each window of a hierarchical-attention stage into ct_size x ct_size tokens, so
    ct_size cannot exceed the window (beyond it the tokenizer's stride would be 0)."""
    for i in TRANSFORMER_STAGES:
        if cfg.hat[i] and cfg.ct_size > cfg.window_size[i]:
            raise CarrierSizeError(f"carrier size {cfg.ct_size} is larger than stage {i}'s window "
                                   f"{cfg.window_size[i]}: carrier tokens pool a window (ct_size 1..{cfg.window_size[i]})")


@dataclass(frozen=True)
class StagePlan:
    index: int
    width: int
    transformer: bool
    size: tuple[int, int]  # map size this stage receives at run time
    window: int = 0
    padded: tuple[int, int] = (0, 0)  # size after padding to whole windows
    windows: tuple[int, int] = (1, 1)  # window grid (rows, cols)
    carrier_grid: tuple[int, int] = (1, 1)  # sr: carrier windows (rows, cols) fixed at construction
    has_carriers: bool = False
    has_tokenizer: bool = False
    pool_kernel: tuple[int, int] = (1, 1)
    pool_stride: tuple[int, int] = (1, 1)

    @property
    def pad(self) -> tuple[int, int]:
        """(bottom, right) zero padding."""
        return (self.padded[0] - self.size[0], self.padded[1] - self.size[1])

    @property
    def num_windows(self) -> int:
        return self.windows[0] * self.windows[1]


def _ceil_half(n: int) -> int:
    return (n + 1) // 2  # output size of a 3x3 stride-2 pad-1 conv


def runtime_stage_sizes(resolution: tuple[int, int]) -> list[tuple[int, int]]:
    """Map size entering each stage: the stem halves twice, each downsampler once more."""
    h, w = _ceil_half(_ceil_half(resolution[0])), _ceil_half(_ceil_half(resolution[1]))
    sizes = []
    for _ in range(NUM_STAGES):
        sizes.append((h, w))
        h, w = _ceil_half(h), _ceil_half(w)
    return sizes


def _round_up(n: int, m: int) -> int:
    return n + (m - n % m) % m


def plan_stages(cfg: FasterViTConfig) -> list[StagePlan]:
    """Plan every stage, raising UnsupportedResolutionError where the official model would fail."""
    check_carrier_size(cfg)
    H, W = cfg.resolution
    sizes = runtime_stage_sizes(cfg.resolution)
    plans = []
    for i, size in enumerate(sizes):
        if i not in TRANSFORMER_STAGES:
            plans.append(StagePlan(i, cfg.stage_width(i), False, size))
            continue
        w, c = cfg.window_size[i], cfg.ct_size
        # Structure uses the floor-based nominal size (official `int(2^-(2+i) * resolution)`).
        nominal = (int(2 ** (-2 - i) * H), int(2 ** (-2 - i) * W))
        if cfg.any_res:
            nominal = (_round_up(nominal[0], w), _round_up(nominal[1], w))
            padded = (_round_up(size[0], w), _round_up(size[1], w))
        else:
            padded = size
            if size[0] % w or size[1] % w:
                raise UnsupportedResolutionError(
                    f"stage {i} map {size[0]}x{size[1]} is not a multiple of its window {w} "
                    f"(the 224-family models do not pad; use an _any_res model or another size)"
                )
        sr = (nominal[0] // w, nominal[1] // w) if cfg.hat[i] else (1, 1)
        has_carriers = sr[0] > 1 or sr[1] > 1
        if cfg.any_res:
            has_tokenizer = cfg.hat[i] and cfg.depths[i] > 0
        else:
            has_tokenizer = has_carriers
        kernel, stride = (1, 1), (1, 1)
        if has_tokenizer:
            outs = [int(c * r / w) for r in nominal]
            if min(outs) < 1:
                raise UnsupportedResolutionError(f"stage {i} is too small for carrier tokens")
            stride = tuple(int(r / o) for r, o in zip(nominal, outs))
            kernel = tuple(r - (o - 1) * s for r, o, s in zip(nominal, outs, stride))
        windows = (padded[0] // w, padded[1] // w)
        if has_carriers:
            pooled = tuple((p - k) // s + 1 for p, k, s in zip(padded, kernel, stride))
            if windows != sr or pooled != (c * sr[0], c * sr[1]):
                raise UnsupportedResolutionError(
                    f"stage {i}: the map seen at run time ({size[0]}x{size[1]}, {windows[0]}x{windows[1]} windows) "
                    f"does not match the carrier grid {sr[0]}x{sr[1]} built for {H}x{W}"
                )
        plans.append(
            StagePlan(
                i, cfg.stage_width(i), True, size, w, padded, windows, sr, has_carriers, has_tokenizer,
                kernel, stride,  # type: ignore[arg-type]
            )
        )
    return plans


def check_resolution(cfg: FasterViTConfig) -> list[StagePlan]:
    """plan_stages with an error message that says which sizes would work."""
    try:
        return plan_stages(cfg)
    except CarrierSizeError:
        raise  # no input size helps
    except UnsupportedResolutionError as err:
        near = nearby_resolutions(cfg)
        hint = f"; sizes that work nearby: {', '.join(f'{h}x{w}' for h, w in near)}" if near else ""
        if cfg.any_res:
            hint += f"; or choose windows, e.g. --window-size {','.join(map(str, suggest_windows(cfg.resolution)))}"
        raise UnsupportedResolutionError(f"{cfg.resolution[0]}x{cfg.resolution[1]} cannot work: {err}{hint}") from err


def _plans_ok(cfg: FasterViTConfig) -> bool:
    try:
        plan_stages(cfg)
        return True
    except (UnsupportedResolutionError, ValueError):
        return False


def nearby_resolutions(cfg: FasterViTConfig, count: int = 3, radius: int = 64) -> list[tuple[int, int]]:
    """Closest resolutions (same aspect handling per dim) that the configuration accepts."""
    H, W = cfg.resolution
    found = []
    for delta in range(0, radius + 1):
        for h in {H - delta, H + delta}:
            for w in {W - delta, W + delta} if cfg.any_res else {h}:
                if h > 0 and w > 0 and (h, w) not in found and _plans_ok(cfg.replace(resolution=(h, w))):
                    found.append((h, w))
        if len(found) >= count:
            break
    return found[:count]


def suggest_windows(resolution: tuple[int, int], preferred: int = 7, limit: int = 16) -> list[int]:
    """Per-stage windows that divide both stage sizes, closest to the pretrained 7 (larger on ties).

    Stages without such a window keep ``preferred`` (the any-res model then pads).
    """
    sizes = runtime_stage_sizes(resolution)
    windows = [preferred] * NUM_STAGES
    for i in TRANSFORMER_STAGES:
        h, w = sizes[i]
        options = [k for k in range(3, min(h, w, limit) + 1) if h % k == 0 and w % k == 0]
        if options:
            windows[i] = min(options, key=lambda k: (abs(k - preferred), -k))
    return windows


def carrier_count(plan: StagePlan, ct_size: int) -> int:
    return ct_size * ct_size * plan.carrier_grid[0] * plan.carrier_grid[1]


def carrier_bias_grid(plan: StagePlan, ct_size: int) -> int:
    """Side of the square grid the carrier-attention bias is built on (SPEC.md §4.1)."""
    return math.isqrt(carrier_count(plan, ct_size))


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes the largest fp32 tensors of one forward pass take, per image and for the geometry buffers."""

    per_image: int  # the largest activation of one image
    per_image_what: str
    buffers: int  # built once at construction (relative-position tables), independent of the batch
    buffers_what: str

    def peak(self, batch: int) -> int:
        # A layer holds its input, its output and a temporary of the largest size at once.
        return 3 * self.per_image * batch + 3 * self.buffers


def estimate_memory(cfg: FasterViTConfig) -> MemoryEstimate:
    """The largest tensors, from the stage plan alone (nothing allocated): activations at batch 1 (stem
    output, MLP hidden layer, window and carrier attention maps) and the relative-position tables."""
    H, W = cfg.resolution
    half = (_ceil_half(H), _ceil_half(W))
    sizes: dict[str, int] = {f"stem output {cfg.in_dim}x{half[0]}x{half[1]}": cfg.in_dim * half[0] * half[1] * 4}
    buffers: dict[str, int] = {"none": 0}
    for p in plan_stages(cfg):  # raises for a size the architecture cannot take
        area = (p.padded[0] * p.padded[1]) if p.transformer else p.size[0] * p.size[1]
        hidden = int(p.width * cfg.mlp_ratio) if p.transformer else p.width
        sizes[f"stage {p.index} hidden layer {hidden}x{p.size[0]}x{p.size[1]}"] = hidden * area * 4
        if p.transformer:
            tokens = p.window * p.window + (cfg.ct_size ** 2 if p.has_carriers else 0)
            heads = cfg.num_heads[p.index]
            sizes[f"stage {p.index} attention {p.num_windows}x{heads}x{tokens}x{tokens}"] = p.num_windows * heads * tokens**2 * 4
            carriers = carrier_count(p, cfg.ct_size) if p.has_carriers else 0
            sizes[f"stage {p.index} carrier attention {heads}x{carriers}x{carriers}"] = heads * carriers**2 * 4
            # relative coordinates (2 int64 per token pair) and the bias table (one fp32 per head and pair)
            buffers[f"stage {p.index} position tables for {tokens}x{tokens} token pairs"] = tokens**2 * (16 + 4 * heads)
    act = max(sizes, key=sizes.__getitem__)
    buf = max(buffers, key=buffers.__getitem__)
    return MemoryEstimate(sizes[act], act, buffers[buf], buf)

