"""Top-k classes of images through any artifact this machine runs, with the model's own preprocessing."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .artifact import Artifact
from .errors import FvdeployError
from .images import open_image, preprocess
from .labels import class_names
from .options import RunOptions


def _probabilities(outputs: dict[str, np.ndarray], kinds: dict[str, str]) -> np.ndarray:
    for name, kind in kinds.items():
        if kind == "probabilities":
            return outputs[name].astype(np.float64)
        if kind == "logits":
            z = outputs[name].astype(np.float64)
            z = np.exp(z - z.max(axis=-1, keepdims=True))
            return z / z.sum(axis=-1, keepdims=True)
    raise FvdeployError(f"the artifact has no class output (outputs: {', '.join(kinds)}): predict needs a classifier")


def predict(art: Artifact, images: list[Path], top: int = 5, opts: RunOptions = RunOptions()) -> list[dict]:
    """One row per image: its path and the ``top`` (label, index, probability), most likely first."""
    desc = art.model
    batch = np.stack([preprocess(open_image(p), desc.resolution, desc.preprocessing) for p in images])
    low, high = art.record.batch_range
    with art.runner(opts) as runner:
        kinds = {spec.name: spec.kind for spec in runner.outputs}
        chunks = [batch[i:i + high] for i in range(0, len(batch), high)]
        if len(chunks[-1]) < low:  # a fixed-batch artifact: pad the last chunk with copies
            chunks[-1] = np.concatenate([chunks[-1], np.repeat(chunks[-1][-1:], low - len(chunks[-1]), axis=0)])
        probs = np.concatenate([_probabilities(runner.infer(np.ascontiguousarray(c)), kinds) for c in chunks])
    names = class_names(probs.shape[-1])
    rows = []
    for path, p in zip(images, probs):
        best = np.argsort(-p)[:top]
        rows.append({"image": str(path),
                     "top": [{"label": names[i], "index": int(i), "probability": float(p[i])} for i in best]})
    return rows
