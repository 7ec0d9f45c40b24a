"""Static checks of an ONNX graph for TensorRT-readiness (used by `export-onnx` and `inspect`).

Each check returns a Finding; a graph "passes" when every check with severity "error" is ok.
The checks read the graph only (no run), so they also work on >2 GB models loaded without data.
"""

from __future__ import annotations

import collections
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import onnx
from onnx import shape_inference

from ..core.checks import CheckReport, Finding
from ..core.dtypes import from_onnx
from ..core.record import RECORD_KEY
from ..system.errors import FvdeployError
from .graph import Graph
from .patterns import AttentionBlock, attention_blocks
from .policy import graph_scheme
from .policy_checks import check_precision, check_qdq, lowered

# Ops the TensorRT 10/11 ONNX parser maps to native layers, restricted to what image models use.
TRT_NATIVE_OPS = frozenset("""
Abs Add And ArgMax ArgMin Attention AveragePool BatchNormalization Cast Ceil Clip Concat Constant ConstantOfShape
Conv ConvTranspose DepthToSpace DequantizeLinear Div Einsum Elu Equal Erf Exp Expand Flatten Floor Gather GatherElements
GatherND Gelu Gemm GlobalAveragePool GlobalMaxPool Greater GreaterOrEqual GroupNormalization HardSigmoid HardSwish Identity
InstanceNormalization LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax MatMul Max MaxPool Mean Min Mod Mul Neg
Not Or Pad Pow PRelu QuantizeLinear Range Reciprocal ReduceL2 ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum Relu
Reshape Resize Selu Shape Sigmoid Sign Silu Sin Size Slice Softmax Softplus SpaceToDepth Split Sqrt Squeeze Sub Sum Tanh
Tile TopK Transpose Unsqueeze Where Xor
""".split())
FORBIDDEN_OPS = ("Shape", "Size", "BatchNormalization", "Gather", "GatherND", "GatherElements", "NonZero", "Loop", "If",
                 "Scan")
# (op, index of the input that must be a build-time constant)
SHAPE_INPUTS = {"Reshape": (1,), "Expand": (1,), "Tile": (1,), "ConstantOfShape": (0,), "Pad": (1, 2),
                "Slice": (1, 2, 3, 4), "Resize": (1, 2, 3), "Split": (1,), "Range": (0, 1, 2)}
MAX_RANK = 5


@dataclass
class GraphReport(CheckReport):
    path: str = ""
    opset: int = 0
    nodes: int = 0
    ops: dict[str, int] = field(default_factory=dict)
    inputs: list[dict] = field(default_factory=list)
    outputs: list[dict] = field(default_factory=list)
    attention_blocks: int = 0
    target: str | None = None  # what the graph's record says it is made for (None: TensorRT-friendly export)

    def to_dict(self) -> dict:
        return {**super().to_dict(), "path": self.path, "opset": self.opset, "nodes": self.nodes, "ops": self.ops,
                "inputs": self.inputs, "outputs": self.outputs, "attention_blocks": self.attention_blocks,
                "target": self.target}


def _dims(value_info: onnx.ValueInfoProto) -> list:
    shape = value_info.type.tensor_type.shape
    return [d.dim_param or (d.dim_value if d.HasField("dim_value") else "?") for d in shape.dim]


def _io(values) -> list[dict]:
    return [{"name": v.name, "shape": _dims(v), "dtype": from_onnx(v.type.tensor_type.elem_type).name} for v in values]


def check_io(g: Graph) -> Finding:
    problems = []
    inputs = [i for i in g.model.graph.input if i.name not in g.initializers]
    if len(inputs) != 1:
        problems.append(f"{len(inputs)} inputs (expected 1)")
    for v in list(inputs) + list(g.model.graph.output):
        dims = _dims(v)
        if not dims or not isinstance(dims[0], str) or dims[0] == "?":
            problems.append(f"{v.name}: batch dimension is not symbolic ({dims})")
        if any(not isinstance(d, int) for d in dims[1:]):
            problems.append(f"{v.name}: non-batch dimensions must be fixed ({dims})")
    for v in inputs:
        if len(_dims(v)) != 4:
            problems.append(f"{v.name}: expected NCHW")
    return Finding("io", not problems, "; ".join(problems) or "symbolic batch, fixed C/H/W")


def check_forbidden(g: Graph) -> Finding:
    counts = collections.Counter(n.op_type for n in g.nodes if n.op_type in FORBIDDEN_OPS)
    return Finding("forbidden-ops", not counts, ", ".join(f"{k} x{v}" for k, v in sorted(counts.items()))
                   or f"none of {', '.join(FORBIDDEN_OPS)}")


def check_runtime_shapes(g: Graph) -> Finding:
    bad = [f"{n.op_type} {n.name or n.output[0]}" for n in g.nodes if n.op_type in SHAPE_INPUTS
           for i in SHAPE_INPUTS[n.op_type] if i < len(n.input) and not g.is_constant(n.input[i])]
    return Finding("runtime-shapes", not bad, f"{len(bad)} shape inputs computed at run time: {', '.join(bad[:5])}"
                   if bad else "every Reshape/Expand/Tile/Pad/Slice/Resize shape is a constant")


def check_rank(g: Graph) -> Finding:
    try:
        inferred = shape_inference.infer_shapes(g.model, strict_mode=False)
    except Exception as err:  # noqa: BLE001 - report, don't crash the inspection
        return Finding("rank", False, f"shape inference failed: {err}".splitlines()[0])
    ranks = {v.name: len(_dims(v)) for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    high = sorted(n for n, r in ranks.items() if r > MAX_RANK)
    unknown = sum(1 for n in g.nodes for o in n.output if o not in ranks and o not in g.initializers)
    top = max(ranks.values(), default=0)
    detail = f"max rank {top}" + (f" ({unknown} outputs without inferred shape)" if unknown else "")
    return Finding("rank", not high, f"rank > {MAX_RANK}: {', '.join(high[:5])}" if high else detail,
                   facts={"max_rank": top, "above_max": len(high), "without_shape": unknown})


def find_attention(g: Graph) -> tuple[int, list[str]]:
    """Count Mul(q, scale) → MatMul → Add(constant bias) → Softmax → MatMul blocks; list the others with why."""
    good, bad = 0, []
    for block in attention_blocks(g):
        why = _off_pattern(g, block)
        if why is None:
            good += 1
        else:
            bad.append(f"{block.softmax.name or block.softmax.output[0]}: {why}")
    return good, bad


def _off_pattern(g: Graph, block: AttentionBlock) -> str | None:
    """Why an attention block is not the form TensorRT's MHA fusion takes, or None."""
    add, mm = block.bias_add, block.scores
    if add is None:
        return "no bias Add before Softmax"
    if not any(g.is_constant(i) for i in add.input):
        return "bias is not a constant"
    if mm is not None and mm.op_type == "Mul" and any(
            g.source(i) is not None and g.source(i).op_type == "MatMul" for i in mm.input):
        return "scale is applied after q·kᵀ (TensorRT's MHA fusion wants it on q or k)"
    if mm is None or mm.op_type != "MatMul":
        return "no MatMul before the bias Add"
    if not any(s is not None and s.op_type == "Mul" and any(g.constant_size(x) == 1 for x in s.input)
               for s in (g.source(i) for i in mm.input)):
        return "scale is not applied to q or k before q·kᵀ"
    if not block.values:
        return "Softmax does not feed a MatMul"
    return None


def check_attention(g: Graph) -> tuple[Finding, int]:
    good, bad = find_attention(g)
    if bad:
        return Finding("attention", False, f"{len(bad)} of {good + len(bad)} attention blocks off-pattern: {bad[0]}"), good
    return Finding("attention", True, f"{good} blocks Mul(q,scale)→MatMul→Add(const)→Softmax→MatMul"), good


def check_layernorm(g: Graph) -> Finding:
    ops = collections.Counter(n.op_type for n in g.nodes)
    decomposed = ops.get("ReduceMean", 0) and (ops.get("Pow", 0) or ops.get("Sqrt", 0))
    return Finding("layernorm", not decomposed,
                   "LayerNorm decomposed into ReduceMean/Pow/Sqrt" if decomposed
                   else f"{ops.get('LayerNormalization', 0)} native LayerNormalization")


def check_trt_ops(g: Graph) -> Finding:
    other = sorted({n.op_type for n in g.nodes if n.op_type not in TRT_NATIVE_OPS or n.domain not in ("", "ai.onnx")})
    return Finding("tensorrt-ops", not other, f"not native in TensorRT: {', '.join(other)}" if other
                   else "every op has a native TensorRT layer")


CHECKS: tuple[Callable[[Graph], Finding], ...] = (check_io, check_forbidden, check_runtime_shapes, check_rank,
                                                  check_layernorm, check_trt_ops)


def load_graph(path: str | Path) -> onnx.ModelProto:
    path = Path(path)
    if path.is_dir():
        package = " (a Core ML package: `fvdeploy verify` checks it, on macOS)" if path.suffix == ".mlpackage" else ""
        raise FvdeployError(f"{path} is a folder{package}: inspect reads ONNX files")
    if not path.is_file():
        raise FvdeployError(f"ONNX file not found: {path}")
    try:
        # Structure only: external weights (>2 GB models) are not needed for the checks.
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # noqa: BLE001 - protobuf raises several types
        raise FvdeployError(f"{path.name} is not an ONNX model ({type(err).__name__})") from err
    if not model.graph.node:
        raise FvdeployError(f"{path.name} is not an ONNX model (no graph nodes)")
    return model


def inspect_model(model: onnx.ModelProto, path: str | Path = "", expect: str | None = None) -> GraphReport:
    """Every check; FP16/INT8 graphs also against the precision policy. ``expect`` ("fp16", "int8") is the
    precision the graph must have (default: the one its embedded record names, if any)."""
    g = Graph(model)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    report = GraphReport("graph check", path=str(path), opset=opset, nodes=len(g.nodes),
                         ops=dict(collections.Counter(n.op_type for n in g.nodes).most_common()),
                         inputs=_io(i for i in model.graph.input if i.name not in g.initializers),
                         outputs=_io(model.graph.output))
    report.findings = [check(g) for check in CHECKS]
    attention, report.attention_blocks = check_attention(g)
    report.findings.insert(4, attention)
    recorded = recorded_identity(model)
    report.target = recorded.get("target")
    expect = expect or recorded.get("precision")
    has_qdq = any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in g.nodes)
    scheme = graph_scheme(model, recorded) if has_qdq else None
    if has_qdq:
        report.findings.append(check_qdq(model, scheme, tuple(recorded.get("qdq_excluded", ()))))
    elif expect in ("int8", "fp8"):
        report.findings.append(Finding("qdq-placement", False, f"the graph is labelled {expect} but has no Q/DQ"))
    elif expect == "fp16" or lowered(model):
        report.findings.append(Finding("qdq-placement", True, "no Q/DQ (FP16 graph)", severity="info",
                                       facts={"qdq_pairs": 0}))
    if lowered(model) or expect in ("fp16", "int8", "fp8"):
        report.findings.append(check_precision(model, tuple(recorded.get("fp32_nodes", ())),
                                               scheme.float_part if scheme is not None else "fp16"))
    return report


def recorded_identity(model: onnx.ModelProto) -> dict:
    """The fvdeploy record embedded in the graph's metadata ({} for foreign graphs)."""
    text = {p.key: p.value for p in model.metadata_props}.get(RECORD_KEY)
    try:
        return json.loads(text) if text else {}
    except json.JSONDecodeError:
        return {}


def check_external_data(model: onnx.ModelProto, folder: Path) -> Finding | None:
    """Weights kept beside the graph (> 2 GB models): every file there, and long enough for what it holds."""
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    problems, tensors, files = [], 0, set()
    for tensor in model.graph.initializer:
        if not uses_external_data(tensor):
            continue
        info, tensors = ExternalDataInfo(tensor), tensors + 1
        where = folder / info.location
        files.add(info.location)
        if not where.is_file():
            problems.append(f"{info.location} is missing")
        elif info.length and (info.offset or 0) + info.length > where.stat().st_size:
            problems.append(f"{info.location} ends before {tensor.name}'s bytes (truncated)")
    if not tensors:
        return None
    problems = list(dict.fromkeys(problems))
    return Finding("external-data", not problems, "; ".join(problems[:3]) if problems else
                   f"{tensors} tensors in {', '.join(sorted(files))}", facts={"tensors": tensors, "files": sorted(files)})


def inspect_path(path: str | Path) -> GraphReport:
    model = load_graph(path)
    report = inspect_model(model, path)
    external = check_external_data(model, Path(path).parent)
    if external is not None:
        report.findings.insert(0, external)
    return report
