"""Peak memory of `fvdeploy quantize --int8` on the card model: faster_vit_0_any_res at 576x960, 512 images.

Calibration streams: images are read, preprocessed and fed one chunk at a time, so memory should not
grow with the image count (512 images at 576x960 are 3.4 GB of float32 if stacked). Goal: <= 3 GiB.
The peak is the largest sum of RSS over the CLI process and all its descendants (the ModelOpt worker
included), sampled every 0.1 s from /proc. A second run with 64 images shows that the peak does not
depend on the count.
Usage: .venv/bin/python benchmarks/calibration_memory.py [--images N ...]   (default: 512 64)
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image
from rich.console import Console
from rich.table import Table

from fastervit_deploy.data.images import skimage_photos

OUT = Path("build/bench/calibration")
GOAL_GIB = 3.0
FVDEPLOY = str(Path(sys.executable).with_name("fvdeploy"))


def make_images(folder: Path, count: int) -> Path:
    """`count` distinct photos: random crops and flips of scikit-image's sample photographs."""
    folder.mkdir(parents=True, exist_ok=True)
    photos = [np.asarray(photo) for photo in skimage_photos()]
    rng = np.random.default_rng(0)
    for i in range(count):
        path = folder / f"{i:04d}.jpg"
        if path.exists():
            continue
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        top, left = rng.integers(0, h // 4), rng.integers(0, w // 4)
        crop = photo[top:top + 3 * h // 4, left:left + 3 * w // 4]
        Image.fromarray(np.ascontiguousarray(crop[:, ::-1] if i % 2 else crop)).save(path, quality=90)
    return folder


def tree_rss(root: int) -> int:
    """Bytes resident in `root` and every descendant, read from /proc."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
        rss[int(entry)] = next((int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmRSS:")), 0)
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0)
        todo.extend(children.get(pid, []))
    return total


def peak_rss(argv: list[str]) -> tuple[int, float, int]:
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak, reported = 0, start
    while proc.poll() is None:
        peak = max(peak, tree_rss(proc.pid))
        if time.perf_counter() - reported > 60:  # a long run shows its progress
            reported = time.perf_counter()
            print(f"  {reported - start:.0f} s: peak so far {peak / 2**30:.2f} GiB", flush=True)
        time.sleep(0.1)
    if proc.returncode:
        sys.exit(f"{' '.join(argv)} failed: {proc.stderr.read().decode().strip()}")
    return peak, time.perf_counter() - start, proc.returncode


def main(counts: list[int]) -> None:
    out = Console()
    onnx_path = OUT / "faster_vit_0_any_res_576x960.onnx"
    if not onnx_path.exists():
        subprocess.run([FVDEPLOY, "export-onnx", "--model", "faster_vit_0_any_res", "--resolution", "576", "960",
                        "--output", str(onnx_path)], check=True, stdout=subprocess.DEVNULL)
    images = make_images(OUT / "images", max(counts))
    table = Table(title="quantize --int8, faster_vit_0_any_res 576x960 (tree RSS, sampled every 0.1 s)")
    for col in ("images", "peak RSS GiB", "goal", "wall s"):
        table.add_column(col, justify="right")
    for count in counts:
        print(f"quantize --int8 with {count} images ...", flush=True)
        peak, wall, _ = peak_rss([FVDEPLOY, "quantize", str(onnx_path), "--int8", "--calib-dir", str(images),
                                  "--calib-images", str(count), "--output", str(OUT / f"int8_{count}.onnx"), "--overwrite"])
        gib = peak / 2**30
        table.add_row(str(count), f"{gib:.2f}", "ok" if gib <= GOAL_GIB else f"> {GOAL_GIB}", f"{wall:.0f}")
        print(f"  {count} images: peak {gib:.2f} GiB in {wall:.0f} s", flush=True)
    out.print(table)


if __name__ == "__main__":
    args = sys.argv[1:]
    main([int(a) for a in args[args.index("--images") + 1:]] if "--images" in args else [512, 64])
