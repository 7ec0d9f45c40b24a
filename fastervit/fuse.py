"""BatchNorm folding for the deploy form (no BatchNormalization node reaches an export)."""

from __future__ import annotations

import torch
from torch import nn


class ChannelAffine(nn.Module):
    """``x * scale + shift`` per channel of an NCHW map: a frozen BatchNorm with nowhere to fold."""

    def __init__(self, scale: torch.Tensor, shift: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("scale", scale.reshape(1, -1, 1, 1).clone())
        self.register_buffer("shift", shift.reshape(1, -1, 1, 1).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


def _bn_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


@torch.no_grad()
def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Fold an inference BatchNorm into the conv before it (in place)."""
    scale, shift = _bn_affine(bn)
    conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
    bias = shift if conv.bias is None else conv.bias * scale + shift
    conv.bias = nn.Parameter(bias.clone())


@torch.no_grad()
def fold_bn_into_head(bn: nn.BatchNorm2d, head: nn.Linear) -> None:
    """``head(mean(bn(x)))`` = ``head'(mean(x))``: BN is per-channel affine and pooling is linear."""
    scale, shift = _bn_affine(bn)
    head.bias.add_(head.weight @ shift)
    head.weight.mul_(scale)


def fold_batchnorms(model: nn.Module) -> None:
    """Fold every BatchNorm of a FasterViT (stem, conv blocks, final norm) in place."""
    from .model import ConvBlock, PatchEmbed  # local: model imports this module

    for module in list(model.modules()):
        if isinstance(module, PatchEmbed):
            seq = module.conv_down
            for conv_i, bn_i in ((0, 1), (3, 4)):
                fold_conv_bn(seq[conv_i], seq[bn_i])
                seq[bn_i] = nn.Identity()
        elif isinstance(module, ConvBlock):
            fold_conv_bn(module.conv1, module.norm1)
            fold_conv_bn(module.conv2, module.norm2)
            module.norm1, module.norm2 = nn.Identity(), nn.Identity()
    if isinstance(model.head, nn.Linear):
        fold_bn_into_head(model.norm, model.head)
        model.norm = nn.Identity()
    else:
        model.norm = ChannelAffine(*_bn_affine(model.norm))
