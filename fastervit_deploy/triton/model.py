"""One artifact's place in a Triton model repository, resolved and checked before anything is written; and the record
of a served model read back from the folder `fvdeploy triton` wrote."""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from pathlib import Path

from ..artifact import Artifact, open_artifact, read_recorded
from ..core.options import InstanceKind, TritonBackend, TritonOptions
from ..core.precision import QuantTarget
from ..core.record import ArtifactRecord, FormatKey, RecordedArtifact, record_json
from ..core.tensors import class_output
from ..formats import FORMATS
from ..system.errors import FvdeployError
from ..system.files import shown

SERVES = {TritonBackend.tensorrt: FormatKey.tensorrt, TritonBackend.onnxruntime: FormatKey.onnx,
          TritonBackend.python: FormatKey.onnx}
PYTHON_MODEL = "model.py"  # the python backend's model, beside the ONNX it runs
IMAGE_BYTES = "image_bytes"
CONFIG_FILE = "config.pbtxt"  # what makes a folder a Triton model folder
# config.pbtxt's parameter that carries the served file's whole record, so that a client reads what the model is
# from the server (`get_model_config`). Base64 of the record's JSON: protobuf's text format escapes quotes and
# non-ASCII characters differently from JSON, and a parameter value is one string.
RECORD_PARAMETER = "fvdeploy.record"


@dataclass(frozen=True)
class TritonModel:
    """One artifact's place in the repository, fully resolved before anything is written."""

    artifact: Artifact
    name: str
    backend: TritonBackend
    kind: InstanceKind
    note: str | None = None  # said when the repository is written (serving it as asked works, but not as meant)

    @property
    def record(self) -> ArtifactRecord:
        return self.artifact.record

    @property
    def served(self) -> ArtifactRecord:
        """The record of the file in the version folder (the artifact's, its files named as served)."""
        first, *companions = list(self.record.files)
        return self.record.replace(files={self.file_name: self.record.files[first],
                                          **{name: self.record.files[name] for name in companions}})

    @property
    def file_name(self) -> str:
        """The served artifact's name in the version folder (the python backend's model.py runs a model.onnx)."""
        return FORMATS[self.record.format].triton.model_file

    @property
    def max_batch(self) -> int:
        return self.record.batch_range[1]

    @property
    def classifier(self) -> bool:
        return class_output(self.record.outputs) is not None

    @property
    def model_file(self) -> str:
        return PYTHON_MODEL if self.backend is TritonBackend.python else self.file_name


# One folder name that Triton loads as the same model name (it requires config.pbtxt's name to equal the folder's):
# letters, digits, '_', '-' and '.', not starting with '.' (hidden, and '.'/'..' are no folders), and short enough
# for the _preprocess/_ensemble companions to fit a file name.
MODEL_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}")


def check_model_name(name: str, given: bool) -> str:
    if not MODEL_NAME.fullmatch(name):
        what = f"--name {name!r}" if given else f"the model name {name!r} (from the record; pass --name)"
        raise FvdeployError(f"{what} is not a Triton model name: one folder name of letters, digits, '_', '-' and "
                            "'.', not starting with '.', at most 200 characters")
    return name


def resolve(path: Path, opts: TritonOptions, name: str | None) -> TritonModel:
    art = open_artifact(path, model=None)  # NoRecord: one line naming the file
    record = art.record
    if record.format is FormatKey.tensorrt_rtx:
        # Runnable advice where the record names the source (its path as given here, not only its name).
        origin = (f": fvdeploy triton {shown(record.source.path)} --repository {shown(opts.repository)}"
                  if record.source else "")
        raise FvdeployError(f"{path.name} is a TensorRT for RTX engine: Triton's TensorRT backend cannot load it (it "
                            f"runs only in TensorRT for RTX); serve the ONNX it was built from{origin}")
    if art.format.triton is None:
        served = ", ".join(f.description for f in FORMATS.values() if f.triton)
        raise FvdeployError(f"{path.name} is a {art.format.description}: Triton serves {served}")
    backend = opts.backend
    if backend is TritonBackend.auto:
        backend = next(b for b, key in SERVES.items() if key is record.format)
    if SERVES[backend] is FormatKey.tensorrt and record.format is not FormatKey.tensorrt:
        raise FvdeployError(f"the tensorrt backend serves .plan engines; {path.name} is ONNX (use build-trt first)")
    if SERVES[backend] is not record.format:
        raise FvdeployError(f"the {backend.value} backend serves ONNX; {path.name} is a {art.format.description}")
    artifact = path
    low, high = record.batch_range
    if low > 1:
        raise FvdeployError(f"{artifact.name} takes batches {low}..{high}, but Triton sends any batch from 1 to "
                            "max_batch_size: re-export with --min-batch 1")
    for size in opts.preferred_batch:
        if not 1 <= size <= high:
            raise FvdeployError(f"--preferred-batch {size} is outside {artifact.name}'s batch range 1..{high}")
    kind = opts.instance_kind
    if kind is InstanceKind.auto:
        kind = InstanceKind.cpu if backend is TritonBackend.python else InstanceKind.gpu
    if backend is TritonBackend.tensorrt and kind is InstanceKind.cpu:
        raise FvdeployError("a TensorRT plan runs on a GPU: --instance-kind cpu is for ONNX")
    if opts.ort_tensorrt and backend is not TritonBackend.onnxruntime:
        raise FvdeployError("--ort-tensorrt is the onnxruntime backend's option (ONNX artifacts)")
    note = None
    if record.target is QuantTarget.onnxruntime_cpu:
        if opts.ort_tensorrt:
            raise FvdeployError(f"--ort-tensorrt: {path.name} was made for onnxruntime's CPU kernels (uint8 "
                                "activations, asymmetric), which TensorRT does not take: serve it on CPUs "
                                "(--instance-kind cpu), or quantize the FP32 ONNX for TensorRT (--target tensorrt)")
        if kind is InstanceKind.gpu:
            note = (f"note: {path.name} was made for onnxruntime's CPU kernels, and is served here on GPU instances, "
                    "where its Q/DQ run through casts (--instance-kind cpu serves it as made)")
    stem = name if name is not None else record.model.stem + (f"_{record.precision}" if record.precision != "fp32" else "")
    return TritonModel(art, check_model_name(stem, name is not None), backend, kind, note)



def served_file(folder: Path) -> Path:
    """The model file of a Triton model folder fvdeploy wrote: the newest version's (the one Triton serves)."""
    names = {f.triton.model_file for f in FORMATS.values() if f.triton}
    versions = sorted((int(v.name), v) for v in Path(folder).iterdir() if v.is_dir() and v.name.isdigit()) \
        if Path(folder).is_dir() else []
    for _, version in reversed(versions):
        found = [version / n for n in sorted(names) if (version / n).is_file()]
        if found:
            return found[0]
    raise FvdeployError(f"{folder} is not a Triton model folder fvdeploy wrote (no VERSION/model.onnx or model.plan)")


def served_record(folder: Path) -> RecordedArtifact:
    """The served file's record, read through its sidecar with the checks every artifact gets (its sha256 among
    them: a model file replaced after `fvdeploy triton` wrote it is refused)."""
    return read_recorded(served_file(folder))


def encode_record(record: ArtifactRecord) -> str:
    return base64.b64encode(record_json(record).encode()).decode("ascii")


def decode_record(text: str, where: str) -> ArtifactRecord:
    """A record from a config's parameter (``where``: the model, for the message)."""
    try:
        data = json.loads(base64.b64decode(text.encode("ascii"), validate=True))
    except (binascii.Error, UnicodeError, ValueError) as err:
        raise FvdeployError(f"{where}: its {RECORD_PARAMETER} parameter is not a record fvdeploy wrote "
                            f"({type(err).__name__})") from err
    return ArtifactRecord.from_dict(data)
