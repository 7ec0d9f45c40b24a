"""`fvdeploy build-trt`: a precision-ready ONNX → serialized TensorRT engine.

Written for TensorRT 10 and 11 alike: networks are strongly typed (the flag is required in 10 and
ignored in 11), so precision comes from the ONNX graph (`fvdeploy quantize`), never from builder
flags, which TensorRT 11 removed. Exporting and quantizing first are stages of the plan (plan.py).
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from ..core.finish import finish
from ..core.record import ArtifactRecord, FormatKey, read_artifact
from ..onnx import metadata
from ..system.errors import FvdeployError
from ..system.files import atomic_output
from ..system.optional import gpu_description, import_tensorrt, tensorrt_major
from ..system.progress import Steps, console, progress_bar
from .audit import audit
from .job import BuildJob
from .profile import Profile, unsupported_precision


def _progress_monitor(trt, out: Console):
    """A trt.IProgressMonitor that drives a rich progress bar (one row per build phase)."""

    class Monitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self.bar = progress_bar(out)
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


def build_engine(job: BuildJob, steps: Steps) -> ArtifactRecord:
    source = job.source_artifact or read_artifact(job.source, metadata.read_identity)
    trt = import_tensorrt(f"; build where TensorRT runs with: {job.trtexec()}")
    gpu = gpu_description()
    refused = unsupported_precision(source.record.precision, gpu["compute_capability"])
    if refused:
        raise FvdeployError(f"{gpu['name']}: {refused}")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if tensorrt_major(trt) == 10:  # accepted and ignored by 11, where every network is strongly typed
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    with steps("parsing ONNX"):
        parse_onnx(trt, network, logger, job.source)
    config = builder.create_builder_config()
    opts = job.builder
    if opts.workspace:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(opts.workspace * 2**30))
    if opts.opt_level is not None:
        config.builder_optimization_level = opts.opt_level
    if opts.version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    profile = job.trt_profile
    trt_profile = builder.create_optimization_profile()
    trt_profile.set_shape(profile.input_name, profile.shape(profile.min_batch), profile.shape(profile.opt_batch),
                          profile.shape(profile.max_batch))
    config.add_optimization_profile(trt_profile)
    cache_bytes = opts.timing_cache.read_bytes() if opts.timing_cache and opts.timing_cache.is_file() else b""
    config.set_timing_cache(config.create_timing_cache(cache_bytes), False)  # ignore_mismatch=False
    config.progress_monitor = _progress_monitor(trt, console)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # layer precisions for the audit
    with steps(f"building TensorRT {trt.__version__} engine"):
        plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise FvdeployError("TensorRT could not build the engine (see the TensorRT messages above)")
    if opts.timing_cache:
        with atomic_output(opts.timing_cache, overwrite=True) as tmp_cache:
            tmp_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    record = source.record.derive(
        format=FormatKey.tensorrt, command=job.argv(), source=source.ref, batch_range=job.profile.range,
        details={"tensorrt": trt.__version__, "gpu": gpu, "profile": profile.to_dict(),
                 "builder_optimization_level": opts.opt_level, "version_compatible": opts.version_compatible,
                 "timing_cache": str(opts.timing_cache) if opts.timing_cache else None},
    )
    with atomic_output(job.output, job.overwrite) as tmp:
        tmp.write_bytes(bytes(plan))
        return finish(tmp, record, steps,
                      check=lambda path: audit(engine_information(trt, path, profile), record.precision))


def engine_information(trt, path: Path, profile: Profile) -> str:
    """The engine's layer information as JSON (TensorRT 10 and 11), formats resolved at the opt batch."""
    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(path.read_bytes())
    if engine is None:
        raise FvdeployError(f"TensorRT cannot load the engine it just built ({path.name})")
    context = engine.create_execution_context()
    context.set_input_shape(profile.input_name, profile.shape(profile.opt_batch))
    inspector = engine.create_engine_inspector()
    # Without a context, shapes that depend on the batch show as -1 and formats are left out.
    for name in ("execution_context", "context"):  # the property's name in 10/11, and before 10
        if hasattr(inspector, name):
            setattr(inspector, name, context)
            break
    return inspector.get_engine_information(trt.LayerInformationFormat.JSON)
