"""`fvdeploy quantize`: precision decided in the ONNX graph (TensorRT 11 has no precision flags).

FP16: our converter (fp16.py). INT8: explicit Q/DQ, symmetric int8, per-channel weights, placed
where TensorRT fuses, the rest in FP16. NVIDIA ModelOpt's ONNX PTQ is used where it is installed;
onnxruntime's ``quantize_static`` (QDQ) is the fallback. Scales can be cached so a rebuild skips
calibration.
"""

from __future__ import annotations

import fnmatch
import importlib.metadata
import importlib.util
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from .errors import FvdeployError, MissingDependency
from .files import atomic_output
from .fp16 import convert_to_fp16, float_types
from .graph_check import Graph, inspect_model
from .images import batch_of, list_images, load_batch, open_image, preprocess
from .pipeline import ParityJob, finish
from .progress import Steps
from .record import ArtifactRecord, FileRef, embed_in_onnx, read_record
from .runners import OnnxRuntimeRunner
from .options import DEFAULT_FP32_OPS, CalibrationMethod, CalibrationOptions, QuantBackend, Tolerance
from .verify import TOLERANCES

WEIGHTED_OPS = ("Conv", "MatMul", "Gemm")
EVAL_IMAGES = 8  # images the parity figures against the FP32 graph use


@dataclass(frozen=True)
class QuantizeJob:
    source: Path  # the FP32 ONNX (written by an earlier stage of the same plan, or given)
    precision: str  # "fp16" | "int8"
    output: Path
    calibration: CalibrationOptions = field(default_factory=CalibrationOptions)
    tolerance: Tolerance = field(default_factory=Tolerance)  # overrides of the per-precision defaults
    keep_fp32: tuple[str, ...] = DEFAULT_FP32_OPS
    images: Path | None = None  # images for the parity figures (default: scikit-image photos)
    overwrite: bool = False

    def argv(self) -> tuple[str, ...]:
        args = ["quantize", str(self.source), f"--{self.precision}"]
        if self.precision == "int8":
            args += self.calibration.argv()
        for op in self.keep_fp32 if tuple(self.keep_fp32) != DEFAULT_FP32_OPS else ():
            args += ["--keep-fp32", op]
        args += self.tolerance.argv()
        if self.images is not None:
            args += ["--images", str(self.images)]
        return (*args, "--output", str(self.output))

    def run(self, steps: Steps) -> ArtifactRecord:
        return quantize(self, steps)


def modelopt_available() -> bool:
    return importlib.util.find_spec("modelopt") is not None and importlib.util.find_spec("onnx_graphsurgeon") is not None


def choose_backend(opts: CalibrationOptions) -> str:
    if opts.backend is QuantBackend.modelopt and not modelopt_available():
        raise MissingDependency("--backend modelopt needs nvidia-modelopt and onnx_graphsurgeon (see README)")
    if opts.backend is not QuantBackend.auto:
        if opts.backend is QuantBackend.modelopt and opts.method is CalibrationMethod.percentile:
            raise FvdeployError("ModelOpt calibrates with entropy or max; use --backend onnxruntime for percentile")
        return opts.backend.value
    return "modelopt" if modelopt_available() and opts.method is not CalibrationMethod.percentile else "onnxruntime"


def calibration_data(folder: Path, count: int, size: tuple[int, int], record: ArtifactRecord, steps: Steps) -> np.ndarray:
    files = list_images(folder, count)
    if len(files) < min(count, 500):
        steps.note(f"calibrating on {len(files)} images (NVIDIA recommends 500 or more)")
    return np.stack([preprocess(open_image(p), size, record.model.preprocessing) for p in files])


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, pat) for pat in patterns)


def quantizable_nodes(graph: onnx.ModelProto, exclude: tuple[str, ...]) -> list[str]:
    """Conv/MatMul/Gemm and residual Adds (both inputs activations), minus excluded names."""
    g = Graph(graph)
    return [n.name for n in g.nodes
            if (n.op_type in WEIGHTED_OPS or n.op_type == "Add" and all(not g.is_constant(i) for i in n.input))
            and not _matches(n.name, exclude)]


def excluded_nodes(graph: onnx.ModelProto, exclude: tuple[str, ...]) -> list[str]:
    return [n.name for n in graph.graph.node if _matches(n.name, exclude)]


class _Reader:
    """onnxruntime CalibrationDataReader over an in-memory array, in small batches."""

    def __init__(self, input_name: str, data: np.ndarray, batch: int = 8) -> None:
        self.input_name, self.data, self.batch = input_name, data, batch
        self.rewind()

    def get_next(self):
        if self.pos >= len(self.data):
            return None
        chunk = self.data[self.pos : self.pos + self.batch]
        self.pos += self.batch
        return {self.input_name: chunk}

    def rewind(self) -> None:
        self.pos = 0

    def __len__(self) -> int:
        return len(self.data)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.pos = start_index


def int8_onnxruntime(src: Path, out: Path, data: np.ndarray | None, opts: CalibrationOptions,
                     keep_fp32: tuple[str, ...]) -> None:
    from onnxruntime.quantization import CalibrationMethod as OrtMethod
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    graph = onnx.load(str(src))
    method = {"entropy": OrtMethod.Entropy, "max": OrtMethod.MinMax, "percentile": OrtMethod.Percentile}[opts.method.value]
    reader = _Reader(graph.graph.input[0].name, data) if data is not None else None
    qdq = out.with_name(out.name + ".qdq.onnx")
    logging.getLogger().setLevel(logging.ERROR)
    quantize_static(
        str(src), str(qdq), reader, quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
        nodes_to_quantize=quantizable_nodes(graph, opts.exclude), calibrate_method=method,
        calibration_cache_path=str(opts.cache) if opts.cache else None,
        extra_options={
            "ActivationSymmetric": True, "WeightSymmetric": True,  # TensorRT needs zero points of 0
            "QuantizeBias": False,  # TensorRT wants float biases
            "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1},  # output channels of [K, N] weights
            # TensorRT: quantize inputs, never the outputs of weighted ops or residual Adds.
            "OpTypesToExcludeOutputQuantization": [*WEIGHTED_OPS, "Add"],
        },
    )
    # Everything left in float runs in FP16, as ModelOpt does.
    onnx.save(convert_to_fp16(onnx.load(str(qdq)), keep_fp32=keep_fp32), str(out))
    qdq.unlink()


def int8_modelopt(src: Path, out: Path, data: np.ndarray | None, opts: CalibrationOptions) -> None:
    from modelopt.onnx.quantization import quantize as mo_quantize

    source = onnx.load(str(src), load_external_data=False)
    if data is None:  # cache hit: ModelOpt still wants one sample to shape its calibration session
        dims = [d.dim_value or 1 for d in source.graph.input[0].type.tensor_type.shape.dim]
        data = np.zeros(dims, np.float32)
    cache = Path(opts.cache) if opts.cache else None
    mo_quantize(
        str(src), quantize_mode="int8", calibration_data={source.graph.input[0].name: data},
        calibration_method=opts.method.value, calibration_cache_path=str(cache) if cache and cache.is_file() else None,
        calibration_eps=["cpu"], nodes_to_exclude=excluded_nodes(source, opts.exclude) or None,
        high_precision_dtype="fp16", output_path=str(out), log_level="ERROR",
    )
    if cache is not None and not cache.is_file():
        write_trt_calibration_cache(onnx.load(str(out)), cache)


def write_trt_calibration_cache(model: onnx.ModelProto, path: Path) -> int:
    """Activation scales of a Q/DQ graph as a TensorRT calibration cache (the format ModelOpt reads back)."""
    import struct

    g = Graph(model)
    lines = []
    for node in model.graph.node:
        scale = node.input[1] if node.op_type == "QuantizeLinear" else ""
        # onnxruntime names a scale "<tensor>_scale"; ModelOpt's fp16 pass may add a "_<n>" suffix.
        match = re.fullmatch(r"(.+)_scale(?:_\d+)?", scale)
        if match and scale in g.initializers and not g.is_constant(node.input[0]):
            value = float(onnx.numpy_helper.to_array(g.initializers[scale]).reshape(-1)[0])
            lines.append(f"{match.group(1)}: {struct.pack('!f', value).hex()}")
    path.write_text("TRT-10000-EntropyCalibration2\n" + "\n".join(sorted(set(lines))) + "\n")
    return len(lines)


def in_child_process(fn, *args):
    """Run ``fn`` in a fresh interpreter: ModelOpt rewrites onnxruntime.quantization's global registries
    on import and use, which would change every later onnxruntime quantization in this process."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def quantize(job: QuantizeJob, steps: Steps) -> ArtifactRecord:
    src = read_record(job.source)
    size = src.model.resolution
    details: dict = {}
    with atomic_output(job.output, job.overwrite) as tmp:
        if job.precision == "fp16":
            with steps("converting to FP16"):
                onnx.save(convert_to_fp16(onnx.load(str(job.source)), keep_fp32=job.keep_fp32), str(tmp))
            details["fp16"] = {"kept_fp32_ops": list(job.keep_fp32), "converter": "fvdeploy"}
        else:
            opts = job.calibration
            backend = choose_backend(opts)
            data = None
            if opts.cache_hit:
                steps.note(f"using calibration cache {opts.cache} (calibration skipped)")
            else:
                with steps(f"loading calibration images from {opts.folder}"):
                    data = calibration_data(Path(opts.folder), opts.images, size, src, steps)
            start = time.perf_counter()
            with steps(f"INT8 Q/DQ with {backend} ({opts.method.value} calibration)"):
                if backend == "modelopt":
                    in_child_process(int8_modelopt, job.source, tmp, data, opts)
                else:
                    int8_onnxruntime(job.source, tmp, data, opts, job.keep_fp32)
            details["int8"] = {
                "backend": backend, "backend_version": _version("nvidia-modelopt" if backend == "modelopt" else "onnxruntime"),
                "method": opts.method.value, "calibration_images": 0 if data is None else len(data),
                "calibration_dir": str(opts.folder) if opts.folder else None,
                "calibration_cache": str(opts.cache) if opts.cache else None,
                "cache_hit": opts.cache_hit, "excluded": list(opts.exclude),
                "seconds": round(time.perf_counter() - start, 2),
            }
        result = onnx.load(str(tmp), load_external_data=False)
        if "int8" in details:
            details["int8"]["qdq_pairs"] = sum(1 for n in result.graph.node if n.op_type == "QuantizeLinear")
        details["initializer_types"] = float_types(result)
        record = src.replace(precision=job.precision, command=job.argv(), source=FileRef.of(job.source),
                             details=details, checks=None, parity=None, notes=(), files={}, tools={}, created="")
        embed_in_onnx(result, record)  # backends drop the source's metadata
        onnx.save(result, str(tmp))
        with steps("the FP32 graph on real images"):
            images = batch_of(load_batch(size, src.model.preprocessing, job.images), EVAL_IMAGES)
        kinds = {o.name: o.kind for o in src.outputs}
        fp32 = OnnxRuntimeRunner(job.source, kinds=kinds)
        with fp32:
            references = fp32.infer(images)
        parity = ParityJob(f"comparing {job.precision} with the FP32 graph on real images",
                           lambda path: OnnxRuntimeRunner(path, kinds=kinds, batch_range=src.batch_range),
                           lambda _: references, [images], TOLERANCES[job.precision].override(job.tolerance))
        return finish(tmp, record, steps, check=lambda path: inspect_model(onnx.load(str(path)), path), parity=parity)
