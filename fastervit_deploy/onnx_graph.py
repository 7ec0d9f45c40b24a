"""Name lookups over one ONNX graph: producers, consumers, and which tensors are build-time constants."""

from __future__ import annotations

import collections
import math

import onnx

RANDOM_OPS = ("RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli")
PASS_THROUGH = ("QuantizeLinear", "DequantizeLinear", "Cast", "Identity")


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

    def source(self, name: str) -> onnx.NodeProto | None:
        """Producer of ``name``, looking through Q/DQ, Cast and Identity."""
        node = self.producer.get(name)
        while node is not None and node.op_type in PASS_THROUGH and node.input and not self.is_constant(node.input[0]):
            node = self.producer.get(node.input[0])
        return node

    def constant_size(self, name: str) -> int | None:
        node = self.producer.get(name)
        while node is not None and node.op_type in PASS_THROUGH:
            name = node.input[0]
            node = self.producer.get(name)
        if name in self.initializers:
            n = 1
            for d in self.initializers[name].dims:
                n *= d
            return n
        if node is not None and node.op_type == "Constant":
            attr = node.attribute[0] if node.attribute else None
            if attr is not None and attr.name == "value":
                return math.prod(attr.t.dims)  # a scalar has no dims: 1
            return 1 if attr is not None and attr.name in ("value_float", "value_int") else None
        return None
