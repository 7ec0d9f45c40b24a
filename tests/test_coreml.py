"""Core ML: conversion on Linux with the saved spec checked; predictions only on macOS."""

import dataclasses
import json
import platform
import signal

import numpy as np
import pytest
import torch

from fastervit_deploy.coreml.export import ImageClassifier
from fastervit_deploy.core.classes import imagenet_names
from fastervit_deploy.core.model_spec import resolve_model
from fastervit_deploy.core.options import CoreMLOptions, DeploymentTarget, OutputTarget
from fastervit_deploy.plan import plan_coreml
from fastervit_deploy.artifact import read_record

from .helpers import NAMES, assert_one_line_error, cli, quiet_steps, tiny_checkpoint, tiny_request

ct = pytest.importorskip("coremltools")


def test_image_input_with_folded_std_equals_normalised_model():
    desc = resolve_model(tiny_request())
    model = desc.build()
    mean, std = torch.tensor(desc.preprocessing.mean).view(1, 3, 1, 1), torch.tensor(desc.preprocessing.std).view(1, 3, 1, 1)
    pixels = torch.randint(0, 256, (2, 3, 224, 224)).float()
    with torch.no_grad():
        expected = model((pixels / 255 - mean) / std).softmax(-1)
        wrapped = ImageClassifier(model, desc.preprocessing.std, probabilities=True)
        got = wrapped(pixels * (1 / 255.0) - mean)  # what Core ML's ImageType(scale, bias) feeds it
        assert torch.equal(model((pixels / 255 - mean) / std).softmax(-1), expected)  # the reference is untouched
    assert (got - expected).abs().max().item() < 1e-5
    assert wrapped.model.stem_conv is not model.stem_conv


def test_class_names_are_imagenet_order():
    names = imagenet_names()
    assert len(names) == 1000 and names[0] == "tench" and names[1] == "goldfish" and names[999] == "toilet tissue"


def test_classifier_package_over_the_imagenet_classes(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "tiny1k.pth.tar", num_classes=1000)  # a FasterViT-0-shaped tiny model
    out = tmp_path / "fv0.mlpackage"
    result = cli("coreml", "--model", "faster_vit_0_224", "--checkpoint", ckpt, "--max-batch", 4, "--output", out)
    assert result.exit_code == 0, result.output
    # Read the saved package back with coremltools (not the converter's own report).
    spec = ct.models.MLModel(str(out), skip_model_load=True).get_spec()
    assert [o.name for o in spec.description.output] == ["classLabel", "classLabel_probs"]
    image = spec.description.input[0].type.imageType
    assert (image.width, image.height) == (224, 224) and "crop_pct" in spec.description.input[0].shortDescription
    batch_dim = spec.mlProgram.functions["main"].inputs[0].type.tensorType.dimensions[0]
    assert batch_dim.WhichOneof("dimension") == "unknown"  # flexible batch
    consts = [op for op in spec.mlProgram.functions["main"].block_specializations["CoreML7"].operations if op.type == "const"]
    kind = lambda op: ct.proto.MIL_pb2.DataType.Name(op.outputs[0].type.tensorType.dataType)  # noqa: E731
    fp16, fp32 = [op for op in consts if kind(op) == "FLOAT16"], [op for op in consts if kind(op) == "FLOAT32"]
    assert len(fp16) > 100 and len(fp32) < 0.1 * len(fp16)  # weights in fp16; a few image-scaling scalars fp32
    classes = spec.mlProgram.functions["main"].block_specializations["CoreML7"].operations
    assert any(op.type == "classify" for op in classes)
    meta = spec.description.metadata
    assert meta.author == "fvdeploy" and "non-commercial" in meta.license and meta.versionString
    assert meta.userDefined["fvdeploy.model"] == "faster_vit_0_224"
    assert meta.userDefined["fvdeploy.checkpoint_sha256"] == __import__("hashlib").sha256(ckpt.read_bytes()).hexdigest()
    # The package carries its own record: model, precision, batch range.
    record = read_record(out)
    assert record.precision == "fp16" and record.batch_range == (1, 4) and record.outputs[0].kind == "probabilities"
    assert json.loads(meta.userDefined["fvdeploy.record"])["model"]["name"] == "faster_vit_0_224"


def test_any_res_raw_logits_fp32(tmp_path):
    request = tiny_request("faster_vit_0_any_res", resolution=(160, 288), window_size=(7, 7, 12, 6))
    record = plan_coreml(request, OutputTarget(tmp_path / "ar.mlpackage"),
                         CoreMLOptions(precision="fp32", raw_logits=True)).run(quiet_steps())
    check = record.checks
    assert check["passed"] and check["outputs"] == ["logits"] and not check["flexible_batch"]
    assert "FLOAT16" not in check["const_types"] and {"pad", "slice_by_index"} <= set(check["ops"])  # window padding


def test_multifunction_package_for_several_resolutions(tmp_path):
    request = tiny_request("faster_vit_0_any_res", resolution=(160, 288), window_size=(7, 7, 7, 7))
    opts = CoreMLOptions(deployment_target=DeploymentTarget.iOS18)
    record = plan_coreml(request, OutputTarget(tmp_path / "mf.mlpackage"), dataclasses.replace(opts, resolutions=((224, 224),))).run(quiet_steps())
    spec = ct.models.MLModel(str(tmp_path / "mf.mlpackage"), skip_model_load=True).get_spec()
    assert sorted(spec.mlProgram.functions) == ["main_160x288", "main_224x224"]
    assert record.details["resolutions"] == ["160x288", "224x224"]


def test_coreml_bad_input(tmp_path):
    args = ["coreml", "--model", "faster_vit_0_224", "--output", tmp_path / "x.mlpackage"]
    assert_one_line_error(cli(*args, "--precision", "int4"), r"'int4' is not one of 'fp16', 'fp32'")
    assert_one_line_error(cli(*args, "--compute-units", "tpu"), r"'tpu' is not one of")
    assert_one_line_error(cli(*args, "--deployment-target", "iOS9"), r"'iOS9' is not one of")
    assert_one_line_error(cli(*args, "--max-batch", 0), r"'--max-batch': Input should be greater than or equal to 1")
    assert_one_line_error(cli(*args, "--resolutions", "224x224", "--deployment-target", "iOS18"), r"needs an _any_res model")
    assert_one_line_error(cli("coreml", "--model", "faster_vit_0_any_res", "--resolutions", "224x224", "-o",
                              tmp_path / "x.mlpackage"), r"multifunction package: use --deployment-target iOS18")
    # A wrong suffix is refused before anything else: here, before noticing the checkpoint is missing.
    assert_one_line_error(cli("coreml", "--model", "faster_vit_0_224", "--checkpoint", tmp_path / "absent.pth",
                              "--output", tmp_path / "x.onnx"), r"output must end in .mlpackage")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.macos
def test_predictions_match_pytorch_on_macos(tmp_path):
    out = tmp_path / "fv0.mlpackage"
    assert cli("coreml", "--model", "faster_vit_0_224", "--output", out).exit_code == 0
    record = read_record(out)
    assert record.parity["passed"] and record.parity["overall"]["top1_agreement"] >= 0.9
    result = cli("verify", out, "--batch", 4)
    assert result.exit_code == 0, result.output
    assert np.isfinite(record.parity["overall"]["cosine_min"])




def test_ctrl_c_during_conversion_leaves_no_temporary_folder(tmp_path):
    from .helpers import interrupt, leftovers, spawn, wait_for_line

    ckpt = tiny_checkpoint(tmp_path / "tiny.pth.tar")
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    proc = spawn(["coreml", "--model", "faster_vit_0_224", "--checkpoint", ckpt, "-o", tmp_path / "m.mlpackage"],
                 tmp_path, tmpdir)
    wait_for_line(proc, "✓ torch.export")  # converting now: coremltools' own temporary package is being made
    returncode, took, rest = interrupt(proc, signal.SIGINT, to_group=True)
    assert returncode == 130 and took < 5, (returncode, took, rest)
    assert "Traceback" not in rest and leftovers(tmpdir) == []
    assert not (tmp_path / "m.mlpackage").exists()


@pytest.mark.xdist_group("coreml-named")
def test_the_classifier_names_the_models_own_classes(named_package):
    spec = ct.models.MLModel(str(named_package), skip_model_load=True).get_spec()  # the saved package, read back
    (classify,) = [op for op in spec.mlProgram.functions["main"].block_specializations["CoreML7"].operations
                   if op.type == "classify"]
    labels = [v.immediateValue.tensor.strings.values[0]
              for v in classify.inputs["classes"].arguments[0].value.immediateValue.list.values]
    assert labels == NAMES
    assert "probabilities of 10 classes" in spec.description.metadata.shortDescription


@pytest.mark.xdist_group("coreml-named")
def test_the_package_holds_what_its_manifest_lists_and_nothing_else(named_package):
    """coremltools writes ExecuTorch's debug-handle map (200+ KB) beside the model; a shipped package needs it not."""
    out = named_package
    manifest = json.loads((out / "Manifest.json").read_text())
    listed = {f"Data/{item['path']}" for item in manifest["itemInfoEntries"].values()}
    files = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    unlisted = [f for f in files - {"Manifest.json"} if not any(f == x or f.startswith(x + "/") for x in listed)]
    assert unlisted == [] and any(f.endswith("model.mlmodel") for f in files)
    assert not (out / "executorch_debug_handle_mapping.json").exists()
    ct.models.MLModel(str(out), skip_model_load=True).get_spec()  # still a package coremltools reads


@pytest.mark.xdist_group("coreml-named")
@pytest.mark.skipif(platform.system() == "Darwin", reason="checks the explanation given off macOS")
def test_verify_off_macos_says_it_cannot_run_a_package_before_building_anything(named_package, monkeypatch):
    monkeypatch.chdir(named_package.parent.parent)
    result = cli("verify", named_package)
    assert_one_line_error(result, r"Core ML predictions need macOS", 3)
    assert "✓" not in result.output and "Failed to load" not in result.output  # no reference built, no import noise
    # The advice names the package as it is reached from here (it named the bare file name, which did not run)
    assert f"`fvdeploy verify {named_package.parent.name}/{named_package.name}` on a Mac" in " ".join(result.output.split())
