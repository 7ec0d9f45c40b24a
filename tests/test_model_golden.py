"""Parity with reference tensors computed by the official implementation (fp32, CPU)."""

import copy

import pytest
import torch

from fastervit import FasterViT, FasterViTConfig, load_checkpoint

from .helpers import GOLDEN, golden_cases, load_golden

CASES = golden_cases()
pytestmark = pytest.mark.skipif(not CASES, reason=f"no golden tensors at {GOLDEN}")


def golden_model(case: str) -> tuple[FasterViT, dict, dict]:
    meta, io = load_golden(case)
    cfg = dict(meta["config"])
    cfg.pop("layer_scale_conv")
    model = FasterViT(FasterViTConfig(any_res=meta["official_class"] == "any_res", **cfg)).eval()
    load_checkpoint(model, GOLDEN / case / "weights.pth.tar")
    return model, meta, io


@pytest.mark.parametrize("case", CASES)
def test_logits_and_stage_features_match_official(case):
    model, meta, io = golden_model(case)
    assert model.num_params() == meta["n_params"]
    with torch.no_grad():
        feats = dict(model.stages(io["input"]))
        logits = model.forward_head(feats["pre_head"])
    assert (logits - io["logits"]).abs().max().item() <= 1e-4
    assert set(feats) == {k.removeprefix("features.") for k in io if k.startswith("features.")}
    for name, value in feats.items():
        ref = io[f"features.{name}"]
        assert value.shape == ref.shape, name
        rel = ((value - ref).abs().max() / ref.abs().max()).item()
        assert rel <= 1e-4, f"{name}: relative error {rel:.2e}"


@pytest.mark.parametrize("case", CASES)
def test_deploy_equals_unfused(case):
    model, _, io = golden_model(case)
    fused = copy.deepcopy(model).deploy()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    with torch.no_grad():
        diff = (fused(io["input"]) - model(io["input"])).abs().max().item()
    assert diff <= 1e-5
    # The fused model reads its precomputed biases: changing a position MLP no longer matters.
    attn = next(m for m in fused.modules() if type(m).__name__ == "AttentionBiasMLP")
    attn.cpb_mlp[0].weight.data.add_(1.0)
    with torch.no_grad():
        assert (fused(io["input"]) - model(io["input"])).abs().max().item() <= 1e-5
