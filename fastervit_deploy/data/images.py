"""Real images and the evaluation preprocessing of the released weights."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..system.errors import FvdeployError
from ..core.model_spec import Preprocessing

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
# Colour photographs that scikit-image ships inside its wheel (no download needed).
SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "retina", "immunohistochemistry",
                  "camera")
_INTERPOLATION = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
                  "nearest": Image.Resampling.NEAREST}
_WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # 16/32-bit integer grey: convert("RGB") would clip to white


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


def to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB from any mode: grey, palette, RGBA (alpha dropped), CMYK, and 16-bit grey scaled down."""
    if img.mode in _WIDE_MODES:
        values = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or values.max(initial=0) <= 65535 else values.max()
        img = Image.fromarray(np.clip(np.rint(values * (255.0 / top)), 0, 255).astype(np.uint8), "L")
    elif img.mode == "F":
        values = np.asarray(img, dtype=np.float64)
        img = Image.fromarray(np.clip(np.rint(values * (255.0 if values.max(initial=0) <= 1 else 1.0)), 0, 255)
                              .astype(np.uint8), "L")
    return img.convert("RGB")


def image_error(err: BaseException) -> str:
    """Why an image cannot be read, in words (PIL's messages name the stream object it was given)."""
    if isinstance(err, UnidentifiedImageError):
        return "not an image PIL can identify"
    if isinstance(err, Image.DecompressionBombError):
        return f"too many pixels (PIL refuses more than {Image.MAX_IMAGE_PIXELS * 2:,}: a decompression bomb?)"
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    return re.sub(r"\s*<_io\.\w+ object at 0x[0-9a-f]+>", "", text) or type(err).__name__


def open_image(path: Path) -> Image.Image:
    try:
        with Image.open(path) as img:
            return to_rgb(img)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise FvdeployError(f"cannot read image {path}: {image_error(err)}") from err


def skipped_text(skipped: Sequence[str], named: int = 3) -> str:
    """``skipped 4 unreadable: a (why), b (why), c (why), and 1 more``: every file counted, the first few named."""
    more = f", and {len(skipped) - named} more" if len(skipped) > named else ""
    return f"skipped {len(skipped)} unreadable: {', '.join(skipped[:named])}{more}"


def readable_images(files: Iterable[Path], skipped: list[str]) -> Iterator[tuple[Path, Image.Image]]:
    """Open each file; the ones that cannot be read are skipped and their names and reasons appended."""
    for path in files:
        try:
            yield path, open_image(path)
        except FvdeployError as err:
            skipped.append(str(err).removeprefix("cannot read image "))


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
    img = img.resize((new_w, new_h), _INTERPOLATION[pre.interpolation])
    top, left = (new_h - H) // 2, (new_w - W) // 2
    img = img.crop((left, top, left + W, top + H))
    x = np.asarray(img, dtype=np.float32) / 255.0
    if normalize:
        x = (x - np.asarray(pre.mean, np.float32)) / np.asarray(pre.std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def load_batch(size: Sequence[int], pre: Preprocessing, folder: str | Path | None = None,
               count: int | None = None, note: Callable[[str], None] | None = None) -> np.ndarray:
    """``[N, 3, H, W]`` from a folder of images, or from scikit-image's photos when no folder is given
    (``note``: told of the files that could not be read)."""
    if folder is None:
        images = skimage_photos()
    else:
        skipped: list[str] = []
        images = [img for _, img in readable_images(list_images(folder, count), skipped)]
        if not images:
            raise FvdeployError(f"no readable image in {folder} ({skipped[0]})")
        if skipped and note is not None:
            note(f"read {len(images)} images of {folder}; {skipped_text([Path(s).name for s in skipped])}")
    return np.stack([preprocess(img, size, pre) for img in images])


def batch_of(images: np.ndarray, n: int) -> np.ndarray:
    """Exactly ``n`` images, cycling through the given ones (flipped copies on the second pass)."""
    out = []
    for i in range(n):
        img = images[i % len(images)]
        out.append(img if (i // len(images)) % 2 == 0 else img[:, :, ::-1])
    return np.ascontiguousarray(np.stack(out))
