"""TensorRT for RTX, for real: NVIDIA's parser and compiler run here (no GPU), through the same code as TensorRT.

Nothing is mocked: every test parses or builds with the `tensorrt_rtx` wheel `make install` installs. What needs a
GPU (deserializing, running, the engine audit) is said in one line here, and tested where a GPU is.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import signal
import time
from pathlib import Path

import onnx
import pytest
from onnx import helper

from fastervit_deploy.artifact import read_record
from fastervit_deploy.data.images import skimage_photos
from fastervit_deploy.graph.inspect import inspect_path
from fastervit_deploy.tensorrt.parser import with_parser
from fastervit_deploy.tensorrt.runtimes import RUNTIMES, RuntimeKey

from .helpers import assert_one_line_error, cli, export_tiny, interrupt, leftovers, spawn, wait_for_line

trt = pytest.importorskip("tensorrt_rtx", reason="TensorRT for RTX is not installed (make install installs it)")
RTX = ["--runtime", "tensorrt-rtx"]


def build(onnx_path: Path, out: Path, *capabilities: str, extra=()) -> Path:
    result = cli("build-trt", "--onnx", onnx_path, *RTX, "--compute-capability", ",".join(capabilities), "-o", out,
                 *extra)
    assert result.exit_code == 0, result.output
    return out


def test_the_runtime_table_names_the_capabilities_the_real_module_compiles_for():
    members = {m for m in dir(trt.ComputeCapability) if m.startswith("SM")}
    assert {member for _, member in RUNTIMES[RuntimeKey.tensorrt_rtx].capabilities} == members


@pytest.mark.xdist_group("fastervit0")
def test_every_precision_of_fastervit0_builds_for_ada_and_reaches_the_compiler(fastervit0_graphs, tmp_path):
    """FP32, FP16, INT8 and FP8 graphs (checkpoint-like weights) built for compute capability 8.9: the engines'
    sizes, re-read from the written files, order INT8 < FP8 < FP16 < FP32 (the graph's precision reached the
    compiler), and each record says what it is."""
    sizes = {}
    for precision, graph in fastervit0_graphs.items():
        out = build(graph, tmp_path / f"fv0_{precision}.rtx.engine", "8.9")
        sizes[precision] = out.stat().st_size
        record = read_record(out)  # the sidecar, checked against the file's sha256
        assert (record.format, record.precision) == ("tensorrt-rtx", precision)
        assert record.details["runtime"] == "tensorrt-rtx" and record.details["compute_capabilities"] == ["8.9"]
        assert record.details["tensorrt_rtx"] == trt.__version__ and record.details["layers"] > 1000
    print({p: f"{s / 2**20:.1f} MiB" for p, s in sizes.items()})
    assert sizes["int8"] < sizes["fp8"] < sizes["fp16"] < sizes["fp32"]
    assert sizes["fp16"] < 0.6 * sizes["fp32"] and sizes["int8"] < 0.45 * sizes["fp32"]


@pytest.mark.xdist_group("fastervit0")
def test_fp8_below_ada_is_refused_before_anything_is_built(fastervit0_graphs, tmp_path):
    out = tmp_path / "fp8.rtx.engine"
    result = cli("build-trt", "--onnx", fastervit0_graphs["fp8"], *RTX, "--compute-capability", "8.9,8.0", "-o", out)
    assert_one_line_error(result, r"--compute-capability 8\.0: FP8 engines need compute capability 8\.9", 2)
    assert "✓" not in result.output and sorted(p.name for p in tmp_path.iterdir()) == []


def test_one_engine_for_two_capabilities_and_a_name_that_says_so(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    src, _ = export_tiny(tmp_path, filename="tiny.onnx", verify=False)
    result = cli("build-trt", "--onnx", src.name, *RTX, "--compute-capability", "8.9,12.0")
    assert result.exit_code == 0, result.output
    engine = tmp_path / "tiny_sm89_sm120.rtx.engine"  # the default name: the runtime and the GPUs it runs on
    assert read_record(engine).details["compute_capabilities"] == ["8.9", "12.0"]
    alone = build(src, tmp_path / "alone.rtx.engine", "8.9")
    assert engine.read_bytes() != alone.read_bytes()  # the compiler was given both


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="the advice shown where TensorRT is absent")
def test_without_tensorrt_the_advice_builds_an_rtx_engine_when_run_as_printed(tmp_path, monkeypatch):
    """The default runtime is TensorRT, never TensorRT for RTX by surprise: without TensorRT the one line offers the
    runnable RTX command (and says what its engine runs in); run as printed, it builds one."""
    monkeypatch.chdir(tmp_path)
    src, _ = export_tiny(tmp_path, filename="tiny.onnx", verify=False)
    result = cli("build-trt", "--onnx", src.name)
    assert_one_line_error(result, r"TensorRT is not installed .*runs only in TensorRT for RTX", 3)
    command = re.search(r"(fvdeploy build-trt .*--runtime tensorrt-rtx.*)$", result.output.strip()).group(1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.onnx", "tiny.onnx.json"]  # nothing built
    again = cli(*shlex.split(command)[1:])
    assert again.exit_code == 0, again.output
    assert read_record(tmp_path / "tiny_sm89.rtx.engine").details["runtime"] == "tensorrt-rtx"


@pytest.mark.parametrize("args,pattern", [
    (["--compute-capability", "8.9"], r"TensorRT builds for the GPU it runs on: --compute-capability is for --runtime"),
    (RTX + ["--compute-capability", "9.0"], r"--compute-capability 9\.0: TensorRT for RTX compiles for 7\.5, 8\.0"),
    (RTX + ["--compute-capability", "8.9,8.9"], r"each capability once"),
    (RTX + ["--compute-capability", "ada"], r"takes MAJOR\.MINOR values"),
    (RTX + ["--compute-capability", "8.9", "--timing-cache", "t.cache"], r"keeps no timing cache"),
    (RTX + ["--compute-capability", "8.9", "-o", "x.plan"], r"must end in \.rtx\.engine"),
    (["-o", "x.rtx.engine"], r"x\.rtx\.engine is named as a TensorRT for RTX engine"),
    (RTX, r"no GPU is visible here, so give --compute-capability"),
])
def test_runtime_options_are_checked_before_any_work(tmp_path, monkeypatch, args, pattern):
    monkeypatch.chdir(tmp_path)
    src, _ = export_tiny(tmp_path, filename="tiny.onnx", verify=False)
    result = cli("build-trt", "--onnx", src.name, *args)
    assert_one_line_error(result, pattern, 2)
    assert "✓" not in result.output


def planted(src: Path, op: str, out: Path, **attrs) -> Path:
    """``src`` with one ``op`` node (named ``planted_<op>``) on its logits, as the new output."""
    model = onnx.load(str(src))
    logits = model.graph.output[0].name
    inputs = [logits, logits] if op == "Mod" else [logits]
    model.graph.node.append(helper.make_node(op, inputs, ["planted_out"], name=f"planted_{op.lower()}", **attrs))
    model.graph.output[0].name = "planted_out"
    onnx.save(model, str(out))
    return out


def test_the_parser_finding_names_the_node_it_refuses_and_wins_over_the_op_table(tmp_path):
    """Planted: a float Mod with fmod=0 (our op table takes Mod; the parser refuses it on floats), and a Cos (not in
    our op table; the parser takes it). The parser's verdict stands both ways, and the findings say so."""
    src, _ = export_tiny(tmp_path, filename="tiny.onnx", verify=False)
    mod = planted(src, "Mod", tmp_path / "mod.onnx", fmod=0)
    report = with_parser(inspect_path(mod), mod)
    parser = report.finding("tensorrt-parser")
    assert report.finding("tensorrt-ops").ok and not report.passed
    assert not parser.ok and [(r["node"], r["op"]) for r in parser.facts["rejected"]] == [("planted_mod", "Mod")]
    assert "the parser wins" in parser.detail and parser.facts["runtime"] == "tensorrt-rtx"
    result = cli("inspect", mod, "--json")  # the command: exit 1, the node named
    assert result.exit_code == 1 and "planted_mod" in result.stdout
    cos = planted(src, "Cos", tmp_path / "cos.onnx")
    report = with_parser(inspect_path(cos), cos)
    table = report.finding("tensorrt-ops")
    assert report.passed and report.finding("tensorrt-parser").ok
    assert table.severity == "info" and "Cos" in table.detail and "it wins" in table.detail
    clean = with_parser(inspect_path(src), src).finding("tensorrt-parser")
    assert clean.ok and clean.facts["layers"] > 100 and clean.facts["version"] == trt.__version__


def test_export_and_quantize_run_the_parser_before_writing(tmp_path):
    src, record = export_tiny(tmp_path, filename="tiny.onnx", verify=False)
    parsed = next(f for f in record.checks["findings"] if f["check"] == "tensorrt-parser")
    assert parsed["ok"] and parsed["facts"]["runtime"] == "tensorrt-rtx"


@pytest.mark.xdist_group("fastervit0")
@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_during_the_native_build_ends_it_within_5s_leaving_nothing(fastervit0_graphs, tmp_path, sig, code):
    out, tmpdir = tmp_path / "out", tmp_path / "tmp"
    tmpdir.mkdir()
    proc = spawn(["build-trt", "--onnx", fastervit0_graphs["fp32"], *RTX, "--compute-capability", "8.9", "-o",
                  out / "fv0.rtx.engine"], tmp_path, tmpdir)
    wait_for_line(proc, "✓ parsing ONNX")  # the build (native code, seconds) has begun
    time.sleep(1.0)
    returncode, took, rest = interrupt(proc, sig, to_group=sig == signal.SIGINT)
    assert returncode == code and took < 5, (returncode, took, rest)
    assert "interrupted" in rest and "Traceback" not in rest
    assert not out.exists() and leftovers(tmpdir) == []


def test_downstream_commands_know_an_rtx_engine_for_what_it_is(tmp_path):
    src, _ = export_tiny(tmp_path, filename="tiny.onnx", verify=False)
    engine = build(src, tmp_path / "tiny.rtx.engine", "8.9")
    photo = tmp_path / "photo.png"
    skimage_photos()[0].save(photo)
    for command in (["verify", engine], ["benchmark", engine, "--no-pytorch"], ["predict", engine, photo]):
        assert_one_line_error(cli(*command), r"tiny\.rtx\.engine is a TensorRT for RTX engine: it runs on an "
                                             r"RTX-class NVIDIA GPU with TensorRT for RTX", 3)
    assert_one_line_error(cli("triton", engine, "--repository", tmp_path / "repo"),
                          r"Triton's TensorRT backend cannot load it .*serve the ONNX it was built from: fvdeploy "
                          r"triton \S*tiny\.onnx --repository \S*repo\b", 2)
    assert not (tmp_path / "repo").exists()
    assert "not run here" in read_record(engine).details["audit"]  # no GPU: the record says where it runs
    rows = {row["format"]: row for row in json.loads(cli("formats", "--json").stdout)}
    assert rows["tensorrt-rtx"]["convert_here"] == "yes" and rows["tensorrt-rtx"]["run_here"] != "yes"


@pytest.mark.slow
def test_the_card_models_whole_plan_to_an_int8_rtx_engine(fastervit0, tmp_path, monkeypatch):
    """From a model name to an INT8 engine for Ada: export at 576x960, calibrate, quantize, build."""
    _, calib, _ = fastervit0
    monkeypatch.chdir(tmp_path)
    result = cli("build-trt", "--model", "faster_vit_0_any_res", "--resolution", 576, 960, "--int8", "--calib-dir",
                 calib, *RTX, "--compute-capability", "8.9", "--max-batch", 4)
    assert result.exit_code == 0, result.output
    engine = next(tmp_path.glob("*.rtx.engine"))
    record = read_record(engine)
    assert record.precision == "int8" and record.model.resolution == (576, 960)
