"""`fvdeploy export-onnx`: the deploy-form model as a TensorRT-friendly dynamic-batch ONNX graph."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch

from fastervit import FasterViT

from .errors import FvdeployError, MissingDependency
from .files import atomic_output
from .graph_check import inspect_model
from .images import batch_of, load_batch
from .model_spec import ModelDescription
from .options import BatchProfile, OnnxOptions, Simplifier
from .pipeline import ParityJob, finish
from .progress import Steps
from .record import ArtifactRecord, embed_in_onnx
from .runners import OnnxRuntimeRunner, TorchRunner
from .verify import TOLERANCES

EXTERNAL_DATA_THRESHOLD = int(1.8 * 2**30)  # headroom for the graph itself under protobuf's 2 GiB
TRACE_BATCH = 2  # the graph is traced at this batch; parity runs at others (1 and 3)


@dataclass(frozen=True)
class ExportJob:
    """Everything `export-onnx` does, resolved: the plan's stage and the record's recipe."""

    model: ModelDescription
    output: Path
    onnx: OnnxOptions = field(default_factory=OnnxOptions)
    batch: BatchProfile = field(default_factory=BatchProfile)
    images: Path | None = None
    verify: bool = True
    overwrite: bool = False

    def argv(self) -> tuple[str, ...]:
        args = ["export-onnx", *self.model.cli_args(), *self.batch.argv(), *self.onnx.argv()]
        if self.images is not None:
            args += ["--images", str(self.images)]
        if not self.verify:
            args.append("--no-verify")
        return (*args, "--output", str(self.output))

    @property
    def verify_batches(self) -> list[int]:
        """Two sizes, at least one different from the batch the graph was traced with."""
        return sorted({self.batch.clip(1), self.batch.clip(3)})

    def run(self, steps: Steps) -> ArtifactRecord:
        return export_onnx(self, steps)


def model_bytes(model: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))


def torch_export(model: FasterViT, path: Path, desc: ModelDescription, job: ExportJob) -> None:
    """Trace the deployed model: every shape is a Python int except the batch (SPEC export rules)."""
    dummy = torch.randn(job.batch.clip(TRACE_BATCH), *desc.input.shape)
    names = [o.name for o in desc.outputs]
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter announces its retirement
        warnings.simplefilter("ignore", FutureWarning)
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")  # the any-res crop Slice
        torch.onnx.export(
            model, (dummy,), str(path), dynamo=False, opset_version=job.onnx.opset, do_constant_folding=True,
            input_names=[desc.input.name], output_names=names,
            dynamic_axes={name: {0: "batch"} for name in [desc.input.name, *names]},
        )


def simplify(model: onnx.ModelProto, how: Simplifier) -> onnx.ModelProto:
    if how is Simplifier.none:
        return model
    try:
        if how is Simplifier.onnxslim:
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
    except (FvdeployError, MemoryError):
        raise
    except Exception as err:  # noqa: BLE001 - simplifiers raise anything
        raise FvdeployError(f"{how.value} failed: {str(err).splitlines()[0]}; retry with --simplify none") from None


def save_onnx(model: onnx.ModelProto, path: Path, external: bool) -> None:
    if external:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data", size_threshold=1024)
    else:
        onnx.save_model(model, str(path))


def reference_batches(desc: ModelDescription, sizes: list[int], images: Path | None) -> list[np.ndarray]:
    photos = load_batch(desc.resolution, desc.preprocessing, images)
    return [batch_of(photos, n) for n in sizes]


def export_onnx(job: ExportJob, steps: Steps) -> ArtifactRecord:
    """Build, deploy, export, simplify; then check, compare and record (pipeline.finish)."""
    desc = job.model
    for note in desc.notes:
        steps.note(note)
    with steps("building model"):
        model = desc.build(steps.note)
    parity = None
    if job.verify:
        with steps("PyTorch reference on real images"):
            batches = reference_batches(desc, job.verify_batches, job.images)
            # The reference is the eager model: parity covers deploy() and the export together.
            with TorchRunner(model, desc.input, desc.outputs) as torch_runner:
                references = {len(b): torch_runner.infer(b) for b in batches}
        kinds = {o.name: o.kind for o in desc.outputs}
        parity = ParityJob(f"verifying with onnxruntime at batch {', '.join(map(str, job.verify_batches))}",
                           lambda path: OnnxRuntimeRunner(path, kinds=kinds, batch_range=job.batch.range),
                           lambda b: references[len(b)], batches, TOLERANCES["fp32"])
    external = job.onnx.external_data if job.onnx.external_data is not None else model_bytes(model) > EXTERNAL_DATA_THRESHOLD
    deployed = model.deploy()
    del model  # only the deployed copy is needed from here: halve the peak memory of big variants
    with atomic_output(job.output, job.overwrite) as tmp:
        with steps(f"exporting (opset {job.onnx.opset}, batch {job.batch.min}..{job.batch.max})"):
            torch_export(deployed, tmp, desc, job)
            del deployed
            graph = onnx.load(str(tmp))  # pulls in external tensors if the exporter had to split them
        if job.onnx.simplify is not Simplifier.none:
            with steps(f"simplifying with {job.onnx.simplify.value}"):
                graph = simplify(graph, job.onnx.simplify)
        record = ArtifactRecord(
            "onnx", "fp32", desc, job.batch.range, (desc.input,), desc.outputs, job.argv(),
            details={"opset": job.onnx.opset, "simplifier": job.onnx.simplify.value, "external_data": external,
                     "params": desc.params()},
            notes=desc.notes,
        )
        graph.producer_name, graph.doc_string = "fvdeploy", f"FasterViT ({desc.name}) exported by fvdeploy"
        embed_in_onnx(graph, record)
        for stale in tmp.parent.iterdir():  # loose per-tensor files the exporter may have written
            stale.unlink()
        save_onnx(graph, tmp, external)
        del graph
        return finish(tmp, record, steps, check=check_onnx, parity=parity)


def check_onnx(path: Path):
    """The graph check `inspect` runs, on the file as written (structure only: no external data)."""
    return inspect_model(onnx.load(str(path), load_external_data=False), path)
