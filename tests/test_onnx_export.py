"""ONNX export: graph properties, parity at two batch sizes, sidecar, external data, atomicity."""

import json

import numpy as np
import onnx
import pytest

from fastervit_deploy.graph_check import inspect_path
from fastervit_deploy.onnx_export import ExportOptions
from fastervit_deploy.runners import OnnxRuntimeRunner, TorchRunner

from .helpers import cli, export_tiny, tiny_spec

VARIANTS = {
    "hat": ("faster_vit_0_224", {}),
    "hat_propagation": ("faster_vit_3_224", {}),
    "21k_global_windows": ("faster_vit_4_21k_224", dict(num_heads=[1, 2, 2, 4])),
    "any_res_padded": ("faster_vit_0_any_res", dict(resolution=[160, 288], window_size=[7, 7, 7, 7])),
    "any_res_no_pad": ("faster_vit_0_any_res", dict(resolution=[192, 320], window_size=[7, 7, 12, 6])),
}


def graph_ops(path):
    return [n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node]


@pytest.mark.parametrize("variant", VARIANTS)
def test_export_graph_is_tensorrt_ready_and_matches_pytorch(variant, tmp_path):
    name, extra = VARIANTS[variant]
    result = export_tiny(tmp_path, name, **extra)
    path = result["output"]
    report = inspect_path(path)
    assert report.passed, [f for f in report.findings if not f.ok]
    ops = graph_ops(path)
    for banned in ("Shape", "BatchNormalization", "Gather", "GatherND"):
        assert banned not in ops
    assert report.attention_blocks == ops.count("Softmax") > 0
    assert ops.count("LayerNormalization") > 0
    inp = report.inputs[0]
    assert isinstance(inp["shape"][0], str) and all(isinstance(d, int) for d in inp["shape"][1:])
    parity = result["parity"]
    assert set(parity["batches"]) == {"1", "3"}  # the graph was traced at batch 2
    assert parity["overall"]["max_abs"] <= 1e-4 and parity["overall"]["top1_agreement"] == 1.0
    if variant == "any_res_padded":
        assert ops.count("Pad") == 2 and ops.count("Slice") >= 2
    side = json.loads(path.with_name(path.name + ".json").read_text())
    assert side["batch_range"] == [1, 64] and side["opset"] == 17 and side["precision"] == "fp32"
    assert side["graph"]["passed"] and side["tools"]["onnxruntime"]
    assert len(side["sha256"]) == 64


def test_batch_range_and_opset_18_without_simplifier(tmp_path):
    opts = ExportOptions(opset=18, min_batch=2, max_batch=6, simplify="none")
    result = export_tiny(tmp_path, opts=opts)
    assert result["report"].opset == 18 and result["report"].passed
    assert set(result["parity"]["batches"]) == {"2", "3"}  # 1 is outside the range; 2 and 3 remain
    meta = {p.key: p.value for p in onnx.load(str(result["output"])).metadata_props}
    assert meta["fvdeploy.batch_range"] == "2,6" and meta["fvdeploy.resolution"] == "224x224"


def test_external_data_export_runs_and_passes(tmp_path):
    result = export_tiny(tmp_path, opts=ExportOptions(external_data=True))
    path = result["output"]
    data = path.with_name(path.name + ".data")
    assert data.is_file() and data.stat().st_size > path.stat().st_size
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, data.name, path.name + ".json"])
    assert inspect_path(path).passed
    model = tiny_spec().build()
    x = np.random.default_rng(0).standard_normal((2, 3, 224, 224), dtype=np.float32)
    with OnnxRuntimeRunner(path) as ort:
        assert np.abs(ort.infer(x) - TorchRunner(model).infer(x)).max() < 1e-4


def test_failure_mid_export_leaves_nothing(tmp_path, monkeypatch):
    import fastervit_deploy.onnx_export as mod

    def broken(*_):
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(mod, "simplify", broken)
    with pytest.raises(RuntimeError):
        export_tiny(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_card_command_any_res_576x960(tmp_path):
    out = tmp_path / "fv0.onnx"
    result = cli("export-onnx", "--model", "faster_vit_0_any_res", "--resolution", 576, 960, "--output", out)
    assert result.exit_code == 0, result.output
    assert "windows 7,7,6,6 chosen" in result.output.replace("\n", " ")
    side = json.loads(out.with_name("fv0.onnx.json").read_text())
    assert side["resolution"] == [576, 960] and side["window_size"] == [7, 7, 6, 6]
    assert side["parity"]["passed"] and side["graph"]["ops"].get("Shape", 0) == 0
    # verify reads the sidecar: same (seeded) weights, real images, another batch size
    verify = cli("verify", out, "--batch", 2, "--json", tmp_path / "v.json")
    assert verify.exit_code == 0, verify.output
    assert json.loads((tmp_path / "v.json").read_text())["overall"]["max_abs"] <= 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("name", ["faster_vit_1_224", "faster_vit_2_224", "faster_vit_3_224", "faster_vit_4_21k_384"])
def test_full_size_variants(name, tmp_path):
    result = cli("export-onnx", "--model", name, "--output", tmp_path / f"{name}.onnx")
    assert result.exit_code == 0, result.output


@pytest.mark.slow
@pytest.mark.parametrize("name", ["faster_vit_5_224", "faster_vit_4_21k_768"])
def test_over_2gb_models_use_external_data(name, tmp_path):
    out = tmp_path / f"{name}.onnx"
    result = cli("export-onnx", "--model", name, "--output", out, "--simplify", "none", "--max-batch", 8)
    assert result.exit_code == 0, result.output
    assert out.with_name(out.name + ".data").stat().st_size > 2**31
