"""Option groups (Polygraphy's argument groups, for Typer).

A group declares its options once, with their choices (enums), ranges and defaults, through Typer's
``Annotated[..., typer.Option()]`` API, and parses them into the plain dataclass the rest of fvdeploy
reads. A command names a group as a parameter type; ``with_groups`` expands it into the group's
options for Typer and hands the command the parsed dataclass. Typer stays in this package.
"""

from __future__ import annotations

import functools
import inspect
import typing
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer

from ..errors import FvdeployError
from ..options import (
    DEFAULT_MAX_BATCH,
    DEFAULT_SIMPLIFIER,
    SUPPORTED_OPSETS,
    BatchProfile,
    BuilderOptions,
    CalibrationMethod,
    CalibrationOptions,
    ComputeUnits,
    CoreMLOptions,
    CoreMLPrecision,
    DeploymentTarget,
    ModelRequest,
    OnnxOptions,
    OutputTarget,
    Provider,
    QuantBackend,
    RunOptions,
    Simplifier,
    Tolerance,
)


class ArgGroup:
    """Subclasses declare options as annotated class attributes and implement ``parse``."""

    @classmethod
    def parameters(cls) -> list[inspect.Parameter]:
        hints = typing.get_type_hints(cls, include_extras=True)
        return [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=getattr(cls, name), annotation=hint)
                for name, hint in hints.items()]

    @classmethod
    def parse(cls, **values: Any) -> Any:
        raise NotImplementedError


def with_groups(fn: Callable) -> Callable:
    """Expand every ``ArgGroup``-typed parameter of ``fn`` into the group's options (for Typer)."""
    hints = typing.get_type_hints(fn, include_extras=True)
    params: list[inspect.Parameter] = []
    groups: dict[str, type[ArgGroup]] = {}
    for p in inspect.signature(fn).parameters.values():
        hint = hints.get(p.name, p.annotation)
        if isinstance(hint, type) and issubclass(hint, ArgGroup):
            groups[p.name] = hint
            params.extend(hint.parameters())
        else:
            params.append(p.replace(annotation=hint, kind=inspect.Parameter.KEYWORD_ONLY))
    names = [p.name for p in params]
    if len(names) != len(set(names)):
        raise TypeError(f"{fn.__name__}: two options share a name: {sorted(n for n in names if names.count(n) > 1)}")

    @functools.wraps(fn)
    def command(**values: Any) -> Any:
        for name, group in groups.items():
            values[name] = group.parse(**{p.name: values.pop(p.name) for p in group.parameters()})
        return fn(**values)

    del command.__wrapped__  # Typer must see the expanded signature below, not fn's
    command.__signature__ = inspect.Signature(params)
    command.__annotations__ = {p.name: p.annotation for p in params}
    return command


def parse_ints(text: str | list[str] | None, what: str) -> tuple[int, ...] | None:
    """``"7,7,12,6"``, ``"7 7"`` or a repeated option's list → ints (None stays None)."""
    if text is None or text == []:
        return None
    parts = [text] if isinstance(text, str) else list(text)
    try:
        return tuple(int(p) for chunk in parts for p in chunk.replace(",", " ").split())
    except ValueError:
        raise FvdeployError(f"{what} must be integers, got {' '.join(parts)!r}") from None


def _panel(name: str) -> Callable[..., Any]:
    return functools.partial(typer.Option, rich_help_panel=name)


_model = _panel("Model")


class ModelArgs(ArgGroup):
    model: Annotated[Optional[str], _model("--model", "-m", help="Registered variant (see `fvdeploy models`).")] = None
    checkpoint: Annotated[Optional[Path], _model(help="Official .pth.tar or fvdeploy checkpoint; without it, "
                                                      "seeded checkpoint-like random weights.")] = None
    resolution: Annotated[Optional[tuple[int, int]], _model(metavar="H W", help="Input height and width "
                                                                                "(default: the variant's).")] = None
    window_size: Annotated[Optional[str], _model(help="Window size: one value or four comma-separated (stage 0..3), "
                                                      "e.g. 7,7,12,6 (any-res default: chosen to fit).")] = None
    ct_size: Annotated[Optional[int], _model(min=1, help="Carrier tokens per window side (official: 2).")] = None
    seed: Annotated[int, _model(min=0, help="Seed of the random weights used without --checkpoint.")] = 0
    features: Annotated[Optional[str], _model(metavar="[INDICES]", help="Backbone: output the feature maps of "
                                              "these stages (comma-separated, 0..3; bare --features: all four) "
                                              "as feat_s4..feat_s32 instead of logits.")] = None
    checkpoint_prefix: Annotated[str, _model(help="Take the checkpoint's keys under this prefix, e.g. a "
                                                  "detector's backbone.0.")] = ""

    @classmethod
    def parse(cls, model, checkpoint, resolution, window_size, ct_size, seed, features, checkpoint_prefix) -> ModelRequest:
        return ModelRequest(name=model, checkpoint=checkpoint, resolution=tuple(resolution) if resolution else None,
                            window_size=parse_ints(window_size, "--window-size"), ct_size=ct_size, seed=seed,
                            features=parse_ints(features, "--features"), checkpoint_prefix=checkpoint_prefix)


_output = _panel("Output")


class OutputArgs(ArgGroup):
    output: Annotated[Optional[Path], _output("--output", "-o", help="Artifact path (default: named after the "
                                                                     "model and resolution).")] = None
    overwrite: Annotated[bool, _output(help="Replace existing outputs (never a folder that is not a Core ML "
                                            "package).")] = False

    @classmethod
    def parse(cls, output, overwrite) -> OutputTarget:
        return OutputTarget(path=output, overwrite=overwrite)


_batch = _panel("Batch range")


class BatchArgs(ArgGroup):
    min_batch: Annotated[int, _batch(min=1, help="Smallest batch the artifact must serve.")] = 1
    max_batch: Annotated[int, _batch(min=1, help="Largest batch the artifact must serve.")] = DEFAULT_MAX_BATCH

    @classmethod
    def parse(cls, min_batch, max_batch) -> BatchProfile:
        return BatchProfile(min=min_batch, max=max_batch)


_onnx = _panel("ONNX")


class OnnxArgs(ArgGroup):
    opset: Annotated[int, _onnx(min=min(SUPPORTED_OPSETS), max=max(SUPPORTED_OPSETS), help="ONNX opset.")] = 17
    simplify: Annotated[Simplifier, _onnx(help="Graph simplifier.")] = DEFAULT_SIMPLIFIER
    external_data: Annotated[Optional[bool], _onnx("--external-data/--no-external-data",
                                                   help="Weights in a .data file (default: only above 2 GB).")] = None

    @classmethod
    def parse(cls, opset, simplify, external_data) -> OnnxOptions:
        return OnnxOptions(opset=opset, simplify=simplify, external_data=external_data)


_precision = _panel("Precision")


class PrecisionArgs(ArgGroup):
    fp16: Annotated[bool, _precision("--fp16", help="FP16 graph (fp32 inputs and outputs).")] = False
    int8: Annotated[bool, _precision("--int8", help="INT8 Q/DQ graph, the rest FP16 (needs calibration images "
                                                    "or a cache).")] = False

    @classmethod
    def parse(cls, fp16, int8) -> str | None:
        if fp16 and int8:
            raise FvdeployError("choose one of --fp16 and --int8")
        return "fp16" if fp16 else "int8" if int8 else None


_calib = _panel("INT8 calibration")


class CalibrationArgs(ArgGroup):
    calib_dir: Annotated[Optional[Path], _calib(help="Folder of real calibration images.")] = None
    calib_images: Annotated[int, _calib(min=1, help="Use at most this many calibration images.")] = 512
    method: Annotated[CalibrationMethod, _calib(help="Calibration method.")] = CalibrationMethod.entropy
    calib_cache: Annotated[Optional[Path], _calib(help="Scales cache: written after calibrating, reused "
                                                       "(validated) when present.")] = None
    backend: Annotated[QuantBackend, _calib(help="auto: ModelOpt if installed, else onnxruntime.")] = QuantBackend.auto
    exclude: Annotated[Optional[list[str]], _calib(help="Node-name pattern kept out of INT8 (repeatable).")] = None

    @classmethod
    def parse(cls, calib_dir, calib_images, method, calib_cache, backend, exclude) -> CalibrationOptions:
        return CalibrationOptions(folder=calib_dir, images=calib_images, method=method, cache=calib_cache,
                                  backend=backend, exclude=tuple(exclude or ()))


_tolerance = _panel("Tolerances (default: per precision)")


class ToleranceArgs(ArgGroup):
    max_abs: Annotated[Optional[float], _tolerance(min=0.0, help="Maximum |Δ| of any output value.")] = None
    min_cosine: Annotated[Optional[float], _tolerance(min=-1.0, max=1.0, help="Minimum cosine per image.")] = None
    min_top1: Annotated[Optional[float], _tolerance(min=0.0, max=1.0, help="Minimum top-1 agreement, a fraction "
                                                                          "(0.95 = 95 %).")] = None

    @classmethod
    def parse(cls, max_abs, min_cosine, min_top1) -> Tolerance:
        return Tolerance(max_abs=max_abs, min_cosine=min_cosine, min_top1=min_top1)


_trt = _panel("TensorRT builder")


class BuilderArgs(ArgGroup):
    timing_cache: Annotated[Optional[Path], _trt(help="Timing cache file: loaded if present, saved after.")] = None
    workspace: Annotated[Optional[float], _trt(min=0.0, help="Workspace memory limit in GiB.")] = None
    opt_level: Annotated[Optional[int], _trt(min=0, max=5, help="Builder optimization level (TensorRT's default "
                                                                "3).")] = None
    version_compatible: Annotated[bool, _trt(help="Engine loadable by later TensorRT versions.")] = False

    @classmethod
    def parse(cls, timing_cache, workspace, opt_level, version_compatible) -> BuilderOptions:
        return BuilderOptions(timing_cache=timing_cache, workspace_gib=workspace, opt_level=opt_level,
                              version_compatible=version_compatible)


_runtime = _panel("Runtime")


class RuntimeArgs(ArgGroup):
    provider: Annotated[Provider, _runtime(help="onnxruntime execution provider (cuda and tensorrt need "
                                                "onnxruntime-gpu).")] = Provider.cpu
    threads: Annotated[Optional[int], _runtime(min=1, help="CPU threads for onnxruntime and PyTorch.")] = None

    @classmethod
    def parse(cls, provider, threads) -> RunOptions:
        return RunOptions(provider=provider, threads=threads)


_coreml = _panel("Core ML")


class CoreMLArgs(ArgGroup):
    precision: Annotated[CoreMLPrecision, _coreml(help="Compute precision.")] = CoreMLPrecision.fp16
    max_batch: Annotated[int, _coreml("--max-batch", min=1, help="Flexible batch 1..N (1: fixed).")] = 1
    compute_units: Annotated[ComputeUnits, _coreml(help="Default compute units when loading.")] = ComputeUnits.all
    deployment_target: Annotated[DeploymentTarget, _coreml(help="Minimum OS.")] = DeploymentTarget.iOS17
    raw_logits: Annotated[bool, _coreml("--raw-logits", help="Output logits instead of a classifier.")] = False

    @classmethod
    def parse(cls, precision, max_batch, compute_units, deployment_target, raw_logits) -> CoreMLOptions:
        return CoreMLOptions(precision=precision, max_batch=max_batch, compute_units=compute_units,
                             deployment_target=deployment_target, raw_logits=raw_logits)


ImagesOpt = Annotated[Optional[Path], typer.Option(help="Folder of images for the parity figures (default: "
                                                        "scikit-image's photos).")]
JsonOpt = Annotated[Optional[Path], typer.Option("--json", help="Also write the results as JSON here.")]
