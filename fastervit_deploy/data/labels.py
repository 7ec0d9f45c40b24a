"""Class names for a classifier's outputs."""

from __future__ import annotations

from pathlib import Path

IMAGENET_CLASSES = Path(__file__).with_name("imagenet1k_classes.tsv")


def imagenet_names() -> list[str]:
    """ImageNet-1k names in output order (first lemma of each synset)."""
    rows = IMAGENET_CLASSES.read_text().splitlines()[1:]
    return [row.split("\t")[2].split(",")[0].strip() for row in rows]


def class_names(num_classes: int) -> list[str]:
    """ImageNet's names for a 1000-class head; class indices otherwise (a fine-tuned head has no names here)."""
    return imagenet_names() if num_classes == 1000 else [f"class {i}" for i in range(num_classes)]
