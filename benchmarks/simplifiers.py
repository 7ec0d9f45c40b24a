"""Which simplifier should be the default? onnxslim vs onnxsim vs none, measured side by side.

For FasterViT-0 at 224 and the card model (any-res 576x960), with checkpoint-like weights: node count,
simplification time, parity, and onnxruntime CPU latency at batch 1 and 8 (runners interleaved, so
the ratios hold on any machine; absolute times do not).
Usage: .venv/bin/python benchmarks/simplifiers.py [--quick]   (--quick: FasterViT-0 only)
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import numpy as np
import onnx
from rich.console import Console
from rich.table import Table

from fastervit_deploy.use.benchmark import measure
from fastervit_deploy.core.options import ModelRequest, OnnxOptions, OutputTarget, Simplifier
from fastervit_deploy.plan import plan_export
from fastervit_deploy.system.progress import Steps
from fastervit_deploy.onnx.runner import OnnxRuntimeRunner

OUT = Path("build/bench")
MODELS = (("faster_vit_0_224", (224, 224)), ("faster_vit_0_any_res", (576, 960)))


def compare(name: str, resolution: tuple[int, int], out: Console, stack: contextlib.ExitStack) -> None:
    table = Table(title=f"{name} {resolution[0]}x{resolution[1]}")
    for col in ("simplifier", "nodes", "simplify s", "max |Δ| vs PyTorch", "p50 ms b1", "p50 ms b8", "b1 vs onnxslim"):
        table.add_column(col, justify="right")
    rows, runners = {}, {}
    for how in Simplifier:
        path = OUT / f"{name}_{how.value}.onnx"
        record = plan_export(ModelRequest(name, resolution=resolution), OutputTarget(path, overwrite=True),
                             OnnxOptions(simplify=how)).run(Steps(Console(quiet=True)))
        rows[how.value] = (len(onnx.load(str(path), load_external_data=False).graph.node),
                           record.timings_s.get(f"simplifying with {how.value}", 0.0), record.parity["overall"]["max_abs"])
        runners[how.value] = stack.enter_context(OnnxRuntimeRunner(path))
    rng = np.random.default_rng(0)
    batches = {n: rng.standard_normal((n, 3, *resolution), dtype=np.float32) for n in (1, 8)}
    results = measure({k: r.infer for k, r in runners.items()}, batches, warmup=3, iterations=15, console=out)
    p50 = {(r["runner"], r["batch"]): r["p50_ms"] for r in results}
    for how, (nodes, seconds, max_abs) in rows.items():
        table.add_row(how, str(nodes), f"{seconds:.1f}", f"{max_abs:.1e}", f"{p50[how, 1]:.1f}", f"{p50[how, 8]:.1f}",
                      f"{p50['onnxslim', 1] / p50[how, 1]:.3f}x")
    out.print(table)


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    out = Console()
    for name, resolution in MODELS[:1] if "--quick" in sys.argv else MODELS:
        with contextlib.ExitStack() as stack:
            compare(name, resolution, out, stack)
    return 0


if __name__ == "__main__":
    sys.exit(main())
