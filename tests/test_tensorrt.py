"""build-trt and the engine runner: CPU-side behaviour always; engines only where TensorRT and a GPU exist."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from fastervit_deploy.tensorrt_build import BuildOptions
from fastervit_deploy.trt_support import Profile, trtexec_command

from .helpers import assert_one_line_error, cli, export_tiny

HAS_TRT = importlib.util.find_spec("tensorrt") is not None


def _gpu_ready() -> bool:
    if not HAS_TRT:
        return False
    import torch

    return torch.cuda.is_available()


gpu = pytest.mark.skipif(not _gpu_ready(), reason="needs the tensorrt package (10.x/11.x) and a CUDA GPU")


def test_trtexec_line_is_strongly_typed_with_the_batch_profile():
    line = trtexec_command(Path("m int8.onnx"), Path("m.plan"), Profile("input", (3, 224, 224), 1, 8, 64),
                           Path("t.cache"), opt_level=4, workspace_gib=2)
    assert line.startswith("trtexec '--onnx=m int8.onnx' --stronglyTyped")
    for part in ("--minShapes=input:1x3x224x224", "--optShapes=input:8x3x224x224", "--maxShapes=input:64x3x224x224",
                 "--timingCacheFile=t.cache", "--builderOptimizationLevel=4", "--memPoolSize=workspace:2048M"):
        assert part in line
    assert "--fp16" not in line and "--int8" not in line  # removed in TensorRT 11


@pytest.mark.parametrize("kw,pattern", [
    (dict(min_batch=4, opt_batch=2), "min-batch <= --opt-batch"),
    (dict(opt_level=7), "opt-level must be 0..5"),
    (dict(workspace_gib=0), "workspace must be positive"),
])
def test_build_options_validation(kw, pattern):
    with pytest.raises(Exception, match=pattern):
        BuildOptions(**kw).validate()


@pytest.mark.skipif(HAS_TRT, reason="checks the message shown where TensorRT is absent")
def test_without_tensorrt_one_line_with_the_way_forward_and_nothing_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = cli("build-trt", "--model", "faster_vit_0_224", "--int8", "--calib-dir", tmp_path,
                 "--timing-cache", "t.cache")
    assert_one_line_error(result, r"TensorRT is not installed .*fvdeploy export-onnx --model faster_vit_0_224"
                                  r".*fvdeploy quantize .* --int8 .*trtexec --onnx=faster_vit_0_224_224x224_int8.onnx"
                                  r" --stronglyTyped", code=3)
    assert list(tmp_path.iterdir()) == []
    onnx_path = export_tiny(tmp_path)["output"]
    before = sorted(tmp_path.iterdir())
    result = cli("build-trt", "--onnx", onnx_path, "--fp16", "--opt-batch", 4, "--max-batch", 16)
    assert_one_line_error(result, r"run `fvdeploy quantize .*faster_vit_0_224.onnx --fp16`.*"
                                  r"--optShapes=input:4x3x224x224 --maxShapes=input:16x3x224x224", code=3)
    assert sorted(tmp_path.iterdir()) == before


def test_build_trt_bad_input(tmp_path):
    assert_one_line_error(cli("build-trt"), r"exactly one of --onnx and --model")
    assert_one_line_error(cli("build-trt", "--onnx", tmp_path / "a.onnx", "--model", "faster_vit_0_224"),
                          r"exactly one of --onnx and --model")
    assert_one_line_error(cli("build-trt", "--onnx", tmp_path / "a.onnx"), r"ONNX file not found")
    assert_one_line_error(cli("build-trt", "--model", "faster_vit_0_224", "--fp16", "--int8"), r"at most one of")
    assert_one_line_error(cli("build-trt", "--model", "faster_vit_0_224", "--int8"), r"--int8 needs --calib-dir")
    assert_one_line_error(cli("build-trt", "--model", "faster_vit_0_224", "--min-batch", 9), r"--min-batch <= --opt-batch")
    assert_one_line_error(cli("verify", tmp_path / "x.plan", "--model", "faster_vit_0_224"), r"artifact not found")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_engine_build_and_parity(tmp_path, precision):
    from rich.console import Console

    from fastervit_deploy.datasets import digits_split, write_folder
    from fastervit_deploy.model_options import ModelSpec
    from fastervit_deploy.onnx_export import ExportOptions, export_onnx
    from fastervit_deploy.progress import Steps

    from .test_quantize import DIGITS_CKPT

    spec = ModelSpec("faster_vit_0_224", checkpoint=DIGITS_CKPT)  # trained weights: INT8 parity is meaningful
    onnx_path = export_onnx(spec, tmp_path / "digits.onnx", ExportOptions(), Steps(Console(quiet=True)))["output"]
    args = ["build-trt", "--onnx", onnx_path, "--max-batch", 16, "--opt-batch", 4, "--timing-cache", tmp_path / "t.cache",
            "-o", tmp_path / f"{precision}.plan"]
    if precision != "fp32":
        args.append(f"--{precision}")
    if precision == "int8":
        args += ["--calib-dir", write_folder(digits_split()[0][:64], tmp_path / "calib")]
    result = cli(*args)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "t.cache").stat().st_size > 0
    from fastervit_deploy.trt_runtime import TensorRTRunner

    with TensorRTRunner(tmp_path / f"{precision}.plan") as runner:
        x = np.random.default_rng(0).standard_normal((3, 3, 96, 96), dtype=np.float32)
        assert runner.infer(x).shape == (3, 10)
        with pytest.raises(Exception, match="outside the engine's profile"):
            runner.infer(np.zeros((17, 3, 96, 96), np.float32))
    verify = cli("verify", tmp_path / f"{precision}.plan", "--batch", 8)  # against PyTorch, per-precision tolerance
    assert verify.exit_code == 0, verify.output
