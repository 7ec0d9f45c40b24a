"""Core ML: conversion on Linux with the saved spec checked; predictions only on macOS."""

import json
import platform

import numpy as np
import pytest
import torch

from fastervit import create_model
from fastervit_deploy.coreml_export import CoreMLOptions, ImageClassifier, class_names, export_coreml
from fastervit_deploy.model_options import ModelSpec

from .helpers import assert_one_line_error, cli, quiet_steps, tiny_spec

ct = pytest.importorskip("coremltools")


def test_image_input_with_folded_std_equals_normalised_model():
    torch.manual_seed(0)
    model = create_model("faster_vit_0_224", dim=32, in_dim=32, depths=[1, 1, 2, 1], num_heads=[1, 2, 2, 4])
    mean, std = torch.tensor(model.pretrained_cfg["mean"]).view(1, 3, 1, 1), torch.tensor(model.pretrained_cfg["std"]).view(1, 3, 1, 1)
    pixels = torch.randint(0, 256, (2, 3, 224, 224)).float()
    with torch.no_grad():
        expected = model((pixels / 255 - mean) / std).softmax(-1)
        wrapped = ImageClassifier(model, tuple(std.flatten().tolist()), probabilities=True)
        got = wrapped(pixels * (1 / 255.0) - mean)  # what Core ML's ImageType(scale, bias) feeds it
    assert (got - expected).abs().max().item() < 1e-5


def test_class_names_are_imagenet_order():
    names = class_names()
    assert len(names) == 1000 and names[0] == "tench" and names[1] == "goldfish" and names[999] == "toilet tissue"


def test_fastervit0_classifier_package(tmp_path):
    out = tmp_path / "fv0.mlpackage"
    result = cli("coreml", "--model", "faster_vit_0_224", "--max-batch", 4, "--output", out)
    assert result.exit_code == 0, result.output
    side = json.loads((tmp_path / "fv0.mlpackage.json").read_text())
    check = side["spec_check"]
    assert check["passed"] and check["flexible_batch"] and check["outputs"] == ["classLabel", "classLabel_probs"]
    assert check["const_types"]["FLOAT16"] > 100 and "FLOAT16" in check["const_types"]
    assert {"conv", "layer_norm", "softmax", "classify"} <= set(check["ops"])
    assert side["precision"] == "fp16" and side["batch_range"] == [1, 4] and side["outputs"] == "probabilities"
    spec = ct.models.MLModel(str(out), skip_model_load=True).get_spec()
    meta = spec.description.metadata
    assert meta.author == "fvdeploy" and "non-commercial" in meta.license and meta.versionString
    assert meta.userDefined["fvdeploy.model"] == "faster_vit_0_224"
    assert meta.userDefined["fvdeploy.checkpoint_sha256"] == "random-weights"
    image = spec.description.input[0].type.imageType
    assert (image.width, image.height) == (224, 224)
    assert "crop_pct" in spec.description.input[0].shortDescription


def test_any_res_raw_logits_fp32(tmp_path):
    spec = ModelSpec("faster_vit_0_any_res", resolution=(160, 288), window_size=[7, 7, 12, 6],
                     extra=dict(dim=32, in_dim=32, depths=[1, 1, 2, 1], num_heads=[1, 2, 2, 4], num_classes=10))
    result = export_coreml(spec, tmp_path / "ar.mlpackage", CoreMLOptions(precision="fp32", raw_logits=True), quiet_steps())
    check = result["record"]["spec_check"]
    assert check["passed"] and check["outputs"] == ["logits"] and not check["flexible_batch"]
    assert "FLOAT16" not in check["const_types"] and {"pad", "slice_by_index"} <= set(check["ops"])  # window padding


def test_multifunction_package_for_several_resolutions(tmp_path):
    spec = tiny_spec("faster_vit_0_any_res", resolution=[160, 288], window_size=[7, 7, 7, 7])
    opts = CoreMLOptions(deployment_target="iOS18", resolutions=[(224, 224)])
    result = export_coreml(spec, tmp_path / "mf.mlpackage", opts, quiet_steps())
    check = result["record"]["spec_check"]
    assert check["passed"] and check["functions"] == ["main_160x288", "main_224x224"]


def test_coreml_bad_input(tmp_path):
    args = ["coreml", "--model", "faster_vit_0_224", "--output", tmp_path / "x.mlpackage"]
    assert_one_line_error(cli(*args, "--precision", "int4"), r"--precision must be fp16 or fp32")
    assert_one_line_error(cli(*args, "--compute-units", "tpu"), r"--compute-units must be one of")
    assert_one_line_error(cli(*args, "--deployment-target", "iOS9"), r"--deployment-target must be one of")
    assert_one_line_error(cli(*args, "--max-batch", 0), r"--max-batch must be at least 1")
    assert_one_line_error(cli(*args, "--resolutions", "224x224", "--deployment-target", "iOS18"), r"needs an _any_res model")
    assert_one_line_error(cli(*args, "--resolutions", "224x224"), r"multifunction package: use --deployment-target iOS18")
    assert_one_line_error(cli("coreml", "--model", "faster_vit_0_224", "--output", tmp_path / "x.onnx"),
                          r"output must end in .mlpackage")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(platform.system() == "Darwin", reason="checks the explanation given off macOS")
def test_verify_mlpackage_explains_itself_off_macos(tmp_path):
    spec = tiny_spec()
    export_coreml(spec, tmp_path / "t.mlpackage", CoreMLOptions(), quiet_steps())
    assert_one_line_error(cli("verify", tmp_path / "t.mlpackage", "--model", "faster_vit_0_224"),
                          r"Core ML predictions need macOS", code=3)


@pytest.mark.macos
@pytest.mark.skipif(platform.system() != "Darwin", reason="Core ML predictions need macOS")
def test_predictions_match_pytorch_on_macos(tmp_path):
    out = tmp_path / "fv0.mlpackage"
    assert cli("coreml", "--model", "faster_vit_0_224", "--output", out).exit_code == 0
    side = json.loads((tmp_path / "fv0.mlpackage.json").read_text())
    assert side["parity"]["passed"] and side["parity"]["overall"]["top1_agreement"] >= 0.9
    result = cli("verify", out, "--batch", 4)
    assert result.exit_code == 0, result.output
    assert np.isfinite(side["parity"]["overall"]["cosine_min"])
