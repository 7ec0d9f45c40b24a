"""`fvdeploy coreml`: an ML Program (.mlpackage) for Xcode's performance report and Apple devices.

The image input does what Core ML's ImageType can (one scalar scale: /255, and a per-channel bias:
-mean); ImageNet's per-channel 1/std is folded into the stem convolution, which is exact because the
conv zero-pads (0 / std = 0). The graph is the deploy form of our model: rank ≤ 5 everywhere, so a
flexible batch converts (the official model's rank-6 windows do not).
"""

from __future__ import annotations

import contextlib
import io
import platform
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fastervit import FasterViT

from ..version import __version__
from ..core.checks import CheckReport, Finding
from ..core.finish import finish
from ..core.model_spec import ModelDescription
from ..core.options import CoreMLOptions
from ..core.parity import ParityJob
from ..core.precision import TOLERANCES, Precision
from ..core.record import ArtifactRecord, FormatKey
from ..core.reference import TorchRunner
from ..core.runner import in_output_space
from ..core.tensors import TensorKind, TensorSpec
from ..data.images import load_batch
from ..system.errors import FvdeployError
from ..system.files import atomic_output, library_temp_files_in, scratch_folder
from ..system.optional import import_coremltools
from ..system.progress import Steps
from . import metadata
from .job import CoreMLJob
from .runner import CoreMLRunner

LICENSE = ("fvdeploy code: Apache-2.0. FasterViT weights: NVIDIA Source Code License-NC (non-commercial use only); "
           "check the licence of the checkpoint you converted.")
INPUT_NAME = "image"
# MIL ops a FasterViT ML Program is expected to contain (anything else is reported by the spec check).
EXPECTED_OPS = {"add", "avg_pool", "cast", "classify", "concat", "const", "conv", "gelu", "layer_norm", "linear",
                "matmul", "mul", "pad", "reduce_mean", "relu", "reshape", "slice_by_index", "softmax", "split",
                "transpose", "real_div", "sub", "erf"}


class ImageClassifier(nn.Module):
    """What the package computes from Core ML's ``pixel/255 - mean``: logits, probabilities, or a backbone's maps."""

    def __init__(self, model: FasterViT, std: tuple[float, float, float], probabilities: bool) -> None:
        super().__init__()
        deployed = model.deploy()  # a copy: ``model`` stays the unfolded reference
        with torch.no_grad():
            deployed.stem_conv.weight.div_(torch.tensor(std, dtype=deployed.stem_conv.weight.dtype).view(1, -1, 1, 1))
        self.model, self.probabilities = deployed, probabilities

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        out = self.model(x)
        if isinstance(out, list):
            return tuple(out)
        return out.softmax(dim=-1) if self.probabilities else out


def export_program(wrapper: nn.Module, size: tuple[int, int], max_batch: int):
    x = torch.zeros(min(2, max_batch), 3, *size)
    dynamic = {"x": {0: torch.export.Dim("batch", min=1, max=max_batch)}} if max_batch > 1 else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.export.export(wrapper.eval(), (x,), dynamic_shapes=dynamic).run_decompositions({})


def convert(ct, program, desc: ModelDescription, opts: CoreMLOptions, outputs: tuple[TensorSpec, ...]):
    batch = ct.RangeDim(1, opts.max_batch, default=1) if opts.max_batch > 1 else 1
    image = ct.ImageType(name=INPUT_NAME, shape=(batch, 3, *desc.resolution), scale=1 / 255.0,
                         bias=[-m for m in desc.preprocessing.mean], color_layout=ct.colorlayout.RGB)
    if outputs[0].kind is TensorKind.probabilities:
        kwargs = {"classifier_config": ct.ClassifierConfig(desc.labels())}
    else:  # raw logits, or a backbone's maps
        kwargs = {"outputs": [ct.TensorType(name=o.name) for o in outputs]}
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):  # its tqdm bars
            warnings.simplefilter("ignore")
            return ct.convert(
                program, inputs=[image], convert_to="mlprogram",
                compute_precision=ct.precision.FLOAT16 if opts.precision is Precision.fp16 else ct.precision.FLOAT32,
                minimum_deployment_target=getattr(ct.target, opts.deployment_target.value),
                compute_units=getattr(ct.ComputeUnit, opts.compute_units.name.upper()), **kwargs,
            )
    except TypeError as err:
        if "0-dimensional arrays" in str(err):  # coremltools 9.0 with numpy >= 2.4
            raise FvdeployError(f"coremltools {ct.__version__} fails with numpy {np.__version__}: install numpy<2.4") from err
        raise


def describe_package(mlmodel, record: ArtifactRecord, opts: CoreMLOptions) -> None:
    desc = record.model
    H, W = desc.resolution
    mlmodel.author = "fvdeploy"
    mlmodel.license = LICENSE
    mlmodel.version = __version__
    classes = "ImageNet-1k classes" if desc.class_names is None and desc.config.num_classes == 1000 else \
        f"{desc.config.num_classes} classes"
    what = ("backbone feature maps" if desc.config.features_only else
            f"raw logits over {classes}" if opts.raw_logits else f"probabilities of {classes}")
    mlmodel.short_description = (f"FasterViT {'backbone' if desc.config.features_only else 'image classifier'} "
                                 f"({desc.name}, {H}x{W}, {opts.precision.value}); {what}")
    mlmodel.input_description[INPUT_NAME] = (f"RGB image, exactly {W}x{H} (resize by crop_pct "
                                             f"{desc.preprocessing.crop_pct} and centre-crop first)")
    if desc.config.features_only:
        for o in record.outputs:
            mlmodel.output_description[o.name] = f"stage map [N, {', '.join(map(str, o.shape))}] (stride {o.name[6:]})"
    elif opts.raw_logits:
        mlmodel.output_description["logits"] = f"{desc.config.num_classes} class logits (before softmax)"
    else:
        mlmodel.output_description["classLabel"] = "most likely class"
        mlmodel.output_description["classLabel_probs"] = "probability of every class"
    metadata.embed(mlmodel, record)


def check_package(ct, path: Path, opts: CoreMLOptions, size: tuple[int, int], expected: tuple[TensorSpec, ...]) -> CheckReport:
    """Read the saved spec back (works on Linux): inputs, outputs, ops, precision, metadata."""
    from coremltools.proto import MIL_pb2

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    desc = spec.description
    if len(desc.functions):  # multifunction package: check the default function's interface
        desc = next(f for f in desc.functions if f.name == spec.description.defaultFunctionName)
    findings = []
    inp = desc.input[0]
    kind = inp.type.WhichOneof("Type")
    image = inp.type.imageType
    ok = (inp.name == INPUT_NAME and kind == "imageType" and (image.height, image.width) == tuple(size)
          and image.colorSpace == ct.proto.FeatureTypes_pb2.ImageFeatureType.RGB)
    findings.append(Finding("input", ok, f"{inp.name}: {kind} {image.width}x{image.height}" + ("" if ok else
                            f", expected an RGB image named {INPUT_NAME} of {size[1]}x{size[0]}")))
    outputs = [o.name for o in desc.output]
    want = ["classLabel", "classLabel_probs"] if expected[0].kind is TensorKind.probabilities else [o.name for o in expected]
    findings.append(Finding("outputs", sorted(outputs) == sorted(want), f"{outputs} (expected {want})"))
    functions = spec.mlProgram.functions
    ops, const_types = set(), {}
    for fn in functions.values():
        for op in fn.block_specializations[fn.opset].operations:
            ops.add(op.type)
            if op.type == "const":
                for out in op.outputs:
                    name = MIL_pb2.DataType.Name(out.type.tensorType.dataType)
                    const_types[name] = const_types.get(name, 0) + 1
    main = functions["main"] if "main" in functions else next(iter(functions.values()))
    flexible = main.inputs[0].type.tensorType.dimensions[0].WhichOneof("dimension") == "unknown"
    findings.append(Finding("batch", (opts.max_batch > 1) == flexible,
                            f"{'flexible' if flexible else 'fixed'} batch (max batch {opts.max_batch})"))
    unexpected = sorted(ops - EXPECTED_OPS)
    findings.append(Finding("ops", not unexpected, f"unexpected ops {unexpected}" if unexpected else f"{len(ops)} MIL op types"))
    floats = {k: v for k, v in const_types.items() if k.startswith("FLOAT")}
    dominant = max(floats, key=floats.get) if floats else None
    fp16 = opts.precision is Precision.fp16
    findings.append(Finding("precision", dominant == "FLOAT16" if fp16 else "FLOAT16" not in floats,
                            f"weights {floats} (expected {opts.precision.value})"))
    meta = dict(spec.description.metadata.userDefined)
    missing = [k for k in ("fvdeploy.record", "fvdeploy.model", "fvdeploy.resolution", "fvdeploy.checkpoint_sha256")
               if k not in meta]
    findings.append(Finding("metadata", not missing, f"missing {missing}" if missing else "fvdeploy record embedded"))
    licence = spec.description.metadata.license
    findings.append(Finding("licence", "non-commercial" in licence, "weights licence recorded" if licence else "missing"))
    return CheckReport("Core ML package check", findings, {
        "ops": sorted(ops), "const_types": const_types, "outputs": outputs, "flexible_batch": flexible,
        "functions": sorted(functions), "spec_version": spec.specificationVersion})


def build_program(ct, desc: ModelDescription, opts: CoreMLOptions, outputs: tuple[TensorSpec, ...], steps: Steps,
                  tag: str = ""):
    """(eager reference model, converted ML Program) for one resolution."""
    with steps(f"building model{tag}"):
        model = desc.build(steps.note)
    wrapper = ImageClassifier(model, desc.preprocessing.std, not opts.raw_logits)
    with steps(f"torch.export{tag} (batch 1..{opts.max_batch})"):
        program = export_program(wrapper, desc.resolution, opts.max_batch)
    with steps(f"converting to an ML Program{tag} ({opts.precision.value})"):
        return model, convert(ct, program, desc, opts, outputs)


# What coremltools writes beside the model when it converts a torch.export program: ExecuTorch's debug-handle map
# (200+ KB), listed in no Manifest item and read by nothing that loads the package.
CONVERTER_DEBRIS = ("executorch_debug_handle_mapping.json",)


def export_coreml(job: CoreMLJob, steps: Steps) -> ArtifactRecord:
    # coremltools makes a temporary .mlpackage per converted model and removes it at interpreter exit: in a
    # folder of ours instead, it goes whenever and however fvdeploy ends.
    with scratch_folder(prefix="fvdeploy-coreml-") as work, library_temp_files_in(work):
        return _export_coreml(job, steps)


def _export_coreml(job: CoreMLJob, steps: Steps) -> ArtifactRecord:
    ct = import_coremltools()
    desc, opts = job.model, job.options
    for note in desc.notes:
        steps.note(note)
    model, mlmodel = build_program(ct, desc, opts, job.outputs, steps)
    image = TensorSpec(INPUT_NAME, desc.input.shape, TensorKind.rgb_image, "uint8")
    record = ArtifactRecord(
        FormatKey.coreml, opts.precision, desc, (1, opts.max_batch), (image,), job.outputs, job.argv(),
        details={"compute_units": opts.compute_units.value, "deployment_target": opts.deployment_target.value,
                 "resolutions": ["x".join(map(str, d.resolution)) for d in (desc, *job.extra)]},
        notes=desc.notes,
    )
    describe_package(mlmodel, record, opts)
    parity = None
    if platform.system() == "Darwin":
        batch = load_batch(desc.resolution, desc.preprocessing)
        with TorchRunner(model, desc.input, desc.outputs) as torch_runner:
            expected = in_output_space(torch_runner.infer(batch), job.outputs)
        parity = ParityJob("Core ML predictions vs PyTorch", lambda path: CoreMLRunner(path, record),
                           lambda _: expected, [batch], TOLERANCES[opts.precision])
    with atomic_output(job.output, job.overwrite, package=metadata.PACKAGE_MARKER) as tmp:
        if job.extra:
            save_multifunction(ct, job, steps, mlmodel, tmp)
        else:
            mlmodel.save(str(tmp))
        for name in CONVERTER_DEBRIS:
            (tmp / name).unlink(missing_ok=True)
        if parity is None:
            steps.note("predictions need macOS: run `fvdeploy verify` on a Mac to compare them with PyTorch")
        return finish(tmp, record, steps, check=lambda path: check_package(ct, path, opts, desc.resolution, job.outputs),
                      parity=parity)


def save_multifunction(ct, job: CoreMLJob, steps: Steps, main, out: Path) -> None:
    """One function per resolution in one package; identical weights are stored once."""
    work = out.parent / "functions"
    work.mkdir()
    desc = ct.utils.MultiFunctionDescriptor()
    for i, model_desc in enumerate((job.model, *job.extra)):
        h, w = model_desc.resolution
        mlmodel = main if i == 0 else build_program(ct, model_desc, job.options, job.outputs, steps, f" {h}x{w}")[1]
        path = work / f"r{h}x{w}.mlpackage"
        mlmodel.save(str(path))
        desc.add_function(str(path), src_function_name="main", target_function_name=f"main_{h}x{w}")
    names = [f"main_{h}x{w}" for h, w in (d.resolution for d in (job.model, *job.extra))]
    desc.default_function_name = names[0]
    with steps("merging functions"), contextlib.redirect_stderr(io.StringIO()):  # its tqdm bars
        ct.utils.save_multifunction(desc, str(out))
    # save_multifunction keeps no metadata: copy author, licence, descriptions and our keys back in.
    from coremltools.proto import Model_pb2

    spec_file = out / metadata.SPEC_FILE
    merged = Model_pb2.Model.FromString(spec_file.read_bytes())
    merged.description.metadata.CopyFrom(main.get_spec().description.metadata)
    merged.description.metadata.userDefined["fvdeploy.functions"] = ",".join(names)
    spec_file.write_bytes(merged.SerializeToString())
