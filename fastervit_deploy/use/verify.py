"""`fvdeploy verify`: an artifact against PyTorch on real images (errors, cosine, top-1/top-5 agreement).

A served model is verified like a file; a served ensemble is sent the images themselves (PNG: lossless), so that
the server's own preprocessing is compared with fvdeploy's."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..artifact import open_artifact
from ..core.options import ModelRequest, RunOptions, ServerOptions
from ..core.parity import report_lines, run_parity
from ..core.precision import TOLERANCES, Tolerance
from ..core.reference import TorchRunner
from ..core.runner import in_output_space
from ..data.images import cycled, encoded, load_images, preprocess
from ..system.errors import FvdeployError
from ..system.progress import Steps


def verify(path: Path | str, model: ModelRequest, tolerance: Tolerance, runtime: RunOptions, images: Path | None,
           batch: int, steps: Steps, server: ServerOptions = ServerOptions()) -> dict:
    """The parity figures of ``path`` against the PyTorch model its record names (``passed`` says the verdict)."""
    art = open_artifact(path, model, server)
    desc, record = art.model, art.record
    if note := art.runtime_note(runtime):
        steps.note(note)
    tol = TOLERANCES[record.precision].override(tolerance)
    runner = art.runner(runtime)  # before the reference is built: a runtime this machine lacks is said at once
    low, high = runner.batch_range
    if not low <= batch <= high:  # said now, not after the reference is built
        raise FvdeployError(f"--batch {batch} is outside {art.name}'s batch range {low}..{high}")
    with steps("building PyTorch reference"):
        torch_model = desc.build(steps.note)
        read = load_images(images, note=steps.note)
        pictures = cycled(read, batch)
        photos = np.stack([preprocess(img, desc.resolution, desc.preprocessing) for img in pictures])
        sent = [[encoded(img) for img in pictures]] if runner.takes_encoded else None
    if len(read) < batch:  # the figures count the batch; say how many distinct images it holds
        steps.note(f"{len(read)} distinct image{'s' if len(read) != 1 else ''} in a batch of {batch} (repeated, every "
                   "second pass mirrored)")
    with steps(f"running {art.description}"), runner, \
            TorchRunner(torch_model, desc.input, desc.outputs, threads=runtime.threads) as reference:
        result = run_parity(lambda b: in_output_space(reference.infer(b), runner.outputs), runner, [photos], tol, sent)
    result.update(artifact=art.location, runner=runner.name, precision=record.precision.value, model=desc.name)
    if (served := art.facts()) is not None:
        result["served"] = served
    for line in report_lines(result):
        steps.note(f"{record.precision}: {line}")
    return result
