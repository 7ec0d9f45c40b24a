"""`fvdeploy quantize`: precision decided in the ONNX graph (TensorRT 11 has no precision flags).

FP16: ModelOpt AutoCast (fp16.py): every op in fp16 except the policy's fp32 ops (LayerNorm), fp32 I/O.
INT8: the placement of precision_policy.py, calibrated once (calibration.py, streamed), then:
* ModelOpt's INT8 PTQ (the default) inserts Q/DQ for the policy's nodes from those scales and lowers
  the float part with AutoCast, LayerNorm kept fp32; in a child process, since it rewrites
  onnxruntime's quantization registries while it runs, writing intermediates beside a private copy;
* or onnxruntime's ``quantize_static`` from the same scales, and the same AutoCast lowering.
Both results then go through the policy's ``enforce`` post-pass, so the same command gives the same
placement and scales whichever backend ran; ``inspect``'s checks run on the result before it is written.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import shutil
import time
from pathlib import Path

import numpy as np
import onnx

from ..core.classes import ClassMap
from ..core.finish import finish
from ..core.options import DEFAULT_FP32_OPS, CalibrationMethod, CalibrationOptions, Fallback, QuantBackend
from ..core.parity import ParityJob, describe
from ..core.precision import TOLERANCES, Precision
from ..core.record import ArtifactRecord, RecordedArtifact, read_artifact
from ..data.images import batch_of, load_batch, open_image, preprocess
from ..data.labelled import open_labelled
from ..graph.inspect import inspect_model
from ..graph.policy import Placement, SiteGroup, compute_precisions, enforce, plan_placement
from ..onnx import metadata
from ..onnx.runner import OnnxRuntimeRunner
from ..system.errors import CheckFailed, FvdeployError, MissingDependency
from ..system.files import atomic_output, write_text_atomic
from ..system.progress import Steps, console, progress_bar
from ..system.resources import release_memory
from ..system.workers import in_child_process
from .calibration import Calibration, cache_text, calibrate, read_cache
from .fp16 import convert_to_fp16, float_types, lower_float_part, quiet_modelopt
from .job import QuantizeJob
from .trials import Labelled, Scorer, greedy_fallback, sensitivity, timed, with_scales

EVAL_IMAGES = 8  # images the parity figures against the FP32 graph use


def modelopt_available() -> bool:
    return importlib.util.find_spec("modelopt") is not None and importlib.util.find_spec("onnx_graphsurgeon") is not None


def choose_backend(opts: CalibrationOptions) -> str:
    if opts.backend is QuantBackend.modelopt and not modelopt_available():
        raise MissingDependency("--backend modelopt needs nvidia-modelopt and onnx_graphsurgeon (see README)")
    if opts.backend is not QuantBackend.auto:
        return opts.backend.value
    return "modelopt" if modelopt_available() else "onnxruntime"


def activation_tensors(model: onnx.ModelProto, placement: Placement) -> set[str]:
    """The activation tensors a quantizer visiting the placement's nodes needs scales for."""
    nodes = {n.name: n for n in model.graph.node}
    initializers = {t.name for t in model.graph.initializer}
    names = {nodes[n].input[0] for n in placement.int8_ops}
    names |= {i for n in placement.residual_adds for i in nodes[n].input}
    return {n for n in names if n not in initializers}


def int8_onnxruntime(src: Path, out: Path, placement: Placement, scales: dict[str, float], workdir: Path,
                     keep_fp32: tuple[str, ...]) -> None:
    """onnxruntime's QDQ quantizer from precomputed scales, then the float rest to FP16."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import TensorData, TensorsData, save_tensors_data

    ranges = TensorsData(CalibrationMethod.MinMax, {
        name: TensorData(lowest=np.float32(-s * 127.0), highest=np.float32(s * 127.0)) for name, s in scales.items()})
    ranges_path = workdir / "ranges.json"
    save_tensors_data(ranges, ranges_path)
    qdq = workdir / "qdq.onnx"
    logging.getLogger().setLevel(logging.ERROR)
    quantize_static(
        str(src), str(qdq), None, quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, nodes_to_quantize=placement.nodes,
        calibrate_method=CalibrationMethod.MinMax, calibration_cache_path=str(ranges_path),
        extra_options={
            "ActivationSymmetric": True, "WeightSymmetric": True,  # TensorRT needs zero points of 0
            "QuantizeBias": False,  # TensorRT wants float biases
            "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1},  # output channels of [K, N] weights
            "OpTypesToExcludeOutputQuantization": ["Conv", "MatMul", "Gemm", "Add"],  # policy rule 2
        },
    )
    model = onnx.load(str(qdq))
    enforce(model, placement)
    onnx.save(lower_float_part(model, keep_fp32), str(out))


def int8_modelopt(src: Path, out: Path, placement: Placement, cache: Path, keep_fp32: tuple[str, ...]) -> None:
    """ModelOpt's INT8 ONNX PTQ for the policy's nodes, its scales taken from ``cache`` (runs in a child)."""
    from modelopt.onnx.quantization import quantize as mo_quantize

    quiet_modelopt()
    model = onnx.load(str(src), load_external_data=False)
    name = model.graph.input[0].name
    dims = [d.dim_value or 1 for d in model.graph.input[0].type.tensor_type.shape.dim]
    del model  # ModelOpt loads its own copy
    # ModelOpt always runs onnxruntime's calibrator; one zero batch suffices, as ``cache`` overrides the scales.
    mo_quantize(
        str(src), quantize_mode="int8", calibration_data={name: np.zeros(dims, np.float32)},
        calibration_method="max", calibration_cache_path=str(cache), calibration_eps=["cpu"],
        nodes_to_quantize=placement.nodes, disable_mha_qdq=True, enable_gemv_detection_for_trt=False,
        high_precision_dtype="fp16", op_types_to_exclude_fp16=list(keep_fp32), output_path=str(out), log_level="ERROR",
    )
    result = onnx.load(str(out))
    enforce(result, placement)
    onnx.save(result, str(out))


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def scales_for(job: QuantizeJob, needed: set[str], src: ArtifactRecord, workdir: Path, steps: Steps) -> Calibration:
    opts = job.calibration
    if opts.cache_hit:
        calibration = read_cache(opts.calib_cache, needed)  # refused unless complete for this graph
        steps.note(f"using {len(needed)} scales from calibration cache {opts.calib_cache} (calibration skipped" +
                   ("; a cache holds one method's scales, so --method auto has nothing to choose" if
                    opts.method is CalibrationMethod.auto else "") + ")")
        return calibration
    with steps(f"calibrating on images from {opts.calib_dir} ({opts.method.value}, streamed)"):
        calibration = calibrate(workdir / "source.onnx", needed, Path(opts.calib_dir), opts.calib_images,
                                src.model.resolution, src.model.preprocessing, opts.method, workdir, steps.note)
    return calibration


def write_int8(job: QuantizeJob, workdir: Path, tmp: Path, placement: Placement, scales: dict[str, float],
               steps: Steps) -> str:
    """The INT8 Q/DQ graph of the workdir's source copy, from these scales and this placement, into ``tmp``."""
    backend = choose_backend(job.calibration)
    with steps(f"INT8 Q/DQ with {backend} ({len(placement.int8_ops)} weighted ops, "
               f"{len(placement.residual_adds)} residual adds)"):
        if backend == "modelopt":
            cache = workdir / "scales.cache"
            cache.write_text(cache_text(scales))
            release_memory()  # the worker's peak adds to ours
            in_child_process(int8_modelopt, workdir / "source.onnx", tmp, placement, cache, job.lowering.keep_fp32,
                             what="ModelOpt", tmpdir=workdir)
        else:
            int8_onnxruntime(workdir / "source.onnx", tmp, placement, scales, workdir, job.lowering.keep_fp32)
    return backend


def choose_method(tmp: Path, calibration: Calibration, scorer: Scorer, steps: Steps) -> dict:
    """--method auto: each method's scales in the written graph, measured on held-out images; the best stays."""
    int8 = onnx.load(str(tmp))
    with steps(f"--method auto: {len(calibration.candidates)} methods on held-out images"):
        figures = {m: timed(lambda m=m: scorer.score(with_scales(int8, scales))) for m, scales in calibration.candidates.items()}
    best = max(figures, key=lambda m: Scorer.goodness(figures[m]))
    onnx.save(with_scales(int8, calibration.candidates[best]), str(tmp))
    calibration.scales = calibration.candidates[best]
    for method, f in figures.items():
        steps.note(f"{method}: {describe(f)}{'  <- kept' if method == best else ''}")
    return {"chosen": best, "methods": figures}


def fallback(job: QuantizeJob, tmp: Path, workdir: Path, placement: Placement, scorer: Scorer,
             steps: Steps) -> tuple[list[SiteGroup], dict]:
    """--fallback auto: the site groups to keep in FP16 (none if the INT8 graph meets the target)."""
    int8, fp32 = onnx.load(str(tmp)), onnx.load(str(workdir / "source.onnx"))
    full = timed(lambda: scorer.score(int8))
    if full["meets"]:
        steps.note(f"--fallback auto: the INT8 graph meets the target ({describe(full)})")
        return [], {"needed": False, "int8": full}
    groups = placement.groups()
    greedy = min(len(groups), job.target.max_fallback or len(groups))
    steps.note(f"--fallback auto: the INT8 graph misses the target ({'; '.join(full['failures']) or describe(full)}); "
               f"{len(groups)} sensitivity trials, then at most {greedy} greedy ones, about "
               f"{full['seconds'] * (len(groups) + greedy):.0f} s (scales reused: no recalibration)")
    with progress_bar(console, unit="trials") as bar:
        task = bar.add_task("site sensitivity", total=len(groups))
        ranked = sensitivity(int8, fp32, groups, scorer, lambda n: bar.update(task, completed=n))
        task = bar.add_task("greedy fallback", total=greedy)
        kept, tried = greedy_fallback(int8, fp32, ranked, groups, scorer, lambda n: bar.update(task, completed=n), greedy)
        bar.update(task, total=len(tried))  # it stops once the target is met
    search = {"needed": True, "int8": full, "sensitivity": ranked, "steps": tried, "kept": [g.op for g in kept]}
    if not tried[-1]["meets"]:
        best = max(tried, key=Scorer.goodness)
        raise CheckFailed(f"--fallback auto cannot meet the target: the best reached is {describe(best)} with "
                          f"{len(best['kept'])} groups kept in FP16 (tried {len(tried)}, most sensitive first: "
                          f"{', '.join(tried[-1]['kept'][:3])}{' ...' if len(tried) > 3 else ''})")
    steps.note(f"--fallback auto: {len(kept)} group(s) kept in FP16 meet the target: {', '.join(g.op for g in kept)}")
    return kept, search


def quantize_int8(job: QuantizeJob, tmp: Path, src: ArtifactRecord, scorer: Scorer, steps: Steps) -> tuple[dict, tuple]:
    """Write the INT8 Q/DQ graph to ``tmp``; return the record's ``int8`` details and the weighted ops kept out."""
    workdir = tmp.parent
    shutil.copyfile(job.source, workdir / "source.onnx")  # backends may write beside their input: never the user's
    model = onnx.load(str(workdir / "source.onnx"))
    placement = plan_placement(model, job.calibration.exclude)
    if not placement.int8_ops:
        raise FvdeployError("no node left to quantize (every weighted op is excluded)")
    needed = activation_tensors(model, placement)
    del model  # the backends and the trials load their own copies
    calibration = scales_for(job, needed, src, workdir, steps)
    start = time.perf_counter()
    backend = write_int8(job, workdir, tmp, placement, calibration.scales, steps)
    details = {"backend": backend,
               "backend_version": _version("nvidia-modelopt" if backend == "modelopt" else "onnxruntime"),
               "calibration": {"source": calibration.source, **calibration.facts,
                               "cache": str(job.calibration.calib_cache) if job.calibration.calib_cache else None,
                               "folder": str(job.calibration.calib_dir) if job.calibration.calib_dir else None}}
    if calibration.candidates:
        details["calibration"].update(choose_method(tmp, calibration, scorer, steps))
    if job.calibration.calib_cache is not None and not job.calibration.cache_hit:
        write_text_atomic(Path(job.calibration.calib_cache), cache_text(calibration.scales))
    if job.target.fallback is Fallback.auto:
        kept, details["fallback"] = fallback(job, tmp, workdir, placement, scorer, steps)
        if kept:  # the real graph with those groups excluded, from the same scales
            placement = plan_placement(onnx.load(str(workdir / "source.onnx")),
                                       (*job.calibration.exclude, *(g.op for g in kept)))
            write_int8(job, workdir, tmp, placement, calibration.scales, steps)
    details["placement"] = {"int8_ops": len(placement.int8_ops), "residual_adds": len(placement.residual_adds),
                            "excluded": list(placement.excluded), "exclude_patterns": list(job.calibration.exclude)}
    details["seconds"] = round(time.perf_counter() - start, 2)
    return details, placement.excluded


def labelled_images(job: QuantizeJob, src: ArtifactRecord, steps: Steps) -> Labelled:
    """--data: the labelled images (a seeded subset), preprocessed once, and the FP32 graph's top-1 on them."""
    target, desc = job.target, src.model
    data = open_labelled(target.data, ClassMap.of(desc.config.num_classes, desc.class_names), target.labels_file,
                         target.limit)
    arrays, labels, skipped = [], [], 0
    for path, label in zip(data.files, data.labels):
        try:
            arrays.append(preprocess(open_image(path), desc.resolution, desc.preprocessing))
            labels.append(label)
        except FvdeployError:
            skipped += 1
    if not arrays:
        raise FvdeployError(f"no readable image in {target.data}")
    if skipped:
        steps.note(f"skipped {skipped} unreadable files of {target.data}")
    return Labelled(np.stack(arrays), np.asarray(labels))


def quantize(job: QuantizeJob, steps: Steps) -> ArtifactRecord:
    source: RecordedArtifact = job.source_artifact or read_artifact(job.source, metadata.read_identity)
    src = source.record
    keep_fp32 = job.lowering.keep_fp32
    tolerance = TOLERANCES[job.precision].override(job.tolerance)
    with steps("the FP32 graph on real images"):
        images = batch_of(load_batch(src.model.resolution, src.model.preprocessing, job.images.images), EVAL_IMAGES)
        labelled = labelled_images(job, src, steps) if job.target.data is not None else None
        with OnnxRuntimeRunner(job.source, src) as fp32:
            references = fp32.infer(images)
            if labelled is not None:
                labelled.fp32_top1 = Scorer.top1(fp32, labelled)
    if labelled is not None:
        steps.note(f"accuracy target: FP32 top-1 {labelled.fp32_top1:.2%} on {len(labelled.labels)} labelled images "
                   f"of {job.target.data}; at most {job.target.max_drop:g} points less")
    with atomic_output(job.output, job.overwrite) as tmp:
        details: dict = {}
        excluded: tuple[str, ...] = ()
        if job.precision is Precision.fp16:
            with steps("converting to FP16 (ModelOpt AutoCast)"):
                onnx.save(convert_to_fp16(job.source, images, tmp.parent, keep_fp32), str(tmp))
        else:
            scorer = Scorer(src, images, references, tolerance, tmp.parent, labelled, job.target.max_drop)
            details["int8"], excluded = quantize_int8(job, tmp, src, scorer, steps)
        result = onnx.load(str(tmp), load_external_data=False)
        # fp32 beyond LayerNorm: the op types asked for, and in FP16 graphs AutoCast's overflow guard
        # (nodes whose reference values left fp16's safe range). Anything else fails the precision check.
        kept = [n for n, (op, kind) in compute_precisions(result).items() if kind == "fp32" and op not in DEFAULT_FP32_OPS
                and (job.precision is Precision.fp16 or op in keep_fp32)]
        details["lowering"] = {"converter": "modelopt-autocast", "version": _version("nvidia-modelopt"),
                               "kept_fp32_ops": list(keep_fp32), "kept_fp32_nodes": kept}
        if "int8" in details:
            details["int8"]["qdq_pairs"] = sum(1 for n in result.graph.node if n.op_type == "QuantizeLinear")
        details["initializer_types"] = float_types(result)
        record = src.derive(precision=job.precision, command=job.argv(), source=source.ref, fp32_nodes=tuple(kept),
                            qdq_excluded=excluded, details=details)
        metadata.embed(result, record)  # backends drop the source's metadata
        onnx.save(result, str(tmp))
        parity = ParityJob(f"comparing {job.precision} with the FP32 graph on real images",
                           lambda path: OnnxRuntimeRunner(path, record), lambda _: references, [images], tolerance)
        return finish(tmp, record, steps, parity=parity,
                      check=lambda path: inspect_model(onnx.load(str(path)), path, expect=job.precision))
