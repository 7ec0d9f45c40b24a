"""The precision policy of every FP16, INT8 and FP8 graph fvdeploy writes: the rules, in one place.

They are used three times: to place Q/DQ (``placement``: every backend produces exactly this placement),
to decide which ops compute in fp32 (the FP16 converter and the quantized graphs' float part), and to check
a graph (``policy_checks``: `inspect`'s `qdq-placement` and `precision` findings, which `quantize` runs
before writing). The structures the rules speak of (weighted ops, the head, attention, residual Adds)
are found by ``patterns``. A scheme
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

from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto

from ..core.precision import Precision, QuantTarget
from .graph import Graph
from .patterns import attention_bmms, is_head, weight_input

COMPUTE_OPS = ("Conv", "MatMul", "Gemm", "Add", "Sub", "Mul", "Div", "Softmax", "Erf", "Relu", "Sigmoid", "Tanh",
               "AveragePool", "GlobalAveragePool", "ReduceMean", "Pow", "Sqrt", "LayerNormalization")
FP8_MAX, INT8_MAX = 448.0, 127.0


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


@dataclass(frozen=True)
class Scheme:
    """One column of the policy: a precision on a target."""

    precision: Precision
    target: QuantTarget
    conv_rule: Callable[[Graph, onnx.NodeProto], bool]  # which Convs this scheme quantizes
    activation_type: int  # onnx.TensorProto element type of activations' zero points
    weight_type: int
    float_part: str  # "fp16" | "fp32": what the ops that are not quantized compute in
    qmax: float  # the scale of an amax: amax / qmax
    attention: bool = False  # both attention MatMuls quantized (rule 5')
    residual_adds: bool = False  # the skip inputs of residual Adds quantized (rule 3)
    quantized_conv_outputs: bool = False  # the Q/DQ after a quantized Conv belong to it (rule 2")
    symmetric_activations: bool = True  # zero point 0 for activations too

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
    Scheme(Precision.int8, QuantTarget.tensorrt, conv_rule=conv_has_int8_kernels, activation_type=TensorProto.INT8,
           weight_type=TensorProto.INT8, float_part="fp16", qmax=INT8_MAX, residual_adds=True),
    Scheme(Precision.fp8, QuantTarget.tensorrt, conv_rule=conv_runs_fp8, activation_type=TensorProto.FLOAT8E4M3FN,
           weight_type=TensorProto.FLOAT8E4M3FN, float_part="fp16", qmax=FP8_MAX, attention=True, residual_adds=True),
    Scheme(Precision.int8, QuantTarget.onnxruntime_cpu, conv_rule=lambda g, n: True, activation_type=TensorProto.UINT8,
           weight_type=TensorProto.INT8, float_part="fp32", qmax=INT8_MAX, quantized_conv_outputs=True,
           symmetric_activations=False),
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
