"""`fvdeploy build-trt`: a precision-ready ONNX → a serialized engine, with TensorRT or TensorRT for RTX.

One path for both runtimes (``runtimes``: what differs). Networks are strongly typed (the flag is required in
TensorRT 10, ignored in 11, the only kind TensorRT for RTX has), so precision comes from the ONNX graph (`fvdeploy
quantize`), never from builder flags, which TensorRT 11 removed. Exporting and quantizing first are stages of the
plan (plan.py). The build runs in native code: a signal ends fvdeploy through ``system.lifecycle`` (nothing is
written before the build returns), and the progress monitor stops the build once one has arrived.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from ..core.finish import finish
from ..core.record import ArtifactRecord, read_artifact
from ..onnx import metadata
from ..system import lifecycle
from ..system.errors import FvdeployError
from ..system.files import atomic_output
from ..system.optional import gpu_description
from ..system.progress import Steps, console, progress_bar
from .audit import audit
from .job import BuildJob
from .parser import collecting_logger, new_network, parse_network
from .profile import Profile, unsupported_precision
from .runtimes import RUNTIMES, Runtime


def _progress_monitor(trt, out: Console):
    """A trt.IProgressMonitor that drives a rich progress bar (one row per build phase), and cancels the build once
    Ctrl-C or SIGTERM has arrived."""

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
            return not lifecycle.interrupted()  # False cancels the build

        def phase_finish(self, phase_name):
            task = self.tasks.pop(phase_name, None)
            if task is not None:
                self.bar.remove_task(task)
            if not self.tasks:
                self.bar.stop()

    return Monitor()


def build_target(runtime: Runtime, capabilities: tuple[str, ...]) -> dict:
    """What the engine is built for: this machine's GPU (TensorRT; TensorRT for RTX without capabilities), or the
    compute capabilities asked for (TensorRT for RTX, ahead of time, no GPU needed)."""
    if capabilities:
        return {"compute_capabilities": list(capabilities)}
    gpu = gpu_description()
    if gpu is None:
        raise FvdeployError(f"{runtime.title} needs --compute-capability where no GPU is visible (e.g. 8.9 for Ada, "
                            "12.0 for Blackwell)" if runtime.ahead_of_time else f"{runtime.title} builds on a CUDA GPU, "
                            "and none is visible to PyTorch")
    return {"gpu": gpu, "compute_capabilities": [gpu["compute_capability"]]}


def refused_precision(precision: str, target: dict) -> str | None:
    """Why an engine of this precision cannot be built for the target, or None."""
    for capability in target["compute_capabilities"]:
        refused = unsupported_precision(precision, capability)
        if refused:
            where = target["gpu"]["name"] if "gpu" in target else f"compute capability {capability}"
            return f"{where}: {refused}"
    return None


def _configure(runtime: Runtime, trt, builder, job: BuildJob, target: dict):
    config = builder.create_builder_config()
    opts = job.builder
    if opts.workspace:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(opts.workspace * 2**30))
    if opts.opt_level is not None:
        config.builder_optimization_level = opts.opt_level
    if opts.version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    if runtime.ahead_of_time:  # TensorRT for RTX: the capabilities asked for, else the GPU it runs on
        members = [runtime.capability_member(trt, c) for c in opts.compute_capability] or [trt.ComputeCapability.CURRENT]
        config.num_compute_capabilities = len(members)
        for i, member in enumerate(members):
            config.set_compute_capability(member, i)
    profile = job.trt_profile
    trt_profile = builder.create_optimization_profile()
    trt_profile.set_shape(profile.input_name, profile.shape(profile.min_batch), profile.shape(profile.opt_batch),
                          profile.shape(profile.max_batch))
    config.add_optimization_profile(trt_profile)
    if runtime.timing_cache:
        cache_bytes = opts.timing_cache.read_bytes() if opts.timing_cache and opts.timing_cache.is_file() else b""
        config.set_timing_cache(config.create_timing_cache(cache_bytes), False)  # ignore_mismatch=False
    config.progress_monitor = _progress_monitor(trt, console)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # layer precisions for the audit
    return config


def build_engine(job: BuildJob, steps: Steps) -> ArtifactRecord:
    source = job.source_artifact or read_artifact(job.source, metadata.read_identity)
    runtime = RUNTIMES[job.builder.runtime]
    trt = runtime.load(f"; build where it runs with: {job.trtexec()}" if not runtime.ahead_of_time else "")
    target = build_target(runtime, job.builder.compute_capability)
    refused = refused_precision(source.record.precision, target)
    if refused:
        raise FvdeployError(refused)
    logger = collecting_logger(trt)
    builder = trt.Builder(logger)
    network = new_network(runtime, trt, builder)
    who = f"{runtime.title} {trt.__version__}"
    with steps(f"parsing ONNX with {who}"):
        parse_network(runtime, trt, network, logger, job.source)
    config = _configure(runtime, trt, builder, job, target)
    where = (f" for compute capability {', '.join(job.builder.compute_capability)}" if job.builder.compute_capability
             else "")
    with steps(f"building {who} engine{where}"):
        plan = builder.build_serialized_network(network, config)
    if plan is None:
        if lifecycle.interrupted():
            raise KeyboardInterrupt
        said = "; ".join(dict.fromkeys(_compiler_line(e) for e in logger.errors)) or "see its messages above"
        raise FvdeployError(f"{runtime.title} could not build the engine: {said}")
    opts = job.builder
    if opts.timing_cache and runtime.timing_cache:
        with atomic_output(opts.timing_cache, overwrite=True) as tmp_cache:
            tmp_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    details = {"runtime": runtime.key.value, runtime.module: trt.__version__, **target, "layers": network.num_layers,
               "profile": job.trt_profile.to_dict(), "builder_optimization_level": opts.opt_level,
               "version_compatible": opts.version_compatible,
               "timing_cache": str(opts.timing_cache) if opts.timing_cache else None}
    if runtime.ahead_of_time:
        # Reading an engine's layers needs it deserialized, and TensorRT for RTX deserializes only with a CUDA driver.
        details["audit"] = ("not run here: reading the engine's layers needs the target GPU; `fvdeploy verify` there "
                            "compares it with PyTorch")
    record = source.record.derive(format=job.format, command=job.argv(), source=source.ref,
                                  batch_range=job.profile.range, details=details)
    check = None if runtime.ahead_of_time else (
        lambda path: audit(engine_information(trt, path, job.trt_profile), record.precision))
    with atomic_output(job.output, job.overwrite) as tmp:
        tmp.write_bytes(bytes(plan))
        return finish(tmp, record, steps, check=check)


def _compiler_line(message: str) -> str:
    """The compiler's own words without its log prefix (``[...] Error Code 9: ...``)."""
    text = message.splitlines()[0] if message else ""
    return text.split("Error Code", 1)[-1].split(":", 1)[-1].strip() if "Error Code" in text else text


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
