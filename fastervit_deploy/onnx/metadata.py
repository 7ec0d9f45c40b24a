"""The record's identity inside an ONNX file (``metadata_props``): written at export and quantize, read back."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from ..core.record import RECORD_KEY, ArtifactRecord, parse_identity, summary_metadata


def embed(model, record: ArtifactRecord) -> None:
    """Replace an ``onnx.ModelProto``'s metadata with the record's identity."""
    del model.metadata_props[:]
    for key, value in {**summary_metadata(record), RECORD_KEY: json.dumps(record.identity())}.items():
        model.metadata_props.add(key=key, value=value)


def read_identity(path: Path) -> dict | None:
    """The identity an ONNX file carries, as stored; None if it carries none (or is no ONNX file)."""
    if not Path(path).is_file():
        return None
    import onnx

    text = None
    with contextlib.suppress(Exception):  # not an ONNX file: the caller reports what is missing
        text = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}.get(RECORD_KEY)
    return parse_identity(text, Path(path))


def embedded_record(path: Path) -> ArtifactRecord | None:
    identity = read_identity(Path(path))
    return ArtifactRecord.from_dict(identity, Path(path).parent) if identity else None
