"""An existing artifact opened for use: its format, its record (checked against the file), the PyTorch
model it matches, and a runner in one call. A served model's address (``triton://HOST:PORT/MODEL``) opens the
same way, as a ``triton.served.ServedModel``: its record comes from the server (imported when first used: the
Triton client sits in a layer above this one).

The record names the model. Model options given beside an artifact with a record may only say the same
(or say where its checkpoint now is); options that contradict the record are refused, since comparing
the artifact with another model proves nothing. An artifact without a record needs the model options.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .core.address import is_address, parse_address
from .core.model_spec import ModelDescription, checkpoint_file, resolve_model
from .core.options import ModelRequest, RunOptions, ServerOptions
from .core.precision import Precision
from .core.record import (
    UNKNOWN_BATCH_RANGE,
    ArtifactRecord,
    NoRecord,
    RecordedArtifact,
    checkpoint_for,
    read_artifact,
)
from .core.record import FormatKey
from .formats import Format, format_for, runtime_mismatch
from .system.errors import FvdeployError
from .system.files import sha256
from .system.lazy import load

if TYPE_CHECKING:
    from .core.runner import Runner


@dataclass(frozen=True)
class Artifact(RecordedArtifact):
    """A recorded artifact with its format and the PyTorch model it matches (the checkpoint located)."""

    format: Format
    model: ModelDescription

    def runner(self, opts: RunOptions = RunOptions()) -> Runner:
        return self.format.open_runner(self.path, self.record, opts)

    @property
    def name(self) -> str:
        """How messages and tables name it."""
        return self.path.name

    @property
    def location(self) -> str:
        """Where it is, as reports record it."""
        return str(self.path)

    @property
    def description(self) -> str:
        return self.format.description

    def size_mb(self) -> float:
        """The artifact's files on disk (a package's whole folder, an ONNX's external data)."""
        files = [self.path, *(self.path.with_name(n) for n in list(self.record.files)[1:])]
        size = sum(p.stat().st_size for f in files for p in ([f] if f.is_file() else f.rglob("*")) if p.is_file())
        return round(size / 1e6, 2)

    def facts(self) -> dict | None:
        """What a served model says of its server (None: a file, its record says it all)."""
        return None

    def runtime_note(self, opts: RunOptions = RunOptions()) -> str | None:
        """One line if this artifact runs on a provider it was not made for."""
        return runtime_mismatch(self.path, self.record, opts)


def read_recorded(path: str | Path) -> RecordedArtifact:
    """An artifact file's record, checked against the file (its format says what the file embeds)."""
    return read_artifact(path, format_for(path).read_identity)


def read_record(path: str | Path) -> ArtifactRecord:
    return read_recorded(path).record


def _graph_precision(path: Path, fmt: Format) -> Precision:
    """What an ONNX file without a record computes in, from its graph; other formats: their first precision."""
    if fmt.key is not FormatKey.onnx:
        return fmt.precisions[0]
    import onnx

    from .graph.policy_checks import lowered

    model = onnx.load(str(path), load_external_data=False)
    if any(n.op_type == "QuantizeLinear" for n in model.graph.node):
        return Precision.int8
    return Precision.fp16 if lowered(model) else Precision.fp32


def model_for(record: ArtifactRecord, name: str, given: ModelRequest) -> ModelDescription:
    """The model a record names (``name``: the artifact's, for messages), with the checkpoint located by content and
    the model options given checked against the record (they may only say the same, or where the checkpoint is)."""
    if not given.any_given:
        return record.model.replace(checkpoint=checkpoint_for(record, name))
    return _with_model_options(record, name, given)


def _with_model_options(record: ArtifactRecord, name: str, given: ModelRequest) -> ModelDescription:
    """The record's model, with the model options given checked against it."""
    ours = record.model
    if set(given.given) <= {"checkpoint", "pretrained"} and not given.overrides:  # where the checkpoint is now
        if ours.checkpoint is None:
            raise FvdeployError(f"{name} was made from random weights (seed {ours.seed}), not a checkpoint: "
                                f"leave out {' '.join(given.given_flags())}")
        local, remote = checkpoint_file(given if given.model else given.replace(model=ours.name))
        named = remote.uri if remote is not None else str(given.checkpoint)
        digest = sha256(local) if Path(local).is_file() else None
        if digest is None:
            raise FvdeployError(f"checkpoint not found: {named}")
        if digest != ours.checkpoint.sha256:
            raise FvdeployError(f"checkpoint {named} is not the one {name} was made from (sha256 "
                                f"{digest[:12]}… vs recorded {ours.checkpoint.sha256[:12]}…)")
        moved = dataclasses.replace(ours.checkpoint, path=Path(local).resolve(), as_given=named)
        return ours.replace(checkpoint=moved)
    if "seed" in given.given and ours.checkpoint is not None:
        raise FvdeployError(f"--seed sets random weights: {name} was made from a checkpoint")
    merged = dataclasses.replace(ours.request(), **{key: getattr(given, key) for key in given.given},
                                 overrides=given.overrides)
    desc = resolve_model(merged)
    if desc.input.shape != ours.input.shape:
        raise FvdeployError(f"the model options give input [N, {', '.join(map(str, desc.input.shape))}] but "
                            f"{name} takes [N, {', '.join(map(str, ours.input.shape))}]")
    same_weights = (desc.checkpoint.sha256 if desc.checkpoint else desc.seed) == (
        ours.checkpoint.sha256 if ours.checkpoint else ours.seed)
    if desc.name != ours.name or desc.config != ours.config or not same_weights:
        options = given.given_flags()
        raise FvdeployError(f"{' '.join(options)} contradict{'s' if len(options) == 1 else ''} {name}'s record "
                            f"({ours.name} {ours.resolution[0]}x{ours.resolution[1]}, {ours.weights}): leave the model "
                            "options out, the record names the model")
    return ours.replace(checkpoint=desc.checkpoint)


def open_artifact(path: str | Path, model: ModelRequest | None = ModelRequest(),
                  server: ServerOptions = ServerOptions()) -> Artifact:
    """Read an artifact's record (checked against the file); the model comes from it, or from model options.
    A served model's address opens a ``triton.served.ServedModel`` (its record read from the server).

    ``model=None``: the command takes no model options, so an artifact without a record cannot be used."""
    if is_address(path):
        return load("fastervit_deploy.triton.served:open_served")(parse_address(path), model, server)
    path = Path(path)
    fmt = format_for(path)
    if not path.exists():
        raise FvdeployError(f"artifact not found: {path}")
    try:
        recorded = read_artifact(path, fmt.read_identity)
    except NoRecord as err:
        if model is None:
            raise NoRecord(f"{err}: make it with fvdeploy (export-onnx, quantize, build-trt, coreml), which records "
                           "what it makes") from err
        if not model.any_given:
            raise NoRecord(f"{err}: pass --model and the options it was made with") from err
        desc = resolve_model(model)  # nothing recorded: take the model options' word for what the artifact is
        record = ArtifactRecord(fmt.key, _graph_precision(path, fmt), desc, UNKNOWN_BATCH_RANGE, (desc.input,),
                                desc.outputs)
        return Artifact(path, sha256(path), record, fmt, desc)
    record = recorded.record
    return Artifact(path, recorded.sha256, record, fmt, model_for(record, path.name, model or ModelRequest()))
