"""The record's identity inside a Core ML package (``user_defined_metadata``), written at conversion, read back."""

from __future__ import annotations

import json
from pathlib import Path

from ..core.record import RECORD_KEY, ArtifactRecord, parse_identity, summary_metadata
from ..system.optional import import_coremltools

SPEC_FILE = Path("Data") / "com.apple.CoreML" / "model.mlmodel"
PACKAGE_MARKER = "Manifest.json"  # what makes a folder a Core ML package


def embed(mlmodel, record: ArtifactRecord) -> None:
    mlmodel.user_defined_metadata.update({**summary_metadata(record), RECORD_KEY: json.dumps(record.identity())})


def read_identity(path: Path) -> dict | None:
    spec_file = Path(path) / SPEC_FILE
    if not spec_file.is_file():
        return None
    import_coremltools()  # quiet: its import announces, on Linux, the macOS runtime it lacks
    from coremltools.proto import Model_pb2

    text = dict(Model_pb2.Model.FromString(spec_file.read_bytes()).description.metadata.userDefined).get(RECORD_KEY)
    return parse_identity(text, Path(path))
