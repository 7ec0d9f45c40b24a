"""The commands: parse option groups, plan, run, report. The work itself lives in the backend modules."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from ..errors import CheckFailed, FvdeployError
from ..files import check_output, write_text_atomic
from ..options import DEFAULT_FP32_OPS, InstanceKind, TritonBackend, TritonOptions
from ..plan import plan_build_trt, plan_coreml, plan_export, plan_quantize, require_tensorrt
from ..progress import Steps, console

if TYPE_CHECKING:
    from ..record import ArtifactRecord
from .groups import (
    BatchArgs,
    BuilderArgs,
    CalibrationArgs,
    CoreMLArgs,
    ImagesOpt,
    JsonOpt,
    ModelArgs,
    OnnxArgs,
    OutputArgs,
    PrecisionArgs,
    RuntimeArgs,
    ToleranceArgs,
    parse_ints,
)

stdout = Console(highlight=False)


def _check_json(path: Path | None) -> None:
    if path is not None:
        check_output(path, True, ".json")


def _write_json(path: Path | None, data: dict) -> None:
    if path is not None:
        write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def _wrote(record: ArtifactRecord, output: Path) -> None:
    console.print(f"wrote {output} and {output.name}.json ({record.precision}, batch "
                  f"{record.batch_range[0]}..{record.batch_range[1]})", highlight=False)


def models(
    pattern: Annotated[str, typer.Argument(help="Glob over model names.")] = "*",
    as_json: Annotated[bool, typer.Option("--json", help="Print the rows as JSON.")] = False,
) -> None:
    """List the registered FasterViT variants."""
    from ..model_table import model_rows, models_table

    rows = model_rows(pattern)
    if not rows:
        raise FvdeployError(f"no model matches {pattern!r}")
    if as_json:
        print(json.dumps(rows, indent=2))
    else:
        stdout.print(models_table(rows))


def formats(as_json: Annotated[bool, typer.Option("--json", help="Print the table as JSON.")] = False) -> None:
    """The artifact formats fvdeploy makes and checks, and what this machine can do with each."""
    from ..formats import FORMATS

    rows = [{"format": f.key, "files": list(f.suffixes), "precisions": list(f.precisions), "made_by": f.command,
             "convert_here": f.missing_to_convert() or "yes", "run_here": f.missing_to_run() or "yes"}
            for f in FORMATS]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title="artifact formats")
    for col in ("format", "files", "precisions", "made by", "make here", "run here"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["format"], " ".join(r["files"]), ", ".join(r["precisions"]), r["made_by"], r["convert_here"],
                      r["run_here"])
    stdout.print(table)


def export_onnx(
    model: ModelArgs,
    onnx: OnnxArgs,
    batch: BatchArgs,
    out: OutputArgs,
    images: ImagesOpt = None,
    no_verify: Annotated[bool, typer.Option("--no-verify", help="Skip the onnxruntime parity check.")] = False,
) -> None:
    """Export a FasterViT as a TensorRT-friendly ONNX graph (dynamic batch), checked and verified."""
    plan = plan_export(model, out, onnx, batch, images, verify=not no_verify)
    _wrote(plan.run(Steps()), plan.stages[-1].output)


def inspect(
    onnx_path: Annotated[Path, typer.Argument(help="ONNX file to inspect.", metavar="MODEL.onnx")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Op histogram, inputs/outputs and TensorRT-readiness findings of an ONNX file."""
    from ..graph_check import inspect_path

    report = inspect_path(onnx_path)
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        io = Table(title=f"{onnx_path.name}: opset {report.opset}, {report.nodes} nodes")
        for col in ("", "name", "shape", "dtype"):
            io.add_column(col)
        for kind, values in (("input", report.inputs), ("output", report.outputs)):
            for v in values:
                io.add_row(kind, v["name"], str(v["shape"]), v["dtype"])
        stdout.print(io)
        ops = Table(title="ops")
        ops.add_column("op")
        ops.add_column("count", justify="right")
        for op, n in report.ops.items():
            ops.add_row(op, str(n))
        stdout.print(ops)
        checks = Table(title="TensorRT readiness")
        for col in ("check", "", "detail"):
            checks.add_column(col)
        for f in report.findings:
            mark = "[green]ok[/green]" if f.ok else "[red]FAIL[/red]" if f.severity == "error" else "[yellow]note[/yellow]"
            checks.add_row(f.check, mark, f.detail)
        stdout.print(checks)
    if not report.passed:
        raise typer.Exit(1)


def verify(
    artifact: Annotated[Path, typer.Argument(help="Artifact: .onnx, .plan/.engine or .mlpackage.")],
    model: ModelArgs,
    tolerance: ToleranceArgs,
    runtime: RuntimeArgs,
    images: ImagesOpt = None,
    batch: Annotated[int, typer.Option(min=1, help="Images per batch (real images, cycled if fewer).")] = 8,
    json_path: JsonOpt = None,
) -> None:
    """Compare an artifact with PyTorch on real images: errors, cosine, top-1/top-5 agreement.

    The model, its checkpoint (found by content) and the precision come from the artifact's record;
    model options override them.
    """
    _check_json(json_path)
    from ..artifact import open_artifact
    from ..images import batch_of, load_batch
    from ..runners import TorchRunner, in_output_space
    from ..verify import TOLERANCES, report_lines, run_parity

    art = open_artifact(artifact, model)
    desc, record = art.model, art.record
    tol = TOLERANCES[record.precision].override(tolerance)
    steps = Steps()
    with steps("building PyTorch reference"):
        torch_model = desc.build(steps.note)
        photos = batch_of(load_batch(desc.resolution, desc.preprocessing, images), batch)
    with steps(f"running {art.backend.description}"), art.runner(runtime) as runner, \
            TorchRunner(torch_model, desc.input, desc.outputs, threads=runtime.threads) as reference:
        result = run_parity(lambda b: in_output_space(reference.infer(b), runner.outputs), runner, [photos], tol)
    result.update(artifact=str(art.path), runner=runner.name, precision=record.precision, model=desc.name)
    for line in report_lines(result):
        steps.note(f"{record.precision}: {line}")
    _write_json(json_path, result)
    if not result["passed"]:
        raise CheckFailed("verification failed: " + "; ".join(result["failures"]))
    console.print("[green]verification passed[/green]")


def predict(
    artifact: Annotated[Path, typer.Argument(help="Artifact to run (any format this machine runs).")],
    images: Annotated[list[Path], typer.Argument(help="Image files.", metavar="IMAGE...")],
    runtime: RuntimeArgs,
    top: Annotated[int, typer.Option(min=1, max=100, help="Classes to show per image.")] = 5,
    json_path: JsonOpt = None,
) -> None:
    """Top classes and probabilities of images, with the model's own preprocessing."""
    _check_json(json_path)
    for path in images:
        if not path.is_file():
            raise FvdeployError(f"image not found: {path}")
    from ..artifact import open_artifact
    from ..predict import predict as run_predict

    art = open_artifact(artifact)
    rows = run_predict(art, images, top, runtime)
    _write_json(json_path, {"artifact": str(art.path), "precision": art.record.precision, "model": art.model.name,
                            "predictions": rows})
    for row in rows:
        table = Table(title=row["image"], title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
        table.add_column("class")
        table.add_column("index", justify="right")
        table.add_column("probability", justify="right")
        for t in row["top"]:
            table.add_row(t["label"], str(t["index"]), f"{t['probability']:.4f}")
        stdout.print(table)


def benchmark(
    artifacts: Annotated[list[Path], typer.Argument(help="Artifacts to time (ONNX here; engines where TensorRT runs).")],
    model: ModelArgs,
    runtime: RuntimeArgs,
    batch: Annotated[Optional[list[str]], typer.Option(help="Batch sizes: repeat or comma-separate (default 1,8,32).")] = None,
    warmup: Annotated[int, typer.Option(min=0, help="Untimed rounds per batch size.")] = 3,
    iterations: Annotated[int, typer.Option(min=1, help="Timed rounds per batch size.")] = 10,
    pytorch: Annotated[bool, typer.Option("--pytorch/--no-pytorch", help="Also time PyTorch eager.")] = True,
    json_path: JsonOpt = None,
    plot_path: Annotated[Optional[Path], typer.Option("--plot", help="Write a PNG plot here.")] = None,
) -> None:
    """Latency percentiles and throughput per batch size (warm-up excluded), runners interleaved."""
    sizes = parse_ints(batch, "--batch") or (1, 8, 32)
    if min(sizes) < 1:
        raise FvdeployError("batch sizes must be at least 1")
    _check_json(json_path)
    if plot_path is not None:
        check_output(plot_path, True, ".png")
    import contextlib

    from ..artifact import open_artifact
    from ..benchmark import machine, measure, plot, results_table, synthetic_batches
    from ..runners import TorchRunner

    arts = [open_artifact(a, model) for a in artifacts]
    first = arts[0]
    for art in arts[1:]:
        if art.model.input.shape != first.model.input.shape:
            raise FvdeployError(f"{art.path.name} takes [N, {', '.join(map(str, art.model.input.shape))}] but "
                                f"{first.path.name} takes [N, {', '.join(map(str, first.model.input.shape))}]: "
                                "benchmark artifacts of one input size together")
    for art in arts:
        low, high = art.record.batch_range
        outside = [n for n in sizes if not low <= n <= high]
        if outside:
            raise FvdeployError(f"batch {outside[0]} is outside {art.path.name}'s batch range {low}..{high}")
    desc = first.model
    fns = {}
    with contextlib.ExitStack() as stack:
        for art in arts:
            runner = stack.enter_context(art.runner(runtime))
            fns[f"{runner.name}:{art.path.name}"] = runner.infer
        if pytorch:
            fns["pytorch-eager"] = stack.enter_context(
                TorchRunner(desc.build(), desc.input, desc.outputs, threads=runtime.threads)).infer
        batches = synthetic_batches(sizes, desc.input.shape)
        results = measure(fns, batches, warmup, iterations, console)
    stdout.print(results_table(results))
    info = machine(runtime.threads)
    _write_json(json_path, {"results": results, "model": desc.name, "machine": info})
    if plot_path is not None:
        plot(results, plot_path, info)
        console.print(f"plot written to {plot_path}")


def quantize(
    onnx_path: Annotated[Path, typer.Argument(help="FP32 ONNX from `fvdeploy export-onnx`.", metavar="MODEL.onnx")],
    precision: PrecisionArgs,
    calibration: CalibrationArgs,
    tolerance: ToleranceArgs,
    out: OutputArgs,
    keep_fp32: Annotated[Optional[list[str]], typer.Option(help="Op type kept in fp32 (repeatable; default "
                                                                "LayerNormalization).")] = None,
    images: ImagesOpt = None,
) -> None:
    """Make a precision-ready ONNX for TensorRT: FP16, or calibrated INT8 Q/DQ with the rest in FP16."""
    if precision is None:
        raise FvdeployError("choose one of --fp16 and --int8")
    plan = plan_quantize(onnx_path, precision, out, calibration, tolerance, tuple(keep_fp32 or DEFAULT_FP32_OPS), images)
    _wrote(plan.run(Steps()), plan.stages[-1].output)


def build_trt(
    precision: PrecisionArgs,
    model: ModelArgs,
    batch: BatchArgs,
    builder: BuilderArgs,
    calibration: CalibrationArgs,
    onnx_options: OnnxArgs,
    out: OutputArgs,
    onnx: Annotated[Optional[Path], typer.Option("--onnx", help="ONNX to build (from export-onnx or quantize).")] = None,
    opt_batch: Annotated[Optional[int], typer.Option(min=1, help="Batch TensorRT tunes for (default 8, within the "
                                                                 "range).", rich_help_panel="Batch range")] = None,
    images: ImagesOpt = None,
) -> None:
    """Build a TensorRT engine (TensorRT 10 or 11, strongly typed; precision comes from the ONNX).

    With --model, the ONNX is exported (and quantized for --fp16/--int8) first. Without TensorRT, it
    says which fvdeploy commands make that ONNX here and the trtexec line to run where TensorRT is.
    """
    import dataclasses

    plan = plan_build_trt(onnx, model, precision, out, calibration, dataclasses.replace(batch, opt=opt_batch),
                          builder, onnx_options, images)
    require_tensorrt(plan)
    _wrote(plan.run(Steps()), plan.stages[-1].output)


def coreml(
    model: ModelArgs,
    options: CoreMLArgs,
    out: OutputArgs,
    resolutions: Annotated[Optional[list[str]], typer.Option("--resolutions", help="Extra HxW (any-res; one "
                                                                                    "function each; iOS18+).")] = None,
) -> None:
    """Convert to a Core ML ML Program (.mlpackage): image in, ImageNet classes (or logits) out."""
    extra = []
    for text in resolutions or ():
        try:
            h, w = (int(v) for v in text.lower().split("x"))
        except ValueError:
            raise FvdeployError(f"--resolutions takes HxW, got {text!r}") from None
        extra.append((h, w))
    plan = plan_coreml(model, out, options, tuple(extra))
    _wrote(plan.run(Steps()), plan.stages[-1].output)


def triton(
    artifacts: Annotated[list[Path], typer.Argument(help="ONNX or TensorRT artifacts (with their fvdeploy records).")],
    repository: Annotated[Path, typer.Option("--repository", help="Model repository folder (created if missing).")],
    name: Annotated[Optional[list[str]], typer.Option(help="Model name, one per artifact (default: model, "
                                                           "resolution and precision).")] = None,
    version: Annotated[int, typer.Option(min=1, help="Version folder.")] = 1,
    instances: Annotated[int, typer.Option(min=1, help="Model instances (instance_group count).")] = 1,
    max_queue_delay_us: Annotated[int, typer.Option(min=0, help="Dynamic batching: longest wait to fill a batch.")] = 100,
    preferred_batch: Annotated[Optional[list[str]], typer.Option(help="Preferred batch sizes (default: 4, 8, 16, 32 "
                                                                      "within the batch range).")] = None,
    backend: Annotated[TritonBackend, typer.Option(help="auto: tensorrt for .plan, onnxruntime for .onnx; python: the "
                                                        "ONNX on onnxruntime in Triton's Python backend (CPU).")] = TritonBackend.auto,
    instance_kind: Annotated[InstanceKind, typer.Option(help="auto: GPU, CPU for the python backend.")] = InstanceKind.auto,
    ort_tensorrt: Annotated[bool, typer.Option("--ort-tensorrt", help="onnxruntime backend on a GPU host: TensorRT "
                                                                      "accelerator, FP16, engine cache.")] = False,
    preprocess: Annotated[bool, typer.Option("--preprocess", help="Add a preprocessing model and an ensemble that "
                                                                  "take encoded JPEG/PNG bytes.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace models of the same name.")] = False,
) -> None:
    """Write a Triton Inference Server model repository, validated with Triton's ModelConfig schema."""
    from ..triton_repo import check_repository, resolve, write_repository

    opts = TritonOptions(repository=repository, version=version, instances=instances,
                         max_queue_delay_us=max_queue_delay_us, preferred_batch=parse_ints(preferred_batch, "--preferred-batch") or (),
                         backend=backend, instance_kind=instance_kind, ort_tensorrt=ort_tensorrt,
                         preprocess=preprocess, overwrite=overwrite)
    names = list(name or [])
    if names and len(names) != len(artifacts):
        raise FvdeployError(f"give one --name per artifact ({len(artifacts)} artifacts, {len(names)} names)")
    models = [resolve(a, opts, names[i] if names else None) for i, a in enumerate(artifacts)]
    check_repository(opts, models)
    written = write_repository(opts, models)
    for model in models:
        console.print(f"  {model.name}: {model.backend.value}, batch 1..{model.max_batch}, "
                      f"{len(model.record.outputs)} output(s)", highlight=False)
    console.print(f"wrote {', '.join(written)} into {repository} (config.pbtxt validated with Triton's schema)")

