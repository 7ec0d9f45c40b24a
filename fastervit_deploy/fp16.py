"""FP32 → FP16 ONNX conversion for strongly-typed TensorRT networks (fp32 inputs and outputs kept).

Every float tensor becomes fp16 except around the op types kept in fp32 (by default
LayerNormalization, whose mean/variance statistics overflow or lose precision in fp16): those get
Cast(fp32) on their activation inputs and Cast(fp16) on their outputs, and their weights stay fp32.
Works on plain and on Q/DQ graphs (DequantizeLinear then yields fp16, which needs opset ≥ 19).

Why the rest is safe in FasterViT: softmax inputs are max-subtracted by every runtime; the attention
biases are bounded by 16 (16·sigmoid); the carrier propagation upsampling is Slice/Concat, exact in
any precision (no Resize, so no fp32 island is needed around it).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper, version_converter

from .options import DEFAULT_FP32_OPS

FP16_MAX = float(np.finfo(np.float16).max)
QDQ_FP16_MIN_OPSET = 19  # DequantizeLinear/QuantizeLinear accept fp16 scales from opset 19


def _opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _constants_to_initializers(graph: onnx.GraphProto) -> None:
    keep = []
    for node in graph.node:
        if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
            t = onnx.TensorProto()
            t.CopyFrom(node.attribute[0].t)
            t.name = node.output[0]
            graph.initializer.append(t)
        else:
            keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)


def _to_fp16(t: onnx.TensorProto) -> onnx.TensorProto:
    arr = numpy_helper.to_array(t)
    return numpy_helper.from_array(np.clip(arr, -FP16_MAX, FP16_MAX).astype(np.float16), t.name)


def convert_to_fp16(model: onnx.ModelProto, keep_fp32: tuple[str, ...] = DEFAULT_FP32_OPS) -> onnx.ModelProto:
    """Return an fp16 copy of ``model`` whose graph inputs/outputs stay fp32."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    has_qdq = any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)
    if has_qdq and _opset(model) < QDQ_FP16_MIN_OPSET:
        model = version_converter.convert_version(model, QDQ_FP16_MIN_OPSET)
    graph = model.graph
    _constants_to_initializers(graph)
    inits = {t.name: t for t in graph.initializer}
    float_inits = {n for n, t in inits.items() if t.data_type == TensorProto.FLOAT}
    fp32_nodes = [n for n in graph.node if n.op_type in keep_fp32]
    fp32_ids = {id(n) for n in fp32_nodes}

    # Weights: fp16, unless every consumer runs in fp32 (then untouched); shared ones get an fp32 copy.
    consumers = defaultdict(list)
    for node in graph.node:
        for i, name in enumerate(node.input):
            consumers[name].append((node, i))
    for name in float_inits:
        kinds = {id(n) in fp32_ids for n, _ in consumers[name]}
        if kinds == {True}:
            continue
        if True in kinds:
            copy = onnx.TensorProto()
            copy.CopyFrom(inits[name])
            copy.name = f"{name}_fp32"
            graph.initializer.append(copy)
            for node, i in consumers[name]:
                if id(node) in fp32_ids:
                    node.input[i] = copy.name
        inits[name].CopyFrom(_to_fp16(inits[name]))

    new_nodes: list[onnx.NodeProto] = []
    # fp32 graph inputs → fp16 once, at the top.
    for inp in graph.input:
        if inp.name in inits or inp.type.tensor_type.elem_type != TensorProto.FLOAT:
            continue
        half = f"{inp.name}_fp16"
        for node, i in consumers[inp.name]:
            node.input[i] = half
        new_nodes.append(helper.make_node("Cast", [inp.name], [half], to=TensorProto.FLOAT16, name=f"{inp.name}_to_fp16"))
    outputs = {o.name for o in graph.output if o.type.tensor_type.elem_type == TensorProto.FLOAT}
    for node in graph.node:
        if id(node) in fp32_ids:
            for i, name in enumerate(node.input):
                if name and name not in inits and not name.endswith("_fp32"):
                    node.input[i] = f"{name}_as_fp32_{node.name or id(node)}"
                    new_nodes.append(helper.make_node("Cast", [name], [node.input[i]], to=TensorProto.FLOAT,
                                                      name=f"{node.input[i]}_cast"))
            new_nodes.append(node)
            for i, name in enumerate(node.output):
                if name in outputs:
                    continue  # already fp32 for the graph output
                node.output[i] = f"{name}_fp32"
                new_nodes.append(helper.make_node("Cast", [node.output[i]], [name], to=TensorProto.FLOAT16,
                                                  name=f"{name}_to_fp16"))
            continue
        if node.op_type == "Cast":
            for attr in node.attribute:
                if attr.name == "to" and attr.i == TensorProto.FLOAT:
                    attr.i = TensorProto.FLOAT16
        new_nodes.append(node)
        for i, name in enumerate(node.output):
            if name in outputs:
                node.output[i] = f"{name}_fp16"
                new_nodes.append(helper.make_node("Cast", [node.output[i]], [name], to=TensorProto.FLOAT,
                                                  name=f"{name}_to_fp32"))
    del graph.node[:]
    graph.node.extend(new_nodes)
    del graph.value_info[:]
    onnx.checker.check_model(model)
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


def float_types(model: onnx.ModelProto) -> dict[str, int]:
    """Counts of float element types over initializers (to report what a conversion produced)."""
    names = {TensorProto.FLOAT: "fp32", TensorProto.FLOAT16: "fp16", TensorProto.INT8: "int8"}
    out: dict[str, int] = defaultdict(int)
    for t in model.graph.initializer:
        if t.data_type in names:
            out[names[t.data_type]] += 1
    return dict(out)
