"""From a resolved request to a plan: the stages to run, every output checked, each stage reproducible.

A plan is made before anything slow runs: the model is resolved (model_spec), every output path and
suffix is checked (files.check_output), and every stage is a job that knows its exact command line.
`build-trt` on a machine without TensorRT prints those commands instead of running them; an
intermediate file that an earlier run of the same command already made is reused, not rebuilt.
"""

from __future__ import annotations

import dataclasses
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from .errors import FvdeployError, MissingDependency
from .files import check_output, sha256
from .formats import suffixes
from .optional import coremltools_missing, tensorrt_missing
from .options import (
    DEFAULT_FP32_OPS,
    BatchProfile,
    BuilderOptions,
    CalibrationOptions,
    CoreMLOptions,
    ModelRequest,
    OnnxOptions,
    OutputTarget,
    Tolerance,
)

# The jobs live in the backend modules, which load torch and onnx: each plan function imports them
# after the output paths given on the command line are checked, so a bad path is refused at once.
if TYPE_CHECKING:
    from .progress import Steps
    from .record import ArtifactRecord


class Job(Protocol):
    output: Path
    overwrite: bool

    def argv(self) -> tuple[str, ...]: ...

    def run(self, steps: Steps) -> ArtifactRecord: ...


def command_line(argv: tuple[str, ...]) -> str:
    return shlex.join(["fvdeploy", *argv])


@dataclass(frozen=True)
class Plan:
    stages: tuple[Job, ...]
    reused: tuple[Path, ...] = ()  # intermediate files an identical earlier command already made

    def commands(self) -> list[str]:
        return [command_line(job.argv()) for job in self.stages]

    def run(self, steps: Steps) -> ArtifactRecord:
        for path in self.reused:
            steps.note(f"reusing {path} (made by the same command, content unchanged)")
        record = None
        for job in self.stages:
            record = job.run(steps)
        return record


def check_explicit(output: OutputTarget, kind: str) -> None:
    """An output path given on the command line is checked before anything else (no model, no file read)."""
    if output.path is not None:
        check_output(Path(output.path), output.overwrite, suffixes(kind))


def read_onnx_record(path: Path) -> ArtifactRecord:
    from .record import read_record

    if not Path(path).is_file():
        raise FvdeployError(f"ONNX file not found: {path}")
    if Path(path).suffix.lower() != ".onnx":
        raise FvdeployError(f"{path} is not an .onnx file")
    return read_record(path)


def plan_export(model: ModelRequest, output: OutputTarget, onnx: OnnxOptions = OnnxOptions(),
                batch: BatchProfile = BatchProfile(), images: Path | None = None, verify: bool = True) -> Plan:
    check_explicit(output, "onnx")
    from .model_spec import resolve_model
    from .onnx_export import ExportJob

    desc = resolve_model(model)
    path = check_output(output.or_default(f"{desc.stem}.onnx"), output.overwrite, ".onnx")
    return Plan((ExportJob(desc, path, onnx, batch, images, verify, output.overwrite),))


def _check_quantize_source(source: Path, record: ArtifactRecord, precision: str) -> None:
    if record.precision != "fp32":
        origin = f" ({record.source.path.name})" if record.source else ""
        raise FvdeployError(f"{source.name} is already {record.precision}: quantize the FP32 ONNX it came from{origin}")
    import onnx

    graph = onnx.load(str(source), load_external_data=False)
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in graph.graph.initializer):
        raise FvdeployError(f"{source.name} keeps its weights in external data (> 2 GB): quantize handles models "
                            "below 2 GB; build FP32 engines from it, or quantize with ModelOpt's CLI")


def _check_calibration(precision: str, calibration: CalibrationOptions) -> None:
    if precision == "int8" and calibration.folder is None and not calibration.cache_hit:
        raise FvdeployError("--int8 needs --calib-dir (a folder of real images) or an existing --calib-cache")
    if calibration.folder is not None and not Path(calibration.folder).is_dir():
        raise FvdeployError(f"calibration folder not found: {calibration.folder}")


def plan_quantize(source: Path, precision: str, output: OutputTarget,
                  calibration: CalibrationOptions = CalibrationOptions(), tolerance: Tolerance = Tolerance(),
                  keep_fp32: tuple[str, ...] = DEFAULT_FP32_OPS, images: Path | None = None) -> Plan:
    check_explicit(output, "onnx")
    from .quantize import QuantizeJob

    record = read_onnx_record(source)
    _check_quantize_source(source, record, precision)
    _check_calibration(precision, calibration)
    path = output.or_default(Path(source).with_name(f"{Path(source).stem}_{precision}.onnx"))
    if path.resolve() == Path(source).resolve():
        raise FvdeployError("output would overwrite the input ONNX")
    check_output(path, output.overwrite, ".onnx")
    return Plan((QuantizeJob(Path(source), precision, path, calibration, tolerance, keep_fp32, images, output.overwrite),))


def _reusable(job: Job, upstream_reused: bool) -> bool:
    """An intermediate output that the same command made from the same input is reused, not remade."""
    from .record import read_record

    if not upstream_reused or not job.output.is_file():
        return False
    try:
        record = read_record(job.output)  # checks the hashes its sidecar recorded
    except FvdeployError:
        return False
    if record.command != job.argv():
        return False
    return record.source is None or (record.source.path.is_file() and sha256(record.source.path) == record.source.sha256)


def plan_build_trt(onnx: Path | None, model: ModelRequest, precision: str | None, output: OutputTarget,
                   calibration: CalibrationOptions = CalibrationOptions(), profile: BatchProfile = BatchProfile(),
                   builder: BuilderOptions = BuilderOptions(), onnx_options: OnnxOptions = OnnxOptions(),
                   images: Path | None = None) -> Plan:
    if (onnx is None) == (model.name is None):
        raise FvdeployError("give exactly one of --onnx and --model")
    check_explicit(output, "tensorrt")
    from .model_spec import resolve_model
    from .onnx_export import ExportJob
    from .quantize import QuantizeJob
    from .tensorrt_build import BuildJob

    intermediate: list[Job] = []
    if onnx is not None:
        record = read_onnx_record(onnx)
        desc, have, source = record.model, record.precision, Path(onnx)
        want = precision or have
        if have != "fp32" and want != have:
            raise FvdeployError(f"{source.name} is already {have}; start from the FP32 ONNX for {want}")
        low, high = record.batch_range
        if not low <= profile.min <= profile.max <= high:
            raise FvdeployError(f"profile {profile.min}..{profile.max} is outside {source.name}'s batch range "
                                f"{low}..{high} (re-export it with --min-batch/--max-batch)")
        if want != have:
            _check_quantize_source(source, record, want)
    else:
        desc, have, want = resolve_model(model), "fp32", precision or "fp32"
        source = output.path.with_suffix(".onnx") if output.path else Path(f"{desc.stem}.onnx")
        intermediate.append(ExportJob(desc, source, onnx_options, BatchProfile(profile.min, profile.max), images,
                                      True, output.overwrite))
    if want != have:
        _check_calibration(want, calibration)
        quantized = source.with_name(f"{source.stem}_{want}.onnx")
        intermediate.append(QuantizeJob(source, want, quantized, calibration, Tolerance(), DEFAULT_FP32_OPS, images,
                                        output.overwrite))
        source = quantized
    engine = BuildJob(source, desc, profile, output.or_default(source.with_suffix(".plan")), builder, output.overwrite)
    check_output(engine.output, engine.overwrite, suffixes("tensorrt"))
    stages, reused, upstream = [], [], True
    for job in intermediate:
        upstream = _reusable(job, upstream)
        if upstream:
            reused.append(job.output)
            continue
        check_output(job.output, job.overwrite, ".onnx")
        stages.append(job)
    return Plan((*stages, engine), tuple(reused))


def tensorrt_hint(plan: Plan) -> str:
    """What to run here and there when this machine cannot build engines."""
    *prepare, engine = plan.stages
    here = " then ".join(f"`{c}`" for c in plan.commands()[:-1])
    ready = f"{engine.source.name} is ready" if not prepare else f"on this machine run {here}"
    return f"; {ready}, and build where TensorRT runs with: {engine.trtexec()}"


def require_tensorrt(plan: Plan) -> None:
    missing = tensorrt_missing()
    if missing is None:
        return
    what = ("TensorRT is not installed (Python package `tensorrt`, 10.x or 11.x, on a CUDA machine)"
            if "not installed" in missing else "no CUDA GPU is visible to PyTorch")
    raise MissingDependency(what + tensorrt_hint(plan))


def plan_coreml(model: ModelRequest, output: OutputTarget, options: CoreMLOptions = CoreMLOptions(),
                resolutions: tuple[tuple[int, int], ...] = ()) -> Plan:
    check_explicit(output, "coreml")
    missing = coremltools_missing()
    if missing:
        raise MissingDependency(f"Core ML conversion needs coremltools ({missing}): pip install 'fvdeploy[coreml]'")
    from .coreml_export import CoreMLJob
    from .model_spec import resolve_model

    desc = resolve_model(model)
    extra = tuple(resolve_model(dataclasses.replace(model, resolution=r)) for r in resolutions)
    job = CoreMLJob(desc, output.or_default(f"{desc.stem}.mlpackage"), options, extra, output.overwrite)
    check_output(job.output, job.overwrite, ".mlpackage")
    return Plan((job,))
