"""The command line: help, models, formats, and one-line errors for bad input with nothing left on disk."""

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from .helpers import assert_one_line_error, cli, export_tiny


def test_version_and_help():
    assert cli("--version").output.strip().startswith("fvdeploy ")
    out = cli("--help").output
    for name in ("export-onnx", "inspect", "verify", "benchmark", "models", "quantize", "build-trt", "coreml"):
        assert name in out
    # option groups show as panels of their own
    help_text = cli("build-trt", "--help").output
    for panel in ("Model", "Precision", "INT8 calibration", "Batch range", "TensorRT builder", "ONNX", "Output"):
        assert f"─ {panel} " in help_text, panel


def test_formats_table_says_what_runs_here():
    import platform

    rows = {r["format"]: r for r in json.loads(cli("formats", "--json").stdout)}
    assert set(rows) == {"onnx", "tensorrt", "tensorrt-rtx", "coreml"}
    assert rows["tensorrt-rtx"]["files"] == [".rtx.engine"] and rows["tensorrt-rtx"]["convert_here"] == "yes"
    assert rows["onnx"]["run_here"] == "yes" and rows["coreml"]["convert_here"] == "yes"
    assert (rows["coreml"]["run_here"] == "yes") == (platform.system() == "Darwin")
    assert rows["tensorrt"]["files"] == [".plan", ".engine"]


def test_models_table_lists_variants_with_param_counts():
    result = cli("models")
    assert result.exit_code == 0
    assert "faster_vit_0_224" in result.output and "31.40M" in result.output
    assert "faster_vit_4_21k_768" in result.output and "271.94M" in result.output


@pytest.mark.parametrize(
    "args,pattern",
    [
        (["--model", "faster_vit_0_22"], r"unknown model 'faster_vit_0_22'; did you mean faster_vit_0_224"),
        (["--model", "faster_vit_0_224", "--resolution", 240, 240], r"240x240 cannot work: .*sizes that work nearby: 224x224"),
        (["--model", "faster_vit_0_224", "--resolution", 224, 320], r"takes square inputs; use faster_vit_0_any_res"),
        # the any-res twin comes from the registry (same weights), not from editing the name
        (["--model", "faster_vit_4_21k_224", "--resolution", 224, 320], r"use faster_vit_4_21k_224_any_res for 224x320"),
        (["--model", "faster_vit_0_any_res", "--resolution", -576, 960], r"--resolution must be positive"),
        (["--model", "faster_vit_0_224", "--checkpoint", "missing.pth.tar"], r"checkpoint not found: missing.pth.tar"),
        (["--model", "faster_vit_0_224", "--opset", 11], r"'--opset': Input should be greater than or equal to 17"),
        (["--model", "faster_vit_0_224", "--min-batch", 8, "--max-batch", 4], r"batch range 8..4 is invalid"),
        (["--model", "faster_vit_0_224", "--window-size", "7,7"], r"--window-size takes 1 or 4 positive values"),
        (["--model", "faster_vit_0_224", "--simplify", "magic"], r"'magic' is not one of 'onnxslim', 'onnxsim', 'none'"),
        ([], r"give --model NAME"),
    ],
)
def test_export_bad_input(args, pattern, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(cli("export-onnx", *args), pattern, code=2)
    assert list(tmp_path.iterdir()) == []


def test_junk_checkpoint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "junk.pth.tar").write_text("not a checkpoint")
    assert_one_line_error(cli("export-onnx", "--model", "faster_vit_0_224", "--checkpoint", "junk.pth.tar"),
                          r"cannot read checkpoint junk.pth.tar")
    assert [p.name for p in tmp_path.iterdir()] == ["junk.pth.tar"]


def test_existing_and_unwritable_outputs(tmp_path):
    existing = tmp_path / "exists.onnx"
    existing.write_text("keep me")
    assert_one_line_error(cli("export-onnx", "--model", "faster_vit_0_224", "--output", existing),
                          r"exists \(pass --overwrite")
    assert existing.read_text() == "keep me"
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert_one_line_error(cli("export-onnx", "--model", "faster_vit_0_224", "--output", blocker / "x.onnx"),
                          r"cannot create output folder")
    assert_one_line_error(cli("export-onnx", "--model", "faster_vit_0_224", "--output", tmp_path / "x.txt"),
                          r"output must end in .onnx")


def test_inspect_rejects_non_onnx_and_reports_json(tmp_path):
    bad = tmp_path / "notes.onnx"
    bad.write_text("hello")
    assert_one_line_error(cli("inspect", bad), r"notes.onnx is not an ONNX model")
    assert_one_line_error(cli("inspect", tmp_path / "absent.onnx"), r"ONNX file not found")
    path, _ = export_tiny(tmp_path)
    result = cli("inspect", path, "--json")
    assert result.exit_code == 0
    report = json.loads(result.stdout)
    # tiny model: 2 HAT blocks in stage 2 (window + carrier attention each) and 1 block in stage 3
    assert report["passed"] and report["ops"]["Softmax"] == report["attention_blocks"] == 5


def test_verify_detects_a_changed_and_a_wrong_artifact(tmp_path):
    path, _ = export_tiny(tmp_path)
    model = onnx.load(str(path))
    head_bias = next(t for t in model.graph.initializer if list(t.dims) == [10])
    head_bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(head_bias) + np.float32(0.5), head_bias.name))
    onnx.save(model, str(path))
    # The sidecar's sha256 no longer matches: verify says which file changed instead of comparing.
    assert_one_line_error(cli("verify", path), r"faster_vit_0_224.onnx changed since its sidecar", code=2)
    # Without the sidecar, the record embedded in the ONNX names the (tiny) model; the comparison fails.
    path.with_name(path.name + ".json").unlink()
    result = cli("verify", path, "--json", tmp_path / "v.json")
    assert_one_line_error(result, r"verification failed: max \|Δ\| 0.5\d* > 0.0001", code=1)
    assert json.loads((tmp_path / "v.json").read_text())["overall"]["max_abs"] == pytest.approx(0.5, abs=1e-3)


def test_verify_and_benchmark_bad_input(tmp_path):
    assert_one_line_error(cli("verify", tmp_path / "model.xyz"), r"unknown artifact type '.xyz'")
    assert_one_line_error(cli("verify", tmp_path / "model.onnx"), r"artifact not found")
    path, _ = export_tiny(tmp_path)
    model = onnx.load(str(path))
    del model.metadata_props[:]
    onnx.save(model, str(path))
    path.with_name(path.name + ".json").unlink()
    assert_one_line_error(cli("verify", path), r"faster_vit_0_224.onnx has no fvdeploy record .*pass --model")
    assert_one_line_error(cli("benchmark", path, "--model", "faster_vit_0_224", "--batch", "0"), r"at least 1")


def test_benchmark_writes_json_and_plot(tmp_path):
    path, _ = export_tiny(tmp_path)
    result = cli("benchmark", path, "--batch", "1,2", "--warmup", 1, "--iterations", 2, "--no-pytorch",
                 "--json", tmp_path / "b.json", "--plot", tmp_path / "b.png")
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "b.json").read_text())["results"]
    assert {r["batch"] for r in rows} == {1, 2} and all(r["iterations"] == 2 and r["p50_ms"] > 0 for r in rows)
    assert (tmp_path / "b.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((tmp_path / "b.json").read_text())
    assert report["order"]["seed"] == 0 and all(len(r["samples_ms"]) == 2 for r in rows)


def test_the_runners_take_turns_in_a_rotated_order_so_none_is_always_first():
    """A fixed order favoured the runner after PyTorch eager by 7-10 %: every runner is first equally often."""
    from fastervit_deploy.use.benchmark import measure, ratio_spread, round_orders

    names = ["pytorch-eager", "ours", "plain"]
    orders = round_orders(names, 9)
    assert all(sorted(o) == sorted(names) for o in orders) and orders == round_orders(names, 9)  # seeded
    for position in range(3):
        assert sorted(o[position] for o in orders) == sorted(names * 3)  # each name in each place 3 times of 9
    calls: list[str] = []
    runners = {n: (lambda _b, n=n: calls.append(n)) for n in names}
    results = measure(runners, {1: np.zeros((1, 1), np.float32)}, warmup=1, iterations=5)
    firsts = [calls[i * 3] for i in range(6)]
    assert firsts == [o[0] for o in round_orders(names, 6)] and len(set(firsts)) == 3
    spread = ratio_spread(results, "plain")["ours"][1]
    assert spread["p10"] <= spread["median"] <= spread["p90"]


def test_usage_errors_through_the_console_script_are_one_line():
    import subprocess
    import sys

    run = lambda *a: subprocess.run([sys.executable, "-m", "fastervit_deploy", *a], capture_output=True, text=True)  # noqa: E731
    result = run("export-onnx", "--model", "faster_vit_0_224", "--window-size", "7", "7")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: Got unexpected extra argument(s) (7) (see `python -m fastervit_deploy export-onnx --help`)"
    ]
    missing = run("models", "nothing*")
    assert missing.returncode == 2 and missing.stderr.strip() == "error: no model matches 'nothing*'"
