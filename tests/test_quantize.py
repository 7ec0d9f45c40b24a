"""FP16 and INT8 graphs: the precision policy, both backends agreeing, caches, any folder, real accuracy.

Accuracy is measured on real held-out data (scikit-learn's digits, a trained FasterViT-architecture
model) and on photos with FasterViT-0's checkpoint-like weights (non-zero biases, BatchNorm statistics).
"""

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from PIL import Image

from fastervit_deploy.data.datasets import digits_split, write_folder
from fastervit_deploy.graph.inspect import inspect_path
from fastervit_deploy.data.images import skimage_photos
from fastervit_deploy.graph.graph import Graph
from fastervit_deploy.core.precision import Tolerance
from fastervit_deploy.quantize.convert import modelopt_available
from fastervit_deploy.artifact import read_record
from fastervit_deploy.onnx.runner import OnnxRuntimeRunner

from .helpers import BACKENDS, assert_one_line_error, cli, export_tiny, quantize

needs_modelopt = pytest.mark.skipif(not modelopt_available(), reason="needs nvidia-modelopt (make install installs it)")






def accuracy(path, x, y):
    with OnnxRuntimeRunner(path) as r:
        pred = np.concatenate([r.infer(x[i : i + 60])["logits"].argmax(1) for i in range(0, len(x), 60)])
    return float((pred == y).mean())


def qdq_sites(path) -> dict[tuple[str, int], np.ndarray]:
    """(consumer node, input index) → the scale of the DequantizeLinear feeding it, as written in the file."""
    g = Graph(onnx.load(str(path)))
    sites = {}
    for node in g.nodes:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        for i, name in enumerate(node.input):
            dq = g.producer.get(name)
            while dq is not None and dq.op_type == "Cast":
                dq = g.producer.get(dq.input[0])
            if dq is not None and dq.op_type == "DequantizeLinear":
                sites[(node.name, i)] = numpy_helper.to_array(g.initializers[dq.input[1]]).astype(np.float32)
    return sites


@pytest.mark.xdist_group("digits-int8")
def test_fp16_accuracy_drop_within_0_2_points_and_layernorm_in_fp32(digits):
    out = digits["root"] / "fp16.onnx"
    quantize(digits["fp32"], out, "fp16")
    base, half = accuracy(digits["fp32"], digits["x"], digits["y"]), accuracy(out, digits["x"], digits["y"])
    print(f"digits held-out: fp32 {base:.4f}, fp16 {half:.4f} ({len(digits['y'])} images)")
    assert base >= 0.97  # the committed model is trained, so the drop below means something
    assert (base - half) * 100 <= 0.2
    report = inspect_path(out)  # the written file, read back
    precision = report.finding("precision")
    assert report.passed and precision.ok and precision.facts["layernorm_fp32"] == 13  # 3 downsamplers, 8 + 2 in blocks
    assert precision.facts["fp16_ops"] > 100 and precision.facts["deviations"] == 0
    assert report.finding("qdq-placement").facts["qdq_pairs"] == 0
    assert [i["dtype"] for i in report.inputs + report.outputs] == ["float32", "float32"]
    assert read_record(out).details["lowering"]["converter"] == "modelopt-autocast"




@pytest.mark.xdist_group("digits-int8")
@pytest.mark.parametrize("backend", BACKENDS)
def test_int8_accuracy_drop_within_1_point_and_the_policy_holds(digits, int8_graphs, backend):
    out, record = int8_graphs[0][backend]
    base, q = accuracy(digits["fp32"], digits["x"], digits["y"]), accuracy(out, digits["x"], digits["y"])
    print(f"digits held-out: fp32 {base:.4f}, int8/{backend} {q:.4f}")
    assert (base - q) * 100 <= 1.0
    report = inspect_path(out)
    assert report.passed, report.failure_summary()
    placement = report.finding("qdq-placement")
    # stem 2, conv blocks 4, downsamplers 3, tokenizer 1, HAT blocks 2 x 8, last block 4: 30 weighted ops
    assert placement.ok and (placement.facts["quantized_ops"], placement.facts["weighted_ops"]) == (30, 30)
    assert report.finding("precision").ok
    sites = qdq_sites(out)
    ops = {n.name: n.op_type for n in onnx.load(str(out)).graph.node}
    assert sites and {ops[n] for n, _ in sites} == {"Conv", "MatMul", "Add"}  # never LayerNorm, Softmax, head
    int8 = record.details["int8"]
    assert int8["backend"] == backend and int8["scheme"] == "tensorrt-int8"
    assert int8["placement"] == {"ops": 30, "weighted_ops": 30, "attention_matmuls": 0, "residual_adds": 12,
                                 "excluded": [], "exclude_patterns": []}
    assert int8["calibration"]["source"] == ("images" if backend == BACKENDS[0] else "cache")
    read_record(digits["fp32"])  # the input is untouched: its sidecar's sha256 still matches (raises otherwise)


@pytest.mark.xdist_group("digits-int8")
@needs_modelopt
def test_both_backends_give_the_same_placement_and_scales(int8_graphs):
    (ort, _), (mo, _) = int8_graphs[0]["onnxruntime"], int8_graphs[0]["modelopt"]
    a, b = qdq_sites(ort), qdq_sites(mo)
    assert a.keys() == b.keys() and len(a) == 30 * 2 + 12  # activation and weight of each op, each skip
    assert all(np.allclose(a[k], b[k], rtol=1e-3) for k in a)


@pytest.mark.xdist_group("digits-int8")
def test_cache_rebuild_gives_the_same_scales_and_bad_caches_are_refused(digits, int8_graphs, tmp_path):
    (first, _), cache = int8_graphs[0][BACKENDS[0]], int8_graphs[1]
    again = tmp_path / "again.onnx"
    record = quantize(digits["fp32"], again, "int8", backend=BACKENDS[0], calib_cache=cache)  # no images at all
    a, b = qdq_sites(first), qdq_sites(again)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert record.details["int8"]["calibration"]["source"] == "cache"
    lines = cache.read_text().splitlines()
    bad = {"empty.cache": "", "garbage.cache": "not a cache\n", "values.cache": lines[0] + "\nx: zz\n",
           "other.cache": lines[0] + "\n" + "\n".join(lines[1:3]) + "\n"}
    messages = {"empty.cache": "is empty", "garbage.cache": "is not a TensorRT calibration cache",
                "values.cache": "line 2: expected 'tensor: <8 hex digits>'",
                "other.cache": "made for another graph .*calibrate into another --calib-cache path"}
    for name, text in bad.items():
        (tmp_path / name).write_text(text)
        result = cli("quantize", digits["fp32"], "--int8", "--calib-cache", tmp_path / name, "-o", tmp_path / "x.onnx")
        assert_one_line_error(result, messages[name], code=2)
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.xdist_group("digits-int8")
def test_predict_labels_held_out_digits_through_every_precision(digits, int8_graphs, tmp_path):
    """`fvdeploy predict` with the model's own preprocessing: the held-out digits' true classes come out on top."""
    _, _, test, y_test = digits_split()
    files = [p for p in sorted(write_folder(test[:24], tmp_path / "digits").iterdir())]
    for artifact in (digits["fp32"], *(out for out, _ in int8_graphs[0].values())):
        result = cli("predict", artifact, *files, "--top", 3, "--json", tmp_path / "p.json", "--overwrite")
        assert result.exit_code == 0, result.output
        rows = json.loads((tmp_path / "p.json").read_text())["predictions"]
        assert [r["image"] for r in rows] == [str(f) for f in files]
        top1 = np.array([r["top"][0]["index"] for r in rows])
        assert (top1 == y_test[:24]).mean() >= 0.95, (artifact.name, top1, y_test[:24])
        probs = np.array([[t["probability"] for t in r["top"]] for r in rows])
        assert np.all(np.diff(probs, axis=1) <= 0) and np.all(probs.sum(axis=1) <= 1 + 1e-6)
        assert rows[0]["top"][0]["label"] == f"class {top1[0]}"  # a 10-class head has no ImageNet names
    assert_one_line_error(cli("predict", digits["fp32"], tmp_path / "absent.png"), r"image not found: .*absent.png", 2)


def test_any_folder_calibrates_odd_counts_odd_modes_and_a_corrupt_file(tmp_path):
    path, _ = export_tiny(tmp_path, verify=False)
    folder = tmp_path / "calib"
    folder.mkdir()
    photos = skimage_photos()
    for i in range(9):  # 14 files: not a multiple of any chunk, every mode once
        photos[i % len(photos)].save(folder / f"rgb{i}.jpg")
    photos[0].convert("L").save(folder / "grey.png")
    photos[1].convert("RGBA").save(folder / "alpha.png")
    photos[2].convert("CMYK").save(folder / "cmyk.tif")
    Image.fromarray((np.asarray(photos[3].convert("L"), np.uint16) * 257)).save(folder / "deep16.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    record = quantize(path, tmp_path / "int8.onnx", "int8", Tolerance(min_top1=0.0), calib_dir=folder,
                      backend="onnxruntime")
    calibration = record.details["int8"]["calibration"]
    assert calibration["files_listed"] == 14 and calibration["images"] == 13
    assert len(calibration["skipped"]) == 1 and calibration["skipped"][0].startswith("broken.jpg")
    assert len(calibration["images_sha256"]) == 64 and calibration["chunk_shape"][1:] == [3, 224, 224]


def test_quantize_takes_the_tolerance_options(tmp_path):
    """verify's tolerance options decide quantize's parity check too (and are recorded)."""
    path, _ = export_tiny(tmp_path, verify=False)
    strict = cli("quantize", path, "--fp16", "--max-abs", 1e-7, "-o", tmp_path / "a.onnx")
    assert_one_line_error(strict, r"fp16 parity check failed: max \|Δ\| [\d.e-]+ > 1e-07", code=1)
    assert not (tmp_path / "a.onnx").exists()
    assert_one_line_error(cli("quantize", path, "--fp16", "--min-top1", 95), r"'--min-top1': Input should be less than "
                          r"or equal to 1", code=2)
    relaxed = cli("quantize", path, "--fp16", "--max-abs", 0.01, "--min-top1", 0, "-o", tmp_path / "b.onnx")
    assert relaxed.exit_code == 0, relaxed.output
    side = json.loads((tmp_path / "b.onnx.json").read_text())
    assert side["parity"]["tolerance"] == {"max_abs": 0.01, "min_cosine": 0.999, "min_top1": 0.0}
    assert side["command"][-6:-2] == ["--max-abs", "0.01", "--min-top1", "0.0"]


# Full size: the onnxruntime run stays in `make test` (FasterViT-0's 84 sites, checkpoint-like weights); ModelOpt's
# run of the same placement and scales is 40 s of its own graph passes, and `make test-all` runs it. That both backends
# write the same sites and scales is checked on every `make test`, on the trained digits model
# (test_both_backends_give_the_same_placement_and_scales).
FULL_SIZE_BACKENDS = [b if b == "onnxruntime" else pytest.param(b, marks=pytest.mark.slow) for b in BACKENDS]


@pytest.mark.xdist_group("fastervit0")
@pytest.mark.parametrize("backend", FULL_SIZE_BACKENDS)
def test_fastervit0_int8_cosine_on_photos(fastervit0, backend, tmp_path):
    fp32, calib, cache = fastervit0  # whichever backend runs first calibrates; the other reads its scales
    out = tmp_path / f"fv0_{backend}.onnx"
    record = quantize(fp32, out, "int8", calib_dir=calib, backend=backend, calib_cache=cache)
    cosine = record.parity["overall"]["cosine_min"]
    print(f"FasterViT-0 INT8 ({backend}) cosine to FP32 on photos: {cosine:.5f}")
    assert cosine >= 0.99
    report = inspect_path(out)
    facts = report.finding("qdq-placement").facts
    assert report.passed and (facts["quantized_ops"], facts["weighted_ops"]) == (84, 84)


@pytest.mark.xdist_group("digits-int8")
def test_exclude_keeps_nodes_out_of_int8(digits, tmp_path):
    out = tmp_path / "excl.onnx"
    record = quantize(digits["fp32"], out, "int8", calib_dir=digits["calib"], calib_images=16, backend="onnxruntime",
                      exclude=("/levels.3/*",))
    excluded = record.details["int8"]["placement"]["excluded"]
    assert excluded and all(n.startswith("/levels.3/") for n in excluded)
    assert not [n for n, _ in qdq_sites(out) if n.startswith("/levels.3/")]
    assert inspect_path(out).passed  # excluded ops are FP16, not half-quantized


@pytest.mark.xdist_group("digits-int8")
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


def test_a_cache_says_which_method_made_it_and_a_different_method_is_refused(tmp_path):
    """Every cache said EntropyCalibration2, and `--method entropy --calib-cache max.cache` used the max scales and
    recorded no method."""
    src, _ = export_tiny(tmp_path, filename="t.onnx", verify=False)
    calib = tmp_path / "calib"
    calib.mkdir()
    for i, img in enumerate(skimage_photos()[:4]):
        img.save(calib / f"{i}.png")
    cache = tmp_path / "max.cache"
    made = quantize(src, tmp_path / "a.onnx", "int8", Tolerance(min_top1=0.0), calib_dir=calib, method="max",
                    calib_cache=cache, backend="onnxruntime")
    assert cache.read_text().splitlines()[0] == "TRT-10000-MinMaxCalibration"  # re-read from the file
    assert made.details["int8"]["calibration"]["method"] == "max"
    result = cli("quantize", src, "--int8", "--method", "entropy", "--calib-cache", cache, "--calib-dir", calib,
                 "-o", tmp_path / "b.onnx")
    assert_one_line_error(result, r"--method entropy: calibration cache .*max\.cache holds max scales", 2)
    reused = quantize(src, tmp_path / "c.onnx", "int8", Tolerance(min_top1=0.0), calib_cache=cache,
                      backend="onnxruntime")
    assert reused.details["int8"]["calibration"]["source"] == "cache"
    assert reused.details["int8"]["calibration"]["method"] == "max"
