"""Parameter counts from the configuration alone (no model built, no torch imported).

The count follows the module structure of ``model.py`` and ``layers.py`` term by term (weights and
biases; buffers excluded; the tokenizer's twice-registered conv counted once, as ``num_params`` does).
A test compares it with a meta-device build of every registered variant.
"""

from __future__ import annotations

from .config import FasterViTConfig
from .geometry import StagePlan, carrier_count, plan_stages

POS_MLP_HIDDEN = 512  # hidden width of every position MLP (layers.POS_MLP_HIDDEN)


def _linear(fan_in: int, fan_out: int, bias: bool = True) -> int:
    return fan_in * fan_out + (fan_out if bias else 0)


def _norm(width: int) -> int:
    return 2 * width  # weight and bias (running statistics are buffers)


def _position_mlp(out_features: int) -> int:
    return _linear(2, POS_MLP_HIDDEN) + _linear(POS_MLP_HIDDEN, out_features, bias=False)


def _attention(c: int, heads: int, qkv_bias: bool) -> int:
    return _linear(c, 3 * c, qkv_bias) + _linear(c, c) + _position_mlp(heads)


def _mlp(c: int, hidden: int) -> int:
    return _linear(c, hidden) + _linear(hidden, c)


def _hat_block(cfg: FasterViTConfig, plan: StagePlan) -> int:
    c, heads = plan.width, cfg.num_heads[plan.index]
    hidden = int(c * cfg.mlp_ratio)
    n = _position_mlp(c) + _norm(c) + _attention(c, heads, cfg.qkv_bias) + _norm(c) + _mlp(c, hidden)
    gammas = 2
    if plan.has_carriers:
        gammas += 2
        n += 2 * _norm(c) + _attention(c, heads, cfg.qkv_bias) + _mlp(c, hidden)
        if plan.carrier_grid[0] == plan.carrier_grid[1]:  # hat_pos_embed (square carrier grids only)
            n += _position_mlp(c)
    return n + (gammas * c if cfg.layer_scale is not None else 0)


def count_params(cfg: FasterViTConfig) -> int:
    """What ``FasterViT(cfg).num_params()`` returns."""
    n = 9 * cfg.in_chans * cfg.in_dim + _norm(cfg.in_dim) + 9 * cfg.in_dim * cfg.dim + _norm(cfg.dim)  # stem
    plans = plan_stages(cfg)
    last = cfg.out_indices[-1] if cfg.features_only else len(plans) - 1
    for plan in plans[: last + 1]:
        c, depth = plan.width, cfg.depths[plan.index]
        if plan.transformer:
            n += depth * _hat_block(cfg, plan)
            if plan.has_tokenizer:
                n += 9 * c + c  # depthwise 3x3 conv with bias, registered twice, counted once
        else:
            n += depth * 2 * (9 * c * c + c + _norm(c))  # conv1/norm1, conv2/norm2
        if plan.index < last:
            n += _norm(c) + 9 * c * 2 * c  # downsampler: channel LayerNorm, 3x3 stride-2 conv (no bias)
    if cfg.features_only:
        return n + (sum(_norm(cfg.stage_width(i)) for i in cfg.out_indices) if cfg.feature_norms else 0)
    n += _norm(cfg.num_features)
    return n + (_linear(cfg.num_features, cfg.num_classes) if cfg.num_classes > 0 else 0)


__all__ = ["carrier_count", "count_params"]
