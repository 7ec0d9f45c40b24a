"""Commands of the backends, registered on the shared app (cli.py stays thin and generic)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from .cli import command, console
from .errors import CheckFailed, FvdeployError
from .model_options import CheckpointOpt, CtSizeOpt, ModelOpt, ModelSpec, ResolutionOpt, WindowOpt, parse_int_list
from .progress import Steps

OutputOpt = Annotated[Optional[Path], typer.Option("--output", "-o", help="Artifact path (default: derived from the model).")]
OverwriteOpt = Annotated[bool, typer.Option(help="Replace an existing output.")]
ImagesOpt = Annotated[Optional[Path], typer.Option(help="Folder of images (default: scikit-image's photos).")]
JsonOpt = Annotated[Optional[Path], typer.Option("--json", help="Also write the results as JSON here.")]
OptionalModelOpt = Annotated[
    Optional[str], typer.Option("--model", "-m", help="Variant (default: read from the artifact's sidecar).")
]


def write_json(path: Path | None, data: dict) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2, default=str) + "\n")


def spec_for_artifact(artifact: Path, model: str | None, checkpoint: Path | None, resolution, window_size,
                      ct_size) -> tuple[ModelSpec, dict]:
    """The model an artifact was made from: command-line options first, then its sidecar."""
    from .verify import read_sidecar

    side = read_sidecar(artifact)
    if model is None and not side.get("model"):
        raise FvdeployError(f"no sidecar for {artifact.name}: pass --model (and --checkpoint/--resolution as exported)")
    if model is None:
        resolution = resolution or tuple(side["resolution"])
        window_size = window_size or ",".join(map(str, side.get("window_size") or [])) or None
        ct_size = ct_size or side.get("ct_size")
        if checkpoint is None and side.get("checkpoint"):
            checkpoint = Path(side["checkpoint"])
    return ModelSpec.from_cli(model or side["model"], checkpoint, resolution, window_size, ct_size), side


@command("export-onnx")
def export_onnx_cmd(
    model: ModelOpt,
    checkpoint: CheckpointOpt = None,
    resolution: ResolutionOpt = None,
    window_size: WindowOpt = None,
    ct_size: CtSizeOpt = None,
    opset: Annotated[int, typer.Option(help="ONNX opset (17-20).")] = 17,
    min_batch: Annotated[int, typer.Option(help="Smallest batch the artifact must serve.")] = 1,
    max_batch: Annotated[int, typer.Option(help="Largest batch the artifact must serve.")] = 64,
    simplify: Annotated[str, typer.Option(help="onnxslim | onnxsim | none.")] = "onnxslim",
    external_data: Annotated[
        Optional[bool], typer.Option("--external-data/--no-external-data", help="Weights in a .data file (default: only above 2 GB).")
    ] = None,
    images: ImagesOpt = None,
    output: OutputOpt = None,
    overwrite: OverwriteOpt = False,
    no_verify: Annotated[bool, typer.Option("--no-verify", help="Skip the onnxruntime parity check.")] = False,
) -> None:
    """Export a FasterViT as a TensorRT-friendly ONNX graph (dynamic batch), checked and verified."""
    from .onnx_export import ExportOptions, export_onnx

    spec = ModelSpec.from_cli(model, checkpoint, resolution, window_size, ct_size)
    opts = ExportOptions(opset, min_batch, max_batch, simplify, not no_verify, images, external_data)
    result = export_onnx(spec, output, opts, Steps(console), overwrite)
    console.print(f"wrote {result['output']} and {result['sidecar'].name}", highlight=False)


@command("inspect")
def inspect_cmd(
    onnx_path: Annotated[Path, typer.Argument(help="ONNX file to inspect.", metavar="MODEL.onnx")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Op histogram, inputs/outputs and TensorRT-readiness findings of an ONNX file."""
    from .graph_check import inspect_path

    report = inspect_path(onnx_path)
    out = Console()
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        io = Table(title=f"{onnx_path.name}: opset {report.opset}, {report.nodes} nodes")
        for col in ("", "name", "shape", "dtype"):
            io.add_column(col)
        for kind, values in (("input", report.inputs), ("output", report.outputs)):
            for v in values:
                io.add_row(kind, v["name"], str(v["shape"]), v["dtype"])
        out.print(io)
        ops = Table(title="ops")
        ops.add_column("op")
        ops.add_column("count", justify="right")
        for op, n in report.ops.items():
            ops.add_row(op, str(n))
        out.print(ops)
        checks = Table(title="TensorRT readiness")
        for col in ("check", "", "detail"):
            checks.add_column(col)
        for f in report.findings:
            checks.add_row(f.check, "[green]ok[/green]" if f.ok else "[red]FAIL[/red]", f.detail)
        out.print(checks)
    if not report.passed:
        raise typer.Exit(1)


@command("verify")
def verify_cmd(
    artifact: Annotated[Path, typer.Argument(help="Artifact: .onnx, .plan/.engine or .mlpackage.")],
    model: OptionalModelOpt = None,
    checkpoint: CheckpointOpt = None,
    resolution: ResolutionOpt = None,
    window_size: WindowOpt = None,
    ct_size: CtSizeOpt = None,
    images: ImagesOpt = None,
    batch: Annotated[int, typer.Option(help="Images per batch (real images, cycled if fewer).")] = 8,
    precision: Annotated[Optional[str], typer.Option(help="fp32 | fp16 | int8 (default: from the artifact).")] = None,
    max_abs: Annotated[Optional[float], typer.Option(help="Override the max |Δ| tolerance.")] = None,
    min_cosine: Annotated[Optional[float], typer.Option(help="Override the minimum cosine.")] = None,
    min_top1: Annotated[Optional[float], typer.Option(help="Override the minimum top-1 agreement (0-1).")] = None,
    json_path: JsonOpt = None,
) -> None:
    """Compare an artifact with PyTorch on real images: errors, cosine, top-1/top-5 agreement."""
    from .formats import runner_for
    from .images import batch_of, load_batch
    from .runners import reference_fn
    from .verify import describe, run_parity, tolerance_for

    if batch < 1:
        raise FvdeployError("--batch must be at least 1")
    runner = runner_for(artifact)  # validates the artifact type before building anything
    spec, side = spec_for_artifact(artifact, model, checkpoint, resolution, window_size, ct_size)
    steps = Steps(console)
    with steps("building PyTorch reference"):
        torch_model = spec.build(steps.note)
        images = batch_of(load_batch(torch_model.input_size, torch_model.pretrained_cfg, images), batch)
    with steps(f"running {runner.name}"), runner:
        prec = precision or side.get("precision") or runner.precision
        tol = tolerance_for(prec, max_abs, min_cosine, min_top1)
        result = run_parity(reference_fn(torch_model, runner.outputs), runner, [images], tol)
    result.update(artifact=str(artifact), runner=runner.name, precision=prec, model=spec.name)
    steps.note(f"{prec}: {describe(result['overall'])}")
    write_json(json_path, result)
    if not result["passed"]:
        raise CheckFailed("verification failed: " + "; ".join(result["failures"]))
    console.print("[green]verification passed[/green]")


@command("benchmark")
def benchmark_cmd(
    artifacts: Annotated[list[Path], typer.Argument(help="Artifacts to time (ONNX here; engines where TensorRT runs).")],
    model: OptionalModelOpt = None,
    checkpoint: CheckpointOpt = None,
    batch: Annotated[list[str], typer.Option(help="Batch sizes: repeat or comma-separate (default 1,8,32).")] = [],  # noqa: B006
    warmup: Annotated[int, typer.Option(help="Untimed rounds per batch size.")] = 3,
    iterations: Annotated[int, typer.Option(help="Timed rounds per batch size.")] = 10,
    pytorch: Annotated[bool, typer.Option("--pytorch/--no-pytorch", help="Also time PyTorch eager.")] = True,
    json_path: JsonOpt = None,
    plot_path: Annotated[Optional[Path], typer.Option("--plot", help="Write a PNG plot here.")] = None,
) -> None:
    """Latency percentiles and throughput per batch size (warm-up excluded), runners interleaved."""
    import contextlib

    from .benchmark import measure, plot, results_table, synthetic_batches
    from .formats import runner_for
    from .runners import TorchRunner

    sizes = parse_int_list(batch, "--batch") or [1, 8, 32]
    if min(sizes) < 1 or warmup < 0 or iterations < 1:
        raise FvdeployError("batch sizes and --iterations must be at least 1, --warmup at least 0")
    runners = [runner_for(a) for a in artifacts]
    spec, _ = spec_for_artifact(artifacts[0], model, checkpoint, None, None, None)
    torch_model = spec.build()
    fns = {}
    with contextlib.ExitStack() as stack:
        for art, r in zip(artifacts, runners):
            stack.enter_context(r)
            fns[f"{r.name}:{art.name}"] = r.infer
        if pytorch:
            fns["pytorch-eager"] = TorchRunner(torch_model).infer
        batches = synthetic_batches(sizes, (torch_model.cfg.in_chans, *torch_model.input_size))
        results = measure(fns, batches, warmup, iterations, console)
    Console().print(results_table(results))
    write_json(json_path, {"results": results, "model": spec.name})
    if plot_path is not None:
        plot(results, plot_path)
        console.print(f"plot written to {plot_path}")


@command("quantize")
def quantize_cmd(
    onnx_path: Annotated[Path, typer.Argument(help="FP32 ONNX from `fvdeploy export-onnx`.", metavar="MODEL.onnx")],
    fp16: Annotated[bool, typer.Option("--fp16", help="FP16 graph, fp32 inputs/outputs.")] = False,
    int8: Annotated[bool, typer.Option("--int8", help="INT8 Q/DQ graph (needs --calib-dir or a cache).")] = False,
    calib_dir: Annotated[Optional[Path], typer.Option(help="Folder of real calibration images.")] = None,
    calib_images: Annotated[int, typer.Option(help="Use at most this many calibration images.")] = 512,
    method: Annotated[str, typer.Option(help="Calibration: entropy | max | percentile.")] = "entropy",
    calib_cache: Annotated[Optional[Path], typer.Option(help="Scales cache: written after calibrating, reused when present.")] = None,
    exclude: Annotated[list[str], typer.Option(help="Node-name pattern to keep out of INT8 (repeatable).")] = [],  # noqa: B006
    backend: Annotated[str, typer.Option(help="auto (ModelOpt if installed) | modelopt | onnxruntime.")] = "auto",
    keep_fp32: Annotated[list[str], typer.Option(help="Op type kept in fp32 (repeatable; default LayerNormalization).")] = [],  # noqa: B006
    images: ImagesOpt = None,
    output: OutputOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Make a precision-ready ONNX for TensorRT: FP16, or calibrated INT8 Q/DQ with the rest in FP16."""
    from .fp16 import DEFAULT_FP32_OPS
    from .quantize import QuantizeOptions, quantize

    if fp16 == int8:
        raise FvdeployError("choose exactly one of --fp16 and --int8")
    opts = QuantizeOptions("fp16" if fp16 else "int8", calib_dir, calib_images, method, calib_cache, list(exclude),
                           backend, tuple(keep_fp32) or DEFAULT_FP32_OPS, images)
    result = quantize(onnx_path, output, opts, Steps(console), overwrite)
    console.print(f"wrote {result['output']} and {result['output'].name}.json", highlight=False)


@command("build-trt")
def build_trt_cmd(
    onnx_path: Annotated[Optional[Path], typer.Option("--onnx", help="ONNX to build (from export-onnx or quantize).")] = None,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Or: export this variant first.")] = None,
    checkpoint: CheckpointOpt = None,
    resolution: ResolutionOpt = None,
    window_size: WindowOpt = None,
    ct_size: CtSizeOpt = None,
    fp16: Annotated[bool, typer.Option("--fp16", help="FP16 engine (quantizes the ONNX first).")] = False,
    int8: Annotated[bool, typer.Option("--int8", help="INT8 engine from a calibrated Q/DQ ONNX.")] = False,
    calib_dir: Annotated[Optional[Path], typer.Option(help="Calibration images for --int8.")] = None,
    calib_images: Annotated[int, typer.Option(help="Use at most this many calibration images.")] = 512,
    method: Annotated[str, typer.Option(help="Calibration: entropy | max | percentile.")] = "entropy",
    calib_cache: Annotated[Optional[Path], typer.Option(help="Calibration cache (reused when present).")] = None,
    min_batch: Annotated[int, typer.Option(help="Profile minimum batch.")] = 1,
    opt_batch: Annotated[int, typer.Option(help="Profile batch TensorRT tunes for.")] = 8,
    max_batch: Annotated[int, typer.Option(help="Profile maximum batch.")] = 64,
    timing_cache: Annotated[Optional[Path], typer.Option(help="Timing cache file: loaded if present, saved after.")] = None,
    workspace: Annotated[Optional[float], typer.Option(help="Workspace memory limit in GiB.")] = None,
    opt_level: Annotated[Optional[int], typer.Option(help="Builder optimization level 0-5 (TensorRT default 3).")] = None,
    version_compatible: Annotated[bool, typer.Option(help="Engine loadable by later TensorRT versions.")] = False,
    output: OutputOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Build a TensorRT engine (TensorRT 10 or 11, strongly typed; precision comes from the ONNX)."""
    from .quantize import QuantizeOptions
    from .tensorrt_build import BuildOptions, TrtRequest, build_trt

    if (onnx_path is None) == (model is None):
        raise FvdeployError("give exactly one of --onnx and --model")
    if fp16 and int8:
        raise FvdeployError("choose at most one of --fp16 and --int8")
    precision = "fp16" if fp16 else "int8" if int8 else "fp32"
    spec = ModelSpec.from_cli(model, checkpoint, resolution, window_size, ct_size) if model else None
    request = TrtRequest(
        onnx_path, spec, BuildOptions(min_batch, opt_batch, max_batch, timing_cache, workspace, opt_level, version_compatible),
        QuantizeOptions(precision, calib_dir, calib_images, method, calib_cache) if precision != "fp32" else None,
        output, overwrite,
    )
    result = build_trt(request, Steps(console), console)
    console.print(f"wrote {result['output']} and {result['output'].name}.json", highlight=False)


@command("coreml")
def coreml_cmd(
    model: ModelOpt,
    checkpoint: CheckpointOpt = None,
    resolution: ResolutionOpt = None,
    window_size: WindowOpt = None,
    ct_size: CtSizeOpt = None,
    precision: Annotated[str, typer.Option(help="fp16 | fp32 compute precision.")] = "fp16",
    max_batch: Annotated[int, typer.Option(help="Flexible batch 1..N (1: fixed).")] = 1,
    compute_units: Annotated[str, typer.Option(help="all | cpu_and_ne | cpu_and_gpu | cpu_only (default at load).")] = "all",
    deployment_target: Annotated[str, typer.Option(help="Minimum OS: iOS16..iOS18, macOS13..macOS15.")] = "iOS17",
    raw_logits: Annotated[bool, typer.Option("--raw-logits", help="Output logits instead of a classifier.")] = False,
    resolutions: Annotated[list[str], typer.Option("--resolutions", help="Extra HxW (any-res; one function each; iOS18+).")] = [],  # noqa: B006
    output: OutputOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Convert to a Core ML ML Program (.mlpackage): image in, ImageNet classes (or logits) out."""
    from .coreml_export import CoreMLOptions, export_coreml

    extra = []
    for text in resolutions:
        try:
            h, w = (int(v) for v in text.lower().split("x"))
        except ValueError:
            raise FvdeployError(f"--resolutions takes HxW, got {text!r}") from None
        extra.append((h, w))
    spec = ModelSpec.from_cli(model, checkpoint, resolution, window_size, ct_size)
    opts = CoreMLOptions(precision, max_batch, compute_units, deployment_target, raw_logits, extra)
    result = export_coreml(spec, output, opts, Steps(console), overwrite)
    console.print(f"wrote {result['output']} and {result['output'].name}.json", highlight=False)


@command("formats")
def formats_cmd() -> None:
    """The artifact formats fvdeploy makes and checks, and whether this machine can run each one."""
    from .formats import FORMATS

    table = Table(title="artifact formats")
    for col in ("format", "files", "precisions", "runs with", "runs here"):
        table.add_column(col)
    for fmt in FORMATS:
        table.add_row(fmt.key, " ".join(fmt.suffixes), ", ".join(fmt.precisions), fmt.needs,
                      "yes" if fmt.runnable_here() else "no")
    Console().print(table)
