"""Checks of a written graph against the precision policy: the Q/DQ placement and types of its scheme
(``check_qdq``), and what each op computes in (``check_precision``). `inspect` reports them; `quantize` runs
them before writing."""

from __future__ import annotations

import collections

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from ..core.checks import Finding
from ..core.dtypes import onnx_precision
from .graph import QDQ, Graph
from .patterns import attention_bmms, is_head, quantized_conv_output, residual_skip, weight_input
from ..core.precision import FP32_OPS
from .policy import COMPUTE_OPS, SCHEMES, Scheme


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # noqa: BLE001 - report what can be read
        inferred = model
    types = {t.name: t.data_type for t in model.graph.initializer}
    for v in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        types[v.name] = v.type.tensor_type.elem_type
    for n in model.graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            types[n.output[0]] = n.attribute[0].t.data_type
    return types


def _const_array(g: Graph, name: str) -> np.ndarray | None:
    if name in g.initializers:
        return numpy_helper.to_array(g.initializers[name])
    node = g.producer.get(name)
    if node is not None and node.op_type == "Constant" and node.attribute:
        return numpy_helper.to_array(node.attribute[0].t)
    return None


def _attr(node: onnx.NodeProto, name: str, default=None):
    return next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _zero_point(g: Graph, dq: onnx.NodeProto) -> tuple[int, np.ndarray | None]:
    """(element type, values) of a DequantizeLinear's zero point (int8 0 when it has none)."""
    name = dq.input[2] if len(dq.input) > 2 else ""
    if not name:
        return TensorProto.INT8, np.zeros(1, np.int8)
    if name in g.initializers:
        tensor = g.initializers[name]
        return tensor.data_type, numpy_helper.to_array(tensor)
    node = g.producer.get(name)
    if node is not None and node.op_type == "Constant" and node.attribute:
        return node.attribute[0].t.data_type, numpy_helper.to_array(node.attribute[0].t)
    return 0, None


def _type_name(elem_type: int) -> str:
    return onnx.helper.tensor_dtype_to_np_dtype(elem_type).name if elem_type else "unknown"


def check_qdq(model: onnx.ModelProto, scheme: Scheme = SCHEMES["tensorrt-int8"], excluded: tuple[str, ...] = ()) -> Finding:
    """Does a Q/DQ graph follow the scheme's column of the policy? One finding listing every deviation.

    ``excluded``: the ops its record says were kept out of the low precision on purpose (``--exclude``, a
    precision fallback). Exactly those may stay in the float part; every other candidate must be quantized."""
    g = Graph(model)
    problems: list[str] = []
    qs = [n for n in g.nodes if n.op_type == "QuantizeLinear"]
    for dq in (n for n in g.nodes if n.op_type == "DequantizeLinear"):
        weight = g.is_constant(g.behind(dq.input[0]))
        want = scheme.weight_type if weight else scheme.activation_type
        kind, zero = _zero_point(g, dq)
        if kind != want:
            problems.append(f"{dq.name or dq.output[0]}: {'weight' if weight else 'activation'} zero point is "
                            f"{_type_name(kind)}, the scheme's is {_type_name(want)}")
        elif (weight or scheme.symmetric_activations) and (zero is None or zero.astype(np.float32).any()):
            problems.append(f"{dq.name or dq.output[0]}: zero point must be {_type_name(want)} 0 (symmetric)")
    bmms = {n.name for n in attention_bmms(g)} if scheme.attention else set()
    quantized, half = [], []
    for node in g.nodes:
        if node.op_type in QDQ:
            continue
        if weight_input(g, node) or node.name in bmms:
            dqs = [g.dq_into(node, i) for i in (0, 1)]
            if all(dqs):
                if is_head(g, node):
                    problems.append(f"{node.name}: the classifier head is quantized (policy: {scheme.float_part.upper()})")
                quantized.append(node)
                _check_scales(g, node, dqs[0], dqs[1], problems, node.name in bmms)
            elif any(dqs):
                half.append(f"{node.name} ({'activation' if dqs[0] is not None else 'weight'} only)")
            continue
        for i in range(len(node.input)):  # rules 2-6: Q/DQ only where an input asks for one
            dq = g.dq_into(node, i)
            if dq is None or g.is_constant(dq.input[0]):
                continue
            skip = residual_skip(g, node) if scheme.residual_adds else None
            if skip is not None and skip[0] == i:
                if g.dq_into(skip[1], 0) is not None:
                    continue  # rule 3: the skip input of a residual Add whose branch op is quantized
                where = "the skip input of a residual Add whose branch op is not quantized"
            elif scheme.quantized_conv_outputs and quantized_conv_output(g, dq, {n.name for n in quantized}):
                continue
            else:
                where = "the branch input of a residual Add" if skip is not None else f"a {node.op_type} input"
            problems.append(f"{node.name or node.output[0]}: Q/DQ on {where} (policy: none)")
    problems += [f"half-quantized {h}" for h in half]
    if qs and not quantized:
        problems.append(f"Q/DQ nodes but no op runs in {scheme.precision.upper()}")
    done = {n.name for n in quantized}
    expected = {n.name for n in scheme.candidates(g)}
    problems += [f"{name} is not {scheme.precision.upper()} and not recorded as excluded"
                 for name in sorted(expected - done - set(excluded))]
    problems += [f"{name} is recorded as excluded but runs in {scheme.precision.upper()}"
                 for name in sorted(set(excluded) & done)]
    weighted = [n for n in g.nodes if weight_input(g, n) and not is_head(g, n)]
    detail = (f"{scheme.key}: {len(done)} of {len(expected | set(excluded))} ops "
              f"{scheme.precision.upper()} ({len(done - bmms)} of {len(weighted)} weighted ops), {len(qs)} Q/DQ pairs; "
              + ("; ".join(problems[:3]) + (f" (+{len(problems) - 3} more)" if len(problems) > 3 else "")
                 if problems else "placement follows the policy"))
    facts = {"scheme": scheme.key, "quantized_ops": len(done), "weighted_quantized": len(done - bmms),
             "weighted_ops": len(weighted), "attention_ops": len(done & bmms), "qdq_pairs": len(qs),
             "excluded": len(excluded), "deviations": len(problems)}
    return Finding("qdq-placement", not problems, detail, facts=facts)


def _check_scales(g: Graph, node: onnx.NodeProto, act: onnx.NodeProto, weight: onnx.NodeProto,
                  problems: list[str], activations_only: bool = False) -> None:
    for dq in (act, weight) if activations_only else (act,):
        scale = _const_array(g, dq.input[1])
        if scale is None or scale.size != 1:
            problems.append(f"{node.name}: activation scale must be per-tensor")
    if activations_only:
        return
    w_scale = _const_array(g, weight.input[1])
    dims = g.initializer_dims(weight.input[0])
    if w_scale is None or dims is None:
        return
    axis = _attr(weight, "axis", 1)
    want = 0 if node.op_type == "Conv" else (0 if _attr(node, "transB", 0) else 1) if node.op_type == "Gemm" else len(dims) - 1
    if w_scale.size != dims[want] or axis % len(dims) != want:
        problems.append(f"{node.name}: weight scales must be per output channel (axis {want}, {dims[want]} scales), "
                        f"got {w_scale.size} on axis {axis}")


def compute_precisions(model: onnx.ModelProto) -> dict[str, tuple[str, str]]:
    """Compute node name -> (op type, "fp32" | "fp16"), from the type of its first input."""
    types = _elem_types(model)
    out = {}
    for node in model.graph.node:
        if node.op_type in COMPUTE_OPS:
            kind = onnx_precision(types.get(node.input[0], 0))
            if kind in ("fp32", "fp16"):
                out[node.name or node.output[0]] = (node.op_type, kind)
    return out


def check_precision(model: onnx.ModelProto, allowed_fp32: tuple[str, ...] = (), float_part: str = "fp16") -> Finding:
    """In FP16 and Q/DQ graphs: fp32 I/O, LayerNorm in fp32, every other compute op in the float part's precision
    (fp16, except the nodes the FP16 lowering recorded as kept in fp32: values beyond fp16's safe range in its
    reference run; fp32 for the onnxruntime CPU scheme)."""
    g = Graph(model)
    problems = []
    for v in [*model.graph.input, *model.graph.output]:
        if v.name not in g.initializers and v.type.tensor_type.elem_type != TensorProto.FLOAT:
            problems.append(f"graph {'input' if v in model.graph.input else 'output'} {v.name} is not fp32")
    counts = collections.Counter()
    for name, (op, kind) in compute_precisions(model).items():
        want = "fp32" if op in FP32_OPS or name in allowed_fp32 else float_part
        counts[(op in FP32_OPS, kind)] += 1
        if kind != want:
            problems.append(f"{name} ({op}) computes in {kind} (policy: {want})")
    detail = f"{counts[(True, 'fp32')]} LayerNorm in fp32, {counts[(False, float_part)]} ops in {float_part}" + (
        f", {len(allowed_fp32)} kept fp32 by the lowering's overflow guard" if allowed_fp32 else "")
    if problems:
        detail = f"{len(problems)} deviations: " + "; ".join(problems[:3])
    facts = {"layernorm_fp32": counts[(True, "fp32")], f"{float_part}_ops": counts[(False, float_part)],
             "kept_fp32": len(allowed_fp32), "deviations": len(problems)}
    return Finding("precision", not problems, detail, facts=facts)


def lowered(model: onnx.ModelProto) -> bool:
    """True for graphs with fp16 tensors or Q/DQ (the precision policy applies)."""
    return any(t.data_type == TensorProto.FLOAT16 for t in model.graph.initializer) or \
        any(n.op_type in QDQ for n in model.graph.node)
