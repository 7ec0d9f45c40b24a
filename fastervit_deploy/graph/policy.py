"""The precision policy of every FP16 and INT8 graph fvdeploy writes, in one place.

It is used three times: to place Q/DQ (both INT8 backends produce exactly this placement), to decide
which ops compute in fp32 (the FP16 converter and the INT8 graphs' float part), and to check a graph
(`inspect`'s `qdq-placement` and `precision` findings, which `quantize` runs before writing).

The rules and why (README "Precision policy" has the measurements):

1. Weighted ops run INT8: every Conv, and every MatMul/Gemm whose second input is a constant weight
   (qkv, proj, fc1, fc2), gets Q/DQ on its activation (per-tensor, symmetric int8) and on its weight
   (per output channel: Conv axis 0, a [K, N] MatMul weight axis 1). TensorRT's guide: "quantize all
   inputs of weighted operations", per-channel weights, per-tensor activations, zero point 0. Never
   half: an activation Q/DQ without a quantized weight buys nothing (TensorRT then runs the op in FP16
   and pays for the Q/DQ). Convs with fewer than 16 channels follow ModelOpt's kernel-support rule.
2. A weighted op's output is never quantized for its own sake (TensorRT: keep it high precision so
   bias, activation and residual add fuse into the kernel's epilogue). Q/DQ exist only where an input
   below asks for one; a conv that feeds the next INT8 conv directly (stem, downsamplers) thereby ends
   in that conv's input Q, which TensorRT fuses into the producing kernel (INT8 output).
3. Residual Adds: only the skip input gets Q/DQ, and only where the other input (the branch) ends in
   an INT8 weighted op, so the Add fuses into that op's epilogue and reads the skip in INT8 (TensorRT:
   "quantize the residual input in skip connections"; ModelOpt leaves the branch input unquantized).
   The skip is the input nearer to the two inputs' lowest common ancestor, as in ModelOpt. Other Adds
   (biases, the carrier propagation) get none.
4. The classifier head stays FP16, weight and input: one GEMV per image (ModelOpt excludes GEMV-shaped
   MatMuls from INT8 for TensorRT), < 0.1 % of FasterViT's FLOPs, and the logits decide top-1.
5. Attention stays FP16: q·kᵀ, softmax and attn·v get no Q/DQ. Windows are short (49–148 tokens,
   head dim 32–80), so the two batched MatMuls are ~3 % of a block's FLOPs, memory-bound, and run in
   TensorRT's fused FP16 attention; INT8 softmax outputs (steps of 1/127) erase small attention
   weights. FasterViT-0 INT8 (TensorRT's implicit `--best`) was slower than FP16 (TensorRT issue 3186).
6. LayerNormalization computes in FP32 in FP16 and INT8 graphs alike (mean/variance over up to 1568
   channels overflow or lose precision in fp16), and its input gets no Q/DQ: TensorRT's normalization
   layer does not run INT8, so a Q/DQ there is a pure rounding loss. Softmax, GELU, ReLU, pooling and
   data movement (Reshape, Transpose, Split, Concat, Slice, Pad) get none either: they are pointwise or
   copies that TensorRT fuses or moves Q/DQ across; their consumers' Q/DQ quantize their outputs.
7. Everything else is FP16; graph inputs and outputs stay fp32.
"""

from __future__ import annotations

import collections
import fnmatch
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from ..core.checks import Finding
from ..core.dtypes import onnx_precision
from ..core.options import DEFAULT_FP32_OPS
from .graph import QDQ, Graph

WEIGHTED_OPS = ("Conv", "MatMul", "Gemm")
FP32_OPS = DEFAULT_FP32_OPS  # rule 6
# Ops between a weighted op and a residual Add that TensorRT folds into the weighted op's epilogue.
EPILOGUE = ("Add", "Mul", "Reshape", "Transpose", "Cast", "Identity", *QDQ)
COMPUTE_OPS = ("Conv", "MatMul", "Gemm", "Add", "Sub", "Mul", "Div", "Softmax", "Erf", "Relu", "Sigmoid", "Tanh",
               "AveragePool", "GlobalAveragePool", "ReduceMean", "Pow", "Sqrt", "LayerNormalization")


def weight_input(g: Graph, node: onnx.NodeProto) -> bool:
    """A Conv/MatMul/Gemm whose second input is a build-time constant (a weight)."""
    return node.op_type in WEIGHTED_OPS and len(node.input) > 1 and g.is_constant(node.input[1]) \
        and not g.is_constant(node.input[0])


def is_head(g: Graph, node: onnx.NodeProto) -> bool:
    """The classifier: a weighted op whose output reaches the logits ([N, classes]) through epilogue ops only.
    A backbone's feature maps (rank 4) have no head: their last convolutions and MatMuls follow rule 1."""
    outputs = {o.name for o in g.model.graph.output if len(o.type.tensor_type.shape.dim) == 2}
    frontier = list(node.output)
    while frontier:
        name = frontier.pop()
        if name in outputs:
            return True
        frontier += [o for c in g.consumers.get(name, []) if c.op_type in ("Add", "Cast", "Identity", "Reshape", "Flatten")
                     for o in c.output]
    return False


def conv_has_int8_kernels(g: Graph, node: onnx.NodeProto) -> bool:
    """ModelOpt's rule for convolutions with fewer than 16 input or output channels."""
    dims = g.initializer_dims(node.input[1])
    if dims is None:
        return True
    out_ch, in_ch = dims[0], dims[1]
    if out_ch >= 16 and in_ch >= 16:
        return True
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    group, kernel = attrs.get("group", 1), list(attrs.get("kernel_shape", dims[2:]))
    if group == 1:
        first = node.input[0] in {i.name for i in g.model.graph.input}
        return (out_ch % 8 == 0 or in_ch % 8 == 0) and (first or max(out_ch, in_ch) >= 16) and len(set(kernel)) == 1
    return out_ch % 8 == 0 and all(k >= 3 for k in kernel)


def int8_candidates(g: Graph) -> list[onnx.NodeProto]:
    """Weighted ops the policy runs in INT8 (before user exclusions)."""
    return [n for n in g.nodes if weight_input(g, n) and not is_head(g, n)
            and (n.op_type != "Conv" or conv_has_int8_kernels(g, n))]


def _ancestors(g: Graph, name: str) -> dict[str, int]:
    """Producers above tensor ``name`` (graph inputs too) with their distance; Q/DQ and Cast do not count."""
    out: dict[str, int] = {}
    frontier = [(g.behind(name), 0)]
    while frontier:
        tensor, depth = frontier.pop(0)
        node = g.producer.get(tensor)
        key = f"input {tensor}" if node is None else node.name or node.output[0]
        if key in out:
            continue
        out[key] = depth
        if node is not None:
            frontier += [(g.behind(i), depth + 1) for i in node.input if i and not g.is_constant(i)]
    return out


def _branch_source(g: Graph, name: str) -> onnx.NodeProto | None:
    """The weighted op a residual branch ends in, through its epilogue (bias Add, layer-scale Mul, reshapes)."""
    node = g.producer.get(name)
    while node is not None:
        if weight_input(g, node):
            return node
        if node.op_type not in EPILOGUE:
            return None
        if node.op_type in ("Add", "Mul"):  # only with a constant operand: a bias or a scale
            live = [i for i in node.input if not g.is_constant(i)]
            if len(live) != 1:
                return None
            name = live[0]
        else:
            name = node.input[0]
        node = g.producer.get(name)
    return None


def residual_skip(g: Graph, add: onnx.NodeProto) -> tuple[int, onnx.NodeProto] | None:
    """(index of the skip input, the branch's weighted op) of a residual Add, or None.

    The inputs' lowest common ancestor is where the skip leaves the residual stream; the skip is the
    input nearer to it, the branch the longer path (ModelOpt's rule).
    """
    if add.op_type != "Add" or len(add.input) != 2 or any(g.is_constant(i) for i in add.input):
        return None
    a, b = (_ancestors(g, i) for i in add.input)
    common = set(a) & set(b)
    if not common:
        return None
    lca = min(common, key=lambda n: (a[n] + b[n], max(a[n], b[n])))
    skip = 0 if a[lca] < b[lca] else 1 if b[lca] < a[lca] else None
    if skip is None:
        return None
    branch = _branch_source(g, add.input[1 - skip])
    return (skip, branch) if branch is not None else None


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


@dataclass(frozen=True)
class Placement:
    """Where Q/DQ goes in one graph: (node name, input index) pairs, and the nodes a quantizer must visit."""

    int8_ops: tuple[str, ...]
    residual_adds: dict[str, int] = field(default_factory=dict)  # Add name -> skip input index
    excluded: tuple[str, ...] = ()  # weighted ops the policy would quantize, kept out on request
    residual_branch: dict[str, str] = field(default_factory=dict)  # Add name -> the weighted op its branch ends in

    @property
    def nodes(self) -> list[str]:
        return [*self.int8_ops, *self.residual_adds]

    def allowed(self) -> set[tuple[str, int]]:
        pairs = {(n, i) for n in self.int8_ops for i in (0, 1)}
        return pairs | {(n, i) for n, i in self.residual_adds.items()}

    def groups(self) -> list["SiteGroup"]:
        """The units a precision search keeps out of INT8 together: one weighted op and the residual Adds whose
        skip input is quantized for it (its epilogue partner), in graph order."""
        return [SiteGroup(op, tuple(a for a, branch in self.residual_branch.items() if branch == op))
                for op in self.int8_ops]


@dataclass(frozen=True)
class SiteGroup:
    op: str  # the weighted op: the group's name
    adds: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {"op": self.op, "residual_adds": list(self.adds)}


def plan_placement(model: onnx.ModelProto, exclude: tuple[str, ...] = ()) -> Placement:
    """The policy's placement for an FP32 graph; ``exclude`` keeps named nodes out of INT8 (fnmatch patterns,
    so exact node names work too)."""
    g = Graph(model)
    int8 = [n.name for n in int8_candidates(g) if not _matches(n.name, exclude)]
    chosen = set(int8)
    adds, branches = {}, {}
    for node in g.nodes:
        found = residual_skip(g, node)
        if found and found[1].name in chosen and not _matches(node.name, exclude):
            adds[node.name], branches[node.name] = found[0], found[1].name
    excluded = tuple(n.name for n in int8_candidates(g) if n.name not in chosen)
    return Placement(tuple(int8), adds, excluded, branches)


def enforce(model: onnx.ModelProto, placement: Placement) -> int:
    """Bypass every Q/DQ that feeds an input the placement does not allow (in place); returns how many.

    Quantizers add Q/DQ to every input of a node they visit (both inputs of an Add); this makes the
    graph exactly the policy, whichever backend calibrated it.
    """
    g = Graph(model)
    allowed = placement.allowed()
    removed = 0
    for node in g.nodes:
        if node.op_type in QDQ:
            continue
        for i, name in enumerate(node.input):
            dq = g.producer.get(name)
            if dq is None or dq.op_type != "DequantizeLinear" or (node.name, i) in allowed:
                continue
            q = g.producer.get(dq.input[0])
            if q is None or q.op_type != "QuantizeLinear":
                continue  # a quantized weight: the consumer is a weighted op the placement keeps
            node.input[i] = q.input[0]
            removed += 1
    drop_unused(model)
    return removed


def drop_unused(model: onnx.ModelProto) -> None:
    graph = model.graph
    while True:
        used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        dead = [n for n in graph.node if n.op_type in QDQ + ("Cast",) and not set(n.output) & used]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
    used = {i for n in graph.node for i in n.input}
    for t in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(t)


# ---------------------------------------------------------------------------------------------------
# Checks (inspect, and quantize before writing)


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


def check_qdq(model: onnx.ModelProto, excluded: tuple[str, ...] = ()) -> Finding:
    """Does a Q/DQ graph follow the policy? One finding listing every deviation.

    ``excluded``: the weighted ops its record says were kept out of INT8 on purpose (``--exclude``, a
    precision fallback). Exactly those may be FP16; any other weighted op the policy quantizes must be INT8."""
    g = Graph(model)
    problems: list[str] = []
    qs = [n for n in g.nodes if n.op_type == "QuantizeLinear"]
    dqs = [n for n in g.nodes if n.op_type == "DequantizeLinear"]
    for dq in dqs:
        zero = _const_array(g, dq.input[2]) if len(dq.input) > 2 and dq.input[2] else np.zeros(1, np.int8)
        if zero is None or zero.dtype != np.int8 or zero.any():
            problems.append(f"{dq.name or dq.output[0]}: zero point must be int8 0 (symmetric)")
    int8_ops, half = [], []
    for node in g.nodes:
        if node.op_type in QDQ:
            continue
        if weight_input(g, node):
            act, weight = g.dq_into(node, 0), g.dq_into(node, 1)
            if act is not None and weight is not None:
                if is_head(g, node):
                    problems.append(f"{node.name}: the classifier head is quantized (policy: FP16)")
                int8_ops.append(node)
                _check_scales(g, node, act, weight, problems)
            elif act is not None or weight is not None:
                half.append(f"{node.name} ({'activation' if act is not None else 'weight'} only)")
            continue
        for i in range(len(node.input)):  # rules 2-6: Q/DQ only where an input asks for one
            dq = g.dq_into(node, i)
            if dq is None or g.is_constant(dq.input[0]):
                continue
            skip = residual_skip(g, node)
            if skip is not None and skip[0] == i:
                if g.dq_into(skip[1], 0) is not None:
                    continue  # rule 3: the skip input of a residual Add whose branch op is INT8
                where = "the skip input of a residual Add whose branch op is not INT8"
            else:
                where = "the branch input of a residual Add" if skip is not None else f"a {node.op_type} input"
            problems.append(f"{node.name or node.output[0]}: Q/DQ on {where} (policy: none)")
    problems += [f"half-quantized {h}" for h in half]
    if qs and not int8_ops:
        problems.append("Q/DQ nodes but no weighted op runs in INT8")
    quantized = {n.name for n in int8_ops}
    expected = {n.name for n in int8_candidates(g)}
    problems += [f"{name} is not INT8 and not recorded as excluded" for name in sorted(expected - quantized - set(excluded))]
    problems += [f"{name} is recorded as excluded but runs in INT8" for name in sorted(set(excluded) & quantized)]
    weighted = [n for n in g.nodes if weight_input(g, n) and not is_head(g, n)]
    detail = (f"{len(int8_ops)} of {len(weighted)} weighted ops INT8, {len(qs)} Q/DQ pairs; "
              + ("; ".join(problems[:3]) + (f" (+{len(problems) - 3} more)" if len(problems) > 3 else "")
                 if problems else "placement follows the policy"))
    facts = {"int8_ops": len(int8_ops), "weighted_ops": len(weighted), "qdq_pairs": len(qs), "excluded": len(excluded),
             "deviations": len(problems)}
    return Finding("qdq-placement", not problems, detail, facts=facts)


def _check_scales(g: Graph, node: onnx.NodeProto, act: onnx.NodeProto, weight: onnx.NodeProto,
                  problems: list[str]) -> None:
    act_scale = _const_array(g, act.input[1])
    if act_scale is None or act_scale.size != 1:
        problems.append(f"{node.name}: activation scale must be per-tensor")
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


def check_precision(model: onnx.ModelProto, allowed_fp32: tuple[str, ...] = ()) -> Finding:
    """In FP16/INT8 graphs: fp32 I/O, LayerNorm in fp32, every other compute op in fp16 except the nodes
    the FP16 lowering recorded as kept in fp32 (values beyond fp16's safe range in its reference run)."""
    g = Graph(model)
    problems = []
    for v in [*model.graph.input, *model.graph.output]:
        if v.name not in g.initializers and v.type.tensor_type.elem_type != TensorProto.FLOAT:
            problems.append(f"graph {'input' if v in model.graph.input else 'output'} {v.name} is not fp32")
    counts = collections.Counter()
    for name, (op, kind) in compute_precisions(model).items():
        want = "fp32" if op in FP32_OPS or name in allowed_fp32 else "fp16"
        counts[(op in FP32_OPS, kind)] += 1
        if kind != want:
            problems.append(f"{name} ({op}) computes in {kind} (policy: {want})")
    detail = f"{counts[(True, 'fp32')]} LayerNorm in fp32, {counts[(False, 'fp16')]} ops in fp16" + (
        f", {len(allowed_fp32)} kept fp32 by the lowering's overflow guard" if allowed_fp32 else "")
    if problems:
        detail = f"{len(problems)} deviations: " + "; ".join(problems[:3])
    facts = {"layernorm_fp32": counts[(True, "fp32")], "fp16_ops": counts[(False, "fp16")],
             "kept_fp32": len(allowed_fp32), "deviations": len(problems)}
    return Finding("precision", not problems, detail, facts=facts)


def lowered(model: onnx.ModelProto) -> bool:
    """True for graphs with fp16 tensors or Q/DQ (the precision policy applies)."""
    return any(t.data_type == TensorProto.FLOAT16 for t in model.graph.initializer) or \
        any(n.op_type in QDQ for n in model.graph.node)
