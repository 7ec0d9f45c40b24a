"""BatchNorm folding helpers for the deploy form (no BatchNormalization node reaches an export).

Each module folds the norms it owns (``PatchEmbed.deploy_``, ``ConvBlock.deploy_``, the model's final
norm); conv+BN pairs use torch's own ``fuse_conv_bn_eval``. What torch has no function for lives here:
a BatchNorm that follows global average pooling into a Linear head, and a BatchNorm with nowhere to go.
"""

from __future__ import annotations

import torch
from torch import nn


class ChannelAffine(nn.Module):
    """``x * scale + shift`` per channel of an NCHW map: a frozen BatchNorm with nowhere to fold."""

    def __init__(self, bn: nn.BatchNorm2d) -> None:
        super().__init__()
        scale, shift = bn_affine(bn)
        self.register_buffer("scale", scale.reshape(1, -1, 1, 1).clone())
        self.register_buffer("shift", shift.reshape(1, -1, 1, 1).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


@torch.no_grad()
def bn_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Inference BatchNorm as ``x * scale + shift``."""
    scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


@torch.no_grad()
def fold_bn_before_pool_into_linear(bn: nn.BatchNorm2d, linear: nn.Linear) -> nn.Linear:
    """``linear(mean(bn(x)))`` = ``linear'(mean(x))``: BN is per-channel affine and pooling is linear.

    torch's ``fuse_linear_bn_eval`` folds a BN that *follows* a Linear; here it precedes it.
    """
    scale, shift = bn_affine(bn)
    fused = nn.Linear(linear.in_features, linear.out_features, bias=True)
    fused.weight.copy_(linear.weight * scale)
    bias = linear.bias if linear.bias is not None else torch.zeros(linear.out_features)
    fused.bias.copy_(bias + linear.weight @ shift)
    return fused
