"""Real images and the evaluation preprocessing of the released weights."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..core.model_spec import Preprocessing
from ..system.errors import FvdeployError
from .pixels import preprocess, to_rgb

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
# Colour photographs that scikit-image ships inside its wheel (no download needed).
SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "retina", "immunohistochemistry",
                  "camera")


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


def load_images(folder: str | Path | None = None, count: int | None = None,
                note: Callable[[str], None] | None = None) -> list[Image.Image]:
    """The readable images of a folder, or scikit-image's photos when no folder is given (``note``: told of the
    files that could not be read)."""
    if folder is None:
        return skimage_photos()
    skipped: list[str] = []
    images = [img for _, img in readable_images(list_images(folder, count), skipped)]
    if not images:
        raise FvdeployError(f"no readable image in {folder} ({skipped[0]})")
    if skipped and note is not None:
        note(f"read {len(images)} images of {folder}; {skipped_text([Path(s).name for s in skipped])}")
    return images


def load_batch(size: Sequence[int], pre: Preprocessing, folder: str | Path | None = None,
               count: int | None = None, note: Callable[[str], None] | None = None) -> np.ndarray:
    """``[N, 3, H, W]`` of ``load_images``."""
    return np.stack([preprocess(img, size, pre) for img in load_images(folder, count, note)])


def cycled(images: Sequence[Image.Image], n: int) -> list[Image.Image]:
    """Exactly ``n`` images, cycling through the given ones (mirrored copies on the second pass), as ``batch_of``
    does with preprocessed ones: for a runner that is sent the images themselves."""
    return [ImageOps.mirror(images[i]) if mirrored else images[i] for i, mirrored in _cycle(len(images), n)]


def encoded(img: Image.Image) -> bytes:
    """An image as PNG bytes (lossless: the server decodes the very pixels preprocessed here)."""
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return buffer.getvalue()


def batch_of(images: np.ndarray, n: int) -> np.ndarray:
    """Exactly ``n`` images, cycling through the given ones (flipped copies on the second pass)."""
    return np.ascontiguousarray(np.stack([images[i][:, :, ::-1] if mirrored else images[i]
                                          for i, mirrored in _cycle(len(images), n)]))


def _cycle(count: int, n: int) -> list[tuple[int, bool]]:
    """(which image, mirrored?) for each of ``n`` places filled from ``count`` images: every second pass mirrored,
    so that repeats are not copies."""
    return [(i % count, (i // count) % 2 == 1) for i in range(n)]
