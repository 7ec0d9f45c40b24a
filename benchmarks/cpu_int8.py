"""`make bench`: INT8 for onnxruntime's CPU kernels (`quantize --int8 --target onnxruntime-cpu`) vs FP32 and vs
onnxruntime's plain `quantize_static`, on FasterViT-0 224 with seeded checkpoint-like weights.

All three graphs run on this machine's CPU, interleaved round by round so they share the same load, with
onnxruntime's intra-op spinning off (a spinning session keeps the cores busy while the next one runs).
"plain" is what onnxruntime's documentation leads a user to: QDQ, uint8 activations, per-channel int8 weights,
Conv/MatMul/Gemm only, the rest FP32, reduce_range where the CPU lacks VNNI (as ours), calibrated on the same
photos. Goals: ours >= 1.3x FP32 at batch 1 and >= 1.6x at batch 8, faster than plain, cosine >= 0.999 to FP32.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from rich.console import Console

from fastervit_deploy.core.options import (CalibrationOptions, ModelRequest, OnnxOptions, OutputTarget,
                                           TargetOptions)
from fastervit_deploy.core.parity import compare
from fastervit_deploy.core.precision import QuantTarget
from fastervit_deploy.data.images import load_batch, skimage_photos
from fastervit_deploy.onnx.runner import OnnxRuntimeRunner
from fastervit_deploy.plan import plan_export, plan_quantize
from fastervit_deploy.system.machine import cpu, describe_machine
from fastervit_deploy.system.progress import Steps
from fastervit_deploy.use.benchmark import ORDER_SEED, measure, ratio_spread, results_table, synthetic_batches

GOALS = {1: 1.3, 8: 1.6}  # ours / FP32 throughput
MIN_COSINE = 0.999
OUT = Path("build/bench")


def photo_folder(path: Path) -> Path:
    """scikit-image's photos with mirrored and cropped views: the calibration set of both quantizers."""
    path.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(skimage_photos()):
        img.save(path / f"{i}.png")
        img.transpose(0).save(path / f"{i}_flip.png")
        w, h = img.size
        img.crop((w // 8, h // 8, w - w // 8, h - h // 8)).save(path / f"{i}_crop.png")
    return path


def plain_quantize_static(fp32: Path, out: Path, photos: np.ndarray) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Photos(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(photos[i:i + 1] for i in range(len(photos)))

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {"input": batch}

    quantize_static(str(fp32), str(out), Photos(), quant_format=QuantFormat.QDQ, per_channel=True,
                    reduce_range=not cpu()["vnni"], activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    op_types_to_quantize=["Conv", "MatMul", "Gemm"])


def main() -> int:
    console = Console(stderr=True)
    OUT.mkdir(parents=True, exist_ok=True)
    fp32 = OUT / "faster_vit_0_224_fvdeploy.onnx"
    record = plan_export(ModelRequest("faster_vit_0_224"), OutputTarget(fp32, overwrite=True),
                         OnnxOptions(no_verify=True)).run(Steps(console))
    calib = photo_folder(OUT / "photos")
    ours = OUT / "faster_vit_0_224_cpu_int8.onnx"
    plan_quantize(fp32, "int8", OutputTarget(ours, overwrite=True), CalibrationOptions(calib_dir=calib),
                  target=TargetOptions(QuantTarget.onnxruntime_cpu)).run(Steps(console))
    desc = record.model
    photos = load_batch(desc.input.shape[1:], desc.preprocessing, calib)
    plain = OUT / "faster_vit_0_224_plain_int8.onnx"
    plain_quantize_static(fp32, plain, photos)

    runners = {"fp32": OnnxRuntimeRunner(fp32, spinning=False), "fvdeploy-cpu-int8": OnnxRuntimeRunner(ours, spinning=False),
               "plain-quantize-static": OnnxRuntimeRunner(plain, record, spinning=False)}
    with runners["fp32"] as a, runners["fvdeploy-cpu-int8"] as b, runners["plain-quantize-static"] as c:
        reference = a.infer(photos)["logits"]
        cosine = {name: compare(reference, r.infer(photos)["logits"])["cosine_min"] for name, r in (("fvdeploy-cpu-int8", b),
                                                                                             ("plain-quantize-static", c))}
        results = measure({"fp32": a.infer, "fvdeploy-cpu-int8": b.infer, "plain-quantize-static": c.infer},
                          synthetic_batches(GOALS, desc.input.shape), warmup=5, iterations=30, console=console)
    out = Console()
    machine = cpu()
    out.print(results_table(results, f"FasterViT-0 224 on onnxruntime's CPU ({machine['cpu']}, "
                                     f"VNNI {'yes' if machine['vnni'] else 'no'})"))
    speed = ratio_spread(results, "fp32")
    out.print(f"machine: {describe_machine()}; runner order rotated per round (seed {ORDER_SEED})")
    for n, goal in GOALS.items():
        ours, plain = speed["fvdeploy-cpu-int8"][n], speed["plain-quantize-static"][n]
        verdict = "meets" if ours["median"] >= goal and ours["median"] > plain["median"] else "MISSES"
        out.print(f"batch {n}: ours {ours['median']:.2f}x FP32 (rounds {ours['p10']:.2f}-{ours['p90']:.2f}), plain "
                  f"{plain['median']:.2f}x (rounds {plain['p10']:.2f}-{plain['p90']:.2f}) ({verdict} >= {goal}x and > "
                  "plain)")
    for name, value in cosine.items():
        verdict = "meets" if value >= MIN_COSINE else "MISSES"
        out.print(f"{name}: cosine to FP32 {value:.6f} on {len(photos)} photos ({verdict} >= {MIN_COSINE})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
