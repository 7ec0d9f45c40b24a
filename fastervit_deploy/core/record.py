"""The artifact record: what an artifact is, how it was made and how well it matches PyTorch.

One typed record with one writer per carrier and one reader:
* the JSON sidecar ``<artifact>.json`` holds the whole record plus the sha256 of every file;
* ONNX ``metadata_props`` and Core ML ``user_defined_metadata`` embed its identity (model, precision,
  batch range, inputs/outputs, the command that made it; written by ``onnx/metadata.py`` and
  ``coreml/metadata.py``), so an artifact separated from its sidecar still says what it is;
* ``read_artifact`` hashes the given file once and accepts a sidecar only if it is this file's: the
  file's sha256 is the one recorded for the artifact (a renamed artifact is found by content), and
  the identity embedded in the file agrees with the sidecar's. Without a sidecar, the embedded
  identity is the record.
Paths are stored absolute and relative to the artifact, so a moved folder still finds its checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import json
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from ..version import __version__
from ..system.errors import FvdeployError
from ..system.files import published_path, sha256
from .address import is_address
from .declare import Choice
from .model_spec import CheckpointRef, ModelDescription
from .precision import Precision, QuantTarget
from .tensors import TensorSpec

RECORD_VERSION = 2
RECORD_KEY = "fvdeploy.record"
TOOL_PACKAGES = ("torch", "onnx", "onnxruntime", "onnxruntime-gpu", "onnxslim", "onnxsim", "numpy", "coremltools",
                 "tensorrt", "tensorrt-rtx-cu12", "tensorrt-rtx-cu13", "nvidia-modelopt")


class FormatKey(Choice):
    """The artifact formats (``formats.FORMATS`` holds what fvdeploy knows of each)."""

    onnx = "onnx"
    tensorrt = "tensorrt"
    tensorrt_rtx = "tensorrt-rtx"
    coreml = "coreml"


def tool_versions() -> dict[str, str]:
    versions = {"fvdeploy": __version__, "python": platform.python_version()}
    for name in TOOL_PACKAGES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[name] = importlib.metadata.version(name)
    return versions




def sidecar_path(artifact: str | Path) -> Path:
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + ".json")


@dataclass(frozen=True)
class FileRef:
    """A file an artifact was made from, by content."""

    path: Path
    sha256: str

    @classmethod
    def of(cls, path: str | Path) -> "FileRef":
        return cls(Path(path).resolve(), sha256(path))

    def to_dict(self, base: Path | None = None) -> dict:
        d = {"path": str(self.path), "sha256": self.sha256}
        if base is not None:
            d["relative"] = os.path.relpath(self.path, base.resolve())
        return d

    @classmethod
    def from_dict(cls, d: Mapping, base: Path | None = None) -> "FileRef":
        return cls(locate(d, base), d["sha256"])


def locate(d: Mapping, base: Path | None) -> Path:
    """The stored absolute path; where no file is there any more, the path relative to the artifact (a moved
    folder). Whoever uses the file compares its content with the recorded sha256."""
    absolute = Path(d["path"])
    if base is None or "relative" not in d or absolute.is_file():
        return absolute
    moved = (base / d["relative"]).resolve()
    return moved if moved.is_file() else absolute


# The batch range of an artifact known only from model options (its runtime knows the real one).
UNKNOWN_BATCH_RANGE = (1, 1 << 30)


class NoRecord(FvdeployError):
    """The artifact has neither a sidecar nor an embedded record."""


# Fields that describe one written file, not what it is: a derived record starts without them.
_PER_FILE = ("checks", "parity", "notes", "timings_s", "files", "tools", "created")


@dataclass(frozen=True)
class ArtifactRecord:
    format: FormatKey
    precision: Precision
    model: ModelDescription
    batch_range: tuple[int, int]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    command: tuple[str, ...] = ()  # the fvdeploy command line that makes this artifact
    source: FileRef | None = None  # the ONNX it was made from (quantize, build-trt)
    fp32_nodes: tuple[str, ...] = ()  # kept fp32 by the FP16 lowering's overflow guard (beyond LayerNorm)
    # Weighted ops the policy would quantize, kept out of the Q/DQ precision on purpose (--exclude, --fallback)
    qdq_excluded: tuple[str, ...] = ()
    target: QuantTarget | None = None  # what a reduced-precision graph is made for (None: FP32, any runtime)
    details: Mapping[str, Any] = field(default_factory=dict)  # format-specific facts
    checks: Mapping[str, Any] | None = None  # graph / package / engine checks
    parity: Mapping[str, Any] | None = None
    notes: tuple[str, ...] = ()
    timings_s: Mapping[str, float] = field(default_factory=dict)
    # Filled in by write_sidecar:
    files: Mapping[str, str] = field(default_factory=dict)  # file name -> sha256: the artifact first, then companions
    tools: Mapping[str, str] = field(default_factory=dict)
    created: str = ""

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "precision", Precision(self.precision))
            object.__setattr__(self, "format", FormatKey(self.format))
        except ValueError as err:
            raise FvdeployError(f"record: {err}") from err
        object.__setattr__(self, "batch_range", tuple(self.batch_range))
        if self.target is not None:
            object.__setattr__(self, "target", QuantTarget(self.target))

    def replace(self, **changes: Any) -> "ArtifactRecord":
        return dataclasses.replace(self, **changes)

    def derive(self, **changes: Any) -> "ArtifactRecord":
        """The record of an artifact made from this one: what it is carries over (model, tensors, what computes
        in which precision), what was measured of this file does not (checks, parity, notes, timings, hashes,
        tools, date, format details)."""
        blank = {name: (None if name in ("checks", "parity") else type(getattr(self, name))())
                 for name in _PER_FILE}
        return dataclasses.replace(self, **{"details": {}, **blank, **changes})

    @property
    def input(self) -> TensorSpec:
        return self.inputs[0]

    def identity(self, base: Path | None = None) -> dict:
        """What the artifact is (the part embedded in the artifact itself)."""
        model = self.model.to_dict()
        if self.model.checkpoint is not None and base is not None:
            model["checkpoint"]["relative"] = os.path.relpath(self.model.checkpoint.path, base.resolve())
        return {
            "record_version": RECORD_VERSION, "format": self.format.value, "precision": self.precision.value,
            "model": model, "batch_range": list(self.batch_range), "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs], "command": list(self.command),
            "source": self.source.to_dict(base) if self.source else None, "fp32_nodes": list(self.fp32_nodes),
            "qdq_excluded": list(self.qdq_excluded), "target": self.target.value if self.target else None,
        }

    def to_dict(self, base: Path | None = None) -> dict:
        return {**self.identity(base), "details": dict(self.details), "checks": self.checks, "parity": self.parity,
                "notes": list(self.notes), "timings_s": dict(self.timings_s), "files": dict(self.files),
                "tools": dict(self.tools), "created": self.created}

    @classmethod
    def from_dict(cls, d: Mapping, base: Path | None = None) -> "ArtifactRecord":
        if not isinstance(d, Mapping) or "record_version" not in d:
            raise FvdeployError("not an fvdeploy record (JSON without a record_version): was it replaced by another "
                                "file, e.g. a report written over it?")
        version = d.get("record_version")
        if version != RECORD_VERSION:
            raise FvdeployError(f"record version {version} is not {RECORD_VERSION} (written by another fvdeploy "
                                "version): re-create the artifact")
        model = dict(d["model"])
        if model.get("checkpoint"):
            ckpt = model["checkpoint"]
            model["checkpoint"] = {**ckpt, "path": str(locate(ckpt, base))}
        return cls(
            d["format"], d["precision"], ModelDescription.from_dict(model), tuple(d["batch_range"]),
            tuple(TensorSpec.from_dict(t) for t in d["inputs"]), tuple(TensorSpec.from_dict(t) for t in d["outputs"]),
            tuple(d.get("command", ())), FileRef.from_dict(d["source"], base) if d.get("source") else None,
            tuple(d.get("fp32_nodes", ())), tuple(d.get("qdq_excluded", ())), d.get("target"), d.get("details") or {},
            d.get("checks"),
            d.get("parity"), tuple(d.get("notes", ())), d.get("timings_s") or {}, d.get("files") or {},
            d.get("tools") or {}, d.get("created", ""),
        )


def _what(identity: Mapping) -> dict:
    """An identity without where things are (paths change when folders move; what they are does not)."""
    model = dict(identity.get("model") or {})
    if model.get("checkpoint"):
        model["checkpoint"] = {k: v for k, v in model["checkpoint"].items() if k not in ("path", "relative")}
    source = identity.get("source")
    return {**identity, "model": model, "source": source and {"sha256": source.get("sha256")}}


def files_read(*paths: str | Path | None) -> list[Path]:
    """What a command reads from the paths it was given (none may be one of its outputs): each path, and beside
    an artifact its sidecar and external data. A served model's address (``triton://...``) is no file."""
    found = []
    for path in filter(None, paths):
        if is_address(path):
            continue
        found += [Path(path), sidecar_path(path), Path(path).with_name(Path(path).name + ".data")]
    return found


def recorded_source(artifact: str | Path) -> Path | None:
    """The source file an artifact's sidecar names, read without any check (only to know which files a command
    will read, before it reads them); None where there is none."""
    side = sidecar_path(artifact)
    try:
        source = json.loads(side.read_text()).get("source") or {}
        return locate(source, Path(artifact).parent) if source.get("path") else None
    except (OSError, ValueError, AttributeError, TypeError):
        return None


def companions(artifact: Path) -> list[Path]:
    """Files that belong to an artifact (ONNX external data), beside it."""
    data = artifact.with_name(artifact.name + ".data")
    return [data] if data.is_file() else []


def write_sidecar(tmp: Path, record: ArtifactRecord) -> ArtifactRecord:
    """Write ``<artifact>.json`` beside the temporary artifact (published with it); return the final record.

    Paths relative to the artifact are computed from where it will be published, not from ``tmp``.
    """
    files = {p.name: sha256(p) for p in [tmp, *companions(tmp)]}
    record = record.replace(files=files, tools=tool_versions(),
                            created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    return write_record(tmp, record, published_path(tmp).parent)


def write_record(artifact: Path, record: ArtifactRecord, base: Path) -> ArtifactRecord:
    """``<artifact>.json``: the record as it is (its files already named and hashed), paths relative to ``base``,
    the folder the artifact is published in. Every sidecar fvdeploy writes goes through here (a Triton model
    folder's copy of an artifact too)."""
    sidecar_path(artifact).write_text(record_json(record, base, indent=2) + "\n")
    return record


def record_json(record: ArtifactRecord, base: Path | None = None, indent: int | None = None) -> str:
    """The whole record as JSON text (a sidecar's, or what a Triton config carries)."""
    return json.dumps(record.to_dict(base), indent=indent, default=_jsonable)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def summary_metadata(record: ArtifactRecord) -> dict[str, str]:
    """Readable keys beside the embedded record (what Netron or Xcode show)."""
    H, W = record.model.resolution
    return {"fvdeploy.model": record.model.name, "fvdeploy.resolution": f"{H}x{W}",
            "fvdeploy.precision": record.precision.value,
            "fvdeploy.batch_range": f"{record.batch_range[0]},{record.batch_range[1]}", "fvdeploy.version": __version__,
            "fvdeploy.checkpoint_sha256": record.model.checkpoint.sha256 if record.model.checkpoint else "random-weights"}


def parse_identity(text: str | None, artifact: Path) -> dict | None:
    """An embedded identity's JSON (the format packages read it from their files)."""
    if not text:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise FvdeployError(f"{artifact.name}'s embedded fvdeploy record is not valid JSON") from err


IdentityReader = Callable[[Path], "dict | None"]


@dataclass(frozen=True)
class RecordedArtifact:
    """An artifact file, its sha256 (computed once) and its record."""

    path: Path
    sha256: str
    record: ArtifactRecord

    @property
    def ref(self) -> FileRef:
        return FileRef(self.path.resolve(), self.sha256)


def _sidecar_record(artifact: Path, side: Path, digest: str, embedded: dict | None) -> ArtifactRecord:
    try:
        data = json.loads(side.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise FvdeployError(f"sidecar {side} is not valid JSON") from err
    try:
        record = ArtifactRecord.from_dict(data, artifact.parent)
    except (KeyError, TypeError, ValueError) as err:
        raise FvdeployError(f"sidecar {side.name} is not an fvdeploy record ({type(err).__name__}: {err})") from err
    # Both through the same reader, so fields a later fvdeploy added read as their defaults on both sides.
    embedded = _what(ArtifactRecord.from_dict(embedded, artifact.parent).identity()) if embedded is not None else None
    recorded = _what(record.identity())
    if embedded is not None and embedded != recorded:
        differs = sorted(k for k in embedded.keys() | recorded.keys() if embedded.get(k) != recorded.get(k))
        raise FvdeployError(f"sidecar {side.name} does not describe {artifact.name}: it disagrees with the record "
                            f"embedded in the file ({', '.join(differs)}); remove or restore the sidecar")
    names = list(record.files)
    if not names:
        raise FvdeployError(f"sidecar {side.name} records no files")
    if record.files[names[0]] != digest:
        raise FvdeployError(f"{artifact.name} changed since its sidecar {side.name} was written (sha256 "
                            f"{digest[:12]}… vs recorded {record.files[names[0]][:12]}…)")
    for name in names[1:]:  # companions keep their recorded names (an ONNX's graph refers to its .data by name)
        path = artifact.with_name(name)
        if not path.exists():
            raise FvdeployError(f"{name} is missing (its sidecar {side.name} records it)")
        if sha256(path) != record.files[name]:
            raise FvdeployError(f"{name} changed since its sidecar {side.name} was written")
    return record


def read_artifact(artifact: str | Path, embedded_identity: IdentityReader) -> RecordedArtifact:
    """The artifact's record, checked against the file given (see the module's docstring);
    ``embedded_identity`` reads what the file's format embeds (``formats.FORMATS``)."""
    artifact = Path(artifact)
    if not artifact.exists():
        raise FvdeployError(f"artifact not found: {artifact}")
    digest = sha256(artifact)
    side = sidecar_path(artifact)
    embedded = embedded_identity(artifact)
    if side.is_file():
        return RecordedArtifact(artifact, digest, _sidecar_record(artifact, side, digest, embedded))
    if embedded is None:
        raise NoRecord(f"{artifact.name} has no fvdeploy record (no sidecar {side.name}, no embedded metadata)")
    return RecordedArtifact(artifact, digest, ArtifactRecord.from_dict(embedded, artifact.parent))


def checkpoint_for(record: ArtifactRecord, artifact: str) -> CheckpointRef | None:
    """The record's checkpoint, if the file found has the recorded content; else a clear error (``artifact``: its
    name, for the message)."""
    ref = record.model.checkpoint
    if ref is None:
        return None
    if not ref.path.is_file():
        raise FvdeployError(f"{artifact} was made from checkpoint {ref.path}, which is not there "
                            "(nor at the same place relative to the artifact): pass --checkpoint with its new path")
    actual = sha256(ref.path)
    if actual != ref.sha256:
        raise FvdeployError(f"checkpoint {ref.path} is not the one {artifact} was made from "
                            f"(sha256 {actual[:12]}… vs recorded {ref.sha256[:12]}…): pass --checkpoint with that file")
    return ref
