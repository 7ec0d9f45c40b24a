"""`fvdeploy quantize`: precision decided in the ONNX graph (TensorRT 11 has no precision flags).

FP16: our converter (fp16.py). INT8: explicit Q/DQ, symmetric int8, per-channel weights, placed
where TensorRT fuses (inputs of Conv/MatMul/Gemm and residual Adds; never Softmax/LayerNorm), the
rest in FP16. NVIDIA ModelOpt's ONNX PTQ is used where it is installed; onnxruntime's
``quantize_static`` (QDQ) is the fallback. Scales can be cached so a rebuild skips calibration.
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

from .artifacts import atomic_output, check_output_path, sha256, write_sidecar
from .errors import CheckFailed, FvdeployError, MissingDependency
from .fp16 import DEFAULT_FP32_OPS, convert_to_fp16, float_types
from .graph_check import Graph, inspect_model
from .images import batch_of, list_images, load_batch, open_image, preprocess
from .onnx_metadata import read_metadata, write_metadata
from .progress import Steps
from .runners import OnnxRuntimeRunner
from .verify import TOLERANCES, describe, read_sidecar, run_parity

METHODS = ("entropy", "max", "percentile")
BACKENDS = ("auto", "modelopt", "onnxruntime")
WEIGHTED_OPS = ("Conv", "MatMul", "Gemm")


@dataclass
class QuantizeOptions:
    precision: str  # "fp16" | "int8"
    calib_dir: Path | None = None
    calib_images: int = 512
    method: str = "entropy"
    calib_cache: Path | None = None
    exclude: list[str] = field(default_factory=list)  # fnmatch patterns over node names
    backend: str = "auto"
    keep_fp32: tuple[str, ...] = DEFAULT_FP32_OPS
    eval_dir: Path | None = None  # images for the parity figures (default: scikit-image photos)

    def validate(self) -> None:
        if self.precision not in ("fp16", "int8"):
            raise FvdeployError("choose --fp16 or --int8")
        if self.precision == "int8":
            if self.method not in METHODS:
                raise FvdeployError(f"--method must be one of {', '.join(METHODS)}")
            if self.backend not in BACKENDS:
                raise FvdeployError(f"--backend must be one of {', '.join(BACKENDS)}")
            if self.calib_images < 1:
                raise FvdeployError("--calib-images must be at least 1")
            cached = self.calib_cache is not None and Path(self.calib_cache).is_file()
            if self.calib_dir is None and not cached:
                raise FvdeployError("--int8 needs --calib-dir (a folder of real images) or an existing --calib-cache")


def modelopt_available() -> bool:
    return importlib.util.find_spec("modelopt") is not None and importlib.util.find_spec("onnx_graphsurgeon") is not None


def choose_backend(opts: QuantizeOptions) -> str:
    if opts.backend == "modelopt" and not modelopt_available():
        raise MissingDependency("--backend modelopt needs nvidia-modelopt and onnx_graphsurgeon (see README)")
    if opts.backend != "auto":
        if opts.backend == "modelopt" and opts.method == "percentile":
            raise FvdeployError("ModelOpt calibrates with entropy or max; use --backend onnxruntime for percentile")
        return opts.backend
    return "modelopt" if modelopt_available() and opts.method != "percentile" else "onnxruntime"


def preprocessing_of(onnx_path: Path, graph: onnx.ModelProto) -> tuple[dict, tuple[int, int], dict]:
    """The eval preprocessing and input size the graph expects (from its sidecar or metadata)."""
    side = read_sidecar(onnx_path)
    dims = graph.graph.input[0].type.tensor_type.shape.dim
    size = (dims[2].dim_value, dims[3].dim_value)
    if side.get("preprocessing"):
        return side["preprocessing"], size, side
    meta = read_metadata(graph)
    if "fvdeploy.mean" in meta:
        from fastervit import get_entry

        pre = get_entry(meta["fvdeploy.model"]).pretrained.to_dict()
        pre.update(mean=[float(v) for v in meta["fvdeploy.mean"].split(",")],
                   std=[float(v) for v in meta["fvdeploy.std"].split(",")])
        return pre, size, side
    raise FvdeployError(f"{onnx_path.name} has no fvdeploy sidecar or metadata: export it with `fvdeploy export-onnx`")


def calibration_data(folder: Path, count: int, size: tuple[int, int], pre: dict, steps: Steps) -> np.ndarray:
    files = list_images(folder, count)
    if len(files) < min(count, 500):
        steps.note(f"calibrating on {len(files)} images (NVIDIA recommends 500 or more)")
    return np.stack([preprocess(open_image(p), size, pre) for p in files])


def _matches(name: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pat) for pat in patterns)


def quantizable_nodes(graph: onnx.ModelProto, exclude: list[str]) -> list[str]:
    """Conv/MatMul/Gemm and residual Adds (both inputs activations), minus excluded names."""
    g = Graph(graph)
    return [n.name for n in g.nodes
            if (n.op_type in WEIGHTED_OPS or n.op_type == "Add" and all(not g.is_constant(i) for i in n.input))
            and not _matches(n.name, exclude)]


def excluded_nodes(graph: onnx.ModelProto, exclude: list[str]) -> list[str]:
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


def int8_onnxruntime(src: Path, out: Path, data: np.ndarray | None, opts: QuantizeOptions) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    graph = onnx.load(str(src))
    method = {"entropy": CalibrationMethod.Entropy, "max": CalibrationMethod.MinMax,
              "percentile": CalibrationMethod.Percentile}[opts.method]
    reader = _Reader(graph.graph.input[0].name, data) if data is not None else None
    qdq = out.with_name(out.name + ".qdq.onnx")
    logging.getLogger().setLevel(logging.ERROR)
    quantize_static(
        str(src), str(qdq), reader, quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
        nodes_to_quantize=quantizable_nodes(graph, opts.exclude), calibrate_method=method,
        calibration_cache_path=str(opts.calib_cache) if opts.calib_cache else None,
        extra_options={
            "ActivationSymmetric": True, "WeightSymmetric": True,  # TensorRT needs zero points of 0
            "QuantizeBias": False,  # TensorRT wants float biases
            "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1},  # output channels of [K, N] weights
            # TensorRT: quantize inputs, never the outputs of weighted ops or residual Adds.
            "OpTypesToExcludeOutputQuantization": [*WEIGHTED_OPS, "Add"],
        },
    )
    # Everything left in float runs in FP16, as ModelOpt does.
    onnx.save(convert_to_fp16(onnx.load(str(qdq)), keep_fp32=opts.keep_fp32), str(out))
    qdq.unlink()


def int8_modelopt(src: Path, out: Path, data: np.ndarray | None, opts: QuantizeOptions) -> None:
    from modelopt.onnx.quantization import quantize as mo_quantize

    source = onnx.load(str(src), load_external_data=False)
    if data is None:  # cache hit: ModelOpt still wants one sample to shape its calibration session
        dims = [d.dim_value or 1 for d in source.graph.input[0].type.tensor_type.shape.dim]
        data = np.zeros(dims, np.float32)
    cache = Path(opts.calib_cache) if opts.calib_cache else None
    mo_quantize(
        str(src), quantize_mode="int8", calibration_data={source.graph.input[0].name: data},
        calibration_method=opts.method, calibration_cache_path=str(cache) if cache and cache.is_file() else None,
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


def quantize(onnx_path: Path, output: Path | None, opts: QuantizeOptions, steps: Steps, overwrite: bool = False) -> dict:
    opts.validate()
    if not Path(onnx_path).is_file():
        raise FvdeployError(f"ONNX file not found: {onnx_path}")
    graph = onnx.load(str(onnx_path), load_external_data=False)
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in graph.graph.initializer):
        raise FvdeployError(f"{onnx_path.name} keeps its weights in external data (> 2 GB): quantize handles "
                            "models below 2 GB; build FP32 engines from it, or quantize with ModelOpt's CLI")
    pre, size, source_side = preprocessing_of(onnx_path, graph)
    output = Path(output or onnx_path.with_name(f"{onnx_path.stem}_{opts.precision}.onnx"))
    if output.resolve() == Path(onnx_path).resolve():
        raise FvdeployError("output would overwrite the input ONNX")
    check_output_path(output, overwrite, ".onnx")
    record: dict = {k: v for k, v in source_side.items() if k in ("model", "resolution", "window_size", "ct_size",
                                                                  "num_classes", "checkpoint", "weights", "preprocessing",
                                                                  "batch_range", "input", "output")}
    record.update(format="onnx", precision=opts.precision, source=str(onnx_path), source_sha256=sha256(onnx_path))

    with atomic_output(output, companions=(".json",)) as tmp:
        if opts.precision == "fp16":
            with steps("converting to FP16"):
                onnx.save(convert_to_fp16(onnx.load(str(onnx_path)), keep_fp32=opts.keep_fp32), str(tmp))
            record["fp16"] = {"kept_fp32_ops": list(opts.keep_fp32), "converter": "fvdeploy"}
        else:
            backend = choose_backend(opts)
            cache_hit = opts.calib_cache is not None and Path(opts.calib_cache).is_file()
            data = None
            if cache_hit:
                steps.note(f"using calibration cache {opts.calib_cache} (calibration skipped)")
            else:
                with steps(f"loading calibration images from {opts.calib_dir}"):
                    data = calibration_data(Path(opts.calib_dir), opts.calib_images, size, pre, steps)
            start = time.perf_counter()
            with steps(f"INT8 Q/DQ with {backend} ({opts.method} calibration)"):
                if backend == "modelopt":
                    in_child_process(int8_modelopt, Path(onnx_path), tmp, data, opts)
                else:
                    int8_onnxruntime(Path(onnx_path), tmp, data, opts)
            record["int8"] = {
                "backend": backend, "backend_version": _version("nvidia-modelopt" if backend == "modelopt" else "onnxruntime"),
                "method": opts.method, "calibration_images": 0 if data is None else len(data),
                "calibration_dir": str(opts.calib_dir) if opts.calib_dir else None,
                "calibration_cache": str(opts.calib_cache) if opts.calib_cache else None,
                "calibration_cache_sha256": sha256(opts.calib_cache) if opts.calib_cache and Path(opts.calib_cache).is_file() else None,
                "cache_hit": cache_hit, "excluded": opts.exclude,
                "seconds": round(time.perf_counter() - start, 2),
            }
        result = onnx.load(str(tmp), load_external_data=False)
        if "int8" in record:
            record["int8"]["qdq_pairs"] = sum(1 for n in result.graph.node if n.op_type == "QuantizeLinear")
        # Backends may drop the source's metadata: carry it over and record the new precision.
        write_metadata(result, {**read_metadata(graph), **read_metadata(result), "fvdeploy.precision": opts.precision})
        onnx.save(result, str(tmp))
        record["initializer_types"] = float_types(result)
        with steps("checking graph"):
            report = inspect_model(result, output)
        if not report.passed:
            raise CheckFailed(f"graph check failed: {report.failure_summary()}")
        with steps(f"comparing {opts.precision} with the FP32 graph on real images"):
            images = batch_of(load_batch(size, pre, opts.eval_dir), 8)
            with OnnxRuntimeRunner(onnx_path) as ref, OnnxRuntimeRunner(tmp) as cand:
                parity = run_parity(ref.infer, cand, [images], TOLERANCES[opts.precision])
        steps.note(describe(parity["overall"]))
        record.update(graph=report.to_dict(), parity_vs_fp32=parity, timings_s=steps.timings)
        if not parity["passed"]:
            raise CheckFailed(f"{opts.precision} parity check failed: " + "; ".join(parity["failures"]))
        write_sidecar(tmp, record)
    return {"output": output, "record": record}
