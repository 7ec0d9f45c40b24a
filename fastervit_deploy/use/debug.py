"""`fvdeploy debug`: where an FP16 or Q/DQ graph departs from the FP32 graph it was made from.

Both graphs expose the same intermediate tensors (the stem's, each stage's and block's output, and the
output of every weighted op), matched by the node names fvdeploy's export gives them; both run on the
same images; each tensor's cosine and relative max |Δ| are listed in graph order and the first one
beyond tolerance is marked. For FP16 graphs, a tensor whose FP32 values leave FP16's range is marked too.
For Q/DQ graphs the site sensitivity follows: each site group alone kept in FP16 (``quantize.trials``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from rich.console import Console

from ..artifact import Artifact, open_artifact
from ..core.precision import TOLERANCES, Precision, QuantTarget, Tolerance
from ..core.record import FormatKey
from ..data.images import batch_of, load_batch
from ..graph.graph import Graph
from ..graph.patterns import weight_input
from ..graph.placement import plan_placement
from ..graph.policy import scheme_for
from ..onnx.runner import session_options
from ..data.labelled import LabelledBatch
from ..quantize.trials import Scorer, sensitivity
from ..system.errors import FvdeployError
from ..system.figures import pyplot, save_png
from ..system.progress import counted, progress_bar

FP16_MAX = 65504.0
# Intermediate tensors carry more rounding than the logits (errors average out downstream): the default
# layer tolerance is looser than the output's for Q/DQ graphs. A broken scale gives cosines far below it.
LAYER_COSINE = {Precision.fp16: 0.999, Precision.int8: 0.95, Precision.fp8: 0.95}
IMAGES = 8
CHUNK = 2  # images per run: every intermediate tensor of a chunk is held at once
_BLOCK = re.compile(r"^(/levels\.\d+/blocks\.\d+/)")
_STAGE = re.compile(r"^(/levels\.\d+/)")
_STEM = re.compile(r"^(/patch_embed/)")


@dataclass(frozen=True)
class Probe:
    """One compared tensor: the node that makes it, what it is, and its name in each graph."""

    node: str
    kind: str  # "stem", "stage", "block", "weighted op", "output"
    reference: str
    candidate: str


def probes(reference: onnx.ModelProto, candidate: onnx.ModelProto) -> list[Probe]:
    """The tensors compared, in the reference's graph order (nodes both graphs have)."""
    ref, cand = Graph(reference), {n.name: n for n in candidate.graph.node}
    last: dict[str, tuple[str, onnx.NodeProto]] = {}  # prefix -> (kind, its last node)
    chosen: dict[str, str] = {}
    for node in ref.nodes:
        for kind, pattern in (("block", _BLOCK), ("stage", _STAGE), ("stem", _STEM)):
            match = pattern.match(node.name)
            if match:
                last[match.group(1)] = (kind, node)
        if weight_input(ref, node):
            chosen[node.name] = "weighted op"
    for kind, node in last.values():
        chosen.setdefault(node.name, kind)
    outputs = {o.name for o in reference.graph.output}
    for node in ref.nodes:
        if set(node.output) & outputs:
            chosen[node.name] = "output"
    return [Probe(n.name, chosen[n.name], n.output[0], cand[n.name].output[0])
            for n in ref.nodes if n.name in chosen and n.name in cand]


def with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy whose outputs are ``names`` (their types from shape inference)."""
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    types = {v.name: v.type.tensor_type.elem_type for v in
             [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]}
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.output[:]
    for name in names:
        out.graph.output.append(onnx.helper.make_tensor_value_info(name, types.get(name, onnx.TensorProto.FLOAT), None))
    return out


def _session(model: onnx.ModelProto, fp8: bool = False):
    import onnxruntime as ort

    return ort.InferenceSession(model.SerializeToString(), session_options(fp8_on_cpu=fp8),
                                providers=["CPUExecutionProvider"])


def layerwise(reference: onnx.ModelProto, candidate: onnx.ModelProto, images: np.ndarray, min_cosine: float,
              fp16: bool, console: Console, fp8: bool = False) -> list[dict]:
    """Cosine (worst image) and relative max |Δ| of every probe, in graph order; the first failing one marked."""
    found = probes(reference, candidate)
    if not found:
        raise FvdeployError("the graphs share no node names: debug compares graphs that fvdeploy exported and quantized")
    ref_run = _session(with_outputs(reference, [p.reference for p in found]))
    cand_run = _session(with_outputs(candidate, [p.candidate for p in found]), fp8=fp8)
    name = reference.graph.input[0].name
    cosine = np.ones(len(found))
    max_diff, ref_max, nonfinite = np.zeros(len(found)), np.zeros(len(found)), np.zeros(len(found), np.int64)
    with progress_bar(console, unit="images") as bar:
        task = bar.add_task("layer by layer", total=len(images))
        for start in range(0, len(images), CHUNK):
            x = images[start:start + CHUNK]
            for i, (a, b) in enumerate(zip(ref_run.run(None, {name: x}), cand_run.run(None, {name: x}))):
                a = np.asarray(a, np.float64).reshape(len(x), -1)
                b = np.asarray(b, np.float64).reshape(len(x), -1)
                finite = np.isfinite(b)
                nonfinite[i] += int((~finite).sum())
                b = np.where(finite, b, 0.0)
                cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)
                cosine[i] = min(cosine[i], float(cos.min()))
                max_diff[i] = max(max_diff[i], float(np.abs(a - b).max()))
                ref_max[i] = max(ref_max[i], float(np.abs(a).max()))
            bar.advance(task, len(x))
    rows, first = [], None
    for i, p in enumerate(found):
        reasons = []
        if cosine[i] < min_cosine:
            reasons.append(f"cosine {cosine[i]:.6f} < {min_cosine:g}")
        if nonfinite[i]:
            reasons.append(f"{nonfinite[i]} inf/nan values")
        if fp16 and ref_max[i] > FP16_MAX:
            reasons.append(f"FP32 values up to {ref_max[i]:.3g} leave FP16's range")
        if reasons and first is None:
            first = i
        rows.append({"index": i, "node": p.node, "kind": p.kind, "tensor": p.candidate, "cosine": float(cosine[i]),
                     "max_abs_rel": float(max_diff[i] / max(ref_max[i], 1e-30)), "reference_max_abs": float(ref_max[i]),
                     "beyond": reasons, "first": i == first})
    return rows


def _same_model(a: Artifact, b: Artifact) -> bool:
    """One architecture, input and weights (the checkpoint's content, or the seed of random weights)."""
    weights = lambda art: art.model.checkpoint.sha256 if art.model.checkpoint else art.model.seed  # noqa: E731
    return (a.model.name, a.model.config, a.model.input.shape, weights(a)) == \
        (b.model.name, b.model.config, b.model.input.shape, weights(b))


def _reference(candidate: Artifact, given: Path | None) -> Artifact:
    if given is not None:
        ref = open_artifact(given, model=None)
        if ref.format.key is not FormatKey.onnx or ref.record.precision is not Precision.fp32:
            raise FvdeployError(f"--reference {given.name} is a {ref.record.precision} {ref.format.description}: "
                                "debug compares with the FP32 ONNX the candidate was made from")
        if not _same_model(ref, candidate):
            raise FvdeployError(f"--reference {given.name} holds another model than {candidate.path.name} "
                                f"({ref.model.name} {ref.model.weights} vs {candidate.model.name} "
                                f"{candidate.model.weights}): give the FP32 ONNX it was made from")
        return ref
    source = candidate.record.source
    if source is None:
        raise FvdeployError(f"{candidate.path.name}'s record names no FP32 graph it was made from: pass --reference")
    ref = open_artifact(source.path, model=None)
    if ref.sha256 != source.sha256:
        raise FvdeployError(f"{source.path} is not the graph {candidate.path.name} was made from (sha256 "
                            f"{ref.sha256[:12]}… vs recorded {source.sha256[:12]}…): pass --reference")
    return ref


def _images(art: Artifact, images: Path | None, data: Path | None, labels_file: Path | None,
            limit: int, note: Callable[[str], None]) -> tuple[np.ndarray, LabelledBatch | None]:
    desc = art.model
    if data is None:
        return batch_of(load_batch(desc.resolution, desc.preprocessing, images, note=note), IMAGES), None
    labelled = LabelledBatch.read(data, labels_file, limit, desc, note)
    return labelled.images, labelled


def debug(candidate_path: Path, reference_path: Path | None, images: Path | None, data: Path | None,
          labels_file: Path | None, limit: int, tolerance: Tolerance, with_sensitivity: bool, workdir: Path,
          console: Console) -> dict:
    candidate = open_artifact(candidate_path, model=None)
    if candidate.format.key is not FormatKey.onnx or candidate.record.precision is Precision.fp32:
        raise FvdeployError(f"{candidate_path.name} is a {candidate.record.precision} {candidate.format.description}: "
                            "debug compares an FP16 or quantized ONNX with the FP32 ONNX it was made from")
    reference = _reference(candidate, reference_path)
    precision = candidate.record.precision
    tol = TOLERANCES[precision].override(tolerance)  # the outputs' (sensitivity trials)
    layer_cosine = tolerance.min_cosine if tolerance.min_cosine is not None else LAYER_COSINE[precision]
    x, labelled = _images(candidate, images, data, labels_file, limit,
                          lambda m: console.print(f"note: {m}", markup=False, highlight=False, soft_wrap=True))
    ref_model, cand_model = onnx.load(str(reference.path)), onnx.load(str(candidate.path))
    rows = layerwise(ref_model, cand_model, x, layer_cosine, precision is Precision.fp16, console,
                     fp8=precision is Precision.fp8)
    report = {"candidate": str(candidate.path), "reference": str(reference.path), "precision": precision.value,
              "images": len(x), "tolerance": tol.to_dict(), "layer_min_cosine": layer_cosine, "layers": rows,
              "first_beyond": next((r for r in rows if r["first"]), None)}
    quantized = any(n.op_type == "QuantizeLinear" for n in cand_model.graph.node)
    if with_sensitivity and quantized:
        scheme = scheme_for(candidate.record.precision, candidate.record.target or QuantTarget.tensorrt)
        groups = plan_placement(ref_model, scheme, candidate.record.qdq_excluded).groups()
        with reference.runner() as runner:
            references = runner.infer(x)
            if labelled is not None:
                labelled.fp32_top1 = Scorer.top1(runner, labelled)
        scorer = Scorer(candidate.record, x, references, tol, workdir, labelled)
        with progress_bar(console, unit="trials") as bar:
            task = bar.add_task(f"site sensitivity ({counted(len(groups), 'group')})", total=len(groups))
            report["sensitivity"] = sensitivity(cand_model, ref_model, groups, scorer,
                                                lambda n: bar.update(task, completed=n))
        report["int8"] = scorer.score(cand_model)
    return report


def plot(report: dict, path: Path, overwrite: bool = False) -> None:
    plt = pyplot()

    rows = report["layers"]
    x = [r["index"] for r in rows]
    fig, ax = plt.subplots(figsize=(9, 4.2), layout="constrained")
    ax.plot(x, [max(1 - r["cosine"], 1e-9) for r in rows], marker=".", label="1 - cosine (worst image)")
    ax.plot(x, [max(r["max_abs_rel"], 1e-9) for r in rows], marker=".", alpha=0.7, label="max |Δ| / max |FP32|")
    ax.axhline(1 - report["layer_min_cosine"], color="grey", ls="--", lw=1, label="layer cosine tolerance")
    first = report["first_beyond"]
    if first is not None:
        ax.axvline(first["index"], color="red", lw=1)
        ax.annotate(f"first beyond: {first['node']}", (first["index"], ax.get_ylim()[1]), fontsize=8, color="red",
                    ha="left", va="top", rotation=0, xytext=(4, -4), textcoords="offset points")
    ax.set(yscale="log", xlabel="compared tensor (graph order: stem, weighted ops, blocks, stages)",
           ylabel="error against FP32", title=f"{Path(report['candidate']).name} ({report['precision']}) vs "
                                               f"{Path(report['reference']).name}, {report['images']} images")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    save_png(fig, path, overwrite)
