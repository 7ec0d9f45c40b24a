"""Real data that ships inside packages: scikit-learn's handwritten digits (for accuracy tests)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .images import preprocess
from ..core.model_spec import Preprocessing

DIGITS_SEED = 0
DIGITS_TEST_FRACTION = 0.2


def digits_split() -> tuple[list[Image.Image], np.ndarray, list[Image.Image], np.ndarray]:
    """(train images, train labels, test images, test labels): a fixed, stratified split of 1,797 digits."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = [Image.fromarray((img * (255.0 / 16.0)).round().astype(np.uint8), "L").convert("RGB")
              for img in digits.images]
    idx_train, idx_test = train_test_split(np.arange(len(images)), test_size=DIGITS_TEST_FRACTION,
                                           stratify=digits.target, random_state=DIGITS_SEED)
    pick = lambda idx: ([images[i] for i in idx], digits.target[idx])  # noqa: E731
    return (*pick(idx_train), *pick(idx_test))


def to_batch(images: list[Image.Image], size: tuple[int, int], pre: Preprocessing) -> np.ndarray:
    return np.stack([preprocess(img, size, pre) for img in images])


def write_folder(images: list[Image.Image], folder: Path) -> Path:
    """Save images as PNG files (a calibration folder, as a user would have one)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        img.save(folder / f"{i:05d}.png")
    return folder
