"""Precision debugging on the trained digits model: a planted calibration defect is found layer by layer,
ranked first by the site sensitivity, and repaired by `quantize --fallback auto`; `--method auto`."""

import json
import struct
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from PIL import Image

from fastervit_deploy.artifact import read_record
from fastervit_deploy.data.datasets import digits_split
from fastervit_deploy.data.images import preprocess
from fastervit_deploy.graph.graph import Graph
from fastervit_deploy.graph.inspect import inspect_path
from fastervit_deploy.graph.placement import plan_placement
from fastervit_deploy.onnx.runner import OnnxRuntimeRunner

from .helpers import assert_one_line_error, cli

pytestmark = pytest.mark.xdist_group("digits-debug")


def planted_cache(good: Path, out: Path, tensor: str, factor: float) -> Path:
    """A valid TensorRT-format cache whose scale for ``tensor`` is ``factor`` times the calibrated one."""
    lines = []
    for line in good.read_text().splitlines():
        name, sep, value = line.rpartition(": ")
        if sep and name == tensor:
            line = f"{name}: {struct.pack('!f', struct.unpack('!f', bytes.fromhex(value))[0] * factor).hex()}"
        lines.append(line)
    out.write_text("\n".join(lines) + "\n")
    assert out.read_text() != good.read_text()
    return out


def site(fp32: Path) -> tuple[str, str]:
    """(activation tensor, the weighted op that alone reads it quantized): the stem convolution's input."""
    model = onnx.load(str(fp32))
    placement = plan_placement(model)
    g = Graph(model)
    tensor = model.graph.input[0].name
    (op,) = [n.name for n in g.consumers[tensor] if n.name in placement.ops]
    return tensor, op


def quantize(*args):
    return cli("quantize", *args, "--backend", "onnxruntime")


@pytest.mark.parametrize("factor", [1e-3, 1e3], ids=["1000x-too-small", "1000x-too-large"])
def test_debug_names_the_planted_sites_consumer_and_ranks_its_group_first(digits_artifacts, tmp_path, factor):
    fp32 = digits_artifacts["fp32"]
    tensor, op = site(fp32)
    bad = planted_cache(digits_artifacts["cache"], tmp_path / "bad.cache", tensor, factor)
    broken = tmp_path / "broken.onnx"
    result = quantize(fp32, "--int8", "--calib-cache", bad, "--min-cosine", -1, "--min-top1", 0, "-o", broken)
    assert result.exit_code == 0, result.output  # written on purpose: the tolerance was lifted
    assert read_record(broken).parity["overall"]["cosine_min"] < 0.9  # the defect is real
    result = cli("debug", broken, "--json", tmp_path / "d.json", "--plot", tmp_path / "d.png")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "d.json").read_text())
    assert report["reference"] == str(fp32) and report["first_beyond"]["node"] == op
    assert [r["node"] for r in report["layers"]].index(op) == report["first_beyond"]["index"]
    assert all(not r["beyond"] for r in report["layers"][: report["first_beyond"]["index"]])
    ranked = report["sensitivity"]
    assert ranked[0]["op"] == op and ranked[0]["meets"] and not any(r["meets"] for r in ranked[1:])
    assert len(ranked) == len(plan_placement(onnx.load(str(fp32))).ops) == 30
    assert (tmp_path / "d.png").read_bytes()[:4] == b"\x89PNG"


def labelled_folder(folder: Path, count: int = 40) -> tuple[Path, list[Path]]:
    """The first ``count`` held-out digits as an ImageFolder, plus one file no reader can decode."""
    _, _, test, labels = digits_split()
    readable = []
    for i, (img, label) in enumerate(list(zip(test, labels))[:count]):
        (folder / str(label)).mkdir(parents=True, exist_ok=True)
        img.save(folder / str(label) / f"{i:04d}.png")
        readable.append(folder / str(label) / f"{i:04d}.png")
    (folder / str(labels[0]) / "broken.png").write_bytes(b"not a png")
    return folder, readable


def test_fallback_auto_keeps_exactly_the_planted_group_and_inspect_accepts_only_that(digits_artifacts, tmp_path):
    """With --data the target includes accuracy on labels (--max-drop); an unreadable file there is skipped, said."""
    fp32 = digits_artifacts["fp32"]
    tensor, op = site(fp32)
    # Without a fallback this cache fails the default check (cosine < 0.9: the test above writes it on purpose).
    bad = planted_cache(digits_artifacts["cache"], tmp_path / "bad.cache", tensor, 1e-3)
    data, readable = labelled_folder(tmp_path / "val")
    out = tmp_path / "fixed.onnx"
    result = quantize(fp32, "--int8", "--calib-cache", bad, "--fallback", "auto", "--data", data, "--max-drop", 0.5,
                      "-o", out)
    assert result.exit_code == 0, result.output
    assert "skipped 1 unreadable: " in result.output and "broken.png" in result.output
    record = read_record(out)
    assert record.qdq_excluded == (op,) and record.details["int8"]["fallback"]["kept"] == [op]
    assert record.parity["overall"]["cosine_min"] >= 0.99
    report = inspect_path(out)  # the written file, read back
    placement = report.finding("qdq-placement")
    assert report.passed and placement.facts["quantized_ops"] == 29 and placement.facts["excluded"] == 1
    # The same graph with the exclusion edited out of its embedded record: inspect fails it.
    model = onnx.load(str(out))
    entry = next(p for p in model.metadata_props if p.key == "fvdeploy.record")
    identity = json.loads(entry.value)
    identity["qdq_excluded"] = []
    entry.value = json.dumps(identity)
    onnx.save(model, str(tmp_path / "edited.onnx"))
    edited = inspect_path(tmp_path / "edited.onnx").finding("qdq-placement")
    assert not edited.ok and f"{op} is not INT8 and not recorded as excluded" in edited.detail
    # The written graph, re-opened: its top-1 on the 40 readable images is the one the fallback's last step measured.
    desc = record.model
    x = np.stack([preprocess(Image.open(f).convert("RGB"), desc.resolution, desc.preprocessing) for f in readable])
    y = np.asarray([int(f.parent.name) for f in readable])
    with OnnxRuntimeRunner(out) as runner:
        top1 = float((runner.infer(x)["logits"].argmax(1) == y).mean())
    step = record.details["int8"]["fallback"]["steps"][-1]
    assert step["meets"] and step["top1"] == pytest.approx(top1) and step["drop_points"] <= 0.5
    # debug reads the same folder alike: the 40 readable images, the broken one said.
    result = cli("debug", out, "--data", data, "--no-sensitivity", "--json", tmp_path / "d.json")
    assert result.exit_code == 0, result.output
    assert "skipped 1 unreadable" in result.output and json.loads((tmp_path / "d.json").read_text())["images"] == 40


def test_an_unreachable_target_exits_1_with_the_best_reached(digits_artifacts, tmp_path):
    result = quantize(digits_artifacts["fp32"], "--int8", "--calib-cache", digits_artifacts["cache"], "--fallback",
                      "auto", "--max-abs", 1e-9, "--max-fallback", 3, "-o", tmp_path / "never.onnx")
    assert_one_line_error(result, r"--fallback auto cannot meet the target: the best reached is max \|Δ\| .* with "
                                  r"\d groups kept in FP16 \(tried 3, most sensitive first: ", 1)
    assert not (tmp_path / "never.onnx").exists()


def test_method_auto_records_three_methods_and_keeps_the_best(digits_artifacts, tmp_path):
    fp32, calib = digits_artifacts["fp32"], digits_artifacts["calib"]
    auto = tmp_path / "auto.onnx"
    result = quantize(fp32, "--int8", "--calib-dir", calib, "--calib-images", 96, "--method", "auto", "-o", auto)
    assert result.exit_code == 0, result.output
    calibration = read_record(auto).details["int8"]["calibration"]
    methods = calibration["methods"]
    assert set(methods) == {"max", "entropy", "percentile"}
    key = lambda m: (methods[m]["top1_agreement"], methods[m]["cosine_min"], -methods[m]["max_abs"])  # noqa: E731
    assert calibration["chosen"] == max(methods, key=key)
    # One pass gave each method exactly what calibrating with it alone gives: the kept graph is that graph.
    alone = tmp_path / "alone.onnx"
    assert quantize(fp32, "--int8", "--calib-dir", calib, "--calib-images", 96, "--method", calibration["chosen"],
                    "-o", alone).exit_code == 0
    scales = lambda p: {q.input[0]: numpy_helper.to_array(Graph(m).initializers[q.input[1]]).tolist()  # noqa: E731
                        for m in [onnx.load(str(p))] for q in m.graph.node if q.op_type == "QuantizeLinear"}
    assert scales(auto) == scales(alone)
    assert len({round(methods[m]["cosine_min"], 9) for m in methods}) > 1  # the methods really differ here


def test_debug_of_fp16_graphs_and_bad_input(digits_artifacts, tmp_path):
    result = cli("debug", digits_artifacts["fp16"], "--json", tmp_path / "f.json")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "f.json").read_text())
    assert report["first_beyond"] is None and min(r["cosine"] for r in report["layers"]) >= 0.999
    assert "sensitivity" not in report and report["layer_min_cosine"] == 0.999
    # A value FP16 cannot hold: the stem's bias raised to 1e5 in a copy of the FP32 graph.
    big = tmp_path / "big.onnx"
    model = onnx.load(str(digits_artifacts["fp32"]))
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    bias = next(t for t in model.graph.initializer if t.name == conv.input[2])
    bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias) + np.float32(1e5), bias.name))
    onnx.save(model, str(big))  # no sidecar: the embedded record describes it
    assert cli("quantize", big, "--fp16", "--max-abs", 1e9, "--min-cosine", -1, "--min-top1", 0, "-o",
               tmp_path / "big16.onnx").exit_code == 0
    result = cli("debug", tmp_path / "big16.onnx", "--reference", big, "--json", tmp_path / "b.json")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "b.json").read_text())
    first = report["first_beyond"]
    assert first["node"] == conv.name and "leave FP16's range" in first["beyond"][-1]
    assert_one_line_error(cli("debug", digits_artifacts["fp32"]), r"debug compares an FP16 or quantized ONNX", 2)

