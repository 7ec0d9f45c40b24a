"""`make bench`: our ONNX export vs a plain `torch.onnx.export` of the same weights, and PyTorch eager.

All three run on this machine's CPU, interleaved round by round so they share the same load.
"plain" is what a user gets from `torch.onnx.export(model, ...)` (torch's default exporter, dynamic
batch) on the same nn.Module without `deploy()` (position MLPs, BatchNorms and bias gathers stay in
the graph) and without simplification. Goal: ours >= 1.15x plain at batch 1 and 8.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch
from rich.console import Console

from fastervit_deploy.system.machine import describe_machine
from fastervit_deploy.use.benchmark import ORDER_SEED, measure, ratio_spread, ratios, results_table, synthetic_batches
from fastervit_deploy.core.model_spec import resolve_model
from fastervit_deploy.core.options import ModelRequest, OnnxOptions, OutputTarget
from fastervit_deploy.plan import plan_export
from fastervit_deploy.system.progress import Steps
from fastervit_deploy.core.reference import TorchRunner
from fastervit_deploy.onnx.runner import OnnxRuntimeRunner

GOAL = 1.15
BATCHES = (1, 8)
OUT = Path("build/bench")


def plain_export(model: torch.nn.Module, path: Path) -> None:
    x = torch.randn(2, 3, *model.input_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(path), input_names=["input"], output_names=["logits"],
                          dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=64)}})


def main() -> int:
    console = Console(stderr=True)
    OUT.mkdir(parents=True, exist_ok=True)
    request = ModelRequest("faster_vit_0_224")  # seeded checkpoint-like weights: the graph a checkpoint gives
    ours = OUT / "faster_vit_0_224_fvdeploy.onnx"
    record = plan_export(request, OutputTarget(ours, overwrite=True), OnnxOptions(no_verify=True)).run(Steps(console))
    plain = OUT / "faster_vit_0_224_plain.onnx"
    desc = resolve_model(request)
    eager = desc.build()  # same seed, same weights
    plain_export(eager, plain)  # the same tensors as ours: our record describes it too

    batches = synthetic_batches(BATCHES, desc.input.shape)
    # intra-op spinning off: the runners take turns, and a spinning session keeps the cores busy for the next
    with OnnxRuntimeRunner(ours, spinning=False) as a, OnnxRuntimeRunner(plain, record, spinning=False) as b, TorchRunner(eager, desc.input, desc.outputs) as c:
        results = measure({"fvdeploy-onnx": a.infer, "plain-onnx": b.infer, "pytorch-eager": c.infer},
                          batches, warmup=5, iterations=30, console=console)
    out = Console()
    out.print(results_table(results, "FasterViT-0 224, onnxruntime CPU vs PyTorch eager"))
    speed = ratio_spread(results, "plain-onnx")["fvdeploy-onnx"]
    eager_speed = ratios(results, "pytorch-eager")["fvdeploy-onnx"]
    out.print(f"machine: {describe_machine()}; runner order rotated per round (seed {ORDER_SEED})")
    for n in BATCHES:
        s = speed[n]
        verdict = "meets" if s["median"] >= GOAL else "MISSES"
        out.print(f"batch {n}: fvdeploy/plain {s['median']:.2f}x (rounds {s['p10']:.2f}-{s['p90']:.2f}; {verdict} the "
                  f"{GOAL}x goal), fvdeploy/eager {eager_speed[n]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
