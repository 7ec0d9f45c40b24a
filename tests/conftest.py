"""Every fixture of the suite; helpers and constants are in helpers.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from fastervit_deploy.core.model_spec import resolve_model
from fastervit_deploy.core.options import BatchProfile, ModelRequest, OnnxOptions, OutputTarget
from fastervit_deploy.data.datasets import digits_split, to_batch, write_folder
from fastervit_deploy.data.images import skimage_photos
from fastervit_deploy.plan import plan_export

from .helpers import (BACKENDS, DIGITS_CKPT, GOLDEN, NAMES, SHARED, cli, export_tiny, quantize, quiet_steps, shared,
                      tiny_checkpoint)

torch.set_num_threads(max(1, (os.cpu_count() or 2) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))


@pytest.fixture(scope="session")
def shared_dir(tmp_path_factory, worker_id) -> Path:
    """A folder every xdist worker of this run sees (the workers' own temp folders sit inside it)."""
    base = tmp_path_factory.getbasetemp()
    return base if worker_id == "master" else base.parent


@pytest.fixture(scope="session")
def fv0():
    from fastervit import create_model

    torch.manual_seed(0)
    return create_model("faster_vit_0_224")


def _missing(needs: str) -> str | None:
    """Why a test marked ``gpu(needs=...)`` or ``macos`` cannot run here (None: it can)."""
    import importlib.util
    import platform

    if needs == "macos":
        return None if platform.system() == "Darwin" else "needs macOS (Core ML predictions)"
    if needs == "tensorrt" and importlib.util.find_spec("tensorrt") is None:
        return "needs the tensorrt package (10.x/11.x) and a CUDA GPU"
    if needs == "onnxruntime-gpu":
        import onnxruntime

        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            return "needs onnxruntime-gpu on a CUDA machine"
    return None if torch.cuda.is_available() else f"needs a CUDA GPU (for {needs})"


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    """GPU and macOS tests skip here with the reason; the markers say what they need.

    Grouped tests share module fixtures on one xdist worker; pytest 9.2 silently breaks that grouping
    (pytest-xdist issue 1386: the group suffix of the node id no longer takes), so a suite would run, slower."""
    if getattr(config.option, "loadgroup", False) and any(i.get_closest_marker("xdist_group") and "@" not in i.nodeid for i in items):
        raise pytest.UsageError(f"pytest {pytest.__version__} ignores --dist loadgroup's groups (pytest-xdist "
                                "issue 1386): install requirements-lock.txt's pytest")
    for item in items:
        for marker in ("gpu", "macos"):
            mark = item.get_closest_marker(marker)
            if mark is not None:
                why = _missing(mark.kwargs.get("needs", "tensorrt") if marker == "gpu" else "macos")
                if why:
                    item.add_marker(pytest.mark.skip(reason=why))


def pytest_configure(config):
    # Locally the shared reference data may be absent (its tests then skip); CI must run them.
    if os.environ.get("CI") and not GOLDEN.is_dir():
        raise pytest.UsageError(f"CI needs the shared reference data at {SHARED} (golden tensors, key lists)")


@pytest.fixture(scope="session")
def digits_folder(shared_dir) -> Path:
    """scikit-learn's 360 held-out digits as an ImageFolder (class folders 0..9), made once per run."""

    def write(path: Path) -> None:
        from fastervit_deploy.data.datasets import digits_split

        _, _, test, labels = digits_split()
        for i, (img, label) in enumerate(zip(test, labels)):
            (path / str(label)).mkdir(parents=True, exist_ok=True)
            img.save(path / str(label) / f"{i:04d}.png")

    return shared(shared_dir, "digits_test", write)


@pytest.fixture(scope="session")
def digits_artifacts(shared_dir) -> dict[str, Path]:
    """The committed digits model as FP32, FP16 and INT8 ONNX (onnxruntime backend, 256 calibration images,
    entropy), and the INT8 graph's calibration cache."""

    def make(path: Path) -> None:
        from fastervit_deploy.core.options import CalibrationOptions, ModelRequest, OnnxOptions, OutputTarget, QuantBackend
        from fastervit_deploy.data.datasets import digits_split, write_folder
        from fastervit_deploy.plan import plan_export, plan_quantize

        path.mkdir()
        fp32 = path / "digits.onnx"
        plan_export(ModelRequest("faster_vit_0_224", checkpoint=DIGITS_CKPT), OutputTarget(fp32),
                    OnnxOptions(no_verify=True)).run(quiet_steps())
        plan_quantize(fp32, "fp16", OutputTarget(path / "digits_fp16.onnx")).run(quiet_steps())
        calib = write_folder(digits_split()[0][:256], path / "calib")
        plan_quantize(fp32, "int8", OutputTarget(path / "digits_int8.onnx"),
                      CalibrationOptions(calib_dir=calib, backend=QuantBackend.onnxruntime,
                                         calib_cache=path / "digits.cache")).run(quiet_steps())

    root = shared(shared_dir, "digits_artifacts", make)
    return {"fp32": root / "digits.onnx", "fp16": root / "digits_fp16.onnx", "int8": root / "digits_int8.onnx",
            "cache": root / "digits.cache", "calib": root / "calib"}


@pytest.fixture(scope="session")
def fastervit0(shared_dir):
    """FasterViT-0 (checkpoint-like weights) as ONNX, photos to calibrate on, and where the scales go."""

    def export(path: Path) -> None:
        from fastervit_deploy.core.options import ModelRequest, OnnxOptions, OutputTarget
        from fastervit_deploy.data.images import skimage_photos
        from fastervit_deploy.plan import plan_export

        plan_export(ModelRequest("faster_vit_0_224"), OutputTarget(path / "fv0.onnx"), OnnxOptions(no_verify=True)).run(quiet_steps())
        calib = path / "calib"
        calib.mkdir()
        for i, img in enumerate(skimage_photos()):  # real photos, plus mirrored and cropped views
            img.save(calib / f"{i}.png")
            img.transpose(0).save(calib / f"{i}_flip.png")
            w, h = img.size
            img.crop((w // 8, h // 8, w - w // 8, h - h // 8)).save(calib / f"{i}_crop.png")

    root = shared(shared_dir, "fastervit0", export)
    return root / "fv0.onnx", root / "calib", root / "fv0.cache"


# Module fixtures of single test files (each made once per module that asks for it).


@pytest.fixture(scope="module")
def named_package(tmp_path_factory):
    """One tiny package with its own class names, read back by the tests below (each asks its own question)."""
    root = tmp_path_factory.mktemp("named")
    (root / "names.txt").write_text("\n".join(NAMES))
    ckpt = tiny_checkpoint(root / "tiny.pth.tar")
    out = root / "named.mlpackage"
    result = cli("coreml", "--model", "faster_vit_0_224", "--checkpoint", ckpt, "--labels", root / "names.txt",
                 "-o", out)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    """A tiny FasterViT exported to ONNX (not verified: the tests only need a valid artifact)."""
    root = tmp_path_factory.mktemp("messages")
    path, _ = export_tiny(root, filename="m.onnx", verify=False)
    return path


@pytest.fixture(scope="module")
def tiny_onnx_and_photo(tmp_path_factory):
    """A tiny FasterViT as ONNX beside one real photo (inputs the output-path tests protect)."""
    root = tmp_path_factory.mktemp("outputs")
    path, _ = export_tiny(root, filename="m.onnx", verify=False)
    photo = root / "photo.png"
    skimage_photos()[1].save(photo)
    return path, photo


@pytest.fixture(scope="module")
def digits_targets(digits_artifacts, tmp_path_factory):
    """The digits model for onnxruntime's CPU and as FP8, calibrated on the same 256 training digits."""
    root = tmp_path_factory.mktemp("targets")
    fp32, calib = digits_artifacts["fp32"], digits_artifacts["calib"]
    made = {}
    for name, args in (("cpu", ["--int8", "--target", "onnxruntime-cpu"]), ("fp8", ["--fp8"]),
                       ("fp8_entropy", ["--fp8", "--method", "entropy"])):
        made[name] = root / f"digits_{name}.onnx"
        result = cli("quantize", fp32, *args, "--calib-dir", calib, "-o", made[name])
        assert result.exit_code == 0, result.output
    return made


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """The committed digits model exported to ONNX, a calibration folder (train split), the test split."""
    root = tmp_path_factory.mktemp("digits")
    request = ModelRequest("faster_vit_0_224", checkpoint=DIGITS_CKPT)
    fp32 = root / "digits.onnx"
    plan_export(request, OutputTarget(fp32), OnnxOptions(no_verify=True)).run(quiet_steps())
    train, _, test, y_test = digits_split()
    calib = write_folder(train[:512], root / "calib")
    desc = resolve_model(request)
    return {"root": root, "fp32": fp32, "calib": calib, "x": to_batch(test, desc.resolution, desc.preprocessing),
            "y": y_test}


@pytest.fixture(scope="module")
def int8_graphs(digits):
    """Each backend's INT8 graph of the digits model: the first calibrates and writes a cache, the next reads it."""
    cache = digits["root"] / "scales.cache"
    graphs = {}
    for backend in BACKENDS:
        out = digits["root"] / f"int8_{backend}.onnx"
        graphs[backend] = (out, quantize(digits["fp32"], out, "int8", calib_dir=digits["calib"], backend=backend, calib_cache=cache))
    return graphs, cache


@pytest.fixture(scope="module")
def triton_artifacts(tmp_path_factory):
    """A tiny classifier (batch 1..16) and a tiny backbone (two feature maps) as ONNX, for the repository tests."""
    root = tmp_path_factory.mktemp("triton")
    classifier, _ = export_tiny(root, filename="cls.onnx", batch=BatchProfile(max_batch=16))
    backbone, _ = export_tiny(root, "faster_vit_0_any_res", filename="feat.onnx", resolution=(160, 288),
                              out_indices=(1, 3))
    return root, classifier, backbone


@pytest.fixture(scope="session")
def fastervit0_graphs(fastervit0, shared_dir) -> dict[str, Path]:
    """FasterViT-0 (checkpoint-like weights) as FP32, FP16, INT8 (onnxruntime's writer: the faster one) and FP8
    graphs, calibrated on the photos (their logits are flat: top-1 agreement is not asked of them)."""
    fp32, calib, _ = fastervit0

    def make(path: Path) -> None:
        from fastervit_deploy.core.options import CalibrationOptions, QuantBackend
        from fastervit_deploy.core.precision import Tolerance
        from fastervit_deploy.plan import plan_quantize

        path.mkdir()
        for precision, calibration in (("fp16", CalibrationOptions()),
                                       ("int8", CalibrationOptions(calib_dir=calib, backend=QuantBackend.onnxruntime)),
                                       ("fp8", CalibrationOptions(calib_dir=calib))):
            plan_quantize(fp32, precision, OutputTarget(path / f"fv0_{precision}.onnx"), calibration,
                          Tolerance(min_top1=0.0)).run(quiet_steps())

    root = shared(shared_dir, "fastervit0_graphs", make)
    return {"fp32": fp32, **{p: root / f"fv0_{p}.onnx" for p in ("fp16", "int8", "fp8")}}
