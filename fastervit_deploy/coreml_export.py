"""`fvdeploy coreml`: an ML Program (.mlpackage) for Xcode's performance report and Apple devices.

The image input does what Core ML's ImageType can (one scalar scale: /255, and a per-channel bias:
-mean); ImageNet's per-channel 1/std is folded into the stem convolution, which is exact because the
conv zero-pads (0 / std = 0). The graph is the deploy form of our model: rank ≤ 5 everywhere, so a
flexible batch converts (the official model's rank-6 windows do not).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import logging
import platform
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fastervit import FasterViT

from . import __version__
from .artifacts import atomic_output, check_output_path, sha256, write_sidecar
from .errors import CheckFailed, FvdeployError, MissingDependency
from .model_options import ModelSpec
from .progress import Steps
from .runners import Runner, reference_fn

COMPUTE_UNITS = {"all": "ALL", "cpu_and_ne": "CPU_AND_NE", "cpu_and_gpu": "CPU_AND_GPU", "cpu_only": "CPU_ONLY"}
TARGETS = ("iOS16", "iOS17", "iOS18", "macOS13", "macOS14", "macOS15")
MULTIFUNCTION_TARGETS = ("iOS18", "macOS15")
LICENSE = ("fvdeploy code: Apache-2.0. FasterViT weights: NVIDIA Source Code License-NC (non-commercial use only); "
           "check the licence of the checkpoint you converted.")
INPUT_NAME = "image"
# MIL ops a FasterViT ML Program is expected to contain (anything else is reported by the spec check).
EXPECTED_OPS = {"add", "avg_pool", "cast", "classify", "concat", "const", "conv", "gelu", "layer_norm", "linear",
                "matmul", "mul", "pad", "reduce_mean", "relu", "reshape", "slice_by_index", "softmax", "split",
                "transpose", "real_div", "sub", "erf"}
CLASS_NAMES = Path(__file__).with_name("data") / "imagenet1k_classes.tsv"


@dataclass
class CoreMLOptions:
    precision: str = "fp16"
    max_batch: int = 1
    compute_units: str = "all"
    deployment_target: str = "iOS17"
    raw_logits: bool = False
    resolutions: list[tuple[int, int]] = field(default_factory=list)  # extra functions (any-res models)

    def validate(self) -> None:
        if self.precision not in ("fp16", "fp32"):
            raise FvdeployError("--precision must be fp16 or fp32")
        if self.max_batch < 1:
            raise FvdeployError("--max-batch must be at least 1")
        if self.compute_units not in COMPUTE_UNITS:
            raise FvdeployError(f"--compute-units must be one of {', '.join(COMPUTE_UNITS)}")
        if self.deployment_target not in TARGETS:
            raise FvdeployError(f"--deployment-target must be one of {', '.join(TARGETS)}")
        if self.resolutions and self.deployment_target not in MULTIFUNCTION_TARGETS:
            raise FvdeployError("several resolutions make a multifunction package: use --deployment-target iOS18 or macOS15")


def import_coremltools():
    # coremltools announces on import that its native runtime (macOS only) and some frontends are
    # missing, and draws tqdm bars during conversion: keep the output to our own progress lines.
    logging.getLogger("coremltools").setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import coremltools as ct
    except ImportError:
        raise MissingDependency("Core ML conversion needs coremltools (pip install 'fvdeploy[coreml]')") from None
    return ct


def class_names() -> list[str]:
    """ImageNet-1k names in output order (first lemma of each synset)."""
    rows = CLASS_NAMES.read_text().splitlines()[1:]
    return [row.split("\t")[2].split(",")[0].strip() for row in rows]


class ImageClassifier(nn.Module):
    """What the package computes from Core ML's ``pixel/255 - mean``: logits or probabilities."""

    def __init__(self, model: FasterViT, std: tuple[float, float, float], probabilities: bool) -> None:
        super().__init__()
        model.deploy()
        stem = model.patch_embed.conv_down[0]
        with torch.no_grad():
            stem.weight.div_(torch.tensor(std, dtype=stem.weight.dtype).view(1, -1, 1, 1))
        self.model, self.probabilities = model, probabilities

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        return logits.softmax(dim=-1) if self.probabilities else logits


def export_program(wrapper: nn.Module, size: tuple[int, int], max_batch: int):
    x = torch.zeros(min(2, max_batch), 3, *size)
    dynamic = {"x": {0: torch.export.Dim("batch", min=1, max=max_batch)}} if max_batch > 1 else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.export.export(wrapper.eval(), (x,), dynamic_shapes=dynamic).run_decompositions({})


def convert(ct, program, size, pre: dict, opts: CoreMLOptions, num_classes: int):
    batch = ct.RangeDim(1, opts.max_batch, default=1) if opts.max_batch > 1 else 1
    image = ct.ImageType(name=INPUT_NAME, shape=(batch, 3, *size), scale=1 / 255.0,
                         bias=[-m for m in pre["mean"]], color_layout=ct.colorlayout.RGB)
    labels = class_names() if num_classes == 1000 else [str(i) for i in range(num_classes)]
    kwargs = {} if opts.raw_logits else {"classifier_config": ct.ClassifierConfig(labels)}
    if opts.raw_logits:
        kwargs["outputs"] = [ct.TensorType(name="logits")]
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):  # its tqdm bars
            warnings.simplefilter("ignore")
            return ct.convert(
                program, inputs=[image], convert_to="mlprogram",
                compute_precision=ct.precision.FLOAT16 if opts.precision == "fp16" else ct.precision.FLOAT32,
                minimum_deployment_target=getattr(ct.target, opts.deployment_target),
                compute_units=getattr(ct.ComputeUnit, COMPUTE_UNITS[opts.compute_units]), **kwargs,
            )
    except TypeError as err:
        if "0-dimensional arrays" in str(err):  # coremltools 9.0 with numpy >= 2.4
            raise FvdeployError(f"coremltools {ct.__version__} fails with numpy {np.__version__}: install numpy<2.4") from None
        raise


def describe_package(ct, mlmodel, spec: ModelSpec, model: FasterViT, opts: CoreMLOptions) -> None:
    H, W = model.input_size
    mlmodel.author = "fvdeploy"
    mlmodel.license = LICENSE
    mlmodel.version = __version__
    mlmodel.short_description = (f"FasterViT image classifier ({spec.name}, {H}x{W}, {opts.precision}); "
                                 f"{'raw logits' if opts.raw_logits else 'ImageNet-1k class probabilities'}")
    mlmodel.input_description[INPUT_NAME] = (f"RGB image, exactly {W}x{H} (resize by crop_pct "
                                             f"{model.pretrained_cfg['crop_pct']} and centre-crop first)")
    if opts.raw_logits:
        mlmodel.output_description["logits"] = f"{model.cfg.num_classes} class logits (before softmax)"
    else:
        mlmodel.output_description["classLabel"] = "most likely class"
        mlmodel.output_description["classLabel_probs"] = "probability of every class"
    meta = {
        "fvdeploy.model": spec.name, "fvdeploy.resolution": f"{H}x{W}", "fvdeploy.version": __version__,
        "fvdeploy.precision": opts.precision, "fvdeploy.batch_range": f"1,{opts.max_batch}",
        "fvdeploy.window_size": ",".join(map(str, model.cfg.window_size)),
        "fvdeploy.checkpoint_sha256": sha256(spec.checkpoint) if spec.checkpoint else "random-weights",
        "fvdeploy.mean": ",".join(map(str, model.pretrained_cfg["mean"])),
        "fvdeploy.std": ",".join(map(str, model.pretrained_cfg["std"])),
        "fvdeploy.compute_units": opts.compute_units,
    }
    mlmodel.user_defined_metadata.update(meta)


def check_package(ct, path: Path, opts: CoreMLOptions, size: tuple[int, int]) -> dict:
    """Read the saved spec back (works on Linux): inputs, outputs, ops, precision, metadata."""
    from coremltools.proto import MIL_pb2

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    problems = []
    desc = spec.description
    if len(desc.functions):  # multifunction package: check the default function's interface
        desc = next(f for f in desc.functions if f.name == spec.description.defaultFunctionName)
    inp = desc.input[0]
    if inp.name != INPUT_NAME or inp.type.WhichOneof("Type") != "imageType":
        problems.append(f"input is {inp.name} ({inp.type.WhichOneof('Type')}), expected an image named {INPUT_NAME}")
    elif (inp.type.imageType.height, inp.type.imageType.width) != tuple(size) or \
            inp.type.imageType.colorSpace != ct.proto.FeatureTypes_pb2.ImageFeatureType.RGB:
        problems.append("image input is not RGB of the model's size")
    outputs = [o.name for o in desc.output]
    want = ["logits"] if opts.raw_logits else ["classLabel", "classLabel_probs"]
    if sorted(outputs) != sorted(want):
        problems.append(f"outputs {outputs}, expected {want}")
    functions = spec.mlProgram.functions
    ops, const_types = set(), {}
    for fn in functions.values():
        block = fn.block_specializations[fn.opset]
        for op in block.operations:
            ops.add(op.type)
            if op.type == "const":
                for out in op.outputs:
                    name = MIL_pb2.DataType.Name(out.type.tensorType.dataType)
                    const_types[name] = const_types.get(name, 0) + 1
    main = functions["main"] if "main" in functions else next(iter(functions.values()))
    batch_dim = main.inputs[0].type.tensorType.dimensions[0]
    flexible = batch_dim.WhichOneof("dimension") == "unknown"
    if (opts.max_batch > 1) != flexible:
        problems.append(f"batch dimension is {'flexible' if flexible else 'fixed'}, expected max batch {opts.max_batch}")
    unexpected = sorted(ops - EXPECTED_OPS)
    if unexpected:
        problems.append(f"unexpected ops {unexpected}")
    floats = {k: v for k, v in const_types.items() if k.startswith("FLOAT")}
    dominant = max(floats, key=floats.get) if floats else None
    if opts.precision == "fp16" and dominant != "FLOAT16" or opts.precision == "fp32" and "FLOAT16" in floats:
        problems.append(f"weights are {floats}, expected {opts.precision}")
    meta = dict(spec.description.metadata.userDefined)
    for key in ("fvdeploy.model", "fvdeploy.resolution", "fvdeploy.version", "fvdeploy.checkpoint_sha256"):
        if key not in meta:
            problems.append(f"metadata {key} missing")
    if not spec.description.metadata.license or "non-commercial" not in spec.description.metadata.license:
        problems.append("licence metadata missing")
    return {"passed": not problems, "problems": problems, "ops": sorted(ops), "const_types": const_types,
            "outputs": outputs, "flexible_batch": flexible, "functions": sorted(functions),
            "spec_version": spec.specificationVersion}


def build_function(ct, spec: ModelSpec, opts: CoreMLOptions, steps: Steps, tag: str = ""):
    with steps(f"building model{tag}"):
        model = spec.build(steps.note)
    size, pre = model.input_size, model.pretrained_cfg
    with steps(f"torch.export{tag} (batch 1..{opts.max_batch})"):
        program = export_program(ImageClassifier(model, tuple(pre["std"]), not opts.raw_logits), size, opts.max_batch)
    with steps(f"converting to an ML Program{tag} ({opts.precision})"):
        mlmodel = convert(ct, program, size, pre, opts, model.cfg.num_classes)
    describe_package(ct, mlmodel, spec, model, opts)
    return model, mlmodel


def export_coreml(spec: ModelSpec, output: Path | None, opts: CoreMLOptions, steps: Steps, overwrite: bool = False) -> dict:
    opts.validate()
    ct = import_coremltools()
    from fastervit import get_entry

    if opts.resolutions and not get_entry(spec.name).config.any_res:
        raise FvdeployError("--resolutions needs an _any_res model")
    model, mlmodel = build_function(ct, spec, opts, steps)
    H, W = model.input_size
    output = Path(output or f"{spec.name}_{H}x{W}.mlpackage")
    check_output_path(output, overwrite, ".mlpackage")
    with atomic_output(output, companions=(".json",)) as tmp:
        if opts.resolutions:
            save_multifunction(ct, spec, opts, steps, mlmodel, (H, W), tmp)
        else:
            mlmodel.save(str(tmp))
        with steps("checking the saved package"):
            check = check_package(ct, tmp, opts, (H, W))
        for problem in check["problems"]:
            steps.note(f"FAIL {problem}")
        if not check["passed"]:
            raise CheckFailed("Core ML package check failed: " + "; ".join(check["problems"]))
        parity = None
        if platform.system() == "Darwin":
            parity = predict_parity(tmp, spec, model, opts, steps)
        record = {
            "format": "coreml", **spec.describe(model), "precision": opts.precision,
            "batch_range": [1, opts.max_batch], "compute_units": opts.compute_units,
            "deployment_target": opts.deployment_target, "outputs": "logits" if opts.raw_logits else "probabilities",
            "resolutions": [f"{h}x{w}" for h, w in [(H, W), *opts.resolutions]],
            "checkpoint_sha256": sha256(spec.checkpoint) if spec.checkpoint else None,
            "spec_check": check, "parity": parity or "predict needs macOS; run `fvdeploy verify` there",
            "notes": spec.notes, "timings_s": steps.timings, "coremltools": importlib.metadata.version("coremltools"),
        }
        write_sidecar(tmp, record)
    return {"output": output, "record": record}


def save_multifunction(ct, spec: ModelSpec, opts: CoreMLOptions, steps: Steps, main, size, out: Path) -> None:
    """One function per resolution in one package; identical weights are stored once."""
    work = out.parent / "functions"
    work.mkdir()
    desc = ct.utils.MultiFunctionDescriptor()
    for i, (h, w) in enumerate([size, *opts.resolutions]):
        mlmodel = main if i == 0 else build_function(ct, spec.copy(resolution=(h, w)), opts, steps, f" {h}x{w}")[1]
        path = work / f"r{h}x{w}.mlpackage"
        mlmodel.save(str(path))
        desc.add_function(str(path), src_function_name="main", target_function_name=f"main_{h}x{w}")
    desc.default_function_name = f"main_{size[0]}x{size[1]}"
    with steps("merging functions"), contextlib.redirect_stderr(io.StringIO()):  # its tqdm bars
        ct.utils.save_multifunction(desc, str(out))
    # save_multifunction keeps no metadata: copy author, licence, descriptions and our keys back in.
    from coremltools.proto import Model_pb2

    spec_file = out / "Data" / "com.apple.CoreML" / "model.mlmodel"
    merged = Model_pb2.Model.FromString(spec_file.read_bytes())
    merged.description.metadata.CopyFrom(main.get_spec().description.metadata)
    merged.description.metadata.userDefined["fvdeploy.functions"] = ",".join(f"main_{h}x{w}" for h, w in [size, *opts.resolutions])
    spec_file.write_bytes(merged.SerializeToString())


class CoreMLRunner(Runner):
    """Core ML predictions (macOS only): feeds PIL images rebuilt exactly from the normalised batch."""

    name = "coreml"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.model = None

    def activate(self) -> None:
        if platform.system() != "Darwin":
            raise MissingDependency(
                f"Core ML predictions need macOS (this is {platform.system()}); on Linux `fvdeploy coreml` checks "
                f"the package's spec instead. Run `fvdeploy verify {self.path.name}` on a Mac.")
        ct = import_coremltools()
        self.model = ct.models.MLModel(str(self.path))
        meta = self.model.user_defined_metadata
        self.mean = np.array([float(v) for v in meta["fvdeploy.mean"].split(",")], np.float32)
        self.std = np.array([float(v) for v in meta["fvdeploy.std"].split(",")], np.float32)
        self.precision = meta.get("fvdeploy.precision", "fp16")
        self.outputs = "logits" if "logits" in [o.name for o in self.model.get_spec().description.output] else "probabilities"

    def infer(self, batch: np.ndarray) -> np.ndarray:
        from PIL import Image

        rows = []
        for chw in batch:
            pixels = np.clip(np.rint((chw.transpose(1, 2, 0) * self.std + self.mean) * 255.0), 0, 255).astype(np.uint8)
            out = self.model.predict({INPUT_NAME: Image.fromarray(pixels)})
            if self.outputs == "logits":
                rows.append(np.asarray(out["logits"], np.float32).reshape(-1))
            else:
                probs = out["classLabel_probs"]
                rows.append(np.array(list(probs.values()), np.float32))  # label order = class order
        return np.stack(rows)


def predict_parity(path: Path, spec: ModelSpec, model: FasterViT, opts: CoreMLOptions, steps: Steps) -> dict:
    from .images import load_batch
    from .verify import TOLERANCES, describe, run_parity

    reference = spec.copy().build()  # unmodified: the package's copy had 1/std folded into its stem
    batch = load_batch(model.input_size, model.pretrained_cfg)
    with steps("Core ML predictions vs PyTorch"), CoreMLRunner(path) as runner:
        ref = reference_fn(reference, runner.outputs)
        result = run_parity(ref, runner, [batch], TOLERANCES[opts.precision])
    steps.note(describe(result["overall"]))
    if not result["passed"]:
        raise CheckFailed("Core ML parity check failed: " + "; ".join(result["failures"]))
    return result
