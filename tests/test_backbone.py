"""Backbone (multi-scale) form: features_only models, checkpoints with prefixes, every format's outputs."""

import json

import numpy as np
import onnx
import pytest
import torch

from fastervit import FasterViT, FasterViTConfig, checkpoint_like_, create_model, list_models, load_checkpoint
from fastervit.checkpoint import read_checkpoint
from fastervit_deploy.graph.inspect import inspect_path
from fastervit_deploy.artifact import read_record
from fastervit_deploy.onnx.runner import OnnxRuntimeRunner

from .helpers import GOLDEN, TINY, golden_cases, load_golden
from .helpers import assert_one_line_error, cli, independent_parity, tiny_checkpoint

CASES = golden_cases()


@pytest.mark.parametrize("name", list_models())
def test_feature_info_matches_every_variants_maps(name):
    """Channels and strides from feature_info agree with the maps the model computes (meta device: no FLOPs)."""
    with torch.device("meta"):
        model = create_model(name, features_only=True)
        outs = model(torch.empty(1, 3, *model.cfg.resolution))
    H, W = model.cfg.resolution
    assert model.feature_info.channels() == [o.shape[1] for o in outs] == [model.cfg.dim * 2**i for i in range(4)]
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    # a stage's map before its downsampler keeps the stage's input size: ceil(H / stride) for these convs
    assert [tuple(o.shape[2:]) for o in outs] == [(-(-H // s), -(-W // s)) for s in (4, 8, 16, 32)]
    assert not hasattr(model, "head") and model.levels[3].downsample is None


@pytest.mark.skipif(not CASES, reason=f"no golden tensors at {GOLDEN}")
@pytest.mark.parametrize("case", CASES)
def test_pre_downsample_maps_through_each_downsampler_give_the_official_stage_outputs(case):
    meta, io = load_golden(case)
    cfg = dict(meta["config"])
    cfg.pop("layer_scale_conv")
    backbone = FasterViT(FasterViTConfig(any_res=meta["official_class"] == "any_res", out_indices=(0, 1, 2, 3), **cfg))
    report = load_checkpoint(backbone, GOLDEN / case / "weights.pth.tar")
    assert {k.split(".")[0] for k in report.unused} == {"head", "norm"}  # the classifier's, reported
    with torch.no_grad():
        maps = backbone.eval()(io["input"])
        levels = [lvl.downsample(m) if lvl.downsample is not None else m for lvl, m in zip(backbone.levels, maps)]
    for i, out in enumerate(levels):
        ref = io[f"features.level{i}"]
        assert out.shape == ref.shape
        assert ((out - ref).abs().max() / ref.abs().max()).item() <= 1e-4, f"level{i}"


def test_checkpoint_prefix_norms_and_unused_keys(tmp_path):
    """A detector checkpoint: the backbone under `backbone.0.`, per-level norms, and its neck beside it."""
    # checkpoint-like: non-zero biases, BatchNorm statistics and layer scales, as a trained detector has
    src = checkpoint_like_(create_model("faster_vit_0_224", features_only=True, feature_norms=True, **TINY), seed=3)
    for name in ("norm0", "norm1", "norm2", "norm"):
        getattr(src, name).bias.data.uniform_(-1, 1)
    state = {f"backbone.0.{k}": v for k, v in src.state_dict().items()} | {"neck.conv.weight": torch.ones(3)}
    # An fvdeploy checkpoint carries the (tiny) architecture; its tensors are the detector's.
    detector = read_checkpoint(tiny_checkpoint(tmp_path / "tiny.pth.tar"))
    detector["state_dict"] = state
    torch.save(detector, tmp_path / "detector.pth")
    common = ["--model", "faster_vit_0_224", "--checkpoint", tmp_path / "detector.pth"]
    out = tmp_path / "det.onnx"
    result = cli("export-onnx", *common, "--checkpoint-prefix", "backbone.0.", "--features", "-o", out)
    assert result.exit_code == 0, result.output
    assert "under 'backbone.0.' (left 1 other keys)" in result.output.replace("\n", " ")
    record = read_record(out)
    assert record.model.config.feature_norms and record.model.checkpoint.prefix == "backbone.0."
    with torch.no_grad():
        x = torch.randn(2, 3, 224, 224)
        expected = [m.numpy() for m in src.eval()(x)]
    import onnxruntime as ort

    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})
    assert all(np.abs(a - b).max() <= 1e-4 for a, b in zip(expected, got))
    assert_one_line_error(cli("export-onnx", *common, "--checkpoint-prefix", "encoder.", "--features", "-o",
                              tmp_path / "x.onnx"), r"no checkpoint key starts with 'encoder.' \(keys start with", 2)
    assert_one_line_error(cli("export-onnx", "--model", "faster_vit_0_224", "--features", "0,4"),
                          r"out_indices must be stages 0..3, got \[0, 4\]", 2)


@pytest.mark.slow
def test_card_model_as_a_backbone_at_576x960(tmp_path):
    """The card's case: four levels named by stride, the same graph properties, parity per level."""
    out = tmp_path / "fv0_features.onnx"
    result = cli("export-onnx", "--model", "faster_vit_0_any_res", "--resolution", 576, 960, "--features",
                 "--max-batch", 8, "--output", out)
    assert result.exit_code == 0, result.output
    model = onnx.load(str(out))
    shapes = {o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim] for o in model.graph.output}
    assert shapes == {"feat_s4": ["batch", 64, 144, 240], "feat_s8": ["batch", 128, 72, 120],
                      "feat_s16": ["batch", 256, 36, 60], "feat_s32": ["batch", 512, 18, 30]}
    report = inspect_path(out)
    assert report.passed and report.ops.get("Shape", 0) == 0 and report.finding("rank").facts["max_rank"] == 5
    parity = read_record(out).parity
    assert set(parity["outputs"]) == set(shapes)
    for level in parity["outputs"].values():  # batch 1 and 3 on real photos, against the eager model
        assert set(level["batches"]) == {"1", "3"} and level["overall"]["max_abs"] <= 1e-4
    assert independent_parity(out, batches=(2,)) <= 1e-4


def test_every_command_takes_features(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "tiny.pth.tar", "faster_vit_0_any_res", resolution=(160, 288))
    src = tmp_path / "f.onnx"
    assert cli("export-onnx", "--model", "faster_vit_0_any_res", "--checkpoint", ckpt, "--features", "1,3",
               "-o", src).exit_code == 0
    verify = cli("verify", src, "--json", tmp_path / "v.json")
    assert verify.exit_code == 0 and "feat_s8: max |Δ|" in verify.output
    assert set(json.loads((tmp_path / "v.json").read_text())["outputs"]) == {"feat_s8", "feat_s32"}
    half = tmp_path / "f16.onnx"
    assert cli("quantize", src, "--fp16", "-o", half).exit_code == 0
    cosines = {k: v["overall"]["cosine_min"] for k, v in read_record(half).parity["outputs"].items()}
    assert set(cosines) == {"feat_s8", "feat_s32"} and min(cosines.values()) >= 0.999
    # the written FP16 file itself, re-opened, against the FP32 one on fresh inputs, level by level
    x = np.random.default_rng(7).standard_normal((2, 3, 160, 288), dtype=np.float32)
    with OnnxRuntimeRunner(src) as fp32, OnnxRuntimeRunner(half) as fp16:
        want, got = fp32.infer(x), fp16.infer(x)
    assert set(got) == {"feat_s8", "feat_s32"}
    for name in want:
        a, b = want[name].reshape(2, -1).astype(np.float64), got[name].reshape(2, -1).astype(np.float64)
        cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        assert cos.min() >= 0.999, (name, cos)
    bench = cli("benchmark", src, "--batch", 1, "--iterations", 1, "--warmup", 0, "--json", tmp_path / "b.json")
    assert bench.exit_code == 0 and len(json.loads((tmp_path / "b.json").read_text())["results"]) == 2
    trt = cli("build-trt", "--model", "faster_vit_0_any_res", "--checkpoint", ckpt, "--features", "1,3", "--fp16")
    assert "--features 1,3" in trt.output.replace("\n", " ")  # the printed commands rebuild the backbone
    assert_one_line_error(cli("predict", src, tmp_path / "tiny.pth.tar"), r"cannot read image|no class output")
