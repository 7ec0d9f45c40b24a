"""Accuracy on labelled images, counted batch by batch (nothing kept per image): top-1, top-5, agreement
with a reference, the confusion matrix, per-class precision and recall."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

TOP_K = 5


@dataclass
class Tally:
    """Running counts of one model over the images seen so far."""

    classes: int
    images: int = 0
    top1: int = 0
    top5: int = 0
    agree: int = 0
    confusion: np.ndarray = field(default=None)  # [true, predicted]

    def __post_init__(self) -> None:
        self.confusion = np.zeros((self.classes, self.classes), np.int64)

    def add(self, scores: np.ndarray, labels: np.ndarray, reference_top1: np.ndarray) -> np.ndarray:
        k = min(TOP_K, scores.shape[1])
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        self.images += len(labels)
        self.top1 += int((top[:, 0] == labels).sum())
        self.top5 += int((top == labels[:, None]).any(axis=1).sum())
        self.agree += int((top[:, 0] == reference_top1).sum())
        np.add.at(self.confusion, (labels, top[:, 0]), 1)
        return top[:, 0]

    def summary(self, reference_top1: float, names: list[str]) -> dict:
        n = max(self.images, 1)
        true, predicted = self.confusion.sum(axis=1), self.confusion.sum(axis=0)
        hits = np.diag(self.confusion)
        per_class = [{"index": i, "name": names[i], "support": int(true[i]),
                      "precision": float(hits[i] / predicted[i]) if predicted[i] else None,
                      "recall": float(hits[i] / true[i]) if true[i] else None} for i in range(self.classes)]
        top1 = self.top1 / n
        return {"images": self.images, "top1": top1, "top5": self.top5 / n,
                "drop_points": round((reference_top1 - top1) * 100, 6), "top1_agreement": self.agree / n,
                "per_class": per_class, "confusion": self.confusion.tolist()}
