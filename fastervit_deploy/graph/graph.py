"""Name lookups over one ONNX graph: producers, consumers, constants, and one walker through pass-through ops."""

from __future__ import annotations

import collections
import math

import onnx

RANDOM_OPS = ("RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli")
QDQ = ("QuantizeLinear", "DequantizeLinear")
# Ops that pass a tensor on without computing: quantization round trips, casts and identities.
PASS_THROUGH = (*QDQ, "Cast", "Identity")
CASTS = ("Cast", "Identity")


class Graph:
    """Name lookups over one ONNX graph."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.nodes = list(model.graph.node)
        self.initializers = {t.name: t for t in model.graph.initializer}
        self.producer = {out: n for n in self.nodes for out in n.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = collections.defaultdict(list)
        for n in self.nodes:
            for i in n.input:
                self.consumers[i].append(n)
        self._const: dict[str, bool] = {}

    def is_constant(self, name: str) -> bool:
        """True when ``name`` does not depend on a graph input (so a builder can fold it)."""
        if not name or name in self.initializers:  # "" is an omitted optional input
            return True
        if name not in self._const:
            node = self.producer.get(name)
            self._const[name] = False  # guards against cycles in malformed graphs
            self._const[name] = node is not None and node.op_type not in RANDOM_OPS and all(
                self.is_constant(i) for i in node.input
            )
        return self._const[name]

    def behind(self, name: str, through: tuple[str, ...] = PASS_THROUGH, live_only: bool = False) -> str:
        """The tensor ``name`` carries, looking up through ``through`` ops (the one walker every check uses).

        ``live_only``: stop at a pass-through op whose input is a constant (a weight's DequantizeLinear)."""
        node = self.producer.get(name)
        while node is not None and node.op_type in through and node.input and not (
                live_only and self.is_constant(node.input[0])):
            name = node.input[0]
            node = self.producer.get(name)
        return name

    def source(self, name: str) -> onnx.NodeProto | None:
        """Producer of ``name``, looking through Q/DQ, Cast and Identity on activations."""
        return self.producer.get(self.behind(name, live_only=True))

    def dq_into(self, node: onnx.NodeProto, i: int) -> onnx.NodeProto | None:
        """The DequantizeLinear that feeds input ``i`` of ``node`` (through casts), if any."""
        if i >= len(node.input):
            return None
        producer = self.producer.get(self.behind(node.input[i], through=CASTS))
        return producer if producer is not None and producer.op_type == "DequantizeLinear" else None

    def consumers_through(self, name: str) -> list[onnx.NodeProto]:
        """Consumers of ``name``, looking down through Q/DQ, Cast and Identity."""
        out = []
        for c in self.consumers.get(name, []):
            out.extend(self.consumers_through(c.output[0]) if c.op_type in PASS_THROUGH else [c])
        return out

    def initializer_dims(self, name: str) -> list[int] | None:
        """Dims of the initializer behind ``name`` (a weight seen through its DequantizeLinear)."""
        name = self.behind(name)
        return list(self.initializers[name].dims) if name in self.initializers else None

    def constant_size(self, name: str) -> int | None:
        name = self.behind(name)
        node = self.producer.get(name)
        if name in self.initializers:
            return math.prod(self.initializers[name].dims)
        if node is not None and node.op_type == "Constant":
            attr = node.attribute[0] if node.attribute else None
            if attr is not None and attr.name == "value":
                return math.prod(attr.t.dims)  # a scalar has no dims: 1
            return 1 if attr is not None and attr.name in ("value_float", "value_int") else None
        return None
