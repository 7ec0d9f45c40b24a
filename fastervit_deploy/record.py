"""The artifact record: what an artifact is, how it was made and how well it matches PyTorch.

One typed record with one writer per carrier and one reader:
* the JSON sidecar ``<artifact>.json`` holds the whole record plus the sha256 of every file;
* ONNX ``metadata_props`` and Core ML ``user_defined_metadata`` embed its identity (model, precision,
  batch range, inputs/outputs, the command that made it), so an artifact separated from its sidecar
  still says what it is;
* ``read_record`` reads the sidecar (checking the hashes it records and naming the file that differs)
  or, without one, the embedded identity.
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
from typing import Any, Mapping

from . import __version__
from .errors import FvdeployError
from .files import published_path, sha256
from .model_spec import CheckpointRef, ModelDescription, TensorSpec

RECORD_VERSION = 2
RECORD_KEY = "fvdeploy.record"
PRECISIONS = ("fp32", "fp16", "int8")
TOOL_PACKAGES = ("torch", "onnx", "onnxruntime", "onnxruntime-gpu", "onnxslim", "onnxsim", "numpy", "coremltools",
                 "tensorrt", "nvidia-modelopt")


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


class NoRecord(FvdeployError):
    """The artifact has neither a sidecar nor an embedded record."""


@dataclass(frozen=True)
class ArtifactRecord:
    format: str  # "onnx" | "tensorrt" | "coreml"
    precision: str  # "fp32" | "fp16" | "int8"
    model: ModelDescription
    batch_range: tuple[int, int]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    command: tuple[str, ...] = ()  # the fvdeploy command line that makes this artifact
    source: FileRef | None = None  # the ONNX it was made from (quantize, build-trt)
    fp32_nodes: tuple[str, ...] = ()  # kept fp32 by the FP16 lowering's overflow guard (beyond LayerNorm)
    details: Mapping[str, Any] = field(default_factory=dict)  # format-specific facts
    checks: Mapping[str, Any] | None = None  # graph / package / engine checks
    parity: Mapping[str, Any] | None = None
    notes: tuple[str, ...] = ()
    timings_s: Mapping[str, float] = field(default_factory=dict)
    # Filled in by write_sidecar:
    files: Mapping[str, str] = field(default_factory=dict)  # file name -> sha256 (artifact and companions)
    tools: Mapping[str, str] = field(default_factory=dict)
    created: str = ""

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision {self.precision!r} is not one of {PRECISIONS}")

    def replace(self, **changes: Any) -> "ArtifactRecord":
        return dataclasses.replace(self, **changes)

    @property
    def input(self) -> TensorSpec:
        return self.inputs[0]

    def identity(self, base: Path | None = None) -> dict:
        """What the artifact is (the part embedded in the artifact itself)."""
        model = self.model.to_dict()
        if self.model.checkpoint is not None and base is not None:
            model["checkpoint"]["relative"] = os.path.relpath(self.model.checkpoint.path, base.resolve())
        return {
            "record_version": RECORD_VERSION, "format": self.format, "precision": self.precision, "model": model,
            "batch_range": list(self.batch_range), "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs], "command": list(self.command),
            "source": self.source.to_dict(base) if self.source else None, "fp32_nodes": list(self.fp32_nodes),
        }

    def to_dict(self, base: Path | None = None) -> dict:
        return {**self.identity(base), "details": dict(self.details), "checks": self.checks, "parity": self.parity,
                "notes": list(self.notes), "timings_s": dict(self.timings_s), "files": dict(self.files),
                "tools": dict(self.tools), "created": self.created}

    @classmethod
    def from_dict(cls, d: Mapping, base: Path | None = None) -> "ArtifactRecord":
        version = d.get("record_version")
        if version != RECORD_VERSION:
            raise FvdeployError(f"record version {version} is not {RECORD_VERSION} (written by another fvdeploy "
                                "version): re-create the artifact, or pass --model and its options")
        model = dict(d["model"])
        if model.get("checkpoint"):
            ckpt = model["checkpoint"]
            model["checkpoint"] = {**ckpt, "path": str(locate(ckpt, base))}
        return cls(
            d["format"], d["precision"], ModelDescription.from_dict(model), tuple(d["batch_range"]),
            tuple(TensorSpec.from_dict(t) for t in d["inputs"]), tuple(TensorSpec.from_dict(t) for t in d["outputs"]),
            tuple(d.get("command", ())), FileRef.from_dict(d["source"], base) if d.get("source") else None,
            tuple(d.get("fp32_nodes", ())), d.get("details") or {}, d.get("checks"), d.get("parity"), tuple(d.get("notes", ())),
            d.get("timings_s") or {}, d.get("files") or {}, d.get("tools") or {}, d.get("created", ""),
        )


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
    base = published_path(tmp).parent
    sidecar_path(tmp).write_text(json.dumps(record.to_dict(base), indent=2, default=_jsonable) + "\n")
    return record


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
            "fvdeploy.precision": record.precision, "fvdeploy.batch_range": f"{record.batch_range[0]},{record.batch_range[1]}",
            "fvdeploy.version": __version__,
            "fvdeploy.checkpoint_sha256": record.model.checkpoint.sha256 if record.model.checkpoint else "random-weights"}


def embed_in_onnx(model, record: ArtifactRecord) -> None:
    """Replace an ``onnx.ModelProto``'s metadata with the record's identity."""
    del model.metadata_props[:]
    values = {**summary_metadata(record), RECORD_KEY: json.dumps(record.identity())}
    for key, value in values.items():
        model.metadata_props.add(key=key, value=value)


def embed_in_coreml(mlmodel, record: ArtifactRecord) -> None:
    mlmodel.user_defined_metadata.update({**summary_metadata(record), RECORD_KEY: json.dumps(record.identity())})


def embedded_record(artifact: Path) -> ArtifactRecord | None:
    """The identity an ONNX file or Core ML package carries, if any."""
    text = None
    if artifact.suffix == ".onnx":
        import onnx

        with contextlib.suppress(Exception):  # not an ONNX file: the caller reports what is missing
            text = {p.key: p.value for p in onnx.load(str(artifact), load_external_data=False).metadata_props}.get(RECORD_KEY)
    elif artifact.suffix == ".mlpackage":
        spec_file = artifact / "Data" / "com.apple.CoreML" / "model.mlmodel"
        if spec_file.is_file():
            from coremltools.proto import Model_pb2

            text = dict(Model_pb2.Model.FromString(spec_file.read_bytes()).description.metadata.userDefined).get(RECORD_KEY)
    return ArtifactRecord.from_dict(json.loads(text), artifact.parent) if text else None


def check_files(artifact: Path, record: ArtifactRecord) -> None:
    """Every file the sidecar hashed must still have that content."""
    for name, digest in record.files.items():
        path = artifact.with_name(name)
        if not path.exists():
            raise FvdeployError(f"{name} is missing (its sidecar {sidecar_path(artifact).name} records it)")
        if sha256(path) != digest:
            raise FvdeployError(f"{name} changed since its sidecar {sidecar_path(artifact).name} was written "
                                f"(sha256 {sha256(path)[:12]}… vs recorded {digest[:12]}…)")


def read_record(artifact: str | Path) -> ArtifactRecord:
    """The artifact's record: its sidecar (hashes checked), else the identity embedded in it."""
    artifact = Path(artifact)
    side = sidecar_path(artifact)
    if side.is_file():
        try:
            data = json.loads(side.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise FvdeployError(f"sidecar {side} is not valid JSON") from None
        try:
            record = ArtifactRecord.from_dict(data, artifact.parent)
        except (KeyError, TypeError, ValueError) as err:
            raise FvdeployError(f"sidecar {side.name} is not an fvdeploy record ({type(err).__name__}: {err})") from None
        check_files(artifact, record)
        return record
    embedded = embedded_record(artifact)
    if embedded is None:
        raise NoRecord(f"{artifact.name} has no fvdeploy record (no sidecar {side.name}, no embedded metadata): "
                       "pass --model and the options it was made with")
    return embedded


def checkpoint_for(record: ArtifactRecord, artifact: Path) -> CheckpointRef | None:
    """The record's checkpoint, if the file found has the recorded content; else a clear error."""
    ref = record.model.checkpoint
    if ref is None:
        return None
    if not ref.path.is_file():
        raise FvdeployError(f"{artifact.name} was made from checkpoint {ref.path}, which is not there "
                            "(nor at the same place relative to the artifact): pass --checkpoint")
    actual = sha256(ref.path)
    if actual != ref.sha256:
        raise FvdeployError(f"checkpoint {ref.path} is not the one {artifact.name} was made from "
                            f"(sha256 {actual[:12]}… vs recorded {ref.sha256[:12]}…): pass --checkpoint")
    return ref
