"""The ``fvdeploy.*`` metadata an ONNX file carries (model, resolution, batch range, precision, ...)."""

from __future__ import annotations

from pathlib import Path

import onnx


def read_metadata(model: onnx.ModelProto | str | Path) -> dict[str, str]:
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def write_metadata(model: onnx.ModelProto, values: dict[str, object]) -> None:
    """Replace the model's metadata with ``values``."""
    del model.metadata_props[:]
    for key, value in values.items():
        model.metadata_props.add(key=key, value=str(value))


def onnx_precision(path: str | Path) -> str:
    return read_metadata(path).get("fvdeploy.precision", "fp32")
