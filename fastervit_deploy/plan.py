"""From a resolved request to a plan: the stages to run, every output checked, each stage reproducible.

A plan is made before anything slow runs: the model is resolved (``core.model_spec``), every output
path and suffix is checked once (``system.files.check_output``), and every stage is a job that knows its
exact command line. `build-trt` on a machine without TensorRT prints those commands instead of running
them; an intermediate file that an earlier run of the same command already made is reused, not rebuilt.
"""

from __future__ import annotations

import dataclasses
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, Sequence

from .core.model_spec import resolve_model
from .core.options import (
    AccuracyTarget,
    BatchProfile,
    BuilderOptions,
    CalibrationOptions,
    CoreMLOptions,
    ImagesOption,
    TargetOptions,
    ModelRequest,
    OnnxOptions,
    OutputTarget,
    TunedBatchProfile,
)
from .core.precision import Precision, QuantTarget, Tolerance
from .artifact import read_recorded
from .core.record import FormatKey, NoRecord, RecordedArtifact, files_read
from .coreml.job import CoreMLJob
from .formats import FORMATS, format_for, stem
from .onnx.job import ExportJob
from .quantize.job import QuantizeJob, refuse_backend
from .system.errors import FvdeployError, MissingDependency
from .system.files import check_output, check_writable, sha256, shown
from .system.lazy import load
from .system.optional import coremltools_missing, cuda_missing
from .tensorrt.job import BuildJob, engine_format
from .tensorrt.profile import unsupported_precision
from .tensorrt.runtimes import RUNTIMES, RuntimeKey, check_capabilities, missing_to_build

if TYPE_CHECKING:
    from .core.record import ArtifactRecord
    from .system.progress import Steps


class Job(Protocol):
    """A plan stage (onnx/job.py and its siblings); ``CONVERTERS`` names the function that runs it."""

    output: Path
    overwrite: bool

    def argv(self) -> tuple[str, ...]: ...


# Each plan stage's converter, (job, steps) -> ArtifactRecord: heavy modules, imported when the stage runs.
CONVERTERS: dict[type, str] = {
    ExportJob: "fastervit_deploy.onnx.export:export_onnx",
    QuantizeJob: "fastervit_deploy.quantize.convert:quantize",
    BuildJob: "fastervit_deploy.tensorrt.build:build_engine",
    CoreMLJob: "fastervit_deploy.coreml.export:export_coreml",
}


def run_job(job: Job, steps: Steps) -> ArtifactRecord:
    """Run one plan stage with its converter."""
    return load(CONVERTERS[type(job)])(job, steps)


def command_line(argv: tuple[str, ...]) -> str:
    return shlex.join(["fvdeploy", *argv])


@dataclass(frozen=True)
class Plan:
    stages: tuple[Job, ...]
    reused: tuple[Path, ...] = ()  # intermediate files an identical earlier command already made

    @property
    def output(self) -> Path:
        return self.stages[-1].output

    def commands(self) -> list[str]:
        return [command_line(job.argv()) for job in self.stages]

    def run(self, steps: Steps) -> ArtifactRecord:
        for path in self.reused:
            steps.note(f"reusing {path} (made by the same command, content unchanged)")
        record = None
        for job in self.stages:
            record = run_job(job, steps)
        return record


def _output(output: OutputTarget, key: FormatKey, default: str | Path | None = None, inputs: Sequence[Path] = ()) -> Path:
    """The output path, checked (once): the one given, else ``default``."""
    path = check_output(output.or_default(default), output.overwrite, FORMATS[key].suffixes, FORMATS[key].package,
                        inputs)
    named = format_for(path)
    if named.key is not key:  # x.rtx.engine ends in .engine too: its name would say another runtime
        raise FvdeployError(f"{path.name} is named as a {named.description}: this makes a {FORMATS[key].description} "
                            f"(name it *{FORMATS[key].suffixes[0]})")
    return path


def _check_given(output: OutputTarget, key: FormatKey, inputs: Sequence[Path] = ()) -> None:
    """An output path given on the command line is checked before anything else (no model, no file read)."""
    if output.output is not None:
        _output(output, key, inputs=inputs)


def read_onnx(path: Path) -> RecordedArtifact:
    if not Path(path).is_file():
        raise FvdeployError(f"ONNX file not found: {path}")
    if Path(path).suffix.lower() not in FORMATS[FormatKey.onnx].suffixes:
        raise FvdeployError(f"{path} is not an .onnx file")
    try:
        return read_recorded(path)
    except NoRecord as err:  # the graph alone does not say which model, weights or batch range it holds
        raise NoRecord(f"{err}: start from an ONNX that `fvdeploy export-onnx --model NAME` made") from None


def plan_export(model: ModelRequest, output: OutputTarget, onnx: OnnxOptions = OnnxOptions(),
                batch: BatchProfile = BatchProfile(), images: ImagesOption = ImagesOption()) -> Plan:
    inputs = files_read(model.checkpoint)
    _check_given(output, FormatKey.onnx, inputs)
    desc = resolve_model(model)
    path = output.output or _output(output, FormatKey.onnx, FORMATS[FormatKey.onnx].file_name(desc.stem), inputs)
    return Plan((ExportJob(desc, Path(path), onnx, batch, images, output.overwrite),))


def _origin(record: ArtifactRecord) -> str:
    return f" ({shown(record.source.path)})" if record.source else ""


def _check_quantize_source(source: Path, record: ArtifactRecord) -> None:
    if record.precision is not Precision.fp32:
        raise FvdeployError(f"{source.name} is already {record.precision}: quantize the FP32 ONNX it came "
                            f"from{_origin(record)}")
    import onnx

    graph = onnx.load(str(source), load_external_data=False)
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in graph.graph.initializer):
        raise FvdeployError(f"{source.name} keeps its weights in external data (> 2 GB): quantize handles models "
                            "below 2 GB; build FP32 engines from it, or quantize with ModelOpt's CLI")


def _check_calibration(precision: Precision, calibration: CalibrationOptions) -> None:
    if precision.quantized and calibration.calib_dir is None and not calibration.cache_hit:
        raise FvdeployError(f"--{precision} needs --calib-dir (a folder of real images) or an existing --calib-cache")
    if calibration.calib_dir is not None and not Path(calibration.calib_dir).is_dir():
        given = Path(calibration.calib_dir)
        raise FvdeployError(f"--calib-dir {given} is a file: give the folder of calibration images" if given.exists()
                            else f"calibration folder not found: {given}")
    if precision.quantized and calibration.calib_dir is not None and not calibration.cache_hit:
        from .data.images import list_images

        list_images(calibration.calib_dir)  # a folder without images is refused now, not after the first step
    cache = calibration.calib_cache
    if cache is not None and not calibration.cache_hit and precision.quantized:  # written after calibrating
        if Path(cache).is_dir():
            raise FvdeployError(f"--calib-cache {cache} is a folder: give the cache file's path")
        check_writable(Path(cache), "--calib-cache")  # now, not after half an hour of calibration


def _check_accuracy(precision: Precision, accuracy: AccuracyTarget) -> None:
    if not precision.quantized and accuracy.given:
        flags = " ".join(accuracy.given_flags())
        raise FvdeployError(f"{flags}: an accuracy target is for calibrated precisions (--int8), not --{precision}")
    if accuracy.data is not None and not Path(accuracy.data).is_dir():
        raise FvdeployError(f"--data folder not found: {accuracy.data}")
    on_data = [flag for flag, name in (("--max-drop", "max_drop"), ("--limit", "limit")) if name in accuracy.given]
    if on_data and accuracy.data is None:  # they measure on labelled images: without them they would do nothing
        raise FvdeployError(f"{' and '.join(on_data)} measure top-1 on labelled images: give --data, or leave "
                            f"{'them' if len(on_data) > 1 else 'it'} out")


def plan_quantize(source: Path, precision: Precision, output: OutputTarget,
                  calibration: CalibrationOptions = CalibrationOptions(), tolerance: Tolerance = Tolerance(),
                  target: TargetOptions = TargetOptions(), images: ImagesOption = ImagesOption(),
                  accuracy: AccuracyTarget = AccuracyTarget()) -> Plan:
    inputs = files_read(source, calibration.calib_cache, accuracy.labels_file)
    _check_given(output, FormatKey.onnx, inputs)
    precision = Precision(precision)
    if precision.quantized or target.target is not QuantTarget.tensorrt:
        from .graph.policy import scheme_for  # onnx and numpy: not for the commands that never quantize

        # a combination no scheme (or no writer) makes is refused before any file is read
        refuse_backend(scheme_for(precision, target.target), calibration.backend)
    if target.target is QuantTarget.onnxruntime_cpu and "keep_fp32" in target.given:
        raise FvdeployError("--keep-fp32 chooses ops of an FP16 float part; --target onnxruntime-cpu keeps every "
                            "op that is not INT8 in FP32 already")
    recorded = read_onnx(source)
    _check_quantize_source(Path(source), recorded.record)
    _check_calibration(precision, calibration)
    _check_accuracy(precision, accuracy)
    path = output.or_default(Path(source).with_name(f"{Path(source).stem}_{precision}.onnx"))
    if output.output is None:
        _output(output, FormatKey.onnx, path, inputs)
    return Plan((QuantizeJob(Path(source), precision, path, calibration, tolerance, target, images, accuracy,
                             output.overwrite, recorded),))


def _built_from(job: Job) -> str:
    """Advice for an intermediate ONNX that exists: build from it, if it is what this stage would make."""
    try:
        record = read_recorded(job.output).record
    except FvdeployError:
        return ""
    source = getattr(job, "source", None)
    same_source = record.source is not None and source is not None and Path(source).is_file() and \
        record.source.sha256 == sha256(source)
    if record.precision is getattr(job, "precision", Precision.fp32) and (same_source or source is None):
        return f"; or, if it will do, build from it: fvdeploy build-trt --onnx {shlex.quote(str(job.output))}"
    return ""


def _reusable(job: Job, upstream_reused: bool) -> bool:
    """An intermediate output that the same command made from the same input is reused, not remade."""
    if not upstream_reused or not job.output.is_file():
        return False
    try:
        record = read_recorded(job.output).record  # checks the hashes its sidecar recorded
    except FvdeployError:
        return False
    if record.command != job.argv():
        return False
    return record.source is None or (record.source.path.is_file() and sha256(record.source.path) == record.source.sha256)


def plan_build_trt(onnx: Path | None, model: ModelRequest, precision: Precision | None, output: OutputTarget,
                   calibration: CalibrationOptions = CalibrationOptions(),
                   profile: TunedBatchProfile = TunedBatchProfile(), builder: BuilderOptions = BuilderOptions(),
                   onnx_options: OnnxOptions = OnnxOptions(), images: ImagesOption = ImagesOption()) -> Plan:
    if (onnx is None) == (model.model is None):
        raise FvdeployError("give exactly one of --onnx and --model")
    runtime = RUNTIMES[builder.runtime]
    check_capabilities(runtime, builder.compute_capability)
    key = engine_format(builder)
    inputs = files_read(onnx, model.checkpoint, calibration.calib_cache)
    _check_given(output, key, inputs)
    if builder.timing_cache is not None:
        if not runtime.timing_cache:
            raise FvdeployError(f"{runtime.title} keeps no timing cache (it compiles its kernels on the target GPU, "
                                "into its own runtime cache there): leave out --timing-cache")
        check_writable(Path(builder.timing_cache), "--timing-cache")  # rewritten after the build
    if runtime.ahead_of_time and not builder.compute_capability and cuda_missing():
        raise FvdeployError(f"--runtime {runtime.key} builds ahead of time for the GPUs it is told: no GPU is visible "
                            "here, so give --compute-capability (8.9: Ada, e.g. RTX 40xx; 12.0: Blackwell, RTX 50xx; "
                            "comma-separated for several)")
    intermediate: list[Job] = []
    recorded = None
    if onnx is not None:
        recorded = read_onnx(onnx)
        record = recorded.record
        desc, have, source = record.model, record.precision, Path(onnx)
        if record.target is QuantTarget.onnxruntime_cpu:
            raise FvdeployError(f"{source.name} was made for onnxruntime's CPU kernels (uint8 activations, the rest "
                                f"FP32): build engines from the FP32 ONNX{_origin(record)} with --{have}")
        want = Precision(precision or have)
        if have is not Precision.fp32 and want is not have:
            raise FvdeployError(f"{source.name} is already {have}; start from the FP32 ONNX for {want}")
        low, high = record.batch_range
        given = profile.given  # a bound left out is the ONNX's own: the engine serves what the export does
        profile = profile.replace(min_batch=profile.min_batch if "min_batch" in given else low,
                                  max_batch=profile.max_batch if "max_batch" in given else high)
        if not low <= profile.min_batch <= profile.max_batch <= high:
            raise FvdeployError(f"profile {profile.min_batch}..{profile.max_batch} is outside {source.name}'s batch "
                                f"range {low}..{high} (re-export it with --min-batch/--max-batch)")
        if want is not have:
            _check_quantize_source(source, record)
    else:
        desc, have, want = resolve_model(model), Precision.fp32, Precision(precision or Precision.fp32)
        onnx_format = FORMATS[FormatKey.onnx]
        source = (output.output.with_name(onnx_format.file_name(stem(output.output))) if output.output
                  else Path(onnx_format.file_name(desc.stem)))
        intermediate.append(ExportJob(desc, source, onnx_options, profile.untuned(), images, output.overwrite))
    for capability in builder.compute_capability:  # before any export, quantization or build
        refused = unsupported_precision(want, capability)
        if refused:
            raise FvdeployError(f"--compute-capability {capability}: {refused}")
    if want is not have:
        _check_calibration(want, calibration)
        quantized = source.with_name(f"{source.stem}_{want}.onnx")
        intermediate.append(QuantizeJob(source, want, quantized, calibration, Tolerance(), TargetOptions(), images,
                                        AccuracyTarget(), output.overwrite, recorded))
        source, recorded = quantized, None
    targets = "".join(f"_sm{c.replace('.', '')}" for c in builder.compute_capability)  # in the name: what it runs on
    engine_path = output.output or FORMATS[key].file_name(str(source.with_suffix("")) + targets)
    engine = BuildJob(source, desc, profile, Path(engine_path), builder, output.overwrite, recorded)
    if output.output is None:
        _output(output, key, engine.output, inputs)
    stages, reused, upstream = [], [], True
    for job in intermediate:
        upstream = _reusable(job, upstream)
        if upstream:
            reused.append(job.output)
            continue
        if job.output.exists() and not job.overwrite:
            raise FvdeployError(f"{job.output} exists, made by another command: pass --overwrite to make it again, or "
                                f"-o to build elsewhere{_built_from(job)}")
        check_output(job.output, job.overwrite, FORMATS[FormatKey.onnx].suffixes, inputs=inputs)
        stages.append(job)
    return Plan((*stages, engine), tuple(reused))


def tensorrt_hint(plan: Plan) -> str:
    """What to run here and there when this machine cannot build engines."""
    *prepare, engine = plan.stages
    here = " then ".join(f"`{c}`" for c in plan.commands()[:-1])
    ready = f"{engine.source.name} is ready" if not prepare else f"on this machine run {here}"
    return f"; {ready}, and build where TensorRT runs with: {engine.trtexec()}"


def require_runtime(plan: Plan, rtx_command: str) -> None:
    """The engine's runtime can build here, or one line (exit 3) that says what to run instead: for TensorRT, the
    commands that prepare the ONNX here, the trtexec line for a GPU machine, and ``rtx_command``, which builds a
    TensorRT for RTX engine on this machine (never chosen silently: its engines run only in TensorRT for RTX)."""
    engine = plan.stages[-1]
    runtime = RUNTIMES[engine.builder.runtime]
    missing = missing_to_build(runtime.key)
    if missing is None:
        return
    if runtime.ahead_of_time:
        raise MissingDependency(missing)
    what = (f"TensorRT is not installed ({runtime.pip})" if not runtime.installed()
            else "no CUDA GPU is visible to PyTorch")
    alternative = (f"; or build a TensorRT for RTX engine here (it runs only in TensorRT for RTX, on RTX GPUs): "
                   f"{rtx_command}" if missing_to_build(RuntimeKey.tensorrt_rtx) is None else "")
    raise MissingDependency(what + tensorrt_hint(plan) + alternative)


def plan_coreml(model: ModelRequest, output: OutputTarget, options: CoreMLOptions = CoreMLOptions()) -> Plan:
    inputs = files_read(model.checkpoint)
    _check_given(output, FormatKey.coreml, inputs)
    missing = coremltools_missing()
    if missing:
        raise MissingDependency(f"Core ML conversion needs coremltools ({missing}): pip install 'fvdeploy[coreml]'")
    desc = resolve_model(model)
    extra = tuple(resolve_model(dataclasses.replace(model, resolution=r)) for r in options.resolutions)
    path = output.output or _output(output, FormatKey.coreml, FORMATS[FormatKey.coreml].file_name(desc.stem), inputs)
    return Plan((CoreMLJob(desc, Path(path), options, extra, output.overwrite),))
