"""build-trt and the engine runner: CPU-side behaviour always; engines only where TensorRT and a GPU exist."""

import importlib.util
import re
import shlex
from pathlib import Path

import numpy as np
import pytest

from fastervit_deploy.core.options import BuilderOptions, ModelRequest, OutputTarget, TunedBatchProfile
from fastervit_deploy.plan import plan_build_trt
from fastervit_deploy.artifact import read_record
from fastervit_deploy.tensorrt.profile import Profile, trtexec_command

from .helpers import assert_one_line_error, cli, export_tiny, tiny_checkpoint

HAS_TRT = importlib.util.find_spec("tensorrt") is not None




def test_trtexec_line_is_strongly_typed_with_the_batch_profile():
    line = trtexec_command(Path("m int8.onnx"), Path("m.plan"), Profile("input", (3, 224, 224), 1, 8, 64),
                           BuilderOptions(timing_cache=Path("t.cache"), workspace=2, opt_level=4))
    assert line.startswith("trtexec '--onnx=m int8.onnx' --stronglyTyped")
    for part in ("--minShapes=input:1x3x224x224", "--optShapes=input:8x3x224x224", "--maxShapes=input:64x3x224x224",
                 "--timingCacheFile=t.cache", "--builderOptimizationLevel=4", "--memPoolSize=workspace:2048M"):
        assert part in line
    assert "--fp16" not in line and "--int8" not in line  # removed in TensorRT 11


@pytest.mark.parametrize("kw,pattern", [
    (dict(opt_level=7), "opt-level must be 0..5"),
    (dict(workspace=0), "workspace must be positive"),
])
def test_builder_options_validation(kw, pattern):
    with pytest.raises(Exception, match=pattern):
        BuilderOptions(**kw)


@pytest.mark.skipif(HAS_TRT, reason="checks the message shown where TensorRT is absent")
def test_printed_commands_make_exactly_the_onnx_build_trt_would_build(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ckpt = tiny_checkpoint(tmp_path / "tiny.pth.tar", "faster_vit_0_any_res", resolution=(160, 288))
    args = ["build-trt", "--model", "faster_vit_0_any_res", "--checkpoint", ckpt.name, "--resolution", 192, 320,
            "--max-batch", 8, "--opt-batch", 4, "--fp16"]
    result = cli(*args)
    assert_one_line_error(result, r"TensorRT is not installed .*on this machine run `fvdeploy export-onnx", code=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.pth.tar"]  # nothing written
    commands = re.findall(r"`(fvdeploy [^`]+)`", result.output)
    assert [shlex.split(c)[1] for c in commands] == ["export-onnx", "quantize"]
    assert "--checkpoint tiny.pth.tar" in commands[0] and "--resolution 192 320" in commands[0]
    trtexec = re.search(r"(trtexec .*)$", result.output.strip()).group(1)
    for command in commands:  # run them as a user would
        run = cli(*shlex.split(command)[1:])
        assert run.exit_code == 0, run.output
    made = read_record(Path(re.search(r"--onnx=(\S+)", trtexec).group(1)))
    planned = plan_build_trt(None, ModelRequest("faster_vit_0_any_res", checkpoint=Path(ckpt.name), resolution=(192, 320)),
                             "fp16", OutputTarget(), profile=TunedBatchProfile(1, 8, 4)).stages[-1]
    assert made.precision == "fp16" and made.batch_range == (1, 8)
    assert made.model.config == planned.model.config and made.model.resolution == (192, 320)
    assert made.model.checkpoint.sha256 == planned.model.checkpoint.sha256
    assert "--optShapes=input:4x3x192x320" in trtexec and "--maxShapes=input:8x3x192x320" in trtexec
    # The same command again reuses what the printed commands made, and says the ONNX is ready.
    again = cli(*args)
    assert_one_line_error(again, r"faster_vit_0_any_res_192x320_fp16.onnx is ready, and build where TensorRT runs", code=3)


@pytest.mark.skipif(HAS_TRT, reason="checks the message shown where TensorRT is absent")
def test_without_tensorrt_an_existing_onnx_needs_only_trtexec(tmp_path):
    onnx_path, _ = export_tiny(tmp_path, verify=False)
    before = sorted(tmp_path.iterdir())
    result = cli("build-trt", "--onnx", onnx_path, "--fp16", "--opt-batch", 4, "--max-batch", 16)
    assert_one_line_error(result, r"run `fvdeploy quantize .*faster_vit_0_224.onnx --fp16.*`.*"
                                  r"--optShapes=input:4x3x224x224 --maxShapes=input:16x3x224x224", code=3)
    assert sorted(tmp_path.iterdir()) == before


def test_build_trt_bad_input(tmp_path):
    assert_one_line_error(cli("build-trt"), r"exactly one of --onnx and --model")
    assert_one_line_error(cli("build-trt", "--onnx", tmp_path / "a.onnx", "--model", "faster_vit_0_224"),
                          r"exactly one of --onnx and --model")
    assert_one_line_error(cli("build-trt", "--onnx", tmp_path / "a.onnx"), r"ONNX file not found")
    assert_one_line_error(cli("build-trt", "--model", "faster_vit_0_224", "--fp16", "--int8"), r"one of --fp16 and --int8")
    assert_one_line_error(cli("build-trt", "--model", "faster_vit_0_224", "--int8"), r"--int8 needs --calib-dir")
    assert_one_line_error(cli("build-trt", "--model", "faster_vit_0_224", "--min-batch", 9, "--max-batch", 8),
                          r"batch range 9..8 is invalid")
    assert_one_line_error(cli("build-trt", "--model", "faster_vit_0_224", "--opt-batch", 99), r"--opt-batch <= --max-batch")
    assert_one_line_error(cli("build-trt", "--model", "faster_vit_0_224", "-o", tmp_path / "x.onnx"),
                          r"output must end in .plan or .engine")
    assert_one_line_error(cli("verify", tmp_path / "x.plan", "--model", "faster_vit_0_224"), r"artifact not found")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.gpu(needs="tensorrt")
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_engine_build_and_parity(tmp_path, precision):
    from fastervit_deploy.data.datasets import digits_split, write_folder
    from fastervit_deploy.tensorrt.runner import TensorRTRunner

    from .test_quantize import DIGITS_CKPT

    onnx_path = tmp_path / "digits.onnx"  # trained weights: INT8 parity is meaningful
    assert cli("export-onnx", "--model", "faster_vit_0_224", "--checkpoint", DIGITS_CKPT, "-o", onnx_path).exit_code == 0
    args = ["build-trt", "--onnx", onnx_path, "--max-batch", 16, "--opt-batch", 4, "--timing-cache", tmp_path / "t.cache",
            "-o", tmp_path / f"{precision}.plan"]
    if precision != "fp32":
        args.append(f"--{precision}")
    if precision == "int8":
        args += ["--calib-dir", write_folder(digits_split()[0][:64], tmp_path / "calib")]
    result = cli(*args)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "t.cache").stat().st_size > 0
    with TensorRTRunner(tmp_path / f"{precision}.plan") as runner:
        x = np.random.default_rng(0).standard_normal((3, 3, 96, 96), dtype=np.float32)
        assert runner.infer(x)["logits"].shape == (3, 10)
        with pytest.raises(Exception, match="outside the artifact's batch range 1..16"):
            runner.infer(np.zeros((17, 3, 96, 96), np.float32))
    verify = cli("verify", tmp_path / f"{precision}.plan", "--batch", 8)  # against PyTorch, per-precision tolerance
    assert verify.exit_code == 0, verify.output
