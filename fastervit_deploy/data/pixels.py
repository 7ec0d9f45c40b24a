"""Pixels to the network's input: fvdeploy's evaluation preprocessing, standalone.

This module imports nothing of fvdeploy's (numpy and PIL only), so that `fvdeploy triton --preprocess` copies it,
as it is, beside the Triton Python model that preprocesses encoded images on the server: the server runs the very
functions `verify`, `evaluate` and `predict` run here.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from ..core.model_spec import Preprocessing

INTERPOLATION = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
                 "nearest": Image.Resampling.NEAREST}
WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # 16/32-bit integer grey: convert("RGB") would clip to white


def to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB from any mode: grey, palette, RGBA (alpha dropped), CMYK, and 16-bit grey scaled down."""
    if img.mode in WIDE_MODES:
        values = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or values.max(initial=0) <= 65535 else values.max()
        img = Image.fromarray(np.clip(np.rint(values * (255.0 / top)), 0, 255).astype(np.uint8), "L")
    elif img.mode == "F":
        values = np.asarray(img, dtype=np.float64)
        img = Image.fromarray(np.clip(np.rint(values * (255.0 if values.max(initial=0) <= 1 else 1.0)), 0, 255)
                              .astype(np.uint8), "L")
    return img.convert("RGB")


def preprocess(img: Image.Image, size: Sequence[int], pre: Preprocessing, normalize: bool = True) -> np.ndarray:
    """Resize by ``crop_pct``, centre-crop to ``size`` (H, W), scale to [0, 1] and normalise → CHW float32.

    ``center``: scale to cover (H/crop_pct, W/crop_pct) keeping the aspect ratio (for a square size:
    shorter side = size/crop_pct, as timm does); ``squash``: resize both sides to that size.
    """
    H, W = int(size[0]), int(size[1])
    target = (math.floor(H / pre.crop_pct), math.floor(W / pre.crop_pct))
    if pre.crop_mode == "squash":
        new_h, new_w = target
    else:
        scale = max(target[0] / img.height, target[1] / img.width)
        new_h, new_w = max(H, round(img.height * scale)), max(W, round(img.width * scale))
    img = img.resize((new_w, new_h), INTERPOLATION[pre.interpolation])
    top, left = (new_h - H) // 2, (new_w - W) // 2
    img = img.crop((left, top, left + W, top + H))
    x = np.asarray(img, dtype=np.float32) / 255.0
    if normalize:
        x = (x - np.asarray(pre.mean, np.float32)) / np.asarray(pre.std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))
