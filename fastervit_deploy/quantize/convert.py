"""`fvdeploy quantize`: precision decided in the ONNX graph (TensorRT 11 has no precision flags).

FP16: ModelOpt AutoCast (fp16.py): every op in fp16 except the policy's fp32 ops (LayerNorm), fp32 I/O.
INT8 and FP8: the placement of the scheme (graph/policy.py: a precision on a target), calibrated once
(calibration.py, streamed), then:
* for TensorRT, ModelOpt's INT8 PTQ (the default) inserts Q/DQ for the scheme's nodes from those scales
  and lowers the float part with AutoCast, LayerNorm kept fp32 (for FP8 its ``int8_to_fp8`` then turns
  the Q/DQ into FP8 E4M3, as ModelOpt's FP8 mode does); in a child process, since it rewrites
  onnxruntime's quantization registries while it runs, writing intermediates beside a private copy;
* or onnxruntime's ``quantize_static`` from the same ranges: for TensorRT INT8 with the same AutoCast
  lowering, for the onnxruntime CPU scheme as its CPU kernels want it (uint8 activations, int8
  per-channel weights, reduce_range without VNNI, the rest FP32).
TensorRT results go through the policy's ``enforce`` post-pass, so the same command gives the same
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

from ..core.finish import finish
from ..core.options import AccuracyTarget, CalibrationMethod, CalibrationOptions, Fallback, QuantBackend
from ..core.parity import ParityJob, describe
from ..core.precision import FP32_OPS, TOLERANCES, Precision, QuantTarget
from ..core.record import ArtifactRecord, RecordedArtifact, read_artifact
from ..data.images import batch_of, load_batch
from ..graph.inspect import inspect_model
from ..tensorrt.parser import with_parser
from ..graph.placement import Placement, SiteGroup, enforce, plan_placement
from ..graph.policy import Scheme, scheme_for
from ..graph.policy_checks import compute_precisions
from ..onnx import metadata
from ..onnx.runner import OnnxRuntimeRunner
from ..system.errors import CheckFailed, FvdeployError, MissingDependency
from ..system.files import atomic_output, write_text_atomic
from ..system.machine import cpu
from ..system.progress import Steps, counted
from ..system.resources import release_memory
from ..system.workers import in_child_process
from .calibration import Calibration, Ranges, cache_text, calibrate, calibration_files, read_cache, symmetric_scales
from .fp16 import convert_to_fp16, float_types, lower_float_part, quiet_modelopt
from .job import QuantizeJob, refuse_backend
from ..data.labelled import LabelledBatch
from .trials import Scorer, greedy_fallback, sensitivity, timed, with_scales

EVAL_IMAGES = 8  # images the parity figures against the FP32 graph use


def modelopt_available() -> bool:
    return importlib.util.find_spec("modelopt") is not None and importlib.util.find_spec("onnx_graphsurgeon") is not None


def choose_backend(opts: CalibrationOptions, scheme: Scheme) -> QuantBackend:
    """The backend that writes this scheme: ModelOpt or onnxruntime for TensorRT INT8, ModelOpt for FP8 (its
    int8_to_fp8), onnxruntime for its own CPU kernels."""
    refuse_backend(scheme, opts.backend)
    if scheme.target is QuantTarget.onnxruntime_cpu:
        return QuantBackend.onnxruntime
    if scheme.precision is Precision.fp8:
        if not modelopt_available():
            raise MissingDependency("--fp8 needs nvidia-modelopt and onnx_graphsurgeon (`make install` installs them)")
        return QuantBackend.modelopt
    if opts.backend is QuantBackend.modelopt and not modelopt_available():
        raise MissingDependency("--backend modelopt needs nvidia-modelopt and onnx_graphsurgeon (see README)")
    if opts.backend is not QuantBackend.auto:
        return opts.backend
    return QuantBackend.modelopt if modelopt_available() else QuantBackend.onnxruntime


def activation_tensors(model: onnx.ModelProto, placement: Placement, scheme: Scheme) -> set[str]:
    """The activation tensors a quantizer visiting the placement's nodes needs ranges for."""
    nodes = {n.name: n for n in model.graph.node}
    initializers = {t.name for t in model.graph.initializer}
    names = {nodes[n].input[0] for n in placement.weighted}
    if scheme.quantized_conv_outputs:  # rule 2": what a quantized Conv writes is quantized too
        names |= {nodes[n].output[0] for n in placement.weighted if nodes[n].op_type == "Conv"}
    names |= {i for n in placement.attention for i in nodes[n].input[:2]}
    names |= {i for n in placement.residual_adds for i in nodes[n].input}
    return {n for n in names if n not in initializers}


def cpu_kernels() -> dict:
    """How onnxruntime's CPU integer kernels want this machine's graphs (its quantization docs: U8S8, and 7-bit
    weights where the CPU has no VNNI, whose u8s8 dot products saturate)."""
    facts = cpu()
    return {"cpu": facts["cpu"], "isa": facts["flags"], "vnni": facts["vnni"], "reduce_range": not facts["vnni"],
            "activations": "uint8 (asymmetric)", "weights": "int8 per output channel (symmetric)"}


def qdq_onnxruntime(src: Path, out: Path, placement: Placement, scheme: Scheme, ranges: Ranges, workdir: Path,
                    keep_fp32: tuple[str, ...], reduce_range: bool = False) -> None:
    """onnxruntime's QDQ quantizer from precomputed ranges: TensorRT INT8 (then the float rest to FP16), or the
    onnxruntime CPU scheme (the rest FP32)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import TensorData, TensorsData, save_tensors_data

    data = TensorsData(CalibrationMethod.MinMax, {
        name: TensorData(lowest=np.float32(low), highest=np.float32(high)) for name, (low, high) in ranges.items()})
    ranges_path = workdir / "ranges.json"
    save_tensors_data(data, ranges_path)
    qdq = workdir / "qdq.onnx"
    logging.getLogger().setLevel(logging.ERROR)
    for_cpu = scheme.target is QuantTarget.onnxruntime_cpu
    quantize_static(
        str(src), str(qdq), None, quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QUInt8 if for_cpu else QuantType.QInt8, weight_type=QuantType.QInt8,
        nodes_to_quantize=placement.nodes, calibrate_method=CalibrationMethod.MinMax,
        calibration_cache_path=str(ranges_path), reduce_range=reduce_range,
        extra_options={
            "ActivationSymmetric": scheme.symmetric_activations,  # TensorRT needs zero points of 0
            "WeightSymmetric": True,
            "QuantizeBias": False,  # float biases (TensorRT's epilogue; MatMulIntegerToFloat's bias Add)
            "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1},  # output channels of [K, N] weights
            # TensorRT rule 2: no output Q/DQ; CPU rule 2": a Conv's output is (QLinearConv), a MatMul's is not
            "OpTypesToExcludeOutputQuantization": ["MatMul", "Gemm"] if for_cpu else ["Conv", "MatMul", "Gemm", "Add"],
        },
    )
    model = onnx.load(str(qdq))
    enforce(model, placement, scheme)
    onnx.save(model if for_cpu else lower_float_part(model, keep_fp32), str(out))


def qdq_modelopt(src: Path, out: Path, placement: Placement, cache: Path, keep_fp32: tuple[str, ...],
                 fp8: bool = False) -> None:
    """ModelOpt's INT8 ONNX PTQ for the scheme's nodes, its scales taken from ``cache``, then for FP8 its
    ``int8_to_fp8`` (what its FP8 mode does; runs in a child process)."""
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
        nodes_to_quantize=placement.nodes, disable_mha_qdq=not placement.attention, enable_gemv_detection_for_trt=False,
        high_precision_dtype="fp16", op_types_to_exclude_fp16=list(keep_fp32), output_path=str(out), log_level="ERROR",
    )
    result = onnx.load(str(out))
    enforce(result, placement)
    if fp8:
        from modelopt.onnx.quantization.fp8 import int8_to_fp8

        result = int8_to_fp8(result)
    onnx.save(result, str(out))


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def calibration_method(job: QuantizeJob) -> CalibrationMethod:
    """The method asked for; FP8 defaults to max (E4M3's range keeps the largest values; ModelOpt's FP8 conversion
    is made for max-calibrated scales)."""
    if job.precision is Precision.fp8 and "method" not in job.calibration.given:
        return CalibrationMethod.max
    return job.calibration.method


def ranges_for(job: QuantizeJob, scheme: Scheme, source: onnx.ModelProto, needed: set[str], src: ArtifactRecord,
               workdir: Path, steps: Steps) -> Calibration:
    opts = job.calibration
    if opts.cache_hit:
        calibration = read_cache(opts.calib_cache, needed)  # refused unless complete for this graph
        made_by, asked = calibration.facts["method"], calibration_method(job)
        if "method" in opts.given and made_by not in (None, asked.value) and asked is not CalibrationMethod.auto:
            raise FvdeployError(f"--method {asked}: calibration cache {opts.calib_cache} holds {made_by} scales (its "
                                "header says so); an existing cache is always used, so calibrate into another "
                                "--calib-cache path (with --calib-dir), or leave out --method")
        steps.note(f"using {len(needed)} scales from calibration cache {opts.calib_cache} (calibration skipped" +
                   ("; a cache holds one method's scales, so --method auto has nothing to choose" if
                    opts.method is CalibrationMethod.auto else "") + ")")
        return calibration
    method = calibration_method(job)
    chosen = calibration_files(Path(opts.calib_dir), opts.calib_images)
    with steps.counted(f"calibrating on images from {opts.calib_dir} ({method.value}, streamed)", len(chosen[0]),
                       "images") as advance:
        return calibrate(source, workdir / "source.onnx", needed, Path(opts.calib_dir), chosen, src.model.resolution,
                         src.model.preprocessing, method, workdir, steps.note, symmetric=scheme.symmetric_activations,
                         advance=advance)


def write_qdq(job: QuantizeJob, scheme: Scheme, workdir: Path, tmp: Path, placement: Placement, ranges: Ranges,
              steps: Steps) -> QuantBackend:
    """The scheme's Q/DQ graph of the workdir's source copy, from these ranges and this placement, into ``tmp``."""
    backend = choose_backend(job.calibration, scheme)
    what = (f"{len(placement.weighted)} weighted ops" + (f", {len(placement.attention)} attention MatMuls"
                                                         if placement.attention else "")
            + (f", {len(placement.residual_adds)} residual adds" if scheme.residual_adds else ""))
    with steps(f"{scheme.precision.upper()} Q/DQ for {scheme.target} with {backend} ({what})"):
        if backend is QuantBackend.modelopt:
            cache = workdir / "scales.cache"
            cache.write_text(cache_text(symmetric_scales(ranges)))  # INT8 scales: FP8's follow as ModelOpt's do
            release_memory()  # the worker's peak adds to ours
            in_child_process(qdq_modelopt, workdir / "source.onnx", tmp, placement, cache, job.target.keep_fp32,
                             scheme.precision is Precision.fp8, what="ModelOpt", tmpdir=workdir)
        else:
            qdq_onnxruntime(workdir / "source.onnx", tmp, placement, scheme, ranges, workdir, job.target.keep_fp32,
                            reduce_range=scheme.target is QuantTarget.onnxruntime_cpu and cpu_kernels()["reduce_range"])
    return backend


def choose_method(job: QuantizeJob, scheme: Scheme, tmp: Path, placement: Placement, calibration: Calibration,
                  scorer: Scorer, steps: Steps) -> dict:
    """--method auto: each method's ranges in the graph, measured on held-out images; the best stays in ``tmp``.

    Symmetric schemes only change scale constants (the placement is the same); the CPU scheme's asymmetric
    zero points move too, so its graph is written again per method (onnxruntime's quantizer takes seconds)."""
    written = onnx.load(str(tmp))
    graphs = {}
    with steps(f"--method auto: {len(calibration.candidates)} methods on held-out images"):
        for method, ranges in calibration.candidates.items():
            if scheme.symmetric_activations:
                graphs[method] = with_scales(written, symmetric_scales(ranges, scheme.qmax))
            else:
                write_qdq(job, scheme, tmp.parent, tmp, placement, ranges, steps.quiet())
                graphs[method] = onnx.load(str(tmp))
        figures = {m: timed(lambda m=m: scorer.score(graphs[m])) for m in graphs}
    best = max(figures, key=lambda m: Scorer.goodness(figures[m]))
    onnx.save(graphs[best], str(tmp))
    calibration.ranges = calibration.candidates[best]
    for method, f in figures.items():
        steps.note(f"{method}: {describe(f)}{'  <- kept' if method == best else ''}")
    return {"chosen": best, "methods": figures}


def fallback(job: QuantizeJob, tmp: Path, fp32: onnx.ModelProto, placement: Placement, scorer: Scorer,
             steps: Steps) -> tuple[list[SiteGroup], dict]:
    """--fallback auto: the site groups to keep in the float part (none if the graph meets the target)."""
    quantized = onnx.load(str(tmp))
    full = timed(lambda: scorer.score(quantized))
    if full["meets"]:
        steps.note(f"--fallback auto: the quantized graph meets the target ({describe(full)})")
        return [], {"needed": False, "quantized": full}
    groups = placement.groups()
    greedy = min(len(groups), job.accuracy.max_fallback or len(groups))
    steps.note(f"--fallback auto: the quantized graph misses the target ({'; '.join(full['failures']) or describe(full)}); "
               f"{len(groups)} sensitivity trials, then at most {greedy} greedy ones, about "
               f"{full['seconds'] * (len(groups) + greedy):.0f} s (scales reused: no recalibration)")
    with steps.bar(unit="trials") as bar:
        task = bar.add_task("site sensitivity", total=len(groups))
        ranked = sensitivity(quantized, fp32, groups, scorer, lambda n: bar.update(task, completed=n))
        task = bar.add_task("greedy fallback", total=greedy)
        kept, tried = greedy_fallback(quantized, fp32, ranked, groups, scorer, lambda n: bar.update(task, completed=n),
                                      greedy)
        bar.update(task, total=len(tried))  # it stops once the target is met
    search = {"needed": True, "quantized": full, "sensitivity": ranked, "steps": tried, "kept": [g.op for g in kept]}
    if not tried[-1]["meets"]:
        best = max(tried, key=Scorer.goodness)
        raise CheckFailed(f"--fallback auto cannot meet the target: the best reached is {describe(best)} with "
                          f"{counted(len(best['kept']), 'group')} kept in {placement_float(job)} (tried {len(tried)}, most "
                          f"sensitive first: {', '.join(tried[-1]['kept'][:3])}{' ...' if len(tried) > 3 else ''})")
    steps.note(f"--fallback auto: {len(kept)} group(s) kept in {placement_float(job)} meet the target: "
               f"{', '.join(g.op for g in kept)}")
    return kept, search


def placement_float(job: QuantizeJob) -> str:
    return scheme_for(job.precision, job.target.target).float_part.upper()


def quantize_qdq(job: QuantizeJob, scheme: Scheme, tmp: Path, src: ArtifactRecord, scorer: Scorer,
                 steps: Steps) -> tuple[dict, tuple]:
    """Write the scheme's Q/DQ graph to ``tmp``; return the record's details and the ops kept out."""
    workdir = tmp.parent
    shutil.copyfile(job.source, workdir / "source.onnx")  # backends may write beside their input: never the user's
    source = onnx.load(str(workdir / "source.onnx"))  # the one load of the source graph here
    placement = plan_placement(source, scheme, job.calibration.exclude)
    if not placement.ops:
        raise FvdeployError("no node left to quantize (every candidate is excluded)")
    needed = activation_tensors(source, placement, scheme)
    calibration = ranges_for(job, scheme, source, needed, src, workdir, steps)
    start = time.perf_counter()
    backend = write_qdq(job, scheme, workdir, tmp, placement, calibration.ranges, steps)
    details = {"scheme": scheme.key, "backend": backend,
               "backend_version": _version("nvidia-modelopt" if backend is QuantBackend.modelopt else "onnxruntime"),
               "calibration": {"source": calibration.source, **calibration.facts,
                               "cache": str(job.calibration.calib_cache) if job.calibration.calib_cache else None,
                               "folder": str(job.calibration.calib_dir) if job.calibration.calib_dir else None}}
    if scheme.target is QuantTarget.onnxruntime_cpu:
        details["cpu_kernels"] = cpu_kernels()
    if calibration.candidates:
        details["calibration"].update(choose_method(job, scheme, tmp, placement, calibration, scorer, steps))
    if job.calibration.calib_cache is not None and not job.calibration.cache_hit:
        made_by = details["calibration"].get("chosen") or details["calibration"].get("method")
        write_text_atomic(Path(job.calibration.calib_cache), cache_text(calibration.scales, made_by))
    if job.accuracy.fallback is Fallback.auto:
        kept, details["fallback"] = fallback(job, tmp, source, placement, scorer, steps)
        if kept:  # the real graph with those groups excluded, from the same ranges
            placement = plan_placement(source, scheme,
                                       (*job.calibration.exclude, *(g.op for g in kept)))
            write_qdq(job, scheme, workdir, tmp, placement, calibration.ranges, steps)
    details["placement"] = {"ops": len(placement.ops), "weighted_ops": len(placement.weighted),
                            "attention_matmuls": len(placement.attention), "residual_adds": len(placement.residual_adds),
                            "excluded": list(placement.excluded), "exclude_patterns": list(job.calibration.exclude)}
    details["seconds"] = round(time.perf_counter() - start, 2)
    return details, placement.excluded


def quantize(job: QuantizeJob, steps: Steps) -> ArtifactRecord:
    source: RecordedArtifact = job.source_artifact or read_artifact(job.source, metadata.read_identity)
    src = source.record
    scheme = scheme_for(job.precision, job.target.target) if job.precision.quantized else None
    keep_fp32 = job.target.keep_fp32
    tolerance = TOLERANCES[job.precision].override(job.tolerance)
    with steps("the FP32 graph on real images"):
        images = batch_of(load_batch(src.model.resolution, src.model.preprocessing, job.images.images), EVAL_IMAGES)
        labelled = (LabelledBatch.read(job.accuracy.data, job.accuracy.labels_file,
                                  job.accuracy.limit_or(AccuracyTarget.DEFAULT_LIMIT), src.model, steps.note)
                    if job.accuracy.data is not None else None)
        with OnnxRuntimeRunner(job.source, src) as fp32:
            references = fp32.infer(images)
            if labelled is not None:
                labelled.fp32_top1 = Scorer.top1(fp32, labelled)
    if labelled is not None:
        steps.note(f"accuracy target: FP32 top-1 {labelled.fp32_top1:.2%} on {len(labelled.labels)} labelled images "
                   f"of {job.accuracy.data}; at most {job.accuracy.max_drop:g} points less")
    with atomic_output(job.output, job.overwrite) as tmp:
        details: dict = {}
        excluded: tuple[str, ...] = ()
        if scheme is None:
            with steps("converting to FP16 (ModelOpt AutoCast)"):
                onnx.save(convert_to_fp16(job.source, images, tmp.parent, keep_fp32), str(tmp))
        else:
            record_for_trials = src.derive(precision=job.precision, target=job.target.target)
            scorer = Scorer(record_for_trials, images, references, tolerance, tmp.parent, labelled, job.accuracy.max_drop)
            details[job.precision.value], excluded = quantize_qdq(job, scheme, tmp, src, scorer, steps)
        result = onnx.load(str(tmp), load_external_data=False)
        float_part = scheme.float_part if scheme is not None else "fp16"
        # fp32 beyond LayerNorm: the op types asked for, and in FP16 graphs AutoCast's overflow guard
        # (nodes whose reference values left fp16's safe range). Anything else fails the precision check.
        kept = [n for n, (op, kind) in compute_precisions(result).items()
                if float_part == "fp16" and kind == "fp32" and op not in FP32_OPS
                and (scheme is None or op in keep_fp32)]
        details["lowering"] = ({"converter": "modelopt-autocast", "version": _version("nvidia-modelopt"),
                                "kept_fp32_ops": list(keep_fp32), "kept_fp32_nodes": kept} if float_part == "fp16"
                               else {"converter": None, "float_part": "fp32"})
        if scheme is not None:
            details[job.precision.value]["qdq_pairs"] = sum(1 for n in result.graph.node if n.op_type == "QuantizeLinear")
        details["initializer_types"] = float_types(result)
        record = src.derive(precision=job.precision, target=job.target.target, command=job.argv(), source=source.ref,
                            fp32_nodes=tuple(kept), qdq_excluded=excluded, details=details)
        metadata.embed(result, record)  # backends drop the source's metadata
        onnx.save(result, str(tmp))
        parity = ParityJob(f"comparing {job.precision} with the FP32 graph on real images",
                           lambda path: OnnxRuntimeRunner(path, record), lambda _: references, [images], tolerance)
        return finish(tmp, record, steps, parity=parity,
                      check=lambda path: with_parser(inspect_model(onnx.load(str(path)), path, expect=job.precision), path))
