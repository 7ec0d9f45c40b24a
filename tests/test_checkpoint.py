"""Checkpoint loading: official layouts, 224 → any-res, and refusal of code-running pickles."""

import argparse
import os

import pytest
import torch

from fastervit import CheckpointError, create_model, load_checkpoint, save_checkpoint
from fastervit.checkpoint import extract_state_dict


class _Exploit:
    """A pickle that would create a file when unpickled with weights_only=False."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (os.makedirs, (self.target,))


def test_malicious_pickle_is_refused_and_does_not_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth.tar"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": _Exploit(marker)}, path)
    model = create_model("faster_vit_0_224", dim=32, in_dim=32, depths=[1, 1, 1, 1], num_heads=[1, 2, 2, 4])
    with pytest.raises(CheckpointError, match="not a weights-only checkpoint"):
        load_checkpoint(model, path)
    assert not marker.exists()


def test_junk_and_missing_files_give_clear_errors(tmp_path):
    model = create_model("faster_vit_0_224", dim=32, in_dim=32, depths=[1, 1, 1, 1], num_heads=[1, 2, 2, 4])
    junk = tmp_path / "junk.pth.tar"
    junk.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint junk.pth.tar"):
        load_checkpoint(model, junk)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(model, tmp_path / "absent.pth")


def test_official_container_with_module_prefix_and_namespace(tmp_path):
    src = create_model("faster_vit_0_224", dim=32, in_dim=32, depths=[1, 1, 2, 1], num_heads=[1, 2, 2, 4])
    state = {f"module.{k}": v for k, v in src.state_dict().items()}
    path = tmp_path / "official.pth.tar"
    torch.save({"epoch": 1, "arch": "faster_vit_0_224", "state_dict": state, "optimizer": {},
                "version": 2, "args": argparse.Namespace(lr=0.1, model="x"), "metric": 82.1}, path)
    dst = create_model("faster_vit_0_224", dim=32, in_dim=32, depths=[1, 1, 2, 1], num_heads=[1, 2, 2, 4])
    load_checkpoint(dst, path)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(src(x), dst(x))


def test_extract_state_dict_layouts():
    t = torch.zeros(1)
    assert extract_state_dict({"model": {"a": t}}) == {"a": t}
    assert extract_state_dict({"a": t}) == {"a": t}
    assert extract_state_dict({"encoder.a": t, "encoder.b": t, "head.x": t}) == {"a": t, "b": t}


def test_224_checkpoint_into_any_res_model_reports_what_changed(tmp_path):
    src = create_model("faster_vit_0_224")
    path = tmp_path / "fv0.pth.tar"
    save_checkpoint(src, path)
    model = create_model("faster_vit_0_any_res", resolution=[576, 960], window_size=[7, 7, 7, 7])
    report = load_checkpoint(model, path)
    assert len(report.dropped) == 24 and all(".hat_pos_embed." in k for k in report.dropped)
    # hat_attn geometry differs (6x9 carrier windows instead of 2x2): 3 buffers x 6 blocks
    assert len(report.recomputed) == 18 and all(".hat_attn." in k for k in report.recomputed)
    assert "dropped 24 keys" in report.summary() and "recomputed 18" in report.summary()
    assert torch.equal(model.head.weight, src.head.weight)
    x = torch.randn(1, 3, 576, 960)
    with torch.no_grad():
        assert torch.isfinite(model(x)).all()


def test_other_mismatches_are_errors_naming_keys(tmp_path):
    src = create_model("faster_vit_0_224", dim=32, in_dim=32, depths=[1, 1, 2, 1], num_heads=[1, 2, 2, 4])
    state = src.state_dict()
    state.pop("head.bias")
    state["extra.weight"] = torch.zeros(2)
    path = tmp_path / "bad.pth.tar"
    torch.save({"state_dict": state}, path)
    with pytest.raises(CheckpointError, match=r"missing 1 keys \(head.bias\).*unexpected keys \(extra.weight\)"):
        load_checkpoint(src, path)
    wrong = create_model("faster_vit_0_224", dim=32, in_dim=32, depths=[1, 1, 2, 1], num_heads=[1, 2, 2, 4], num_classes=5)
    torch.save({"state_dict": src.state_dict()}, path)
    with pytest.raises(CheckpointError, match=r"shape mismatches \(head.weight \[1000, 256\] vs model \[5, 256\]"):
        load_checkpoint(wrong, path)
