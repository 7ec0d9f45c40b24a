"""`fvdeploy export-onnx`: the deploy-form model as a TensorRT-friendly dynamic-batch ONNX graph."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import torch

from fastervit import FasterViT

from ..core.finish import finish
from ..core.model_spec import ModelDescription
from ..core.options import Simplifier
from ..core.parity import ParityJob
from ..core.precision import TOLERANCES, Precision
from ..core.record import ArtifactRecord, FormatKey
from ..core.reference import TorchRunner
from ..data.images import batch_of, load_batch
from ..graph.inspect import inspect_model
from ..tensorrt.parser import with_parser
from ..system.errors import FvdeployError, MissingDependency
from ..system.files import atomic_output
from ..system.progress import Steps
from . import metadata
from .job import TRACE_BATCH, ExportJob
from .runner import OnnxRuntimeRunner

EXTERNAL_DATA_THRESHOLD = int(1.8 * 2**30)  # headroom for the graph itself under protobuf's 2 GiB


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
        except ImportError as err:
            raise MissingDependency("--simplify onnxsim needs the onnxsim package (pip install onnxsim)") from err
        simplified, ok = onnxsim.simplify(model)
        if not ok:
            raise FvdeployError("onnxsim could not validate the simplified model; use --simplify onnxslim")
        return simplified
    except (FvdeployError, MemoryError):
        raise
    except Exception as err:  # noqa: BLE001 - simplifiers raise anything
        raise FvdeployError(f"{how.value} failed: {str(err).splitlines()[0]}; retry with --simplify none") from err


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
    """Build, deploy, export, simplify; then check, compare and record (core.finish)."""
    desc = job.model
    for note in desc.notes:
        steps.note(note)
    with steps("building model"):
        model = desc.build(steps.note)
    record = ArtifactRecord(FormatKey.onnx, Precision.fp32, desc, job.batch.range, (desc.input,), desc.outputs,
                            job.argv(), notes=desc.notes)
    parity = None
    if job.verify:
        with steps("PyTorch reference on real images"):
            batches = reference_batches(desc, job.verify_batches, job.images.images)
            # The reference is the eager model: parity covers deploy() and the export together.
            with TorchRunner(model, desc.input, desc.outputs) as torch_runner:
                references = {len(b): torch_runner.infer(b) for b in batches}
        parity = ParityJob(f"verifying with onnxruntime at batch {', '.join(map(str, job.verify_batches))}",
                           lambda path: OnnxRuntimeRunner(path, record), lambda b: references[len(b)], batches,
                           TOLERANCES[Precision.fp32])
    external = job.onnx.external_data if job.onnx.external_data is not None else model_bytes(model) > EXTERNAL_DATA_THRESHOLD
    deployed = model.deploy()
    del model  # only the deployed copy is needed from here: halve the peak memory of big variants
    with atomic_output(job.output, job.overwrite) as tmp:
        with steps(f"exporting (opset {job.onnx.opset}, batch {job.batch.min_batch}..{job.batch.max_batch})"):
            torch_export(deployed, tmp, desc, job)
            del deployed
            graph = onnx.load(str(tmp))  # pulls in external tensors if the exporter had to split them
        if job.onnx.simplify is not Simplifier.none:
            with steps(f"simplifying with {job.onnx.simplify.value}"):
                graph = simplify(graph, job.onnx.simplify)
        record = record.replace(details={"opset": job.onnx.opset, "simplifier": job.onnx.simplify.value,
                                         "external_data": external, "params": desc.params()})
        graph.producer_name, graph.doc_string = "fvdeploy", f"FasterViT ({desc.name}) exported by fvdeploy"
        metadata.embed(graph, record)
        for stale in tmp.parent.iterdir():  # loose per-tensor files the exporter may have written
            stale.unlink()
        save_onnx(graph, tmp, external)
        del graph
        return finish(tmp, record, steps, check=check_onnx, parity=parity)


def check_onnx(path: Path):
    """The graph check `inspect` runs, on the file as written (structure only: no external data)."""
    return with_parser(inspect_model(onnx.load(str(path), load_external_data=False), path), path)
