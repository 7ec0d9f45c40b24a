"""Precision trials on a written Q/DQ graph, without re-quantizing or re-calibrating.

A trial is the calibrated Q/DQ graph changed in one of two ways, both exact equivalents of what the
quantizer would write:
* site groups kept out of the low precision (``keep_out``): their Q/DQ are bypassed and their weights
  restored from the FP32 graph, in the float part's precision (FP16 for TensorRT graphs);
* other activation scales (``with_scales``): the placement stays, the scale constants change (the
  calibration methods of ``--method auto``).
A ``Scorer`` measures a trial on held-out images against the FP32 graph (and, given labelled images,
its accuracy): the figures the sensitivity ranking, ``--fallback auto`` and ``--method auto`` decide on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from ..core.accuracy import Tally
from ..core.parity import run_parity
from ..core.precision import Tolerance
from ..core.record import ArtifactRecord
from ..core.tensors import class_output
from ..data.labelled import LabelledBatch
from ..graph.graph import CASTS, Graph
from ..graph.placement import SiteGroup, drop_unused
from ..onnx.runner import OnnxRuntimeRunner
from ..system.errors import FvdeployError


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _feeding(g: Graph, node: onnx.NodeProto, i: int) -> tuple[onnx.NodeProto, int]:
    """The node and input index that read the DequantizeLinear feeding ``node.input[i]`` (a Cast may sit between)."""
    consumer, index = node, i
    producer = g.producer.get(consumer.input[index])
    while producer is not None and producer.op_type in CASTS:
        consumer, index = producer, 0
        producer = g.producer.get(consumer.input[index])
    return consumer, index


def _bypass(g: Graph, node: onnx.NodeProto, i: int) -> bool:
    """Input ``i`` of ``node`` reads the tensor its Quantize/DequantizeLinear pair rounded (same element type)."""
    consumer, index = _feeding(g, node, i)
    dq = g.producer.get(consumer.input[index])
    q = g.producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
    if q is None or q.op_type != "QuantizeLinear":
        return False
    consumer.input[index] = q.input[0]
    return True


def _constant(g: Graph, name: str) -> np.ndarray:
    name = g.behind(name)
    if name in g.initializers:
        return numpy_helper.to_array(g.initializers[name])
    node = g.producer.get(name)
    if node is not None and node.op_type == "Constant":
        return numpy_helper.to_array(node.attribute[0].t)
    raise FvdeployError(f"{name} is not a constant weight")


def _restore_weight(g: Graph, fp32: Graph, node: onnx.NodeProto, model: onnx.ModelProto) -> None:
    """A weight stored quantized (int8 plus DequantizeLinear) back to the FP32 graph's values, in the type the
    node computes in; a weight rounded at run time (Quantize/DequantizeLinear on a float constant) is bypassed."""
    if _bypass(g, node, 1):
        return
    consumer, index = _feeding(g, node, 1)
    dq = g.producer.get(consumer.input[index])
    if dq is None or dq.op_type != "DequantizeLinear":
        return
    source = next((n for n in fp32.nodes if n.name == node.name), None)
    if source is None:
        raise FvdeployError(f"{node.name} is not in the FP32 graph: trials need the graph it was quantized from")
    dtype = onnx.helper.tensor_dtype_to_np_dtype(g.initializers[dq.input[1]].data_type)
    name = f"{node.name}/float_weight"
    model.graph.initializer.append(numpy_helper.from_array(_constant(fp32, source.input[1]).astype(dtype), name))
    consumer.input[index] = name


def keep_out(int8: onnx.ModelProto, fp32: onnx.ModelProto, groups: Iterable[SiteGroup]) -> onnx.ModelProto:
    """The Q/DQ graph with ``groups`` in the float part's precision (a copy)."""
    model = _copy(int8)
    g, ref = Graph(model), Graph(fp32)
    nodes = {n.name: n for n in g.nodes}
    for group in groups:
        node = nodes[group.op]
        _bypass(g, node, 0)
        _restore_weight(g, ref, node, model)
        for add in group.adds:
            for i in range(len(nodes[add].input)):
                _bypass(g, nodes[add], i)
    drop_unused(model)
    return model


def with_scales(model: onnx.ModelProto, scales: dict[str, float]) -> onnx.ModelProto:
    """The Q/DQ graph with these activation scales (tensor name -> scale), each site's Q and DQ alike (a copy)."""
    out = _copy(model)
    g = Graph(out)
    inits = {t.name: t for t in out.graph.initializer}
    for q in (n for n in g.nodes if n.op_type == "QuantizeLinear"):
        tensor = g.behind(q.input[0], through=CASTS)
        if tensor not in scales or g.is_constant(tensor):
            continue
        for node in [q, *(c for c in g.consumers.get(q.output[0], []) if c.op_type == "DequantizeLinear")]:
            init = inits[node.input[1]]
            init.CopyFrom(numpy_helper.from_array(
                np.asarray(scales[tensor], onnx.helper.tensor_dtype_to_np_dtype(init.data_type)).reshape(init.dims),
                init.name))
    return out


@dataclass
class Scorer:
    """Figures of a trial graph on held-out images (vs the FP32 graph), and on labelled images if given."""

    record: ArtifactRecord  # the tensors every trial has
    images: np.ndarray
    reference: dict[str, np.ndarray]  # the FP32 graph's outputs on ``images``
    tolerance: Tolerance
    workdir: Path
    labelled: LabelledBatch | None = None
    max_drop: float | None = None
    trials: int = field(default=0)

    def _runner(self, model: onnx.ModelProto) -> OnnxRuntimeRunner:
        self.trials += 1
        path = self.workdir / f"trial{self.trials}.onnx"
        onnx.save(model, str(path))
        return OnnxRuntimeRunner(path, self.record)

    def score(self, model: onnx.ModelProto) -> dict:
        runner = self._runner(model)
        with runner:
            result = run_parity(lambda _: self.reference, runner, [self.images], self.tolerance)
            figures = {**result["overall"], "failures": result["failures"]}
            if self.labelled is not None:
                figures.update(self._accuracy(runner))
        runner.path.unlink()
        figures["meets"] = self.meets(figures)
        return figures

    @staticmethod
    def top1(runner, labelled: LabelledBatch, chunk: int = 32) -> float:
        """Top-1 of an active runner on the labelled images (evaluate's counts)."""
        spec = class_output(runner.outputs)
        tally = Tally(spec.shape[0])
        for start in range(0, len(labelled.images), chunk):
            scores = runner.infer(labelled.images[start:start + chunk])[spec.name]
            tally.add(scores, labelled.labels[start:start + chunk], np.argmax(scores, axis=1))
        return tally.top1 / tally.images

    def _accuracy(self, runner: OnnxRuntimeRunner) -> dict:
        top1 = self.top1(runner, self.labelled)
        return {"top1": top1, "drop_points": round((self.labelled.fp32_top1 - top1) * 100, 6)}

    def meets(self, figures: dict) -> bool:
        ok = not figures["failures"]
        if self.labelled is not None and self.max_drop is not None:
            ok = ok and figures["drop_points"] <= self.max_drop
        return ok

    @staticmethod
    def goodness(figures: dict) -> tuple:
        """Larger is better: the target first, then accuracy (labels), agreement and direction."""
        return (figures["meets"], -figures.get("drop_points", 0.0), figures.get("top1_agreement", 1.0),
                figures["cosine_min"], -figures["max_abs"])


def timed(fn: Callable[[], dict]) -> dict:
    start = time.perf_counter()
    figures = fn()
    return {**figures, "seconds": round(time.perf_counter() - start, 3)}


def sensitivity(int8: onnx.ModelProto, fp32: onnx.ModelProto, groups: Sequence[SiteGroup], scorer: Scorer,
                progress: Callable[[int], None] = lambda _: None) -> list[dict]:
    """Each group alone kept out of INT8, from the full INT8 graph; most sensitive (best figures) first."""
    rows = []
    for i, group in enumerate(groups):
        rows.append({**group.to_dict(), **timed(lambda: scorer.score(keep_out(int8, fp32, [group])))})
        progress(i + 1)
    order = sorted(range(len(rows)), key=lambda i: Scorer.goodness(rows[i]), reverse=True)
    return [{"rank": rank + 1, **rows[i]} for rank, i in enumerate(order)]


def greedy_fallback(int8: onnx.ModelProto, fp32: onnx.ModelProto, ranked: list[dict], groups: Sequence[SiteGroup],
                    scorer: Scorer, progress: Callable[[int], None] = lambda _: None,
                    limit: int | None = None) -> tuple[list[SiteGroup], list[dict]]:
    """Keep groups out of INT8 in ranked order (at most ``limit``), re-measuring after each, until the target is met.

    Returns the groups kept and each step's figures; the last step meets the target, or none did."""
    by_op = {g.op: g for g in groups}
    kept: list[SiteGroup] = []
    steps = []
    for i, row in enumerate(ranked[:limit]):
        kept.append(by_op[row["op"]])
        figures = timed(lambda: scorer.score(keep_out(int8, fp32, kept)))
        steps.append({"kept": [g.op for g in kept], **figures})
        progress(i + 1)
        if figures["meets"]:
            break
    return kept, steps
