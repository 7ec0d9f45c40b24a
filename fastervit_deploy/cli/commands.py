"""The commands: parse (option groups), call the work, print. The work lives in the layers below."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Callable, Optional

import typer
from rich.console import Console

from ..core.address import is_address
from ..core.declare import ints
from ..core.options import (
    AccuracyTarget,
    BuilderOptions,
    CalibrationOptions,
    CoreMLOptions,
    ImagesOption,
    LabelledData,
    TargetOptions,
    ModelRequest,
    OnnxOptions,
    OnnxSource,
    OutputTarget,
    PrecisionFlags,
    RunOptions,
    ServerOptions,
    TensorRTRuntime,
    TritonOptions,
    BatchProfile,
    TunedBatchProfile,
)
from ..core.precision import Tolerance
from ..core.record import files_read, recorded_source
from ..system.errors import CheckFailed, FvdeployError
from ..system import jsontext
from ..system.files import check_output, refuse_inside, write_text_atomic
from ..system.progress import Steps, console
from .groups import JsonOpt, OverwriteReports, PlotOpt

if TYPE_CHECKING:
    from ..core.record import ArtifactRecord

class _Stdout(Console):
    def on_broken_pipe(self) -> None:  # rich's own exits 1, which here means "a check failed"
        raise BrokenPipeError


stdout = _Stdout(highlight=False)
DEBUG_LIMIT = 64  # debug runs every layer of two graphs per image: a smaller default subset than evaluate's (all)


def _check_reports(overwrite: bool, inputs: list[Path], folders: tuple[Path | None, ...] = (),
                   **reports: Path | None) -> None:
    """Report files (``json=``, ``plot=``, ``speed_plot=``), checked before any work: the right suffix, no existing
    file without --overwrite, never one of the inputs nor inside a folder of inputs (``folders``: the images of
    --data and --images), never two reports in one file."""
    seen: list[Path] = []
    for name, path in reports.items():
        if path is None:
            continue
        flag = "--" + name.replace("_", "-")
        refuse_inside(path, folders, what=flag)
        check_output(path, overwrite, ".json" if name == "json" else ".png", inputs=[*inputs, *seen], what=flag)
        if any(Path(path).resolve() == Path(s).resolve() for s in seen):
            raise FvdeployError(f"{flag} {path} is already another report's file")
        seen.append(Path(path))


def _write_json(path: Path | None, data: dict, overwrite: bool) -> None:
    if path is not None:
        write_text_atomic(path, jsontext.dumps(data) + "\n", overwrite)


def _write_reports(json_path: Path | None, data: dict, overwrite: bool,
                   plots: tuple[tuple[Callable[[Path], None], Path | None], ...] = ()) -> None:
    """A command's --plot files, then its --json: together or not at all (one failing, a full disk say, removes
    those this command wrote before it: a JSON without the plot it describes was left behind)."""
    written: list[Path] = []
    try:
        for draw, path in plots:
            if path is not None:
                draw(path)
                written.append(Path(path))
        _write_json(json_path, data, overwrite)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise


def _wrote(record: ArtifactRecord, output: Path) -> None:
    console.print(f"wrote {output} and {output.name}.json ({record.precision}, batch "
                  f"{record.batch_range[0]}..{record.batch_range[1]})", highlight=False)


def models(
    pattern: Annotated[str, typer.Argument(help="Glob over model names.")] = "*",
    as_json: Annotated[bool, typer.Option("--json", help="Print the rows as JSON.")] = False,
) -> None:
    """List the registered FasterViT variants."""
    from .tables import model_rows, models_table

    rows = model_rows(pattern)
    if not rows:
        raise FvdeployError(f"no model matches {pattern!r}")
    if as_json:
        print(json.dumps(rows, indent=2))
    else:
        stdout.print(models_table(rows))


def formats(as_json: Annotated[bool, typer.Option("--json", help="Print the table as JSON.")] = False) -> None:
    """The artifact formats fvdeploy makes and checks, and what this machine can do with each."""
    from .tables import format_rows, formats_table

    rows = format_rows()
    if as_json:
        print(json.dumps(rows, indent=2))
    else:
        stdout.print(formats_table(rows))


def export_onnx(model: ModelRequest, onnx: OnnxOptions, batch: BatchProfile, out: OutputTarget,
                images: ImagesOption) -> None:
    """Export a FasterViT as a TensorRT-friendly ONNX graph (dynamic batch), checked and verified."""
    from ..plan import plan_export

    plan = plan_export(model, out, onnx, batch, images)
    _wrote(plan.run(Steps()), plan.output)


def inspect(
    onnx_path: Annotated[Path, typer.Argument(help="ONNX file to inspect.", metavar="MODEL.onnx")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Op histogram, inputs/outputs and TensorRT-readiness findings of an ONNX file."""
    from ..graph.inspect import inspect_path
    from ..tensorrt.parser import with_parser
    from .tables import inspect_tables

    report = with_parser(inspect_path(onnx_path), onnx_path)
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        for table in inspect_tables(report, onnx_path.name):
            stdout.print(table)
    if not report.passed:
        raise typer.Exit(1)


ARTIFACT_HELP = "Artifact: .onnx, .plan/.engine, .mlpackage, or a served model triton://HOST:PORT/MODEL."


def verify(
    artifact: Annotated[Path, typer.Argument(help=ARTIFACT_HELP)],
    model: ModelRequest,
    tolerance: Tolerance,
    runtime: RunOptions,
    images: ImagesOption,
    server: ServerOptions,
    batch: Annotated[int, typer.Option(min=1, help="Images per batch (real images, cycled if fewer).")] = 8,
    json_path: JsonOpt = None,
    overwrite: OverwriteReports = False,
) -> None:
    """Compare an artifact with PyTorch on real images: errors, cosine, top-1/top-5 agreement.

    The model, its checkpoint (found by content) and the precision come from the artifact's record;
    model options may only agree with it (or say where the checkpoint is now).

    A served model's record comes from its configuration (`fvdeploy triton` writes it there); a served
    ensemble (`--preprocess`) is sent the images as PNG, so its server's preprocessing is compared too.
    """
    _check_reports(overwrite, files_read(artifact, model.checkpoint), (images.images,), json=json_path)
    from ..use.verify import verify as run_verify

    result = run_verify(artifact, model, tolerance, runtime, images.images, batch, Steps(), server)
    _write_json(json_path, result, overwrite)
    if not result["passed"]:
        raise CheckFailed("verification failed: " + "; ".join(result["failures"]))
    console.print("[green]verification passed[/green]")


def predict(
    artifact: Annotated[Path, typer.Argument(help="Artifact to run (any format this machine runs), or a served model "
                                                  "triton://HOST:PORT/MODEL.")],
    images: Annotated[list[Path], typer.Argument(help="Image files, or folders of them.", metavar="IMAGE...")],
    runtime: RunOptions,
    server: ServerOptions,
    top: Annotated[int, typer.Option(min=1, max=100, help="Classes to show per image.")] = 5,
    json_path: JsonOpt = None,
    overwrite: OverwriteReports = False,
) -> None:
    """Top classes and probabilities of images, with the model's own preprocessing."""
    _check_reports(overwrite, files_read(artifact, *images), tuple(p for p in images if p.is_dir()), json=json_path)
    for path in images:
        if not path.exists():
            raise FvdeployError(f"image not found: {path}")
    from ..artifact import open_artifact
    from ..data.images import list_images
    from ..use.predict import predict as run_predict
    from .tables import predictions_tables

    found = [f for path in images if path.is_dir() for f in list_images(path)]
    files = [f for path in images for f in (list_images(path) if path.is_dir() else [path])]
    art = open_artifact(artifact, model=None, server=server)
    rows = run_predict(art, files, top, runtime, frozenset(found),
                       lambda m: console.print(f"note: {m}", markup=False, highlight=False, soft_wrap=True))
    _write_json(json_path, {"artifact": art.location, "precision": art.record.precision.value,
                            "model": art.model.name, "predictions": rows}, overwrite)
    for table in predictions_tables(rows):
        stdout.print(table)


def benchmark(
    artifacts: Annotated[list[Path], typer.Argument(help="Artifacts to time (ONNX here; engines where TensorRT runs), "
                                                        "or one served model triton://HOST:PORT/MODEL.")],
    model: ModelRequest,
    runtime: RunOptions,
    server: ServerOptions,
    batch: Annotated[Optional[list[str]], typer.Option(help="Batch sizes: repeat or comma-separate (default 1,8,32; "
                                                            "a served model: one, images per request, default 1).")] = None,
    warmup: Annotated[int, typer.Option(min=0, help="Untimed rounds per batch size.")] = 3,
    iterations: Annotated[int, typer.Option(min=1, help="Timed rounds per batch size.")] = 10,
    pytorch: Annotated[bool, typer.Option("--pytorch/--no-pytorch", help="Also time PyTorch eager.")] = True,
    concurrency: Annotated[Optional[list[str]], typer.Option(
        help="Served model: clients, each sending its next request when answered, swept (default 1,2,4,8).",
        rich_help_panel=ServerOptions.PANEL)] = None,
    request_rate: Annotated[Optional[list[str]], typer.Option(
        help="Served model: requests per second, sent on schedule whatever the answers, swept (instead of "
             "--concurrency).", rich_help_panel=ServerOptions.PANEL)] = None,
    window: Annotated[Optional[float], typer.Option(
        min=0.05, help="Served model: seconds per measurement window (default 2).",
        rich_help_panel=ServerOptions.PANEL)] = None,
    max_windows: Annotated[Optional[int], typer.Option(
        min=3, help="Served model: windows per concurrency before a step is reported unstable (default 10).",
        rich_help_panel=ServerOptions.PANEL)] = None,
    json_path: JsonOpt = None,
    plot_path: PlotOpt = None,
    overwrite: OverwriteReports = False,
) -> None:
    """Latency percentiles and throughput per batch size (warm-up excluded), runners interleaved; or a served
    model under a concurrency sweep, with the server's own statistics (perf_analyzer's figures)."""
    _check_reports(overwrite, files_read(*artifacts, model.checkpoint), json=json_path, plot=plot_path)
    if any(is_address(a) for a in artifacts):
        return _load_test(artifacts, model, server, batch, concurrency, request_rate, window, max_windows, json_path,
                          plot_path, overwrite)
    served_only = [flag for flag, value in (("--concurrency", concurrency), ("--request-rate", request_rate),
                                            ("--window", window), ("--max-windows", max_windows)) if value is not None]
    if served_only:
        raise FvdeployError(f"{served_only[0]} is for a served model (triton://HOST:PORT/MODEL)")
    sizes = ints("--batch")(batch) or (1, 8, 32)
    from ..use.benchmark import benchmark as run_benchmark
    from ..use.benchmark import plot, results_table

    report = run_benchmark(artifacts, model, runtime, sizes, warmup, iterations, pytorch, console)
    stdout.print(results_table(report["results"]))
    console.print(f"runner order: {report['order']['rule']}, seed {report['order']['seed']}", highlight=False)
    _write_reports(json_path, report, overwrite, ((lambda p: plot(report, p, overwrite), plot_path),))
    if plot_path is not None:
        console.print(f"plot written to {plot_path}")


def _load_test(artifacts: list[Path], model: ModelRequest, server: ServerOptions, batch: list[str] | None,
               concurrency: list[str] | None, request_rate: list[str] | None, window: float | None,
               max_windows: int | None, json_path: Path | None, plot_path: Path | None, overwrite: bool) -> None:
    """`benchmark triton://...`: the load sweep; a sweep the server cut short is reported, then said."""
    if len(artifacts) != 1:
        raise FvdeployError("benchmark takes one served model at a time (its figures are the server's, not this "
                            "machine's: they do not interleave with files)")
    sizes = ints("--batch")(batch) or (1,)
    if len(sizes) != 1:
        raise FvdeployError("--batch: a served model is timed at one batch size (images per request)")
    if concurrency is not None and request_rate is not None:
        raise FvdeployError("give one of --concurrency and --request-rate")
    from ..use.load_test import Load, load_test, plot, steps_tables

    load = (Load("request_rate", ints("--request-rate")(request_rate)) if request_rate is not None else
            Load("concurrency", ints("--concurrency")(concurrency) or (1, 2, 4, 8)))
    report = load_test(str(artifacts[0]), model, server, load, sizes[0], window or 2.0, max_windows or 10, console)
    for table in steps_tables(report) if report["steps"] else []:
        stdout.print(table)
    console.print(f"measured: {report['rule']['text']}", highlight=False, soft_wrap=True)
    _write_reports(json_path, report, overwrite,
                   ((lambda p: plot(report, p, overwrite), plot_path if report["steps"] else None),))
    if report["incomplete"]:
        raise FvdeployError(f"the sweep ended early, {report['incomplete']} (the steps before it are reported)")


def evaluate(
    artifacts: Annotated[Optional[list[Path]], typer.Argument(help="Artifacts to evaluate, files or served models "
                                                                    "triton://HOST:PORT/MODEL (none: PyTorch alone, "
                                                                    "from --model).", metavar="[ARTIFACT]...")] = None,
    labelled: LabelledData = LabelledData(),
    reference: Annotated[Optional[Path], typer.Option(help="Compare with this artifact (e.g. the FP32 ONNX) instead of "
                                                           "PyTorch rebuilt from the first artifact's record.")] = None,
    model: ModelRequest = ModelRequest(),
    runtime: RunOptions = RunOptions(),
    server: ServerOptions = ServerOptions(),
    batch: Annotated[int, typer.Option(min=1, help="Images read and run at a time.")] = 32,
    concurrency: Annotated[int, typer.Option(min=1, help="Served models: each batch read is sent as this many "
                                                         "requests in flight.", rich_help_panel=ServerOptions.PANEL)] = 1,
    max_drop: Annotated[Optional[float], typer.Option(min=0.0, help="Exit 1 if an artifact's top-1 is more than this "
                                                                    "many points below the reference's.")] = None,
    speed: Annotated[bool, typer.Option("--speed", help="Also time every artifact (p50 latency, img/s), interleaved, "
                                                        "after the accuracy pass.")] = False,
    speed_batch: Annotated[int, typer.Option(min=1, help="Batch size of the --speed timing.")] = 8,
    iterations: Annotated[int, typer.Option(min=1, help="Timed rounds of --speed.")] = 10,
    json_path: JsonOpt = None,
    plot_path: Annotated[Optional[Path], typer.Option("--plot", help="Confusion matrices as PNG (up to 100 "
                                                                     "classes).")] = None,
    speed_plot: Annotated[Optional[Path], typer.Option(help="Accuracy against latency as PNG (with --speed).")] = None,
    overwrite: OverwriteReports = False,
) -> None:
    """Accuracy on labelled images for each artifact beside a reference: top-1/top-5, drop, agreement, per class."""
    if labelled.data is None:
        raise FvdeployError("evaluate needs --data (labelled images)")
    _check_reports(overwrite, files_read(*(artifacts or []), reference, labelled.labels_file, model.checkpoint),
                   (labelled.data,), json=json_path, plot=plot_path, speed_plot=speed_plot)
    if speed_plot is not None and not speed:
        raise FvdeployError("--speed-plot needs --speed")
    if not artifacts and not model.any_given:
        raise FvdeployError("give artifacts to evaluate, or --model (and --checkpoint) to evaluate PyTorch alone")
    from ..use.evaluate import drops_over, plot_confusion, plot_speed
    from ..use.evaluate import evaluate as run_evaluate
    from .tables import evaluate_table

    report = run_evaluate(list(artifacts or []), labelled.data, model, runtime, console, labelled.labels_file, reference,
                          batch, labelled.limit, speed_batch if speed else None, iterations=iterations,
                          confusion_plot=plot_path is not None, server=server.replace(concurrency=concurrency))
    failures = drops_over(report, max_drop) if max_drop is not None else []
    report.update(max_drop=max_drop, passed=not failures)
    stdout.print(evaluate_table(report))
    _write_reports(json_path, report, overwrite, ((lambda p: plot_confusion(report, p, overwrite), plot_path),
                                                  (lambda p: plot_speed(report, p, overwrite), speed_plot)))
    if failures:
        raise CheckFailed("; ".join(failures))


def debug(
    candidate: Annotated[Path, typer.Argument(help="An FP16 or quantized ONNX from `fvdeploy quantize`.",
                                              metavar="CANDIDATE.onnx")],
    tolerance: Tolerance,
    images: ImagesOption,
    reference: Annotated[Optional[Path], typer.Option(help="The FP32 ONNX to compare with (default: the one the "
                                                           "candidate's record names).")] = None,
    labelled: LabelledData = LabelledData(),
    sensitivity: Annotated[bool, typer.Option("--sensitivity/--no-sensitivity",
                                              help="Q/DQ graphs: rank the site groups (each alone kept in FP16).")] = True,
    json_path: JsonOpt = None,
    plot_path: PlotOpt = None,
    overwrite: OverwriteReports = False,
) -> None:
    """Where a precision-lowered graph departs from FP32, layer by layer; which Q/DQ site groups cost most."""
    # The FP32 graph the candidate's record names is read too when no --reference is given: its files are inputs.
    compared = reference if reference is not None else recorded_source(candidate)
    _check_reports(overwrite, files_read(candidate, compared, labelled.labels_file), (images.images, labelled.data),
                   json=json_path, plot=plot_path)
    if images.images is not None and labelled.data is not None:
        raise FvdeployError("give one of --images and --data")
    if is_address(reference):
        raise FvdeployError("debug compares two graphs layer by layer: --reference is the FP32 ONNX file, not a "
                            "served model (evaluate and verify take triton://...)")
    from ..system.files import scratch_folder
    from ..use.debug import debug as run_debug
    from ..use.debug import plot
    from .tables import layers_table, sensitivity_table

    with scratch_folder(prefix="fvdeploy-debug-") as work:
        report = run_debug(candidate, reference, images.images, labelled.data, labelled.labels_file,
                           labelled.limit_or(DEBUG_LIMIT), tolerance, sensitivity, work, console)
    stdout.print(layers_table(report))
    first = report["first_beyond"]
    console.print(f"first beyond tolerance: {first['node']} ({first['kind']}; {'; '.join(first['beyond'])})"
                  if first else "every compared tensor is within tolerance", highlight=False)
    if report.get("sensitivity"):
        stdout.print(sensitivity_table(report["sensitivity"]))
    _write_reports(json_path, report, overwrite, ((lambda p: plot(report, p, overwrite), plot_path),))


def quantize(
    onnx_path: Annotated[Path, typer.Argument(help="FP32 ONNX from `fvdeploy export-onnx`.", metavar="MODEL.onnx")],
    precision: PrecisionFlags,
    calibration: CalibrationOptions,
    target: TargetOptions,
    tolerance: Tolerance,
    accuracy: AccuracyTarget,
    out: OutputTarget,
    images: ImagesOption,
) -> None:
    """Make a precision-ready ONNX: FP16, calibrated INT8 or FP8 Q/DQ for TensorRT (the rest FP16), or INT8 for
    onnxruntime's CPU kernels (--target onnxruntime-cpu, the rest FP32)."""
    if precision.precision is None:
        raise FvdeployError(f"choose one of {' and '.join(PrecisionFlags.flag(f.name) for f, _, _ in PrecisionFlags.declared())}")
    from ..plan import plan_quantize

    plan = plan_quantize(onnx_path, precision.precision, out, calibration, tolerance, target, images, accuracy)
    _wrote(plan.run(Steps()), plan.output)


def build_trt(
    precision: PrecisionFlags,
    model: ModelRequest,
    batch: TunedBatchProfile,
    builder: BuilderOptions,
    calibration: CalibrationOptions,
    onnx_options: OnnxOptions,
    out: OutputTarget,
    images: ImagesOption,
    source: OnnxSource,
) -> None:
    """Build an engine: TensorRT (10 or 11) on this GPU, or TensorRT for RTX ahead of time for chosen GPUs.

    Strongly typed: precision comes from the ONNX. With --model, the ONNX is exported (and quantized for
    --fp16/--int8/--fp8) first. Without TensorRT, it says which fvdeploy commands make that ONNX here, the
    trtexec line to run where TensorRT is, and the command that builds a TensorRT for RTX engine here.
    """
    from ..plan import command_line, plan_build_trt, require_runtime

    plan = plan_build_trt(source.onnx, model, precision.precision, out, calibration, batch, builder, onnx_options, images)
    rtx = builder.replace(runtime=TensorRTRuntime.tensorrt_rtx, compute_capability=("8.9",), timing_cache=None)
    require_runtime(plan, command_line(("build-trt", *source.argv(), *model.argv(), *precision.argv(), *batch.argv(),
                                        *rtx.argv(), *calibration.argv(), *onnx_options.argv(), *images.argv())))
    _wrote(plan.run(Steps()), plan.output)


def coreml(model: ModelRequest, options: CoreMLOptions, out: OutputTarget) -> None:
    """Convert to a Core ML ML Program (.mlpackage): image in, ImageNet classes (or logits) out."""
    from ..plan import plan_coreml

    plan = plan_coreml(model, out, options)
    _wrote(plan.run(Steps()), plan.output)


def triton(
    artifacts: Annotated[list[Path], typer.Argument(help="ONNX or TensorRT artifacts (with their fvdeploy records).")],
    options: TritonOptions,
) -> None:
    """Write a Triton Inference Server model repository, validated with Triton's ModelConfig schema."""
    from ..triton.repository import write

    models, written = write(artifacts, options)
    for model in models:
        if model.note:
            console.print(model.note, markup=False, highlight=False, soft_wrap=True)
    for model in models:
        console.print(f"  {model.name}: {model.backend.value}, batch 1..{model.max_batch}, "
                      f"{len(model.record.outputs)} output(s)", highlight=False)
    console.print(f"wrote {', '.join(written)} into {options.repository} (config.pbtxt validated with Triton's schema)")


def triton_serve(
    repository: Annotated[Path, typer.Argument(help="Model repository from `fvdeploy triton --backend python`.",
                                               metavar="REPOSITORY")],
    http_port: Annotated[int, typer.Option(min=1, max=65535, help="HTTP port on 127.0.0.1.")] = 8000,
) -> None:
    """Serve a model repository on this machine (CPU) with the tritonserver of the nvidia-pytriton wheel.

    Its server has Triton's Python backend only: write the repository with `fvdeploy triton --backend python`.
    Ctrl-C or SIGTERM stops the server and its backend processes.
    """
    from ..triton.local import LocalTritonServer, check_port, check_servable

    names = check_servable(repository)
    check_port(http_port)
    with LocalTritonServer(repository, http_port) as server:
        console.print(f"tritonserver ready at http://{server.url}, serving {', '.join(names)} (Ctrl-C stops it)",
                      highlight=False)
        server.serve()
