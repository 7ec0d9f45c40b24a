"""An existing artifact opened for use: its backend, its record, and the PyTorch model it matches."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import FvdeployError
from .formats import Backend, backend_for
from .model_spec import ModelDescription, resolve_model
from .options import ModelRequest, RunOptions
from .record import ArtifactRecord, NoRecord, checkpoint_for, read_record
from .runners import Runner


@dataclass(frozen=True)
class Artifact:
    path: Path
    backend: Backend
    record: ArtifactRecord
    model: ModelDescription

    def runner(self, opts: RunOptions = RunOptions()) -> Runner:
        return self.backend.open_runner(self.path, self.record, opts)


def open_artifact(path: str | Path, model: ModelRequest = ModelRequest()) -> Artifact:
    """Read an artifact's record (hashes checked); the model comes from it, or from model options when given."""
    path = Path(path)
    backend = backend_for(path)
    if not path.exists():
        raise FvdeployError(f"artifact not found: {path}")
    try:
        record = read_record(path)
    except NoRecord:
        if not model.given:
            raise
        record = None
    if not model.given:
        return Artifact(path, backend, record, record.model.replace(checkpoint=checkpoint_for(record, path)))
    desc = resolve_model(model)
    if record is None:  # nothing recorded: take the model options' word for what the artifact is
        record = ArtifactRecord(backend.key, backend.precisions[0], desc, (1, 1 << 30), (desc.input,), desc.outputs)
    elif desc.input.shape != record.model.input.shape:
        raise FvdeployError(f"the model options give input [N, {', '.join(map(str, desc.input.shape))}] but "
                            f"{path.name} takes [N, {', '.join(map(str, record.model.input.shape))}]")
    return Artifact(path, backend, record, desc)
