"""FasterViT (Hatamizadeh et al., ICLR 2024): our own implementation, checkpoint-compatible.

Module names and buffers follow the official state_dict layout (SPEC.md §2) so released checkpoints
load unchanged; the computation follows SPEC.md §3 with export-friendly tensor layouts.
"""

from __future__ import annotations

import copy
from typing import Iterator

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .config import NUM_STAGES, FasterViTConfig
from .fuse import ChannelAffine, fold_bn_before_pool_into_linear
from .geometry import StagePlan, carrier_bias_grid, carrier_count, check_resolution
from .layers import (
    Attention,
    ChannelLayerNorm,
    Mlp,
    TokenPositionMLP,
    drop_path,
    nearest_upsample_tokens,
    window_partition,
    window_reverse,
)


class PatchEmbed(nn.Module):
    """Stem: two 3x3 stride-2 convs with BatchNorm (eps 1e-4) and ReLU."""

    def __init__(self, in_chans: int, in_dim: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Identity()
        self.conv_down = nn.Sequential(
            nn.Conv2d(in_chans, in_dim, 3, 2, 1, bias=False),
            nn.BatchNorm2d(in_dim, eps=1e-4),
            nn.ReLU(),
            nn.Conv2d(in_dim, dim, 3, 2, 1, bias=False),
            nn.BatchNorm2d(dim, eps=1e-4),
            nn.ReLU(),
        )

    @property
    def stem_conv(self) -> nn.Conv2d:
        """The first convolution: the one that sees the normalised image (``conv_down.0`` in checkpoints)."""
        return self.conv_down[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_down(self.proj(x))

    def deploy_(self) -> None:
        """Fold both BatchNorms into the convolutions before them (in place)."""
        for conv_i, bn_i in ((0, 1), (3, 4)):
            self.conv_down[conv_i] = fuse_conv_bn_eval(self.conv_down[conv_i], self.conv_down[bn_i])
            self.conv_down[bn_i] = nn.Identity()


class ConvBlock(nn.Module):
    def __init__(self, dim: int, drop_path_rate: float = 0.0) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(dim, dim, 3, 1, 1)
        self.norm1 = nn.BatchNorm2d(dim, eps=1e-5)
        self.act1 = nn.GELU()
        self.conv2 = nn.Conv2d(dim, dim, 3, 1, 1)
        self.norm2 = nn.BatchNorm2d(dim, eps=1e-5)
        self.drop_path = drop_path(drop_path_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm2(self.conv2(self.act1(self.norm1(self.conv1(x)))))
        return x + self.drop_path(y)

    def deploy_(self) -> None:
        """Fold norm1/norm2 into conv1/conv2 (in place)."""
        self.conv1, self.norm1 = fuse_conv_bn_eval(self.conv1, self.norm1), nn.Identity()
        self.conv2, self.norm2 = fuse_conv_bn_eval(self.conv2, self.norm2), nn.Identity()


class Downsample(nn.Module):
    """Channel LayerNorm (eps 1e-6) then a 3x3 stride-2 conv doubling the width."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = ChannelLayerNorm(dim, eps=1e-6)
        self.reduction = nn.Sequential(nn.Conv2d(dim, 2 * dim, 3, 2, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.reduction(self.norm(x))


class TokenInitializer(nn.Module):
    """Carrier tokens: depthwise conv + average pooling of the (padded) stage map, grouped per window."""

    def __init__(self, dim: int, plan: StagePlan, ct_size: int) -> None:
        super().__init__()
        self.dim, self.ct_size, self.grid_w = dim, ct_size, plan.carrier_grid[1]
        conv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.pos_embed = conv
        # The official module registers the same conv a second time; both key pairs are in checkpoints.
        self.to_global_feature = nn.Sequential()
        self.to_global_feature.add_module("pos", conv)
        self.to_global_feature.add_module("pool", nn.AvgPool2d(plan.pool_kernel, plan.pool_stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.to_global_feature(x).permute(0, 2, 3, 1)  # [B, c·a, c·b, C]
        return window_partition(g, self.ct_size, self.grid_w, self.ct_size, self.dim)  # [B·a·b, c², C]


class HatBlock(nn.Module):
    """Transformer block with optional hierarchical attention over carrier tokens (SPEC.md §3.7)."""

    def __init__(self, dim: int, num_heads: int, plan: StagePlan, ct_size: int, mlp_ratio: float,
                 qkv_bias: bool, qk_scale: float | None, drop_path_rate: float, layer_scale: float | None,
                 propagate: bool) -> None:
        super().__init__()
        w, c = plan.window, ct_size
        self.dim, self.window, self.ct_size = dim, w, c
        self.carriers = plan.has_carriers
        self.carrier_grid = plan.carrier_grid
        self.propagate = propagate and self.carriers
        n_ct = carrier_count(plan, c) if self.carriers else 0
        scale = (lambda: nn.Parameter(layer_scale * torch.ones(dim))) if layer_scale is not None else (lambda: None)
        self.gamma3, self.gamma4 = scale(), scale()
        if self.carriers:
            self.gamma1, self.gamma2 = scale(), scale()
        hidden = int(dim * mlp_ratio)
        self.pos_embed = TokenPositionMLP(dim, w * w)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, w * w + (c * c if self.carriers else 0), w, qkv_bias, qk_scale)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, hidden)
        self.drop_path = drop_path(drop_path_rate)
        if self.carriers:
            self.hat_norm1 = nn.LayerNorm(dim)
            self.hat_norm2 = nn.LayerNorm(dim)
            self.hat_attn = Attention(dim, num_heads, n_ct, carrier_bias_grid(plan, c), qkv_bias, qk_scale)
            self.hat_mlp = Mlp(dim, hidden)
            self.hat_pos_embed = (
                TokenPositionMLP(dim, n_ct) if plan.carrier_grid[0] == plan.carrier_grid[1] else None
            )

    def _branch(self, x: torch.Tensor, gamma: nn.Parameter | None) -> torch.Tensor:
        return self.drop_path(x if gamma is None else gamma * x)

    def _carrier_attention(self, ct: torch.Tensor) -> torch.Tensor:
        """Global attention among an image's carriers; returns them re-grouped per window."""
        a, b = self.carrier_grid
        c, C = self.ct_size, self.dim
        ct = window_reverse(ct, a, b, c, c, C).reshape(-1, a * c * b * c, C)  # raster over the carrier grid
        if self.hat_pos_embed is not None:
            ct = self.hat_pos_embed(ct)
        ct = ct + self._branch(self.hat_attn(self.hat_norm1(ct)), self.gamma1)
        ct = ct + self._branch(self.hat_mlp(self.hat_norm2(ct)), self.gamma2)
        # Official quirk (SPEC.md §3.7-2d): the raster is re-read as a (b·c) x (a·c) grid. Identical for
        # square grids; for non-square any-res grids it must be kept to reproduce the released model.
        return window_partition(ct, c, a, c, C)

    def forward(self, x: torch.Tensor, ct: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = self.pos_embed(x)
        if self.carriers:
            x = torch.cat([self._carrier_attention(ct), x], dim=1)
        x = x + self._branch(self.attn(self.norm1(x)), self.gamma3)
        x = x + self._branch(self.mlp(self.norm2(x)), self.gamma4)
        if self.carriers:
            ct, x = x.split([self.ct_size**2, self.window**2], dim=1)
            if self.propagate:
                up = nearest_upsample_tokens(ct, self.ct_size, self.window, self.dim)
                x = x + (up if self.gamma1 is None else self.gamma1 * up)
        return x, ct


class FasterViTLayer(nn.Module):
    """One stage: blocks, optional downsampler, and (HAT stages) the carrier-token initializer."""

    def __init__(self, cfg: FasterViTConfig, plan: StagePlan, drop_path_rates: list[float],
                 downsample: bool = True) -> None:
        super().__init__()
        i, dim = plan.index, plan.width
        self.plan = plan
        if plan.transformer:
            last = cfg.depths[i] - 1
            blocks = [
                HatBlock(dim, cfg.num_heads[i], plan, cfg.ct_size, cfg.mlp_ratio, cfg.qkv_bias, cfg.qk_scale,
                         rate, cfg.layer_scale, propagate=cfg.do_propagation and j == last)
                for j, rate in enumerate(drop_path_rates)
            ]
        else:
            blocks = [ConvBlock(dim, rate) for rate in drop_path_rates]
        self.blocks = nn.ModuleList(blocks)
        self.downsample = Downsample(dim) if i < 3 and downsample else None
        if plan.has_tokenizer:
            self.global_tokenizer = TokenInitializer(dim, plan, cfg.ct_size)

    def _transformer(self, x: torch.Tensor) -> torch.Tensor:
        p = self.plan
        (H, W), (pad_b, pad_r), (rows, cols), w, C = p.size, p.pad, p.windows, p.window, p.width
        if pad_b or pad_r:
            x = nn.functional.pad(x, (0, pad_r, 0, pad_b))
        # With hat on but a single window the official tokenizer runs and its output is unused: skip it.
        ct = self.global_tokenizer(x) if p.has_carriers else None
        x = window_partition(x.permute(0, 2, 3, 1), w, cols, w, C)
        for blk in self.blocks:
            x, ct = blk(x, ct)
        x = window_reverse(x, rows, cols, w, w, C)
        if pad_b or pad_r:
            x = x[:, :H, :W, :]
        return x.permute(0, 3, 1, 2).contiguous()

    def forward_blocks(self, x: torch.Tensor) -> torch.Tensor:
        """The stage's output before its downsampler (what a detection neck takes)."""
        if self.plan.transformer:
            return self._transformer(x)
        for blk in self.blocks:
            x = blk(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_blocks(x)
        return x if self.downsample is None else self.downsample(x)


class FasterViT(nn.Module):
    def __init__(self, cfg: FasterViTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.plans = check_resolution(cfg)
        self.pretrained_cfg: dict = {}
        self.patch_embed = PatchEmbed(cfg.in_chans, cfg.in_dim, cfg.dim)
        rates = torch.linspace(0, cfg.drop_path_rate, sum(cfg.depths), device="cpu").tolist()
        self.levels = nn.ModuleList()
        # A backbone builds the stages up to its last output, without that stage's downsampler, and no head.
        last = cfg.out_indices[-1] if cfg.features_only else len(self.plans) - 1
        start = 0
        for plan, depth in zip(self.plans[: last + 1], cfg.depths):
            self.levels.append(FasterViTLayer(cfg, plan, rates[start : start + depth], downsample=plan.index < last))
            start += depth
        self.feature_info = FeatureInfo(
            [{"num_chs": cfg.stage_width(i), "reduction": cfg.feature_stride(i), "module": f"levels.{i}"}
             for i in (cfg.out_indices or ())])
        if cfg.features_only:
            for i in cfg.out_indices if cfg.feature_norms else ():
                setattr(self, feature_norm_name(i), ChannelLayerNorm(cfg.stage_width(i), eps=1e-6))
        else:
            self.norm = nn.BatchNorm2d(cfg.num_features, eps=1e-5)
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.head = nn.Linear(cfg.num_features, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        self.apply(_init_weights)
        self.deployed = False

    @property
    def default_cfg(self) -> dict:
        return self.pretrained_cfg

    @property
    def input_size(self) -> tuple[int, int]:
        return self.cfg.resolution

    def _check_input(self, x: torch.Tensor) -> None:
        # Every reshape is planned for the configured resolution; fail clearly instead of deep inside.
        if torch.jit.is_tracing() or torch.compiler.is_compiling():
            return
        if x.ndim != 4 or x.shape[1] != self.cfg.in_chans or tuple(x.shape[2:]) != self.cfg.resolution:
            H, W = self.cfg.resolution
            raise ValueError(
                f"expected input [B, {self.cfg.in_chans}, {H}, {W}] (the model is built for {H}x{W}), "
                f"got {list(x.shape)}"
            )

    def stages(self, x: torch.Tensor) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield ``(name, tensor)`` after the stem, after each stage and after the final norm."""
        self._check_input(x)
        x = self.patch_embed(x)
        yield "patch_embed", x
        for i, level in enumerate(self.levels):
            x = level(x)
            yield f"level{i}", x
        yield "pre_head", self.norm(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        *_, (_, features) = self.stages(x)  # the last stage output: after the final norm
        return features

    def forward_levels(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The backbone's maps: each chosen stage's output before its downsampler (then its norm, if any)."""
        self._check_input(x)
        x = self.patch_embed(x)
        outs = []
        for i, level in enumerate(self.levels):
            y = level.forward_blocks(x)
            if i in self.cfg.out_indices:
                norm = getattr(self, feature_norm_name(i), None)
                outs.append(y if norm is None else norm(y))
            if level.downsample is not None:
                x = level.downsample(y)
        return outs

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.avgpool(x), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        if self.cfg.features_only:
            return self.forward_levels(x)
        return self.forward_head(self.forward_features(x))

    def num_params(self) -> int:
        """Parameter count with shared parameters counted once (the official figure)."""
        return sum(p.numel() for p in self.parameters())

    @property
    def stem_conv(self) -> nn.Conv2d:
        return self.patch_embed.stem_conv

    def deploy(self) -> "FasterViT":
        """A deployed copy: position biases evaluated into constants, every BatchNorm folded.

        Each module folds what it owns (stem and conv blocks: conv+BN; position MLPs: constant
        biases); the final BatchNorm moves into the head, so the copy's ``forward_features`` returns
        the map before that norm. ``self`` is left unchanged, so it stays usable as the reference.
        """
        model = copy.deepcopy(self).eval()
        if model.deployed:
            return model
        for module in list(model.modules()):
            if module is not model and hasattr(module, "deploy_"):
                module.deploy_()
        if not model.cfg.features_only:  # a backbone has no final BatchNorm and no head
            if isinstance(model.head, nn.Linear):
                model.head = fold_bn_before_pool_into_linear(model.norm, model.head)
                model.norm = nn.Identity()
            else:
                model.norm = ChannelAffine(model.norm)
        model.deployed = True
        return model

    fuse = deploy  # Polygraphy/timm users look for either name


def feature_norm_name(stage: int) -> str:
    """The official detection backbone's names: ``norm0``..``norm2``, and ``norm`` for the last stage."""
    return "norm" if stage == NUM_STAGES - 1 else f"norm{stage}"


class FeatureInfo(list):
    """timm's convention: one dict per output (``num_chs``, ``reduction``, ``module``)."""

    def channels(self) -> list[int]:
        return [f["num_chs"] for f in self]

    def reduction(self) -> list[int]:
        return [f["reduction"] for f in self]


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, (nn.LayerNorm, nn.BatchNorm2d)):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
