"""What precision a built TensorRT engine really runs in, from its layer information.

Since TensorRT 11 there are no precision flags to disagree with: a strongly typed build that "falls
back" simply builds what the graph says, and exits 0. So after `build-trt` the engine is read back
with ``IEngineInspector`` (built with ``ProfilingVerbosity.DETAILED``) and its layers are counted per
precision; an ``--int8`` engine without INT8 layers, or an ``--fp16``/``--int8`` engine whose compute
layers are mostly FP32, is refused.

The JSON is the layout TensorRT documents for ``IEngineInspector.get_engine_information(JSON)`` and
``trtexec --exportLayerInfo``: ``{"Layers": [{"Name", "LayerType", "Inputs": [{"Name", "Location",
"Dimensions", "Format/Datatype"}], "Outputs": [...], "TacticName", ...}], "Bindings": [...]}``; with
``LAYER_NAMES_ONLY`` verbosity the layers are bare names, which this refuses to guess from.
"""

from __future__ import annotations

import collections
import json
from typing import Any

from ..core.checks import CheckReport, Finding

# Layers that move or reformat data: they take their neighbours' precision and are not compute.
DATA_MOVEMENT = ("Reformat", "Shuffle", "NoOp", "Constant", "Slice", "Concatenation", "Gather", "Identity", "Cast")
# Order matters: "Row major linear FP16 format" names no other type; "Int8" is checked before "Float".
_TOKENS = (("int8", "int8"), ("fp8", "fp8"), ("bf16", "bf16"), ("fp16", "fp16"), ("half", "fp16"), ("fp32", "fp32"),
           ("float", "fp32"), ("int32", "int32"), ("int64", "int64"), ("bool", "bool"))
LOWER = ("int8", "fp8", "fp16", "bf16")


def datatype(text: str) -> str:
    """``"Channel major FP16 format where channel % 8 == 0"`` → ``"fp16"``."""
    lowered = str(text).lower()
    return next((kind for token, kind in _TOKENS if token in lowered), "unknown")


def layer_precision(layer: dict[str, Any]) -> str:
    """A layer computes in the lowest float precision among its inputs (INT8 for a Q/DQ-fused conv)."""
    kinds = [datatype(t.get("Format/Datatype", "")) for t in layer.get("Inputs", [])]
    for kind in ("int8", "fp8", "fp16", "bf16", "fp32"):
        if kind in kinds:
            return kind
    return kinds[0] if kinds else "unknown"


def layers(info: str | dict) -> list[dict[str, Any]]:
    data = json.loads(info) if isinstance(info, str) else info
    items = data.get("Layers", []) if isinstance(data, dict) else data
    if items and not isinstance(items[0], dict):
        raise ValueError("the engine has layer names only: build it with ProfilingVerbosity.DETAILED")
    return list(items)


def precision_counts(info: str | dict) -> dict[str, dict[str, int]]:
    """{"all": {precision: layers}, "compute": {precision: layers}} (compute: not data movement)."""
    every, compute = collections.Counter(), collections.Counter()
    for layer in layers(info):
        kind = layer_precision(layer)
        every[kind] += 1
        if str(layer.get("LayerType", "")) not in DATA_MOVEMENT:
            compute[kind] += 1
    return {"all": dict(every), "compute": dict(compute)}


def audit(info: str | dict, requested: str) -> CheckReport:
    """Does the engine run in the precision its ONNX asked for?"""
    counts = precision_counts(info)
    compute = counts["compute"]
    total = sum(compute.values())
    fp32 = compute.get("fp32", 0)
    summary = ", ".join(f"{k} {v}" for k, v in sorted(compute.items())) or "no compute layers"
    findings = [Finding("engine-precision", True, f"compute layers: {summary}", severity="info", facts=dict(compute))]
    if requested in LOWER:
        found = compute.get(requested, 0)
        findings.append(Finding(f"{requested}-layers", found > 0, f"{found} {requested.upper()} compute layers" if found
                                else f"an --{requested} engine without {requested.upper()} layers (TensorRT built what "
                                     "the graph allowed)", facts={"layers": found}))
        findings.append(Finding("mostly-reduced", total > 0 and fp32 * 2 <= total,
                                f"{fp32} of {total} compute layers in FP32" + (
                                    "" if total and fp32 * 2 <= total else f" (the engine is mostly FP32, not {requested})"),
                                facts={"fp32_layers": fp32, "compute_layers": total}))
    return CheckReport("engine precision audit", findings, {"layer_precisions": counts, "requested": str(requested)})
