"""Real images and the evaluation preprocessing of the released weights."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image

from .errors import FvdeployError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
# Colour photographs that scikit-image ships inside its wheel (no download needed).
SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "retina", "immunohistochemistry",
                  "camera")
_INTERPOLATION = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
                  "nearest": Image.Resampling.NEAREST}


def skimage_photos() -> list[Image.Image]:
    from skimage import data

    return [Image.fromarray(getattr(data, name)()).convert("RGB") for name in SKIMAGE_PHOTOS]


def list_images(folder: str | Path, limit: int | None = None) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise FvdeployError(f"image folder not found: {folder}")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise FvdeployError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}")
    return files[:limit] if limit else files


def open_image(path: Path) -> Image.Image:
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except OSError as err:
        raise FvdeployError(f"cannot read image {path}: {err}") from None


def preprocess(img: Image.Image, size: Sequence[int], pretrained_cfg: dict, normalize: bool = True) -> np.ndarray:
    """Resize by ``crop_pct``, centre-crop to ``size`` (H, W), scale to [0, 1] and normalise → CHW float32.

    ``center``: scale to cover (H/crop_pct, W/crop_pct) keeping the aspect ratio (for a square size:
    shorter side = size/crop_pct, as timm does); ``squash``: resize both sides to that size.
    """
    H, W = int(size[0]), int(size[1])
    crop = float(pretrained_cfg.get("crop_pct", 1.0))
    target = (math.floor(H / crop), math.floor(W / crop))
    interp = _INTERPOLATION[pretrained_cfg.get("interpolation", "bicubic")]
    if pretrained_cfg.get("crop_mode", "center") == "squash":
        new_h, new_w = target
    else:
        scale = max(target[0] / img.height, target[1] / img.width)
        new_h, new_w = max(H, round(img.height * scale)), max(W, round(img.width * scale))
    img = img.resize((new_w, new_h), interp)
    top, left = (new_h - H) // 2, (new_w - W) // 2
    img = img.crop((left, top, left + W, top + H))
    x = np.asarray(img, dtype=np.float32) / 255.0
    if normalize:
        x = (x - np.asarray(pretrained_cfg["mean"], np.float32)) / np.asarray(pretrained_cfg["std"], np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def load_batch(size: Sequence[int], pretrained_cfg: dict, folder: str | Path | None = None,
               count: int | None = None) -> np.ndarray:
    """``[N, 3, H, W]`` from a folder of images, or from scikit-image's photos when no folder is given."""
    images: Iterable[Image.Image]
    if folder is None:
        images = skimage_photos()
    else:
        images = (open_image(p) for p in list_images(folder, count))
    arrays = [preprocess(img, size, pretrained_cfg) for img in images]
    return np.stack(arrays)


def batch_of(images: np.ndarray, n: int) -> np.ndarray:
    """Exactly ``n`` images, cycling through the given ones (flipped copies on the second pass)."""
    out = []
    for i in range(n):
        img = images[i % len(images)]
        out.append(img if (i // len(images)) % 2 == 0 else img[:, :, ::-1])
    return np.ascontiguousarray(np.stack(out))
