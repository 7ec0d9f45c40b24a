"""Precision per target: INT8 for onnxruntime's CPU kernels, FP8 E4M3 for TensorRT on Hopper and Ada.

Each scheme's placement is checked on the written files (re-opened), on hand-built graphs breaking its
rules, and numerically: the trained digits model (accuracy on its 360 held-out digits) and FasterViT-0
with checkpoint-like weights (cosine to FP32 on photos)."""

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fastervit_deploy.artifact import read_record
from fastervit_deploy.core.options import Provider, RunOptions
from fastervit_deploy.formats import runtime_mismatch
from fastervit_deploy.graph.graph import Graph
from fastervit_deploy.graph.inspect import inspect_path
from fastervit_deploy.graph.policy import SCHEMES
from fastervit_deploy.graph.policy_checks import check_qdq
from fastervit_deploy.tensorrt.audit import audit
from fastervit_deploy.tensorrt.profile import unsupported_precision

from .helpers import assert_one_line_error, cli, export_tiny

# the tests of the module-scoped `digits_targets` run on one xdist worker, which makes them once
uses_targets = pytest.mark.xdist_group("digits-targets")


def evaluate(tmp_path, *artifacts, data) -> dict:
    out = tmp_path / "eval.json"
    result = cli("evaluate", *artifacts, "--data", data, "--json", out)
    assert result.exit_code == 0, result.output
    return {Path(r["artifact"]).name: r for r in json.loads(out.read_text())["results"]}


def zero_point_types(path: Path) -> dict[str, set[int]]:
    """Element types of the written Q/DQ zero points: activations and weights apart."""
    model = onnx.load(str(path))
    g = Graph(model)
    found: dict[str, set[int]] = {"activation": set(), "weight": set()}
    for dq in (n for n in g.nodes if n.op_type == "DequantizeLinear"):
        kind = "weight" if g.is_constant(g.behind(dq.input[0])) else "activation"
        found[kind].add(g.initializers[dq.input[2]].data_type)
    return found




@uses_targets
def test_cpu_int8_is_the_onnxruntime_cpu_scheme_and_keeps_the_digits(digits_targets, digits_artifacts, digits_folder, tmp_path):
    path = digits_targets["cpu"]
    record = read_record(path)
    kernels = record.details["int8"]["cpu_kernels"]
    assert record.target == "onnxruntime-cpu" and record.details["int8"]["scheme"] == "onnxruntime-cpu-int8"
    assert kernels["reduce_range"] == (not kernels["vnni"])  # 7-bit weights exactly where u8s8 saturates
    report = inspect_path(path)
    placement = report.finding("qdq-placement").facts
    assert report.passed and placement["scheme"] == "onnxruntime-cpu-int8"
    assert placement["weighted_quantized"] == placement["weighted_ops"] == 30 and placement["attention_ops"] == 0
    assert report.finding("precision").facts["fp32_ops"] > 100  # the float part stays FP32
    model = onnx.load(str(path))
    assert not any(t.data_type == TensorProto.FLOAT16 for t in model.graph.initializer)
    assert zero_point_types(path) == {"activation": {TensorProto.UINT8}, "weight": {TensorProto.INT8}}
    by = evaluate(tmp_path, digits_artifacts["fp32"], path, data=digits_folder)
    print({k: (r["top1"], r["drop_points"]) for k, r in by.items()})
    assert by["digits_cpu.onnx"]["drop_points"] <= 0.5


def activation_scales(path: Path) -> dict[str, float]:
    """The written graph's activation scales, by the DequantizeLinear that uses them (read from the file)."""
    g = Graph(onnx.load(str(path)))
    return {dq.name: float(numpy_helper.to_array(g.initializers[dq.input[1]]).astype(np.float32).ravel()[0])
            for dq in g.nodes if dq.op_type == "DequantizeLinear" and not g.is_constant(g.behind(dq.input[0]))}


@uses_targets
def test_fp8_with_a_method_given_calibrates_with_that_method(digits_targets):
    """`--fp8 --method entropy` names the INT8 default explicitly: FP8 must use it, not its own default (max)."""
    entropy, max_ = read_record(digits_targets["fp8_entropy"]), read_record(digits_targets["fp8"])
    assert entropy.details["fp8"]["calibration"]["method"] == "entropy" and max_.details["fp8"]["calibration"]["method"] == "max"
    assert "--method" in entropy.command and "entropy" in entropy.command  # the record's command line remakes it
    ours, theirs = activation_scales(digits_targets["fp8_entropy"]), activation_scales(digits_targets["fp8"])
    assert ours.keys() == theirs.keys() and len(ours) > 20
    assert sum(ours[k] < theirs[k] * 0.999 for k in ours) > len(ours) // 2  # entropy clips below max: smaller scales


@uses_targets
def test_fp8_is_the_tensorrt_fp8_scheme_and_keeps_the_digits(digits_targets, digits_artifacts, digits_folder, tmp_path):
    path = digits_targets["fp8"]
    record = read_record(path)
    assert record.precision == "fp8" and record.target == "tensorrt"
    assert record.details["fp8"]["calibration"]["method"] == "max"  # FP8's default
    report = inspect_path(path)
    placement = report.finding("qdq-placement").facts
    assert report.passed and placement["scheme"] == "tensorrt-fp8" and placement["attention_ops"] == 10
    # FP8 leaves out convolutions of <= 16 channels: here the stem's two and the tokenizer's depthwise conv
    assert placement["weighted_quantized"] == 27 and placement["weighted_ops"] == 30
    assert zero_point_types(path) == {"activation": {TensorProto.FLOAT8E4M3FN}, "weight": {TensorProto.FLOAT8E4M3FN}}
    model = onnx.load(str(path))
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    assert opset >= 19 and model.ir_version <= 13  # what FP8 Q/DQ needs, and what onnxruntime 1.31's CPU reads
    by = evaluate(tmp_path, digits_artifacts["fp32"], path, data=digits_folder)
    assert by["digits_fp8.onnx"]["drop_points"] <= 1.0


@uses_targets
def test_a_tensorrt_graph_on_the_cpu_provider_says_so_in_one_line(digits_targets, digits_artifacts, tmp_path):
    result = cli("benchmark", digits_artifacts["int8"], digits_targets["cpu"], "--batch", 1, "--warmup", 0, "--iterations", 1,
                 "--no-pytorch")
    assert result.exit_code == 0, result.output
    notes = [line for line in result.output.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "digits_int8.onnx (int8) was made for TensorRT" in notes[0]
    cpu = read_record(digits_targets["cpu"])
    assert runtime_mismatch(digits_targets["cpu"], cpu, RunOptions(Provider.cpu)) is None
    assert "made for onnxruntime's CPU kernels" in runtime_mismatch(digits_targets["cpu"], cpu, RunOptions(Provider.tensorrt))
    verify = cli("verify", digits_artifacts["fp16"], "--batch", 2)
    assert verify.exit_code == 0 and "digits_fp16.onnx (fp16) was made for TensorRT" in verify.output


@uses_targets
def test_build_trt_refuses_cpu_graphs_and_fp8_below_compute_capability_8_9(digits_targets, tmp_path):
    assert_one_line_error(cli("build-trt", "--onnx", digits_targets["cpu"]), r"made for onnxruntime's CPU kernels .* build "
                          r"engines from the FP32 ONNX \(/\S*/digits\.onnx\) with --int8", 2)  # a path that runs
    assert unsupported_precision("fp8", "8.6").startswith("FP8 engines need compute capability 8.9")
    assert unsupported_precision("fp8", "8.9") is None and unsupported_precision("fp8", "9.0") is None
    assert unsupported_precision("int8", "7.5") is None
    result = cli("build-trt", "--onnx", digits_targets["fp8"])  # without TensorRT here: the trtexec line to run there
    assert "trtexec" in result.output and "--fp8" not in result.output.replace("\n", " ")
    fp8_layers = {"Layers": [{"Name": f"l{i}", "LayerType": "CaskConvolution",
                              "Inputs": [{"Format/Datatype": "Row major linear FP8 format"}]} for i in range(3)]}
    assert audit(fp8_layers, "fp8").passed and audit(fp8_layers, "fp8").finding("fp8-layers").facts["layers"] == 3
    half = {"Name": "x", "LayerType": "CaskConvolution", "Inputs": [{"Format/Datatype": "Half"}]}
    assert not audit({"Layers": [half]}, "fp8").passed  # no FP8 layer at all: TensorRT ignored the Q/DQ


@uses_targets
def test_triton_serves_the_fp8_graph(digits_targets, tmp_path):
    from fastervit_deploy.triton.schema import parse_config

    repo = tmp_path / "repo"
    result = cli("triton", digits_targets["fp8"], "--repository", repo, "--name", "fp8")
    assert result.exit_code == 0, result.output
    config = parse_config(repo / "fp8" / "config.pbtxt")
    assert config.platform == "onnxruntime_onnx" and config.parameters["fvdeploy.precision"].string_value == "fp8"
    assert (repo / "fp8" / "1" / "model.onnx").read_bytes() == digits_targets["fp8"].read_bytes()


@uses_targets
def test_a_cpu_int8_graph_is_not_served_through_tensorrt_and_on_gpus_with_a_note(digits_targets, tmp_path):
    cpu = digits_targets["cpu"]
    assert_one_line_error(cli("triton", cpu, "--repository", tmp_path / "a", "--ort-tensorrt"),
                          r"--ort-tensorrt: digits_cpu\.onnx was made for onnxruntime's CPU kernels", 2)
    assert not (tmp_path / "a").exists()
    result = cli("triton", cpu, "--repository", tmp_path / "b")
    assert result.exit_code == 0 and "note: digits_cpu.onnx was made for onnxruntime's CPU kernels" in \
        " ".join(result.output.split())
    assert "note:" not in cli("triton", cpu, "--repository", tmp_path / "c", "--instance-kind", "cpu").output


@uses_targets
def test_the_fp8_graph_is_served_by_the_local_server_through_its_preprocessing(digits_targets, digits_folder, tmp_path):
    """It wrote a repository the server could not load (onnxruntime's default level fuses FP8 Q/DQ it cannot run)."""
    tritonclient_http = pytest.importorskip("tritonclient.http")
    from PIL import Image

    from fastervit_deploy.onnx.runner import OnnxRuntimeRunner
    from fastervit_deploy.triton.local import LocalTritonServer

    repo = tmp_path / "repo"
    result = cli("triton", digits_targets["fp8"], "--repository", repo, "--name", "fp8", "--backend", "python",
                 "--preprocess")
    assert result.exit_code == 0, result.output
    image = next(digits_folder.rglob("*.png"))
    with LocalTritonServer(repo) as server:
        client = tritonclient_http.InferenceServerClient(server.url)
        inp = tritonclient_http.InferInput("image_bytes", [1, 1], "BYTES")
        inp.set_data_from_numpy(np.array([image.read_bytes()], dtype=object).reshape(1, 1))
        served = client.infer("fp8_ensemble", [inp]).as_numpy("logits")
    from fastervit_deploy.data.images import preprocess
    from fastervit_deploy.artifact import read_record

    desc = read_record(digits_targets["fp8"]).model
    with OnnxRuntimeRunner(digits_targets["fp8"]) as local:
        here = local.infer(preprocess(Image.open(image).convert("RGB"), desc.resolution, desc.preprocessing)[None])
    assert np.abs(served - here["logits"]).max() <= 1e-4


def test_bad_combinations_are_one_line(digits_artifacts, tmp_path):
    fp32 = digits_artifacts["fp32"]
    assert_one_line_error(cli("quantize", fp32, "--fp16", "--target", "onnxruntime-cpu"),
                          r"--fp16 is not made for --target onnxruntime-cpu", 2)
    assert_one_line_error(cli("quantize", fp32, "--fp8", "--target", "onnxruntime-cpu", "--calib-dir", tmp_path),
                          r"--fp8 is not made for --target onnxruntime-cpu", 2)
    assert_one_line_error(cli("quantize", fp32, "--fp8", "--int8"), r"choose one of --int8 and --fp8", 2)
    assert_one_line_error(cli("quantize", fp32, "--int8", "--target", "onnxruntime-cpu", "--keep-fp32", "Softmax",
                              "--calib-dir", tmp_path), r"--target onnxruntime-cpu keeps every op that is not INT8 in FP32", 2)
    assert_one_line_error(cli("quantize", fp32, "--int8", "--target", "onnxruntime-cpu", "--backend", "modelopt",
                              "--calib-cache", digits_artifacts["cache"], "-o", tmp_path / "x.onnx"),
                          r"written by onnxruntime's quantizer", 2)


# ---- the schemes' checks on hand-built graphs --------------------------------------------------------------------

C = 8


def _graph(scheme_key: str, *breaks: str) -> onnx.ModelProto:
    """x → Conv (weight) → [Q/DQ] → Relu → LayerNorm → MatMul (weight) → q·kᵀ → Softmax → attn·v → y, quantized as
    the scheme says; ``breaks`` names the rule to break."""
    scheme = SCHEMES[scheme_key]
    rng = np.random.default_rng(0)
    act, weight = scheme.activation_type, scheme.weight_type
    inits, nodes, n = [], [], [0]
    to = onnx.helper.tensor_dtype_to_np_dtype

    def qdq(tensor, kind=act, zero=0):
        n[0] += 1
        k = n[0]
        inits.append(numpy_helper.from_array(np.float32(0.05), f"s{k}"))
        inits.append(helper.make_tensor(f"z{k}", kind, [], [zero]))
        nodes.append(helper.make_node("QuantizeLinear", [tensor, f"s{k}", f"z{k}"], [f"{tensor}_q{k}"], name=f"Q{k}"))
        nodes.append(helper.make_node("DequantizeLinear", [f"{tensor}_q{k}", f"s{k}", f"z{k}"], [f"{tensor}_dq{k}"],
                                      name=f"DQ{k}"))
        return f"{tensor}_dq{k}"

    def weight_dq(name, array, axis):
        scale = (np.abs(array).max(axis=tuple(i for i in range(array.ndim) if i != axis)) / 100).astype(np.float32)
        shape = [1] * array.ndim
        shape[axis] = -1
        values = (array / scale.reshape(shape)).astype(np.float32)
        data = values.astype(to(weight)) if weight != TensorProto.FLOAT8E4M3FN else values
        inits.append(helper.make_tensor(f"{name}_q", weight, list(array.shape), data.flatten().tolist()))
        inits.append(numpy_helper.from_array(scale, f"{name}_s"))
        inits.append(helper.make_tensor(f"{name}_z", weight, [len(scale)], [0] * len(scale)))
        nodes.append(helper.make_node("DequantizeLinear", [f"{name}_q", f"{name}_s", f"{name}_z"], [f"{name}_dq"],
                                      axis=axis, name=f"{name}_DQ"))
        return f"{name}_dq"

    conv_w = rng.standard_normal((32, 32, 1, 1)).astype(np.float32)
    x_in = qdq("x") if "conv_unquantized" not in breaks else "x"
    nodes.append(helper.make_node("Conv", [x_in, weight_dq("cw", conv_w, 0) if "conv_unquantized" not in breaks
                                           else "cw"], ["conv"], name="conv"))
    if "conv_unquantized" in breaks:
        inits.append(numpy_helper.from_array(conv_w, "cw"))
    conv_out = qdq("conv") if scheme.quantized_conv_outputs else "conv"
    nodes.append(helper.make_node("Relu", [conv_out], ["relu"], name="relu"))
    nodes.append(helper.make_node("Reshape", ["relu", "shape"], ["tokens"], name="tokens"))
    inits.append(numpy_helper.from_array(np.array([-1, 4, 32], np.int64), "shape"))
    inits += [numpy_helper.from_array(np.ones(32, np.float32), "g"), numpy_helper.from_array(np.zeros(32, np.float32), "b")]
    ln_in = qdq("tokens") if "ln_input" in breaks else "tokens"
    nodes.append(helper.make_node("LayerNormalization", [ln_in, "g", "b"], ["ln"], axis=-1, name="ln"))
    mm_w = rng.standard_normal((32, 32)).astype(np.float32)
    nodes.append(helper.make_node("MatMul", [qdq("ln"), weight_dq("mw", mm_w, 1)], ["q"], name="fc"))
    nodes.append(helper.make_node("Transpose", ["q"], ["kt"], perm=[0, 2, 1], name="kt"))
    quantize_attention = scheme.attention and "attention_unquantized" not in breaks
    a, b = (qdq("q"), qdq("kt")) if quantize_attention else ("q", "kt")
    nodes.append(helper.make_node("MatMul", [a, b], ["scores"], name="bmm1"))
    nodes.append(helper.make_node("Softmax", ["scores"], ["p"], axis=-1, name="softmax"))
    p, v = (qdq("p"), qdq("q")) if quantize_attention else ("p", "q")
    nodes.append(helper.make_node("MatMul", [p, v], ["y"], name="bmm2"))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 32, 2, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4, 32])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])


@pytest.mark.parametrize("key", ["tensorrt-fp8", "onnxruntime-cpu-int8"])
def test_a_graph_that_follows_each_scheme_passes_its_check(key):
    finding = check_qdq(_graph(key), SCHEMES[key])
    assert finding.ok, finding.detail
    assert finding.facts["weighted_quantized"] == 2 and finding.facts["attention_ops"] == {"tensorrt-fp8": 2}.get(key, 0)


@pytest.mark.parametrize("key,breaks,message", [
    ("tensorrt-fp8", "attention_unquantized", "bmm1 is not FP8 and not recorded as excluded"),
    ("tensorrt-fp8", "ln_input", "Q/DQ on a LayerNormalization input"),
    ("onnxruntime-cpu-int8", "conv_unquantized", "conv is not INT8 and not recorded as excluded"),
    ("onnxruntime-cpu-int8", "ln_input", "Q/DQ on a LayerNormalization input"),
])
def test_each_schemes_broken_rule_is_a_failing_finding(key, breaks, message):
    finding = check_qdq(_graph(key, breaks), SCHEMES[key])
    assert not finding.ok and message in finding.detail, finding.detail


def test_one_schemes_graph_fails_anothers_check():
    """Zero-point types and output quantization tell the schemes apart: a CPU graph is no TensorRT graph."""
    cpu_as_trt = check_qdq(_graph("onnxruntime-cpu-int8"), SCHEMES["tensorrt-int8"])
    assert not cpu_as_trt.ok and "activation zero point is uint8, the scheme's is int8" in cpu_as_trt.detail
    fp8_as_cpu = check_qdq(_graph("tensorrt-fp8"), SCHEMES["onnxruntime-cpu-int8"])
    assert not fp8_as_cpu.ok and "zero point is float8_e4m3fn" in fp8_as_cpu.detail


@pytest.mark.xdist_group("fastervit0")  # one worker exports FasterViT-0 for both, instead of one waiting on the other
@pytest.mark.parametrize("flag", [["--int8", "--target", "onnxruntime-cpu"],
                                  pytest.param(["--fp8"], marks=pytest.mark.slow)],  # ModelOpt's FP8: a minute
                         ids=["cpu-int8", "fp8"])
def test_fastervit0_cpu_int8_and_fp8_cosine(fastervit0, tmp_path, flag):
    """FasterViT-0 with checkpoint-like weights, on photos (flat logits: top-1 on 8 photos is no measure here)."""
    fp32, calib, _ = fastervit0
    out = tmp_path / "q.onnx"
    result = cli("quantize", fp32, *flag, "--calib-dir", calib, "--min-top1", 0, "-o", out)
    assert result.exit_code == 0, result.output
    cosine = read_record(out).parity["overall"]["cosine_min"]
    print(f"FasterViT-0 {' '.join(flag)} cosine {cosine:.6f}")
    assert cosine >= (0.999 if "--int8" in flag else 0.99)
    assert inspect_path(out).passed


@uses_targets
def test_debug_takes_fp8_graphs_and_refuses_a_reference_that_is_not_their_fp32_graph(digits_targets, digits_artifacts,
                                                                                    tmp_path):
    """`debug dfp8.onnx` was an internal error (onnxruntime's fused FP8 Transpose); another model's graph as
    --reference was an internal error, and an FP16 one was compared as if it were FP32."""
    result = cli("debug", digits_targets["fp8"], "--no-sensitivity", "--json", tmp_path / "d.json")
    assert result.exit_code == 0, result.output
    layers = json.loads((tmp_path / "d.json").read_text())["layers"]
    assert len(layers) > 30 and min(r["cosine"] for r in layers) > 0.9
    other, _ = export_tiny(tmp_path, filename="other.onnx", verify=False)
    assert_one_line_error(cli("debug", digits_artifacts["int8"], "--reference", other),
                          r"--reference other\.onnx holds another model than digits_int8\.onnx", 2)
    assert_one_line_error(cli("debug", digits_artifacts["int8"], "--reference", digits_artifacts["fp16"]),
                          r"--reference digits_fp16\.onnx is a fp16 ONNX graph .*compares with the FP32 ONNX", 2)
