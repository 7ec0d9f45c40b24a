from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FVDEPLOY_SHARED", ROOT.parent / "shared"))
GOLDEN = SHARED / "golden"
KEYS = SHARED / "fastervit-spec" / "keys"

# Small FasterViT-architecture configs: every code path of the big ones at a fraction of the cost.
TINY = dict(dim=32, in_dim=32, depths=[1, 1, 2, 1], num_heads=[1, 2, 2, 4], mlp_ratio=2, num_classes=10)

torch.set_num_threads(max(1, (os.cpu_count() or 2) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))


def golden_cases() -> list[str]:
    if not GOLDEN.is_dir():
        return []
    return sorted(p.name for p in GOLDEN.iterdir() if (p / "config.json").is_file())


def load_golden(case: str):
    meta = json.loads((GOLDEN / case / "config.json").read_text())
    io = torch.load(GOLDEN / case / "io.pt", weights_only=True)
    return meta, io


def require_shared():
    if not GOLDEN.is_dir():
        pytest.skip(f"shared golden tensors not found at {GOLDEN}")


@pytest.fixture(scope="session")
def shared_dir(tmp_path_factory, worker_id) -> Path:
    """A folder every xdist worker of this run sees (the workers' own temp folders sit inside it)."""
    base = tmp_path_factory.getbasetemp()
    return base if worker_id == "master" else base.parent


def shared(shared_dir: Path, name: str, make) -> Path:
    """``shared_dir/name``, made once per test run by whichever worker gets there first."""
    from filelock import FileLock

    path = shared_dir / name
    with FileLock(str(shared_dir / f"{name}.lock")):
        if not path.exists():
            make(path)
    return path


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


DIGITS_CKPT = ROOT / "fastervit_deploy" / "data" / "digits_fastervit.pth.tar"


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
        from tests.helpers import quiet_steps

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
        from tests.helpers import quiet_steps

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
