"""`fvdeploy build-trt`: ONNX (exported and quantized as needed) → serialized TensorRT engine.

Written for TensorRT 10 and 11 alike: networks are strongly typed (the flag is required in 10 and
ignored in 11), so precision comes from the ONNX graph (`fvdeploy quantize`), never from builder
flags, which TensorRT 11 removed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import onnx
from rich.console import Console

from .artifacts import atomic_output, check_output_path, sha256, write_sidecar
from .errors import FvdeployError
from .onnx_metadata import onnx_precision
from .progress import Steps, progress_bar
from .trt_support import Profile, gpu_description, import_tensorrt, tensorrt_major, trtexec_command
from .verify import read_sidecar

if TYPE_CHECKING:
    from .model_options import ModelSpec
    from .quantize import QuantizeOptions


@dataclass
class BuildOptions:
    min_batch: int = 1
    opt_batch: int = 8
    max_batch: int = 64
    timing_cache: Path | None = None
    workspace_gib: float | None = None
    opt_level: int | None = None
    version_compatible: bool = False

    def validate(self) -> None:
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise FvdeployError(f"need 1 <= --min-batch <= --opt-batch <= --max-batch, got "
                                f"{self.min_batch}, {self.opt_batch}, {self.max_batch}")
        if self.opt_level is not None and not 0 <= self.opt_level <= 5:
            raise FvdeployError("--opt-level must be 0..5")
        if self.workspace_gib is not None and self.workspace_gib <= 0:
            raise FvdeployError("--workspace must be positive (GiB)")


def onnx_profile(onnx_path: Path, opts: BuildOptions) -> Profile:
    model = onnx.load(str(onnx_path), load_external_data=False)
    inp = model.graph.input[0]
    dims = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    if len(dims) != 4 or not all(dims[1:]):
        raise FvdeployError(f"{onnx_path.name}: expected an NCHW input with fixed C/H/W, got {dims}")
    return Profile(inp.name, tuple(dims[1:]), opts.min_batch, opts.opt_batch, opts.max_batch)  # type: ignore[arg-type]


def _progress_monitor(trt, console: Console):
    """A trt.IProgressMonitor that drives a rich progress bar (one row per build phase)."""

    class Monitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self.bar = progress_bar(console)
            self.tasks: dict[str, int] = {}
            self.depth: dict[str, int] = {}

        def phase_start(self, phase_name, parent_phase, num_steps):
            self.depth[phase_name] = self.depth.get(parent_phase, -1) + 1 if parent_phase else 0
            if not self.tasks:
                self.bar.start()
            self.tasks[phase_name] = self.bar.add_task("  " * self.depth[phase_name] + phase_name, total=max(num_steps, 1))

        def step_complete(self, phase_name, step):
            if phase_name in self.tasks:
                self.bar.update(self.tasks[phase_name], completed=step + 1)
            return True  # keep building

        def phase_finish(self, phase_name):
            task = self.tasks.pop(phase_name, None)
            if task is not None:
                self.bar.remove_task(task)
            if not self.tasks:
                self.bar.stop()

    return Monitor()


def parse_onnx(trt, network, logger, onnx_path: Path) -> None:
    parser = trt.OnnxParser(network, logger)
    if parser.parse_from_file(str(onnx_path)):  # reads external data next to the file as well
        return
    errors = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        node = err.node_name() if hasattr(err, "node_name") else f"node #{err.node()}"
        op = err.node_operator() if hasattr(err, "node_operator") else ""
        errors.append(f"{node or '?'}{f' ({op})' if op else ''}: {err.desc()}")
    raise FvdeployError(f"TensorRT's ONNX parser rejected {onnx_path.name}: " + "; ".join(errors[:3]))


def build_engine(onnx_path: Path, output: Path, opts: BuildOptions, steps: Steps, console: Console,
                 overwrite: bool = False) -> dict:
    opts.validate()
    if not onnx_path.is_file():
        raise FvdeployError(f"ONNX file not found: {onnx_path}")
    check_output_path(output, overwrite)
    profile = onnx_profile(onnx_path, opts)
    trt = import_tensorrt(missing_tensorrt_hint([], onnx_path, output, profile, opts))
    major = tensorrt_major(trt)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if major == 10:  # accepted and ignored by 11, where every network is strongly typed
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    with steps("parsing ONNX"):
        parse_onnx(trt, network, logger, onnx_path)
    config = builder.create_builder_config()
    if opts.workspace_gib:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(opts.workspace_gib * 2**30))
    if opts.opt_level is not None:
        config.builder_optimization_level = opts.opt_level
    if opts.version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    trt_profile = builder.create_optimization_profile()
    trt_profile.set_shape(profile.input_name, profile.shape(profile.min_batch), profile.shape(profile.opt_batch),
                          profile.shape(profile.max_batch))
    config.add_optimization_profile(trt_profile)
    cache_bytes = opts.timing_cache.read_bytes() if opts.timing_cache and opts.timing_cache.is_file() else b""
    config.set_timing_cache(config.create_timing_cache(cache_bytes), False)  # ignore_mismatch=False
    monitor = _progress_monitor(trt, console)
    config.progress_monitor = monitor
    with steps(f"building TensorRT {trt.__version__} engine"):
        plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise FvdeployError("TensorRT could not build the engine (see the TensorRT messages above)")
    if opts.timing_cache:
        with atomic_output(opts.timing_cache) as tmp_cache:
            tmp_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    source = read_sidecar(onnx_path)
    record = {
        **{k: source[k] for k in ("model", "resolution", "window_size", "ct_size", "num_classes", "checkpoint",
                                  "weights", "preprocessing") if k in source},
        "format": "tensorrt", "precision": onnx_precision(onnx_path), "onnx": str(onnx_path),
        "onnx_sha256": sha256(onnx_path), "tensorrt": trt.__version__, "gpu": gpu_description(),
        "profile": {"input": profile.input_name, "min": list(profile.shape(profile.min_batch)),
                    "opt": list(profile.shape(profile.opt_batch)), "max": list(profile.shape(profile.max_batch))},
        "batch_range": [profile.min_batch, profile.max_batch], "builder_optimization_level": opts.opt_level,
        "version_compatible": opts.version_compatible, "timing_cache": str(opts.timing_cache) if opts.timing_cache else None,
        "timings_s": steps.timings,
    }
    with atomic_output(output, companions=(".json",)) as tmp:
        tmp.write_bytes(bytes(plan))
        write_sidecar(tmp, record)
    return {"output": output, "record": record}


@dataclass
class TrtRequest:
    """What `build-trt` was asked for: a source (an ONNX or a model to export) and the precision."""

    onnx: Path | None
    spec: "ModelSpec | None"
    build: BuildOptions
    quant: "QuantizeOptions | None" = None  # None: FP32 (or whatever precision the ONNX already has)
    output: Path | None = None
    overwrite: bool = False

    @property
    def precision(self) -> str:
        return self.quant.precision if self.quant else "fp32"


def _plan_paths(req: TrtRequest) -> tuple[Path, Path, Path, Profile]:
    """(FP32 ONNX to start from, precision-ready ONNX to parse, engine path, profile)."""
    o = req.build
    if req.onnx is not None:
        if not req.onnx.is_file():
            raise FvdeployError(f"ONNX file not found: {req.onnx}")
        have = onnx_precision(req.onnx)
        if have != "fp32" and req.precision not in ("fp32", have):
            raise FvdeployError(f"{req.onnx.name} is already {have}; start from the FP32 ONNX for {req.precision}")
        source, profile = req.onnx, onnx_profile(req.onnx, o)
        ready = req.precision == "fp32" or have == req.precision
    else:
        from fastervit import model_config

        H, W = req.spec.resolution or model_config(req.spec.name).resolution
        source = req.output.with_suffix(".onnx") if req.output else Path(f"{req.spec.name}_{H}x{W}.onnx")
        profile = Profile("input", (3, H, W), o.min_batch, o.opt_batch, o.max_batch)
        ready = req.precision == "fp32"
    final = source if ready else source.with_name(f"{source.stem}_{req.precision}.onnx")
    return source, final, req.output or final.with_suffix(".plan"), profile


def build_trt(req: TrtRequest, steps: Steps, console: Console) -> dict:
    """Export and quantize as needed, then build; fails first (writing nothing) where TensorRT is absent."""
    from .onnx_export import ExportOptions, export_onnx
    from .quantize import quantize

    req.build.validate()
    if req.quant:
        req.quant.validate()
    source, final, plan, profile = _plan_paths(req)
    check_output_path(plan, req.overwrite)  # before any slow step
    needed = [f"`fvdeploy export-onnx --model {req.spec.name} -o {source}`"] if req.onnx is None else []
    if final != source:
        calib = " --calib-dir DIR" if req.precision == "int8" else ""
        needed.append(f"`fvdeploy quantize {source} --{req.precision}{calib}`")
    import_tensorrt(missing_tensorrt_hint(needed, final, plan, profile, req.build))
    if req.onnx is None:
        export_onnx(req.spec, source, ExportOptions(min_batch=req.build.min_batch, max_batch=req.build.max_batch),
                    steps, req.overwrite)
    if final != source:
        quantize(source, final, req.quant, steps, req.overwrite)
    return build_engine(final, plan, req.build, steps, console, req.overwrite)


def missing_tensorrt_hint(steps_needed: list[str], final_onnx: Path, plan: Path, profile: Profile, opts: BuildOptions) -> str:
    prefix = f"; on this machine run {' then '.join(steps_needed)}" if steps_needed else f"; {final_onnx.name} is ready"
    return (f"{prefix}, and build where TensorRT runs with: "
            f"{trtexec_command(final_onnx, plan, profile, opts.timing_cache, opts.opt_level, opts.workspace_gib, opts.version_compatible)}")
