"""Shared test helpers: where the reference data is, CLI invocation, tiny models, small exports, independent parity,
subprocess control. Fixtures live in conftest.py; tests import helpers from here only."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from fastervit import save_checkpoint
from fastervit_deploy.cli import run
from fastervit_deploy.core.model_spec import resolve_model
from fastervit_deploy.core.options import BatchProfile, CalibrationOptions, ModelRequest, OnnxOptions, OutputTarget
from fastervit_deploy.core.precision import Tolerance
from fastervit_deploy.plan import plan_export, plan_quantize
from fastervit_deploy.quantize.convert import modelopt_available
from fastervit_deploy.system.progress import Steps
from fastervit_deploy.core.record import ArtifactRecord
from fastervit_deploy.onnx.metadata import embedded_record
from fastervit_deploy.core.reference import TorchRunner
from fastervit_deploy.onnx.runner import OnnxRuntimeRunner

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FVDEPLOY_SHARED", ROOT.parent / "shared"))
GOLDEN = SHARED / "golden"
KEYS = SHARED / "fastervit-spec" / "keys"
DIGITS_CKPT = ROOT / "fastervit_deploy" / "data" / "digits_fastervit.pth.tar"

NAMES = [f"kind-{i}" for i in range(10)]  # the class names of the named Core ML package

# Small FasterViT-architecture configs: every code path of the big ones at a fraction of the cost.
TINY = dict(dim=32, in_dim=32, depths=[1, 1, 2, 1], num_heads=[1, 2, 2, 4], mlp_ratio=2, num_classes=10)


def quiet_steps() -> Steps:
    return Steps(Console(quiet=True))


@dataclass
class CliResult:
    exit_code: int
    output: str  # stdout and stderr, interleaved as written
    stdout: str


def cli(*args: str) -> CliResult:
    """The command line in-process, through the same entry point as the `fvdeploy` script."""
    with CliRunner().isolation() as (out, _, mixed):
        code = run([str(a) for a in args], prog_name="fvdeploy")
        sys.stdout.flush()
        sys.stderr.flush()
        return CliResult(code, mixed.getvalue().decode(), out.getvalue().decode())


def assert_one_line_error(result, pattern: str, code: int | None = None) -> None:
    assert result.exit_code != 0, result.output
    if code is not None:
        assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.output
    assert re.search(pattern, result.output.replace("\n", " ")), result.output


def tiny_request(name: str = "faster_vit_0_224", resolution=None, window_size=None, seed: int = 0,
                 **extra) -> ModelRequest:
    return ModelRequest(name, resolution=tuple(resolution) if resolution else None,
                        window_size=tuple(window_size) if window_size else None, seed=seed, overrides={**TINY, **extra})


def export_tiny(tmp_path: Path, name: str = "faster_vit_0_224", onnx: OnnxOptions = OnnxOptions(),
                batch: BatchProfile = BatchProfile(), verify: bool = True, filename: str | None = None,
                **extra) -> tuple[Path, ArtifactRecord]:
    out = tmp_path / (filename or f"{name}.onnx")
    onnx = dataclasses.replace(onnx, no_verify=onnx.no_verify or not verify)
    record = plan_export(tiny_request(name, **extra), OutputTarget(out), onnx, batch).run(quiet_steps())
    return out, record


def tiny_checkpoint(path: Path, name: str = "faster_vit_0_224", **extra) -> Path:
    """An fvdeploy checkpoint of a tiny model: it carries its architecture, so the CLI can name it."""
    save_checkpoint(resolve_model(tiny_request(name, **extra)).build(), path)
    return path


def independent_parity(onnx_path: Path, batches=(1, 3), seed: int = 1) -> float:
    """Re-open a written ONNX: rebuild the PyTorch model from the record embedded in the file itself and
    compare on fresh inputs; returns max |Δ| over every output."""
    record = embedded_record(onnx_path)
    model = record.model.build()
    worst = 0.0
    with OnnxRuntimeRunner(onnx_path) as ort, TorchRunner(model, record.model.input, record.model.outputs) as ref:
        for n in batches:
            x = np.random.default_rng(seed + n).standard_normal((n, *record.model.input.shape), dtype=np.float32)
            got, want = ort.infer(x), ref.infer(x)
            assert got.keys() == want.keys()
            worst = max(worst, max(float(np.abs(got[k] - want[k]).max()) for k in want))
    return worst


# ---- the real console script in a subprocess, for signals and limits ----------------------------------------

# The console script, with SIGINT at its default even where the test runner was started in the background
# (a shell then ignores SIGINT for its children, and fvdeploy rightly keeps ignoring it).
FVDEPLOY = [sys.executable, "-c", "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
            "from fastervit_deploy.cli import main; sys.argv[0] = 'fvdeploy'; main()"]


def spawn(args, cwd, tmpdir, **kw) -> subprocess.Popen:
    env = {**os.environ, "TMPDIR": str(tmpdir), "COLUMNS": "200"}
    return subprocess.Popen([*FVDEPLOY, *map(str, args)], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, **kw)


def wait_for_line(proc: subprocess.Popen, marker: str, limit_s: float = 240) -> list[str]:
    """Read stderr until a line contains ``marker`` (the step the signal should interrupt has begun)."""
    seen, deadline = [], time.monotonic() + limit_s
    for line in proc.stderr:
        seen.append(line)
        if marker in line or time.monotonic() > deadline:
            return seen
    raise AssertionError(f"{marker!r} never printed: {''.join(seen)}")


def leftovers(tmpdir: Path) -> list[str]:
    """What is left in the temp folder, less the libraries' own per-user files (onnxruntime's `.ses`
    session id, torch's `torchinductor_<user>` cache folder)."""
    return [p.name for p in tmpdir.iterdir() if p.name != ".ses" and not p.name.startswith("torchinductor_")]


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def interrupt(proc: subprocess.Popen, sig: int, to_group: bool) -> tuple[int, float, str]:
    start = time.monotonic()
    (os.killpg if to_group else os.kill)(proc.pid, sig)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError("fvdeploy did not end within 10 s of the signal") from None
    took = time.monotonic() - start
    rest = proc.stderr.read()
    deadline = time.monotonic() + 5
    while group_alive(proc.pid) and time.monotonic() < deadline:  # workers die with fvdeploy
        time.sleep(0.1)
    assert not group_alive(proc.pid), "a worker process outlived fvdeploy"
    return proc.returncode, took, rest


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


def shared(shared_dir: Path, name: str, make) -> Path:
    """``shared_dir/name``, made once per test run by whichever worker gets there first."""
    from filelock import FileLock

    path = shared_dir / name
    with FileLock(str(shared_dir / f"{name}.lock")):
        if not path.exists():
            make(path)
    return path


BACKENDS = ["onnxruntime"] + (["modelopt"] if modelopt_available() else [])  # INT8 writers installed here


def quantize(source, output, precision, tolerance=Tolerance(), **calibration):
    plan = plan_quantize(source, precision, OutputTarget(output), CalibrationOptions(**calibration), tolerance)
    return plan.run(quiet_steps())
