"""FP16 and INT8 graphs: placement rules, caches, and accuracy on real held-out data."""

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper

from fastervit_deploy.datasets import digits_split, to_batch, write_folder
from fastervit_deploy.graph_check import Graph, inspect_path
from fastervit_deploy.model_spec import resolve_model
from fastervit_deploy.options import CalibrationOptions, ModelRequest, OutputTarget
from fastervit_deploy.plan import plan_export, plan_quantize
from fastervit_deploy.quantize import modelopt_available
from fastervit_deploy.runners import OnnxRuntimeRunner

from .helpers import assert_one_line_error, cli, quiet_steps

DIGITS_CKPT = Path(__file__).resolve().parents[1] / "fastervit_deploy" / "data" / "digits_fastervit.pth.tar"
BACKENDS = ["onnxruntime"] + (["modelopt"] if modelopt_available() else [])


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """The committed digits model exported to ONNX, a calibration folder (train split), the test split."""
    root = tmp_path_factory.mktemp("digits")
    request = ModelRequest("faster_vit_0_224", checkpoint=DIGITS_CKPT)
    fp32 = root / "digits.onnx"
    plan_export(request, OutputTarget(fp32), verify=False).run(quiet_steps())
    train, _, test, y_test = digits_split()
    calib = write_folder(train, root / "calib")
    desc = resolve_model(request)
    return {"root": root, "fp32": fp32, "calib": calib, "x": to_batch(test, desc.resolution, desc.preprocessing),
            "y": y_test}


def quantize(source, output, precision, **calibration):
    plan = plan_quantize(source, precision, OutputTarget(output), CalibrationOptions(**calibration))
    return plan.run(quiet_steps())


def accuracy(path, x, y):
    with OnnxRuntimeRunner(path) as r:
        pred = np.concatenate([r.infer(x[i : i + 60])["logits"].argmax(1) for i in range(0, len(x), 60)])
    return float((pred == y).mean())


def test_fp16_accuracy_drop_within_0_2_points(digits):
    out = digits["root"] / "fp16.onnx"
    quantize(digits["fp32"], out, "fp16")
    base, half = accuracy(digits["fp32"], digits["x"], digits["y"]), accuracy(out, digits["x"], digits["y"])
    print(f"digits held-out: fp32 {base:.4f}, fp16 {half:.4f} ({len(digits['y'])} images)")
    assert base >= 0.97  # the committed model is trained, so the drop below means something
    assert (base - half) * 100 <= 0.2
    model = onnx.load(str(out))
    assert [i.type.tensor_type.elem_type for i in model.graph.input] == [TensorProto.FLOAT]
    assert [o.type.tensor_type.elem_type for o in model.graph.output] == [TensorProto.FLOAT]
    g = Graph(model)
    ln = [n for n in model.graph.node if n.op_type == "LayerNormalization"]
    assert ln and all(g.producer[n.input[0]].op_type == "Cast" for n in ln)  # statistics in fp32
    fp32_weights = {t.name for t in model.graph.initializer if t.data_type == TensorProto.FLOAT}
    assert fp32_weights and all(any(t in n.input for n in ln) for t in fp32_weights)  # only LN params stay fp32
    assert inspect_path(out).passed
    side = json.loads(out.with_name("fp16.onnx.json").read_text())
    assert side["precision"] == "fp16" and side["model"]["name"] == "faster_vit_0_224"


@pytest.mark.parametrize("backend", BACKENDS)
def test_int8_accuracy_drop_within_1_point_and_tensorrt_placement(digits, backend):
    cache = digits["root"] / f"{backend}.cache"
    out = digits["root"] / f"int8_{backend}.onnx"
    quantize(digits["fp32"], out, "int8", folder=digits["calib"], backend=backend, cache=cache)
    base, q = accuracy(digits["fp32"], digits["x"], digits["y"]), accuracy(out, digits["x"], digits["y"])
    print(f"digits held-out: fp32 {base:.4f}, int8/{backend} {q:.4f}")
    assert (base - q) * 100 <= 1.0
    model = onnx.load(str(out))
    g = Graph(model)
    qs = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert len(qs) > 20
    for n in qs:  # symmetric int8: zero point 0
        zp = numpy_helper.to_array(g.initializers[n.input[2]])
        assert zp.dtype == np.int8 and not zp.any()
    conv_w = [n for n in model.graph.node if n.op_type == "Conv" and g.producer.get(n.input[1]) is not None]
    for conv in conv_w:  # per-output-channel weight scales
        dq = g.producer[conv.input[1]]
        while dq.op_type != "DequantizeLinear":
            dq = g.producer[dq.input[0]]
        scale = numpy_helper.to_array(g.initializers[dq.input[1]])
        assert scale.size == numpy_helper.to_array(g.initializers[dq.input[0]]).shape[0] if dq.input[0] in g.initializers else scale.size > 1
    for n in qs:
        users = {c.op_type for dq in g.consumers[n.output[0]] for c in g.consumers[dq.output[0]]}
        assert users != {"Softmax"}, n.name  # Softmax never runs on int8 input
        if backend == "onnxruntime":  # our placement: each Q/DQ exists for a weighted op or a residual Add
            assert users & {"Conv", "MatMul", "Gemm", "Add"}, (n.name, users)
    # (ModelOpt's TensorRT-guided placement also quantizes pooling, transposes and some LayerNorm inputs.)
    assert inspect_path(out).passed
    side = json.loads(out.with_name(out.name + ".json").read_text())
    assert side["details"]["int8"]["backend"] == backend and side["details"]["int8"]["calibration_images"] == 512
    assert side["details"]["int8"]["qdq_pairs"] == len(qs)

    # Rebuild from the cache only: no calibration images, the same scales.
    again = digits["root"] / f"cached_{backend}.onnx"
    quantize(digits["fp32"], again, "int8", backend=backend, cache=cache)
    scales = lambda p: {t.name: numpy_helper.to_array(t) for t in onnx.load(str(p)).graph.initializer if "scale" in t.name}  # noqa: E731
    a, b = scales(out), scales(again)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert json.loads(again.with_name(again.name + ".json").read_text())["details"]["int8"]["cache_hit"]


def test_exclude_keeps_nodes_out_of_int8(digits):
    out = digits["root"] / "excl.onnx"
    quantize(digits["fp32"], out, "int8", folder=digits["calib"], images=64, backend="onnxruntime",
             exclude=("/head/*", "/levels.3/*"))
    g = Graph(onnx.load(str(out)))
    for n in g.nodes:
        if n.name.startswith(("/head/", "/levels.3/")) and n.op_type in ("MatMul", "Gemm"):
            assert all(g.producer.get(i) is None or g.producer[i].op_type != "DequantizeLinear" for i in n.input), n.name


def test_fastervit0_int8_cosine_on_photos(tmp_path):
    from fastervit_deploy.images import skimage_photos

    fp32 = tmp_path / "fv0.onnx"
    plan_export(ModelRequest("faster_vit_0_224"), OutputTarget(fp32), verify=False).run(quiet_steps())
    calib = tmp_path / "calib"
    calib.mkdir()
    for i, img in enumerate(skimage_photos()):  # real photos, plus mirrored and cropped views
        img.save(calib / f"{i}.png")
        img.transpose(0).save(calib / f"{i}_flip.png")
        w, h = img.size
        img.crop((w // 8, h // 8, w - w // 8, h - h // 8)).save(calib / f"{i}_crop.png")
    record = quantize(fp32, tmp_path / "fv0_int8.onnx", "int8", folder=calib)
    cosine = record.parity["overall"]["cosine_min"]
    print(f"FasterViT-0 INT8 ({record.details['int8']['backend']}) cosine to FP32 on photos: {cosine:.5f}")
    assert cosine >= 0.99


def test_quantize_bad_input(tmp_path, digits):
    assert_one_line_error(cli("quantize", tmp_path / "none.onnx", "--fp16"), r"ONNX file not found")
    assert_one_line_error(cli("quantize", digits["fp32"], "--int8"), r"--int8 needs --calib-dir")
    assert_one_line_error(cli("quantize", digits["fp32"], "--int8", "--fp16"), r"one of --fp16 and --int8")
    assert_one_line_error(cli("quantize", digits["fp32"], "--int8", "--calib-dir", tmp_path, "--method", "mse"),
                          r"'mse' is not one of 'entropy', 'max', 'percentile'")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(cli("quantize", digits["fp32"], "--int8", "--calib-dir", empty, "-o", tmp_path / "x.onnx"),
                          r"no images")
    assert not (tmp_path / "x.onnx").exists()
    external = tmp_path / "external.onnx"
    onnx.save(onnx.load(str(digits["fp32"])), str(external), save_as_external_data=True, location="external.onnx.data")
    assert_one_line_error(cli("quantize", external, "--fp16"), r"external data \(> 2 GB\)")
    foreign = tmp_path / "foreign.onnx"
    model = onnx.load(str(digits["fp32"]))
    del model.metadata_props[:]
    onnx.save(model, str(foreign))
    assert_one_line_error(cli("quantize", foreign, "--fp16"), r"foreign.onnx has no fvdeploy record")
