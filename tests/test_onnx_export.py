"""ONNX export: graph properties of the written file, independent parity, sidecar, external data, atomicity.

Seeded weights are checkpoint-like (non-zero biases, BatchNorm statistics, layer scales), so every graph
here has the bias Adds and folded norms a real checkpoint puts in it.
"""

import json

import numpy as np
import onnx
import pytest

from fastervit_deploy.graph.inspect import inspect_path
from fastervit_deploy.core.options import BatchProfile, OnnxOptions, Simplifier
from fastervit_deploy.artifact import read_record

from .helpers import cli, export_tiny, independent_parity

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
    path, _ = export_tiny(tmp_path, name, **extra)
    report = inspect_path(path)  # the written file, read back
    assert report.passed, report.failure_summary()
    ops = graph_ops(path)
    for banned in ("Shape", "BatchNormalization", "Gather", "GatherND"):
        assert banned not in ops
    assert report.attention_blocks == ops.count("Softmax") > 0
    assert ops.count("LayerNormalization") > 0
    # checkpoint-like weights: the linear layers keep their bias Adds (a zero-bias model loses them)
    assert ops.count("Add") > ops.count("MatMul")
    inp = report.inputs[0]
    assert isinstance(inp["shape"][0], str) and all(isinstance(d, int) for d in inp["shape"][1:])
    assert independent_parity(path, batches=(1, 3)) <= 1e-4  # traced at batch 2
    if variant == "any_res_padded":
        assert ops.count("Pad") == 2 and ops.count("Slice") >= 2
    side = json.loads(path.with_name(path.name + ".json").read_text())
    assert side["batch_range"] == [1, 64] and side["details"]["opset"] == 17 and side["precision"] == "fp32"
    assert side["checks"]["passed"] and side["tools"]["onnxruntime"]
    assert side["files"][path.name] == __import__("hashlib").sha256(path.read_bytes()).hexdigest()


def test_batch_range_and_opset_18_without_simplifier(tmp_path):
    path, _ = export_tiny(tmp_path, onnx=OnnxOptions(opset=18, simplify=Simplifier.none), batch=BatchProfile(2, 6))
    report = inspect_path(path)
    assert report.opset == 18 and report.passed
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert meta["fvdeploy.batch_range"] == "2,6" and meta["fvdeploy.resolution"] == "224x224"
    record = read_record(path)
    assert record.batch_range == (2, 6) and set(record.parity["outputs"]["logits"]["batches"]) == {"2", "3"}
    with pytest.raises(Exception, match="outside the artifact's batch range 2..6"):
        from fastervit_deploy.artifact import open_artifact

        with open_artifact(path).runner() as runner:
            runner.infer(np.zeros((1, 3, 224, 224), np.float32))


def test_external_data_export_runs_and_passes(tmp_path):
    path, _ = export_tiny(tmp_path, onnx=OnnxOptions(external_data=True))
    data = path.with_name(path.name + ".data")
    assert data.is_file() and data.stat().st_size > path.stat().st_size
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, data.name, path.name + ".json"])
    assert oct(data.stat().st_mode & 0o777) == oct(path.stat().st_mode & 0o777)  # both follow the umask
    assert inspect_path(path).passed
    assert independent_parity(path) < 1e-4
    assert data.name in json.loads(path.with_name(path.name + ".json").read_text())["files"]


def test_failure_mid_export_leaves_nothing(tmp_path, monkeypatch):
    import fastervit_deploy.onnx.export as mod

    def broken(*_):
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(mod, "simplify", broken)
    with pytest.raises(RuntimeError):
        export_tiny(tmp_path / "new" / "folder")
    assert list(tmp_path.iterdir()) == []  # the folders made for the output went too


def test_onnxsim_simplifier_on_fastervit0(tmp_path):
    out = tmp_path / "fv0_onnxsim.onnx"
    result = cli("export-onnx", "--model", "faster_vit_0_224", "--simplify", "onnxsim", "--output", out)
    assert result.exit_code == 0, result.output
    report = inspect_path(out)
    assert report.passed, report.failure_summary()
    assert report.ops.get("Gemm", 0) > 30  # onnxsim's form: MatMul+Add become Reshape→Gemm→Reshape
    assert independent_parity(out, batches=(2,)) <= 1e-4


@pytest.mark.slow
def test_card_command_any_res_576x960(tmp_path):
    out = tmp_path / "fv0.onnx"
    result = cli("export-onnx", "--model", "faster_vit_0_any_res", "--resolution", 576, 960, "--output", out)
    assert result.exit_code == 0, result.output
    assert "windows 7,7,6,6 chosen" in result.output.replace("\n", " ")
    record = read_record(out)
    assert record.model.resolution == (576, 960) and record.model.config.window_size == (7, 7, 6, 6)
    report = inspect_path(out)
    assert report.passed and report.ops.get("Shape", 0) == 0 and report.nodes == 664
    # verify reads the record: same (seeded) weights, real images, another batch size
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
