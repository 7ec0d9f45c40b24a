"""Seeded weights with the statistics of a trained checkpoint, for work without the released files.

Training-style initialisation zeroes every Linear bias and makes every norm an identity (weight 1,
bias 0, BatchNorm mean 0 / variance 1). A graph exported from such a model is not the graph a
checkpoint gives: simplifiers drop the zero bias ``Add``s (FasterViT-0 exports 598 nodes instead of
666), and calibration never sees the offsets that make INT8 hard. This draws every bias, norm
statistic, layer scale and position-MLP weight so that no block is an identity, as the golden
reference tensors do.
"""

from __future__ import annotations

import torch
from torch import nn

LAYER_SCALES = ("gamma1", "gamma2", "gamma3", "gamma4")


@torch.no_grad()
def checkpoint_like_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Re-draw biases, norms, layer scales and position MLPs of ``model`` in place; returns it."""
    g = torch.Generator().manual_seed(seed)

    def normal(t: torch.Tensor, std: float, mean: float = 0.0) -> None:
        t.copy_(torch.randn(t.shape, generator=g) * std + mean)

    def uniform(t: torch.Tensor, low: float, high: float) -> None:
        t.copy_(torch.rand(t.shape, generator=g) * (high - low) + low)

    for name, module in model.named_modules():
        if name.endswith("cpb_mlp.0"):  # position MLPs: coordinates → varied, non-constant biases
            normal(module.weight, 1.0)
            normal(module.bias, 0.5)
        elif name.endswith("cpb_mlp.2"):
            normal(module.weight, module.weight.shape[1] ** -0.5)
        elif isinstance(module, (nn.Linear, nn.Conv2d)) and module.bias is not None:
            normal(module.bias, 0.02)
        elif isinstance(module, nn.BatchNorm2d):
            uniform(module.weight, 0.5, 1.5)
            normal(module.bias, 0.1)
            normal(module.running_mean, 0.1)
            uniform(module.running_var, 0.5, 2.0)
        elif isinstance(module, nn.LayerNorm):
            uniform(module.weight, 0.7, 1.3)
            normal(module.bias, 0.05)
    for name, param in model.named_parameters():
        if name.rsplit(".", 1)[-1] in LAYER_SCALES:
            uniform(param, 0.05, 0.3)
    return model
