"""The precision policy of every FP16, INT8 and FP8 graph fvdeploy writes, in one place.

It is used three times: to place Q/DQ (every backend produces exactly this placement), to decide which
ops compute in fp32 (the FP16 converter and the quantized graphs' float part), and to check a graph
(`inspect`'s `qdq-placement` and `precision` findings, which `quantize` runs before writing). A scheme
is one column of the policy: a precision on a target (README "Precision policy" has the table and the
measurements).

TensorRT, INT8 (``tensorrt-int8``):

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
   a quantized weighted op, so the Add fuses into that op's epilogue and reads the skip in INT8
   (TensorRT: "quantize the residual input in skip connections"; ModelOpt leaves the branch input
   unquantized). The skip is the input nearer to the two inputs' lowest common ancestor, as in
   ModelOpt. Other Adds (biases, the carrier propagation) get none.
4. The classifier head stays FP16, weight and input: one GEMV per image (ModelOpt excludes GEMV-shaped
   MatMuls for TensorRT), < 0.1 % of FasterViT's FLOPs, and the logits decide top-1.
5. Attention stays FP16: q·kᵀ, softmax and attn·v get no Q/DQ. Windows are short (49–148 tokens,
   head dim 32–80), so the two batched MatMuls are ~3 % of a block's FLOPs, memory-bound, and run in
   TensorRT's fused FP16 attention; INT8 softmax outputs (steps of 1/127) erase small attention
   weights. FasterViT-0 INT8 (TensorRT's implicit `--best`) was slower than FP16 (TensorRT issue 3186).
6. LayerNormalization computes in FP32 (mean/variance over up to 1568 channels overflow or lose
   precision in fp16), and its input gets no Q/DQ: TensorRT's normalization layer does not run INT8,
   so a Q/DQ there is a pure rounding loss. Softmax, GELU, ReLU, pooling and data movement (Reshape,
   Transpose, Split, Concat, Slice, Pad) get none either: they are pointwise or copies that TensorRT
   fuses or moves Q/DQ across; their consumers' Q/DQ quantize their outputs.
7. Everything else is FP16; graph inputs and outputs stay fp32.

TensorRT, FP8 E4M3 (``tensorrt-fp8``; Hopper and Ada, compute capability 8.9+): rules 2, 3, 4, 6, 7 as
INT8, with FP8 Q/DQ (zero point FP8 0; scale = amax / 448) made as ModelOpt's ONNX FP8 mode makes them
(an INT8 graph from max-style ranges, its scales times 448/127, ``int8_to_fp8``). Different are:
1'. Convolutions with 16 or fewer input or output channels, or a filter of more than 32 elements,
    stay FP16 (ModelOpt's FP8 rule: TensorRT's FP8 convolutions are slower than FP16 there); every
    other Conv and every MatMul/Gemm with a constant weight (not the head) runs FP8.
5'. Attention runs FP8: both inputs of q·kᵀ and of attn·v get Q/DQ (TensorRT's FP8 fused attention,
    fMHA v2, takes FP8 Q, K, V and softmax output; ModelOpt quantizes both BMMs in FP8 mode when the
    head size is in (8, 256]; FasterViT's are 32–80).

onnxruntime, CPU INT8 (``onnxruntime-cpu-int8``): where onnxruntime's CPU integer kernels run, the rest
FP32 (its CPU provider runs FP16 through casts: slower than FP32):
1". Every Conv and every MatMul/Gemm with a constant weight (not the head) gets Q/DQ on its inputs:
    uint8 activations (asymmetric: zero points where the range puts them), int8 weights per output
    channel (symmetric), as onnxruntime's quantization docs recommend for x86-64 (U8S8), with 7-bit
    weights (``reduce_range``) on CPUs without VNNI, whose u8s8 dot products saturate. onnxruntime
    fuses them into QLinearConv and MatMulIntegerToFloat.
2". A Conv's output is quantized (the Q/DQ after it make a QLinearConv, and the next op reads uint8);
    a MatMul's is not (MatMulIntegerToFloat writes float, and the bias Add follows in FP32). Measured
    on FasterViT-0: a float Conv output, or quantized residual Adds, were slower.
5". Attention stays FP32: both attention MatMuls in INT8 (QLinearMatMul) measured no faster on
    FasterViT-0 (1.72x/2.12x FP32 at batch 1/8 with them, 1.77x/2.16x without, the same run), so
    they are not worth 34 more rounding sites.
6". LayerNormalization, Softmax, GELU and the rest compute in FP32.
"""

from __future__ import annotations

import collections
import fnmatch
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from ..core.checks import Finding
from ..core.dtypes import onnx_precision
from ..core.options import DEFAULT_FP32_OPS
from ..core.precision import Precision, QuantTarget
from .graph import CASTS, QDQ, Graph

WEIGHTED_OPS = ("Conv", "MatMul", "Gemm")
FP32_OPS = DEFAULT_FP32_OPS  # rule 6
# Ops between a weighted op and a residual Add that TensorRT folds into the weighted op's epilogue.
EPILOGUE = ("Add", "Mul", "Reshape", "Transpose", "Cast", "Identity", *QDQ)
COMPUTE_OPS = ("Conv", "MatMul", "Gemm", "Add", "Sub", "Mul", "Div", "Softmax", "Erf", "Relu", "Sigmoid", "Tanh",
               "AveragePool", "GlobalAveragePool", "ReduceMean", "Pow", "Sqrt", "LayerNormalization")
FP8_MAX, INT8_MAX = 448.0, 127.0


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


def conv_runs_fp8(g: Graph, node: onnx.NodeProto) -> bool:
    """ModelOpt's FP8 rule: more than 16 input and output channels, a filter of at most 32 elements."""
    dims = g.initializer_dims(node.input[1])
    if dims is None:
        return True
    return dims[0] > 16 and dims[1] > 16 and int(np.prod(dims[2:])) <= 32


def attention_bmms(g: Graph) -> list[onnx.NodeProto]:
    """q·kᵀ and attn·v of every MatMul → (Add) → Softmax → MatMul chain, in graph order."""
    found = set()
    for softmax in (n for n in g.nodes if n.op_type == "Softmax"):
        scores = g.source(softmax.input[0])
        if scores is not None and scores.op_type == "Add":
            live = [i for i in scores.input if not g.is_constant(i)]
            scores = g.source(live[0]) if len(live) == 1 else None
        if scores is not None and scores.op_type == "MatMul" and not weight_input(g, scores):
            found.add(scores.name)
        found |= {c.name for c in g.consumers_through(softmax.output[0]) if c.op_type == "MatMul"}
    return [n for n in g.nodes if n.name in found]


@dataclass(frozen=True)
class Scheme:
    """One column of the policy: a precision on a target."""

    precision: Precision
    target: QuantTarget
    conv_rule: Callable[[Graph, onnx.NodeProto], bool]
    attention: bool  # both attention MatMuls quantized
    residual_adds: bool  # rule 3
    quantized_conv_outputs: bool  # rule 2": the Q/DQ after a quantized Conv belong to it
    activation_type: int  # onnx.TensorProto element type of activations' zero points
    weight_type: int
    symmetric_activations: bool
    float_part: str  # "fp16" | "fp32"
    qmax: float  # the scale of an amax: amax / qmax

    @property
    def key(self) -> str:
        return f"{self.target}-{self.precision}"

    def candidates(self, g: Graph) -> list[onnx.NodeProto]:
        """The ops this scheme quantizes (before user exclusions), in graph order."""
        weighted = {n.name for n in g.nodes if weight_input(g, n) and not is_head(g, n)
                    and (n.op_type != "Conv" or self.conv_rule(g, n))}
        bmms = {n.name for n in attention_bmms(g)} if self.attention else set()
        return [n for n in g.nodes if n.name in weighted | bmms]


SCHEMES = {s.key: s for s in (
    Scheme(Precision.int8, QuantTarget.tensorrt, conv_has_int8_kernels, False, True, False, TensorProto.INT8,
           TensorProto.INT8, True, "fp16", INT8_MAX),
    Scheme(Precision.fp8, QuantTarget.tensorrt, conv_runs_fp8, True, True, False, TensorProto.FLOAT8E4M3FN,
           TensorProto.FLOAT8E4M3FN, True, "fp16", FP8_MAX),
    Scheme(Precision.int8, QuantTarget.onnxruntime_cpu, lambda g, n: True, False, False, True, TensorProto.UINT8,
           TensorProto.INT8, False, "fp32", INT8_MAX),
)}


def scheme_for(precision: Precision, target: QuantTarget) -> Scheme:
    key = f"{QuantTarget(target)}-{Precision(precision)}"
    if key not in SCHEMES:
        from ..system.errors import FvdeployError

        made = ", ".join(f"--{s.precision} --target {s.target}" for s in SCHEMES.values())
        raise FvdeployError(f"--{precision} is not made for --target {target} (fvdeploy makes {made})")
    return SCHEMES[key]


def graph_scheme(model: onnx.ModelProto, recorded: dict) -> Scheme:
    """The scheme a Q/DQ graph follows: its record's, else what its zero points say (foreign graphs)."""
    if recorded.get("target") and recorded.get("precision") in ("int8", "fp8"):
        return scheme_for(recorded["precision"], recorded["target"])
    g = Graph(model)
    types = {g.initializers[n.input[2]].data_type for n in g.nodes
             if n.op_type == "QuantizeLinear" and len(n.input) > 2 and n.input[2] in g.initializers}
    if TensorProto.FLOAT8E4M3FN in types:
        return SCHEMES["tensorrt-fp8"]
    return SCHEMES["onnxruntime-cpu-int8"] if TensorProto.UINT8 in types else SCHEMES["tensorrt-int8"]


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

    ops: tuple[str, ...]  # weighted ops (and, where the scheme says so, attention MatMuls) quantized
    residual_adds: dict[str, int] = field(default_factory=dict)  # Add name -> skip input index
    excluded: tuple[str, ...] = ()  # ops the scheme would quantize, kept out on request
    residual_branch: dict[str, str] = field(default_factory=dict)  # Add name -> the weighted op its branch ends in
    attention: tuple[str, ...] = ()  # the attention MatMuls among ``ops``

    @property
    def nodes(self) -> list[str]:
        return [*self.ops, *self.residual_adds]

    @property
    def weighted(self) -> tuple[str, ...]:
        return tuple(op for op in self.ops if op not in self.attention)

    def allowed(self) -> set[tuple[str, int]]:
        pairs = {(n, i) for n in self.ops for i in (0, 1)}
        return pairs | {(n, i) for n, i in self.residual_adds.items()}

    def groups(self) -> list["SiteGroup"]:
        """The units a precision search keeps out of the low precision together: one quantized op and the
        residual Adds whose skip input is quantized for it (its epilogue partner), in graph order."""
        return [SiteGroup(op, tuple(a for a, branch in self.residual_branch.items() if branch == op))
                for op in self.ops]


@dataclass(frozen=True)
class SiteGroup:
    op: str  # the weighted op (or attention MatMul): the group's name
    adds: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {"op": self.op, "residual_adds": list(self.adds)}


def plan_placement(model: onnx.ModelProto, scheme: Scheme = SCHEMES["tensorrt-int8"],
                   exclude: tuple[str, ...] = ()) -> Placement:
    """The scheme's placement for an FP32 graph; ``exclude`` keeps named nodes out (fnmatch patterns, so exact
    node names work too)."""
    g = Graph(model)
    candidates = scheme.candidates(g)
    chosen = [n.name for n in candidates if not _matches(n.name, exclude)]
    adds, branches = {}, {}
    if scheme.residual_adds:
        for node in g.nodes:
            found = residual_skip(g, node)
            if found and found[1].name in chosen and not _matches(node.name, exclude):
                adds[node.name], branches[node.name] = found[0], found[1].name
    bmms = {n.name for n in attention_bmms(g)}
    excluded = tuple(n.name for n in candidates if n.name not in chosen)
    return Placement(tuple(chosen), adds, excluded, branches, tuple(n for n in chosen if n in bmms))


def enforce(model: onnx.ModelProto, placement: Placement, scheme: "Scheme | None" = None) -> int:
    """Bypass every Q/DQ that feeds an input the placement does not allow (in place); returns how many.

    Quantizers add Q/DQ to every input of a node they visit (both inputs of an Add), and share one
    DequantizeLinear among a tensor's readers; this makes the graph exactly the policy, whichever backend
    calibrated it (for the CPU scheme, the readers of a quantized Conv's output keep their Q/DQ: rule 2").
    """
    g = Graph(model)
    allowed = placement.allowed()
    conv_outputs = scheme is not None and scheme.quantized_conv_outputs
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
            if conv_outputs and _conv_output(g, dq, set(placement.ops)):
                continue
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


def _conv_output(g: Graph, dq: onnx.NodeProto, quantized: set[str]) -> bool:
    """Rule 2": the Q/DQ after a quantized Conv (its output read quantized by the next op)."""
    q = g.producer.get(dq.input[0])
    producer = g.producer.get(g.behind(q.input[0], through=CASTS)) if q is not None and q.op_type == "QuantizeLinear" else None
    return producer is not None and producer.op_type == "Conv" and producer.name in quantized


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
            elif scheme.quantized_conv_outputs and _conv_output(g, dq, {n.name for n in quantized}):
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
