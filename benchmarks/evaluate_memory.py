"""`fvdeploy evaluate` keeps memory flat in the data set's size: peak RSS at 300 and at 3,000 images.

The digits model (FP32 ONNX) is evaluated on ImageFolders of 300 and 3,000 images (scikit-learn's digits,
repeated); each run is its own process, and its peak resident memory is read from the kernel
(getrusage of a wrapper's only child). Usage: .venv/bin/python benchmarks/evaluate_memory.py
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from fastervit_deploy.core.options import ModelRequest, OnnxOptions, OutputTarget
from fastervit_deploy.data.datasets import digits_split
from fastervit_deploy.plan import plan_export
from fastervit_deploy.system.progress import Steps

CKPT = Path(__file__).resolve().parents[1] / "fastervit_deploy" / "data" / "digits_fastervit.pth.tar"
SIZES = (300, 3000)
GOAL = 1.10  # peak RSS at 10x the images, at most this many times the smaller run's
WRAPPER = ("import resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; "
           "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(code)")


def image_folder(root: Path, count: int) -> Path:
    train, y_train, _, _ = digits_split()
    for i in range(count):
        folder = root / str(y_train[i % len(train)])
        folder.mkdir(parents=True, exist_ok=True)
        train[i % len(train)].save(folder / f"{i:05d}.png")
    return root


def peak_rss_mib(onnx: Path, data: Path) -> float:
    command = [sys.executable, "-m", "fastervit_deploy", "evaluate", str(onnx), "--data", str(data), "--reference", str(onnx)]
    result = subprocess.run([sys.executable, "-c", WRAPPER, *command], capture_output=True, text=True, check=True)
    return int(result.stdout.strip().splitlines()[-1]) / 1024


def main() -> int:
    console = Console()
    with tempfile.TemporaryDirectory() as tmp:
        onnx = Path(tmp) / "digits.onnx"
        plan_export(ModelRequest("faster_vit_0_224", checkpoint=CKPT), OutputTarget(onnx),
                    OnnxOptions(no_verify=True)).run(Steps(Console(stderr=True)))
        peaks = {n: peak_rss_mib(onnx, image_folder(Path(tmp) / f"data{n}", n)) for n in SIZES}
    table = Table(title="fvdeploy evaluate: peak resident memory (FP32 ONNX, the ONNX as reference)")
    table.add_column("images", justify="right")
    table.add_column("peak RSS (MiB)", justify="right")
    for n, mib in peaks.items():
        table.add_row(str(n), f"{mib:.0f}")
    console.print(table)
    ratio = peaks[SIZES[1]] / peaks[SIZES[0]]
    verdict = "meets" if ratio <= GOAL else "MISSES"
    console.print(f"{SIZES[1] // SIZES[0]}x the images: {ratio:.2f}x the memory ({verdict} the {GOAL:.2f}x goal)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
