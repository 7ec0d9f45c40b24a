"""`fvdeploy export-onnx`: the deploy-form model as a TensorRT-friendly dynamic-batch ONNX graph."""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from fastervit import FasterViT

from .artifacts import atomic_output, check_output_path, sha256, sidecar_path, write_sidecar
from .errors import CheckFailed, FvdeployError, MissingDependency
from .graph_check import inspect_model
from .images import batch_of, load_batch
from .model_options import ModelSpec
from .onnx_metadata import write_metadata
from .progress import Steps
from .runners import OnnxRuntimeRunner, TorchRunner
from .verify import TOLERANCES, describe, run_parity

# The TorchScript exporter writes opsets up to 20; the dynamo exporter cannot down-convert this
# model to 17 (ecosystem.md), and 17 is what TensorRT 8.6+ recipes use.
SUPPORTED_OPSETS = (17, 18, 19, 20)
SIMPLIFIERS = ("onnxslim", "onnxsim", "none")
EXTERNAL_DATA_THRESHOLD = int(1.8 * 2**30)  # headroom for the graph itself under protobuf's 2 GiB
INPUT_NAME, OUTPUT_NAME = "input", "logits"


@dataclass
class ExportOptions:
    opset: int = 17
    min_batch: int = 1
    max_batch: int = 64
    simplify: str = "onnxslim"
    verify: bool = True
    images: Path | None = None
    external_data: bool | None = None  # None: only when the weights approach the 2 GiB protobuf limit

    def validate(self) -> None:
        if self.opset not in SUPPORTED_OPSETS:
            raise FvdeployError(f"opset {self.opset} is not supported (choose {', '.join(map(str, SUPPORTED_OPSETS))})")
        if self.min_batch < 1 or self.max_batch < self.min_batch:
            raise FvdeployError(f"batch range {self.min_batch}..{self.max_batch} is invalid (need 1 <= min <= max)")
        if self.simplify not in SIMPLIFIERS:
            raise FvdeployError(f"--simplify must be one of {', '.join(SIMPLIFIERS)}")

    def clip(self, batch: int) -> int:
        return min(max(batch, self.min_batch), self.max_batch)

    @property
    def dummy_batch(self) -> int:
        return self.clip(2)

    @property
    def verify_batches(self) -> list[int]:
        """Two sizes, at least one different from the dummy batch the graph was traced with."""
        return sorted({self.clip(1), self.clip(3)})


def model_bytes(model: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))


def torch_export(model: FasterViT, path: Path, opts: ExportOptions) -> None:
    """Trace the deployed model: every shape is a Python int except the batch (SPEC export rules)."""
    H, W = model.input_size
    dummy = torch.randn(opts.dummy_batch, model.cfg.in_chans, H, W)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter announces its retirement
        warnings.simplefilter("ignore", FutureWarning)
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")  # the any-res crop Slice
        torch.onnx.export(
            model, (dummy,), str(path), dynamo=False, opset_version=opts.opset, do_constant_folding=True,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        )


def simplify(model: onnx.ModelProto, how: str) -> onnx.ModelProto:
    if how == "none":
        return model
    try:
        if how == "onnxslim":
            import onnxslim

            return onnxslim.slim(model)
        try:
            import onnxsim
        except ImportError:
            raise MissingDependency("--simplify onnxsim needs the onnxsim package (pip install onnxsim)") from None
        simplified, ok = onnxsim.simplify(model)
        if not ok:
            raise FvdeployError("onnxsim could not validate the simplified model; use --simplify onnxslim")
        return simplified
    except (FvdeployError, MissingDependency):
        raise
    except Exception as err:  # noqa: BLE001 - simplifiers raise anything
        raise FvdeployError(f"{how} failed: {str(err).splitlines()[0]}; retry with --simplify none") from None


def save_onnx(model: onnx.ModelProto, path: Path, external: bool) -> None:
    if external:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data", size_threshold=1024)
    else:
        onnx.save_model(model, str(path))


def reference_batches(model: FasterViT, opts: ExportOptions) -> list[np.ndarray]:
    images = load_batch(model.input_size, model.pretrained_cfg, opts.images)
    return [batch_of(images, n) for n in opts.verify_batches]


def export_onnx(spec: ModelSpec, output: Path | None, opts: ExportOptions, steps: Steps,
                overwrite: bool = False) -> dict:
    """Build, deploy, export, simplify, check and verify; write ``output`` and its sidecar atomically."""
    opts.validate()
    with steps("building model"):
        model = spec.build(steps.note)
    H, W = model.input_size
    output = Path(output or f"{spec.name}_{H}x{W}.onnx")
    check_output_path(output, overwrite, ".onnx")

    parity = None
    if opts.verify:
        with steps("PyTorch reference on real images"):
            batches = reference_batches(model, opts)
            # The reference is the unfused eager model: parity covers deploy() and the export together.
            torch_runner = TorchRunner(model)
            references = {len(b): torch_runner.infer(b) for b in batches}
    external = opts.external_data if opts.external_data is not None else model_bytes(model) > EXTERNAL_DATA_THRESHOLD
    with atomic_output(output, companions=(".data", ".json")) as tmp:
        with steps(f"exporting (opset {opts.opset}, batch {opts.min_batch}..{opts.max_batch})"):
            model.deploy()
            torch_export(model, tmp, opts)
            graph = onnx.load(str(tmp))  # pulls in external tensors if the exporter had to split them
        if opts.simplify != "none":
            with steps(f"simplifying with {opts.simplify}"):
                graph = simplify(graph, opts.simplify)
        graph.producer_name, graph.doc_string = "fvdeploy", "FasterViT exported by fvdeploy"
        write_metadata(graph, {
            "fvdeploy.model": spec.name, "fvdeploy.resolution": f"{H}x{W}",
            "fvdeploy.window_size": ",".join(map(str, model.cfg.window_size)),
            "fvdeploy.batch_range": f"{opts.min_batch},{opts.max_batch}", "fvdeploy.precision": "fp32",
            "fvdeploy.mean": ",".join(map(str, model.pretrained_cfg["mean"])),
            "fvdeploy.std": ",".join(map(str, model.pretrained_cfg["std"])),
        })
        for stale in tmp.parent.iterdir():  # loose per-tensor files the exporter may have written
            if stale != tmp:
                stale.unlink()
        save_onnx(graph, tmp, external)
        with steps("checking graph"):
            report = inspect_model(onnx.load(str(tmp), load_external_data=False), output)
        for f in report.findings:
            steps.note(f"{'ok  ' if f.ok else 'FAIL'} {f.check}: {f.detail}")
        if not report.passed:
            raise CheckFailed(f"graph check failed: {report.failure_summary()}")
        if opts.verify:
            with steps(f"verifying with onnxruntime at batch {', '.join(map(str, opts.verify_batches))}"):
                with OnnxRuntimeRunner(tmp) as ort_runner:
                    parity = run_parity(lambda b: references[len(b)], ort_runner, batches, TOLERANCES["fp32"])
            steps.note(describe(parity["overall"]))
            if not parity["passed"]:
                raise CheckFailed("parity check failed: " + "; ".join(parity["failures"]))
        record = {
            "format": "onnx", **spec.describe(model), "opset": opts.opset, "precision": "fp32",
            "batch_range": [opts.min_batch, opts.max_batch], "input": INPUT_NAME, "output": OUTPUT_NAME,
            "external_data": external, "simplifier": opts.simplify,
            "external_data_sha256": sha256(tmp.with_name(tmp.name + ".data")) if external else None,
            "checkpoint_sha256": sha256(spec.checkpoint) if spec.checkpoint else None,
            "graph": report.to_dict(), "parity": parity, "options": {k: str(v) for k, v in asdict(opts).items()},
            "notes": spec.notes, "timings_s": steps.timings,
        }
        write_sidecar(tmp, record)
    return {"output": output, "sidecar": sidecar_path(output), "report": report, "parity": parity}
