"""Top-k classes of images through any artifact this machine runs, with the model's own preprocessing."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

import numpy as np
from PIL import Image

from ..artifact import Artifact, open_artifact, read_record
from ..core.address import is_address
from ..core.model_spec import ModelDescription
from ..core.options import RunOptions
from ..core.runner import softmax
from ..core.tensors import TensorKind, class_output
from ..data.images import open_image, preprocess, readable_images, skipped_text
from ..system.errors import FvdeployError
from ..triton.model import CONFIG_FILE, served_record

if TYPE_CHECKING:
    from ..triton.served import ServedModel


def probabilities(outputs: dict[str, np.ndarray], art: "Artifact | ServedModel") -> np.ndarray:
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


def model_of(artifact: str | Path | Artifact) -> ModelDescription:
    """The model an artifact holds, from its record: an artifact file, a Triton model folder fvdeploy wrote (its
    served file's sidecar, checked like any artifact's), or a served model's address (``triton://...``)."""
    if isinstance(artifact, Artifact):
        return artifact.model
    if is_address(artifact):  # a served model: its record, from its server
        return open_artifact(artifact, model=None).model
    path = Path(artifact)
    if path.is_dir() and (path / CONFIG_FILE).is_file():
        return served_record(path).record.model
    return read_record(path).model


def preprocess_images(images: Iterable[str | Path | Image.Image], artifact: str | Path | Artifact) -> np.ndarray:
    """The batch the artifact's input takes, ``[N, 3, H, W]`` float32, from image files or PIL images: the
    model's own evaluation preprocessing (resize by crop_pct, centre crop, normalise), as `fvdeploy predict` does."""
    if isinstance(images, (str, Path, Image.Image)):  # one image, not the characters of its name
        images = [images]
    images = list(images)
    if not images:
        raise FvdeployError("preprocess: no images given (a list of image files or PIL images)")
    desc = model_of(artifact)
    return np.stack([preprocess(img.convert("RGB") if isinstance(img, Image.Image) else open_image(Path(img)),
                                desc.resolution, desc.preprocessing) for img in images])


def predict(art: "Artifact | ServedModel", images: list[Path], top: int = 5, opts: RunOptions = RunOptions(),
            found: frozenset[Path] = frozenset(), note: Callable[[str], None] = lambda _: None) -> list[dict]:
    """One row per image: its path and the ``top`` (label, index, probability), most likely first.

    An image named on the command line must be readable; one ``found`` in a folder that is not is skipped (and
    told to ``note``), as every folder reader of fvdeploy does."""
    desc = art.model
    arrays, read, skipped = [], [], []
    for path in images:
        opened = readable_images([path], skipped) if path in found else [(path, open_image(path))]
        for _, img in opened:
            arrays.append(preprocess(img, desc.resolution, desc.preprocessing))
            read.append(path)
    if skipped:
        note(skipped_text(skipped))
    if not arrays:
        raise FvdeployError(f"no readable image ({skipped[0]})")
    images, batch = read, np.stack(arrays)
    with art.runner(opts) as runner:
        if runner.takes_encoded:  # a served ensemble: the files as they are, preprocessed by its server
            files, high = [path.read_bytes() for path in read], runner.batch_range[1]
            outputs = [runner.infer_encoded(files[i:i + high]) for i in range(0, len(files), high)]
        else:
            outputs = list(run_batches(runner, batch, runner.batch_range))
        probs = np.concatenate([probabilities(out, art) for out in outputs])
    names = art.model.labels()
    rows = []
    for path, p in zip(images, probs):
        best = np.argsort(-p)[:top]
        rows.append({"image": str(path),
                     "top": [{"label": names[i], "index": int(i), "probability": float(p[i])} for i in best]})
    return rows
