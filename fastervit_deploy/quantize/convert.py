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

from ..core.finish import finish
from ..core.options import DEFAULT_FP32_OPS, CalibrationOptions, QuantBackend
from ..core.parity import ParityJob
from ..core.precision import TOLERANCES, Precision
from ..core.record import ArtifactRecord, RecordedArtifact, read_artifact
from ..data.images import batch_of, load_batch
from ..graph.inspect import inspect_model
from ..graph.policy import Placement, compute_precisions, enforce, plan_placement
from ..onnx import metadata
from ..onnx.runner import OnnxRuntimeRunner
from ..system.errors import FvdeployError, MissingDependency
from ..system.files import atomic_output, write_text_atomic
from ..system.progress import Steps
from ..system.resources import release_memory
from ..system.workers import in_child_process
from .calibration import Calibration, cache_text, calibrate, read_cache
from .fp16 import convert_to_fp16, float_types, lower_float_part, quiet_modelopt
from .job import QuantizeJob

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


def scales_for(job: QuantizeJob, model: onnx.ModelProto, needed: set[str], src: ArtifactRecord, workdir: Path,
               steps: Steps) -> Calibration:
    opts = job.calibration
    if opts.cache_hit:
        calibration = read_cache(opts.calib_cache, needed)  # refused unless complete for this graph
        steps.note(f"using {len(needed)} scales from calibration cache {opts.calib_cache} (calibration skipped)")
        return calibration
    with steps(f"calibrating on images from {opts.calib_dir} ({opts.method.value}, streamed)"):
        calibration = calibrate(workdir / "source.onnx", needed, Path(opts.calib_dir), opts.calib_images,
                                src.model.resolution, src.model.preprocessing, opts.method, workdir, steps.note)
    if opts.calib_cache is not None:
        write_text_atomic(Path(opts.calib_cache), cache_text(calibration.scales))
    return calibration


def quantize_int8(job: QuantizeJob, tmp: Path, src: ArtifactRecord, steps: Steps) -> dict:
    """Write the INT8 Q/DQ graph to ``tmp``; return the record's ``int8`` details."""
    workdir = tmp.parent
    shutil.copyfile(job.source, workdir / "source.onnx")  # backends may write beside their input: never the user's
    model = onnx.load(str(workdir / "source.onnx"))
    placement = plan_placement(model, job.calibration.exclude)
    if not placement.int8_ops:
        raise FvdeployError("no node left to quantize (every weighted op is excluded)")
    needed = activation_tensors(model, placement)
    calibration = scales_for(job, model, needed, src, workdir, steps)
    backend = choose_backend(job.calibration)
    start = time.perf_counter()
    with steps(f"INT8 Q/DQ with {backend} ({len(placement.int8_ops)} weighted ops, "
               f"{len(placement.residual_adds)} residual adds)"):
        if backend == "modelopt":
            cache = workdir / "scales.cache"
            cache.write_text(cache_text(calibration.scales))
            del model
            release_memory()  # the worker's peak adds to ours
            in_child_process(int8_modelopt, workdir / "source.onnx", tmp, placement, cache, job.lowering.keep_fp32,
                             what="ModelOpt", tmpdir=workdir)
        else:
            int8_onnxruntime(workdir / "source.onnx", tmp, placement, calibration.scales, workdir,
                             job.lowering.keep_fp32)
    return {"backend": backend, "backend_version": _version("nvidia-modelopt" if backend == "modelopt" else "onnxruntime"),
            "calibration": {"source": calibration.source, **calibration.facts,
                            "cache": str(job.calibration.calib_cache) if job.calibration.calib_cache else None,
                            "folder": str(job.calibration.calib_dir) if job.calibration.calib_dir else None},
            "placement": {"int8_ops": len(placement.int8_ops), "residual_adds": len(placement.residual_adds),
                          "excluded": list(placement.excluded), "exclude_patterns": list(job.calibration.exclude)},
            "seconds": round(time.perf_counter() - start, 2)}


def quantize(job: QuantizeJob, steps: Steps) -> ArtifactRecord:
    source: RecordedArtifact = job.source_artifact or read_artifact(job.source, metadata.read_identity)
    src = source.record
    keep_fp32 = job.lowering.keep_fp32
    with steps("the FP32 graph on real images"):
        images = batch_of(load_batch(src.model.resolution, src.model.preprocessing, job.images.images), EVAL_IMAGES)
        with OnnxRuntimeRunner(job.source, src) as fp32:
            references = fp32.infer(images)
    with atomic_output(job.output, job.overwrite) as tmp:
        details: dict = {}
        if job.precision is Precision.fp16:
            with steps("converting to FP16 (ModelOpt AutoCast)"):
                onnx.save(convert_to_fp16(job.source, images, tmp.parent, keep_fp32), str(tmp))
        else:
            details["int8"] = quantize_int8(job, tmp, src, steps)
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
                            details=details)
        metadata.embed(result, record)  # backends drop the source's metadata
        onnx.save(result, str(tmp))
        parity = ParityJob(f"comparing {job.precision} with the FP32 graph on real images",
                           lambda path: OnnxRuntimeRunner(path, record), lambda _: references, [images],
                           TOLERANCES[job.precision].override(job.tolerance))
        return finish(tmp, record, steps, parity=parity,
                      check=lambda path: inspect_model(onnx.load(str(path)), path, expect=job.precision))
