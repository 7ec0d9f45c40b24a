"""Building blocks of FasterViT, written so that an export sees constant shapes.

Conventions that keep graphs TensorRT- and Core ML-friendly:
* every reshape uses Python ints except the leading (batch-folded) dimension, which is ``-1``;
* no tensor has rank > 5 (window tensors fold the batch into the window-row dimension);
* attention scales q *before* q·kᵀ (TensorRT's MHA fusion rule) and splits q/k/v with Split;
* position MLPs can be evaluated once into their ``relative_bias`` buffers (``deploy_``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

POS_MLP_HIDDEN = 512  # hidden width of every position MLP in the released models


def window_partition(x: torch.Tensor, win_h: int, grid_w: int, win_w: int, channels: int) -> torch.Tensor:
    """Raster map ``[B, grid_h*win_h, grid_w*win_w, C]`` (or its flat ``[B, L, C]``) → ``[B*windows, win_h*win_w, C]``.

    Windows are ordered image-major, then row, then column; tokens row-major within a window.
    """
    x = x.reshape(-1, win_h, grid_w, win_w, channels)
    return x.permute(0, 2, 1, 3, 4).reshape(-1, win_h * win_w, channels)


def window_reverse(x: torch.Tensor, grid_h: int, grid_w: int, win_h: int, win_w: int, channels: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`; returns the NHWC map ``[B, grid_h*win_h, grid_w*win_w, C]``."""
    x = x.reshape(-1, grid_w, win_h, win_w, channels).permute(0, 2, 1, 3, 4)
    return x.reshape(-1, grid_h * win_h, grid_w * win_w, channels)


class DropPath(nn.Module):
    """Stochastic depth per sample (training only)."""

    def __init__(self, prob: float = 0.0) -> None:
        super().__init__()
        self.prob = prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"prob={self.prob}"


def drop_path(prob: float) -> nn.Module:
    return DropPath(prob) if prob > 0 else nn.Identity()


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over C of an NCHW map (permute, normalise the last dim, permute back)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def _position_mlp(out_features: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(2, POS_MLP_HIDDEN), nn.ReLU(), nn.Linear(POS_MLP_HIDDEN, out_features, bias=False))


class TokenPositionMLP(nn.Module):
    """Additive position embedding of ``L = n²`` tokens from an MLP on normalised (row, col) coordinates.

    Checkpoint module names: ``pos_embed`` / ``hat_pos_embed`` with ``relative_bias [1, L, C]`` and ``cpb_mlp``.
    """

    def __init__(self, dim: int, seq_len: int) -> None:
        super().__init__()
        self.side = math.isqrt(seq_len)
        self.register_buffer("relative_bias", torch.zeros(1, seq_len, dim))
        self.cpb_mlp = _position_mlp(dim)
        self.deployed = False

    def embedding(self, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        n, half = self.side, self.side // 2
        r = torch.arange(n, dtype=dtype, device=device)
        grid = torch.stack(torch.meshgrid(r, r, indexing="ij")).unsqueeze(0)  # [1, 2, n, n]: (row, col)
        grid = (grid - half) / half
        return self.cpb_mlp(grid.flatten(2).transpose(1, 2))  # [1, L, C]

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.deployed:
            return tokens + self.relative_bias
        return tokens + self.embedding(tokens.dtype, tokens.device)

    @torch.no_grad()
    def deploy_(self) -> None:
        self.relative_bias.copy_(self.embedding(self.relative_bias.dtype, self.relative_bias.device))
        self.deployed = True


def log_spaced_coords_table(grid: int) -> torch.Tensor:
    """SwinV2 continuous relative-coordinate table ``[1, 2g-1, 2g-1, 2]``."""
    d = torch.arange(-(grid - 1), grid, dtype=torch.float32)
    table = torch.stack(torch.meshgrid(d, d, indexing="ij")).permute(1, 2, 0).unsqueeze(0)
    table = table / (grid - 1) * 8
    return torch.sign(table) * torch.log2(table.abs() + 1.0) / 3.0  # 3 = log2(8)


def relative_position_index(grid: int) -> torch.Tensor:
    """Swin-convention index ``[g², g²]`` into the flattened coordinate table."""
    r = torch.arange(grid)
    coords = torch.stack(torch.meshgrid(r, r, indexing="ij")).flatten(1)  # [2, g²]
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (grid - 1)
    return rel[..., 0] * (2 * grid - 1) + rel[..., 1]


class AttentionBiasMLP(nn.Module):
    """Per-head attention bias ``16·sigmoid(MLP(table))[index]``, zero for the leading extra tokens.

    Checkpoint module name: ``pos_emb_funct`` (buffers ``relative_coords_table``,
    ``relative_position_index``, ``relative_bias`` and the ``cpb_mlp``).
    """

    def __init__(self, grid: int, num_heads: int, seq_len: int) -> None:
        super().__init__()
        self.grid, self.num_heads, self.seq_len = grid, num_heads, seq_len
        self.register_buffer("relative_coords_table", log_spaced_coords_table(grid))
        self.register_buffer("relative_position_index", relative_position_index(grid))
        self.register_buffer("relative_bias", torch.zeros(1, num_heads, seq_len, seq_len))
        self.cpb_mlp = _position_mlp(num_heads)
        self.deployed = False

    def compute(self) -> torch.Tensor:
        g2, extra = self.grid * self.grid, self.seq_len - self.grid * self.grid
        table = self.cpb_mlp(self.relative_coords_table).view(-1, self.num_heads)
        bias = table[self.relative_position_index.view(-1)].view(g2, g2, self.num_heads).permute(2, 0, 1)
        bias = 16 * torch.sigmoid(bias)
        if extra:
            bias = F.pad(bias, (extra, 0, extra, 0))
        return bias.unsqueeze(0)

    def forward(self) -> torch.Tensor:
        return self.relative_bias if self.deployed else self.compute()

    @torch.no_grad()
    def deploy_(self) -> None:
        self.relative_bias.copy_(self.compute())
        self.deployed = True


class Attention(nn.Module):
    """Multi-head self-attention over ``[N, S, C]`` with the continuous relative-position bias."""

    def __init__(self, dim: int, num_heads: int, seq_len: int, bias_grid: int, qkv_bias: bool = True,
                 qk_scale: float | None = None) -> None:
        super().__init__()
        self.dim, self.num_heads, self.seq_len = dim, num_heads, seq_len
        self.head_dim = dim // num_heads
        self.scale = qk_scale or self.head_dim**-0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.pos_emb_funct = AttentionBiasMLP(bias_grid, num_heads, seq_len)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        S, h, d = self.seq_len, self.num_heads, self.head_dim
        q, k, v = self.qkv(z).split(self.dim, dim=-1)
        q = q.reshape(-1, S, h, d).transpose(1, 2) * self.scale  # [N, h, S, d], scaled before the matmul
        k = k.reshape(-1, S, h, d).permute(0, 2, 3, 1)  # [N, h, d, S]
        v = v.reshape(-1, S, h, d).transpose(1, 2)
        attn = (q @ k + self.pos_emb_funct()).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(-1, S, self.dim))


def nearest_upsample_tokens(ct: torch.Tensor, src: int, dst: int, channels: int) -> torch.Tensor:
    """Nearest (floor) upsampling of ``[N, src², C]`` token grids to ``[N, dst², C]``.

    Built from slices and concatenation: exact in every precision (no fp32 island needed around a
    Resize), no Gather, nothing a quantizer could touch.
    """
    pick = [i * src // dst for i in range(dst)]  # PyTorch 'nearest': floor(i * src / dst)
    grid = ct.reshape(-1, src, src, channels)
    rows = torch.cat([grid[:, p : p + 1] for p in pick], dim=1)
    full = torch.cat([rows[:, :, p : p + 1] for p in pick], dim=2)
    return full.reshape(-1, dst * dst, channels)
