"""Structures the precision policy and `inspect` find in a graph: weighted ops, the classifier head, attention
blocks and residual Adds. One finder each, shared by the rules (``policy``), the placement, the checks and
`inspect`'s attention finding."""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from .graph import CASTS, QDQ, Graph

WEIGHTED_OPS = ("Conv", "MatMul", "Gemm")
# Ops between a weighted op and a residual Add that TensorRT folds into the weighted op's epilogue.
EPILOGUE = ("Add", "Mul", "Reshape", "Transpose", "Cast", "Identity", *QDQ)


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


@dataclass(frozen=True)
class AttentionBlock:
    """One Softmax and what stands around it: the bias Add before it (FasterViT's relative position bias), the op
    that makes its scores (q·kᵀ where the block has the expected form) and the MatMuls it feeds (attn·v)."""

    softmax: onnx.NodeProto
    bias_add: onnx.NodeProto | None
    scores: onnx.NodeProto | None
    values: tuple[onnx.NodeProto, ...]


def attention_blocks(g: Graph) -> list[AttentionBlock]:
    """Every Softmax of the graph as an attention block, in graph order."""
    blocks = []
    for softmax in (n for n in g.nodes if n.op_type == "Softmax"):
        scores, add = g.source(softmax.input[0]), None
        if scores is not None and scores.op_type == "Add":
            add = scores
            live = [i for i in add.input if not g.is_constant(i)]
            scores = g.source(live[0]) if len(live) == 1 else None
        values = tuple(c for c in g.consumers_through(softmax.output[0]) if c.op_type == "MatMul")
        blocks.append(AttentionBlock(softmax, add, scores, values))
    return blocks


def attention_bmms(g: Graph) -> list[onnx.NodeProto]:
    """q·kᵀ and attn·v of every MatMul → (Add) → Softmax → MatMul chain, in graph order."""
    found = set()
    for block in attention_blocks(g):
        if block.scores is not None and block.scores.op_type == "MatMul" and not weight_input(g, block.scores):
            found.add(block.scores.name)
        found |= {c.name for c in block.values}
    return [n for n in g.nodes if n.name in found]


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


def quantized_conv_output(g: Graph, dq: onnx.NodeProto, quantized: set[str]) -> bool:
    """Rule 2": the Q/DQ after a quantized Conv (its output read quantized by the next op)."""
    q = g.producer.get(dq.input[0])
    producer = g.producer.get(g.behind(q.input[0], through=CASTS)) if q is not None and q.op_type == "QuantizeLinear" else None
    return producer is not None and producer.op_type == "Conv" and producer.name in quantized
