"""Top-k classes of images through any artifact this machine runs, with the model's own preprocessing."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..artifact import Artifact
from ..core.options import RunOptions
from ..core.runner import softmax
from ..core.tensors import TensorKind, class_output
from ..data.images import open_image, preprocess
from ..system.errors import FvdeployError


def probabilities(outputs: dict[str, np.ndarray], art: Artifact) -> np.ndarray:
    """Class probabilities from the artifact's class output (its record says which output that is)."""
    spec = class_output(art.record.outputs)
    if spec is None:
        names = ", ".join(o.name for o in art.record.outputs)
        raise FvdeployError(f"the artifact has no class output (outputs: {names}): predict needs a classifier")
    values = outputs[spec.name]
    return values.astype(np.float64) if spec.kind is TensorKind.probabilities else softmax(values)


def run_batches(runner, batch: np.ndarray, batch_range: tuple[int, int]):
    """``batch`` in chunks the artifact takes (the last one padded with copies for a fixed-batch artifact)."""
    low, high = batch_range
    for i in range(0, len(batch), high):
        chunk = batch[i:i + high]
        n = len(chunk)
        if n < low:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], low - n, axis=0)])
        outputs = runner.infer(np.ascontiguousarray(chunk))
        yield {k: v[:n] for k, v in outputs.items()}


def predict(art: Artifact, images: list[Path], top: int = 5, opts: RunOptions = RunOptions()) -> list[dict]:
    """One row per image: its path and the ``top`` (label, index, probability), most likely first."""
    desc = art.model
    batch = np.stack([preprocess(open_image(p), desc.resolution, desc.preprocessing) for p in images])
    with art.runner(opts) as runner:
        probs = np.concatenate([probabilities(out, art) for out in run_batches(runner, batch, runner.batch_range)])
    names = art.model.labels()
    rows = []
    for path, p in zip(images, probs):
        best = np.argsort(-p)[:top]
        rows.append({"image": str(path),
                     "top": [{"label": names[i], "index": int(i), "probability": float(p[i])} for i in best]})
    return rows
