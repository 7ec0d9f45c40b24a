"""Q/DQ placement: where a scheme puts Q/DQ in a graph (``plan_placement``), and the graph rewriting that makes a
quantizer's output exactly that placement (``enforce``, ``drop_unused``)."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

import onnx

from .graph import QDQ, Graph
from .patterns import attention_bmms, quantized_conv_output, residual_skip
from .policy import SCHEMES, Scheme


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
            if conv_outputs and quantized_conv_output(g, dq, set(placement.ops)):
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
