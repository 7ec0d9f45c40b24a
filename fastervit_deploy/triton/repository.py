"""A Triton Inference Server model repository from fvdeploy artifacts, checked with Triton's own schema.

Everything comes from the artifact's record: tensor names, shapes and types, the batch range (Triton's
``max_batch_size``; Triton sends any batch from 1 up to it), precision, preprocessing and labels.

Layout written (``--preprocess`` adds the last two)::

    DIR/README.md                      what was written, and the TensorRT version/GPU a plan needs
    DIR/NAME/config.pbtxt
    DIR/NAME/labels.txt                classifiers: Triton's classification extension returns names
    DIR/NAME/fvdeploy.json             the artifact's record
    DIR/NAME/VERSION/model.plan | model.onnx (+ its .data) | model.py + model.onnx (python backend)
    DIR/NAME_preprocess/...            Python model: encoded JPEG/PNG bytes -> the network's input
    DIR/NAME_ensemble/config.pbtxt     bytes in, the network's outputs out
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..artifact import Artifact, open_artifact
from ..core.dtypes import by_name, from_triton
from ..core.options import InstanceKind, TritonBackend, TritonOptions
from ..core.record import TRITON_RECORD, ArtifactRecord, FormatKey, files_read
from ..core.tensors import class_output
from ..data import images
from ..formats import FORMATS
from ..system.errors import CheckFailed, FvdeployError, MissingDependency
from ..system.files import check_output, scratch_folder

# Triton's own backends, and the format each serves (the platform and file name come from FORMATS).
SERVES = {TritonBackend.tensorrt: FormatKey.tensorrt, TritonBackend.onnxruntime: FormatKey.onnx,
          TritonBackend.python: FormatKey.onnx}
PYTHON_MODEL = "model.py"  # the python backend's model, beside the ONNX it runs
IMAGE_BYTES = "image_bytes"
README_MARK = "<!-- fvdeploy model: {} -->"


@dataclass(frozen=True)
class TritonModel:
    """One artifact's place in the repository, fully resolved before anything is written."""

    artifact: Artifact
    name: str
    backend: TritonBackend
    kind: InstanceKind

    @property
    def record(self) -> ArtifactRecord:
        return self.artifact.record

    @property
    def max_batch(self) -> int:
        return self.record.batch_range[1]

    @property
    def classifier(self) -> bool:
        return class_output(self.record.outputs) is not None

    @property
    def model_file(self) -> str:
        return PYTHON_MODEL if self.backend is TritonBackend.python else FORMATS[self.record.format].triton.model_file


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
    stem = name if name is not None else record.model.stem + (f"_{record.precision}" if record.precision != "fp32" else "")
    return TritonModel(art, check_model_name(stem, name is not None), backend, kind)


def check_repository(opts: TritonOptions, models: list[TritonModel]) -> None:
    """Refuse what would clobber or cannot be written, before anything is copied."""
    repo = opts.repository
    if repo.exists() and not repo.is_dir():
        raise FvdeployError(f"--repository {repo} is a file, not a folder")
    names = [m.name for m in models] + [f"{m.name}_{suffix}" for m in models if opts.preprocess
                                        for suffix in ("preprocess", "ensemble")]
    if len(set(names)) != len(names):
        raise FvdeployError(f"two artifacts would share the model name {names[0]!r}: pass one --name per artifact")
    for name in names:
        folder = repo / name
        if folder.exists() and not opts.overwrite:
            raise FvdeployError(f"{folder} exists (pass --overwrite to replace that model)")
        if folder.exists() and not (folder / "config.pbtxt").is_file():
            raise FvdeployError(f"{folder} is not a Triton model folder: fvdeploy will not replace it")
        for model in models:  # --overwrite replaces the folder: never one an input lives in
            if folder.is_dir() and any(f.resolve().is_relative_to(folder.resolve()) for f in files_read(model.artifact.path)):
                raise FvdeployError(f"{model.artifact.path} is inside {folder}, which this command would replace: "
                                    "copy it out first, or choose another --name")
    check_output(repo / "README.md", True, ".md")  # the folder (or its nearest parent) is writable


# ---- config.pbtxt ------------------------------------------------------------------------------------------------

def _tensor(spec, label_file: bool = False) -> str:
    extra = ' label_filename: "labels.txt"' if label_file else ""
    return (f'  {{ name: "{spec.name}" data_type: {by_name(spec.dtype).triton} '
            f'dims: [ {", ".join(map(str, spec.shape))} ]{extra} }}')


def _outputs(model: TritonModel) -> str:
    """The output list; a classifier's first output names its classes (Triton's classification extension)."""
    return ",\n".join(_tensor(t, model.classifier and i == 0) for i, t in enumerate(model.record.outputs))


def _batching(model: TritonModel, opts: TritonOptions) -> str:
    preferred = opts.preferred_batch or tuple(n for n in (4, 8, 16, 32) if n <= model.max_batch)
    sizes = f"\n  preferred_batch_size: [ {', '.join(map(str, preferred))} ]" if preferred else ""
    return f"dynamic_batching {{{sizes}\n  max_queue_delay_microseconds: {opts.max_queue_delay_us}\n}}\n"


def config_text(model: TritonModel, opts: TritonOptions) -> str:
    rec = model.record
    lines = [f'name: "{model.name}"']
    if model.backend is TritonBackend.python:
        lines.append('backend: "python"')
    else:
        lines.append(f'platform: "{FORMATS[rec.format].triton.platform}"')
    lines.append(f"max_batch_size: {model.max_batch}")
    lines.append("input [\n" + ",\n".join(_tensor(t) for t in rec.inputs) + "\n]")
    lines.append("output [\n" + _outputs(model) + "\n]")
    lines.append(_batching(model, opts).rstrip())
    lines.append(f"instance_group [ {{ kind: KIND_{model.kind.name.upper()} count: {opts.instances} }} ]")
    if model.backend is TritonBackend.onnxruntime and opts.ort_tensorrt:
        # onnxruntime's TensorRT execution provider inside Triton, FP16 where the graph allows, engines cached.
        lines.append('optimization { execution_accelerators { gpu_execution_accelerator: [ { name: "tensorrt"\n'
                     '  parameters { key: "precision_mode" value: "FP16" }\n'
                     '  parameters { key: "trt_engine_cache_enable" value: "true" }\n'
                     '  parameters { key: "trt_engine_cache_path" value: "/tmp/fvdeploy_trt_cache" } } ] } }')
    lines.append(f'parameters {{ key: "fvdeploy.precision" value {{ string_value: "{rec.precision}" }} }}')
    return "\n".join(lines) + "\n"


def ensemble_text(model: TritonModel) -> str:
    rec = model.record
    out_map = "\n".join(f'      output_map {{ key: "{t.name}" value: "{t.name}" }}' for t in rec.outputs)
    return f'''name: "{model.name}_ensemble"
platform: "ensemble"
max_batch_size: {model.max_batch}
input [ {{ name: "{IMAGE_BYTES}" data_type: TYPE_STRING dims: [ 1 ] }} ]
output [
{_outputs(model)}
]
ensemble_scheduling {{
  step [
    {{
      model_name: "{model.name}_preprocess"
      model_version: -1
      input_map {{ key: "{IMAGE_BYTES}" value: "{IMAGE_BYTES}" }}
      output_map {{ key: "{rec.input.name}" value: "preprocessed" }}
    }},
    {{
      model_name: "{model.name}"
      model_version: -1
      input_map {{ key: "{rec.input.name}" value: "preprocessed" }}
{out_map}
    }}
  ]
}}
'''


def preprocess_config_text(model: TritonModel, opts: TritonOptions) -> str:
    pre = model.record.model.preprocessing
    params = {"resolution": list(model.record.model.resolution), **pre.to_dict()}
    return (f'name: "{model.name}_preprocess"\nbackend: "python"\nmax_batch_size: {model.max_batch}\n'
            f'input [ {{ name: "{IMAGE_BYTES}" data_type: TYPE_STRING dims: [ 1 ] }} ]\n'
            f'output [\n{_tensor(model.record.input)}\n]\n'
            f"instance_group [ {{ kind: KIND_CPU count: {opts.instances} }} ]\n"
            f"parameters {{ key: \"preprocessing\" value {{ string_value: {json.dumps(json.dumps(params))} }} }}\n")


# ---- Python-backend models ----------------------------------------------------------------------------------------

# Triton's Python backend runs model.py in the server's own Python. FVDEPLOY_PYTHONPATH (set by fvdeploy's local
# server) adds the folders that hold numpy/onnxruntime/pillow there; in NVIDIA's container pip-install them.
_PATH_SETUP = '''import os
import site

for _folder in os.environ.get("FVDEPLOY_PYTHONPATH", "").split(os.pathsep):
    if _folder:
        site.addsitedir(_folder)
'''

ONNX_MODEL_PY = _PATH_SETUP + '''
import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """The ONNX graph on onnxruntime (CPU): requests Triton batched together run as one batch."""

    def initialize(self, args):
        here = os.path.dirname(os.path.abspath(__file__))
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(os.environ.get("FVDEPLOY_ORT_THREADS", "0"))
        self.session = ort.InferenceSession(os.path.join(here, "model.onnx"), options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.outputs = [o.name for o in self.session.get_outputs()]

    def execute(self, requests):
        batches = [pb_utils.get_input_tensor_by_name(r, self.input).as_numpy() for r in requests]
        results = self.session.run(self.outputs, {self.input: np.concatenate(batches)})
        responses, start = [], 0
        for batch in batches:
            stop = start + len(batch)
            responses.append(pb_utils.InferenceResponse(
                [pb_utils.Tensor(name, np.ascontiguousarray(value[start:stop])) for name, value in zip(self.outputs, results)]))
            start = stop
        return responses
'''

PREPROCESS_MODEL_PY = "from __future__ import annotations  # fvdeploy's functions below are annotated\n\n" + _PATH_SETUP + '''
import io
import json
import math

import numpy as np
import triton_python_backend_utils as pb_utils
from PIL import Image


class _Preprocessing:
    def __init__(self, d):
        self.__dict__.update(d)


_INTERPOLATION = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
                  "nearest": Image.Resampling.NEAREST}
_WIDE_MODES = %(wide_modes)r


%(to_rgb)s

%(preprocess)s

class TritonPythonModel:
    """Encoded JPEG/PNG bytes -> the network's input, with the model's own eval preprocessing (fvdeploy's)."""

    def initialize(self, args):
        params = json.loads(json.loads(args["model_config"])["parameters"]["preprocessing"]["string_value"])
        self.size = params.pop("resolution")
        self.pre = _Preprocessing(params)

    def execute(self, requests):
        responses = []
        for request in requests:
            encoded = pb_utils.get_input_tensor_by_name(request, "%(bytes)s").as_numpy().reshape(-1)
            batch = np.stack([preprocess(to_rgb(Image.open(io.BytesIO(bytes(b)))), self.size, self.pre) for b in encoded])
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("%(input)s", batch)]))
        return responses
'''


def preprocess_model_py(model: TritonModel) -> str:
    """The Python model's source, carrying fvdeploy's own preprocessing functions (the server has no fvdeploy)."""
    return PREPROCESS_MODEL_PY % {"wide_modes": images._WIDE_MODES, "to_rgb": inspect.getsource(images.to_rgb),
                                  "preprocess": inspect.getsource(images.preprocess), "bytes": IMAGE_BYTES,
                                  "input": model.record.input.name}


# ---- validation with Triton's schema -----------------------------------------------------------------------------

@functools.cache
def model_config_proto():
    """tritonclient's compiled ``model_config.proto`` (loaded once, from its file: its package imports grpc)."""
    spec = importlib.util.find_spec("tritonclient")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependency("tritonclient is not installed (pip install tritonclient[http]): it validates config.pbtxt")
    path = Path(next(iter(spec.submodule_search_locations))) / "grpc" / "model_config_pb2.py"
    module_spec = importlib.util.spec_from_file_location("fvdeploy_triton_model_config_pb2", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def parse_config(path: Path):
    """Parse strictly (unknown fields and bad values raise) with Triton's ModelConfig message."""
    from google.protobuf import text_format

    pb = model_config_proto()
    try:
        return text_format.Parse(path.read_text(), pb.ModelConfig())
    except text_format.ParseError as err:
        raise CheckFailed(f"{path}: not a valid Triton model configuration: {err}") from err


def check_model(folder: Path, model: TritonModel, opts: TritonOptions) -> list[str]:
    """Re-read the written config.pbtxt and compare it with the artifact's record; returns the problems."""
    pb = model_config_proto()
    cfg = parse_config(folder / "config.pbtxt")
    rec, problems = model.record, []
    if cfg.name != model.name:
        problems.append(f"name {cfg.name!r} is not the folder's {model.name!r}")
    if cfg.max_batch_size != rec.batch_range[1]:
        problems.append(f"max_batch_size {cfg.max_batch_size} != the artifact's {rec.batch_range[1]}")
    for kind, written, expected in (("input", cfg.input, rec.inputs), ("output", cfg.output, rec.outputs)):
        got = [(t.name, tuple(t.dims), from_triton(pb.DataType.Name(t.data_type)).name) for t in written]
        want = [(t.name, tuple(t.shape), t.dtype) for t in expected]
        if got != want:
            problems.append(f"{kind}s {got} differ from the artifact's {want}")
    if any(not 1 <= n <= cfg.max_batch_size for n in cfg.dynamic_batching.preferred_batch_size):
        problems.append(f"preferred batch sizes {list(cfg.dynamic_batching.preferred_batch_size)} are outside 1..{cfg.max_batch_size}")
    label = cfg.output[0].label_filename if cfg.output else ""
    if label and len((folder / label).read_text().splitlines()) != rec.outputs[0].shape[0]:
        problems.append(f"{label} does not have one line per class")
    version = folder / str(opts.version) / model.model_file
    if not version.is_file():
        problems.append(f"{version} is missing")
    return problems


# ---- writing -----------------------------------------------------------------------------------------------------

def _copy_model_file(model: TritonModel, target: Path) -> None:
    """The artifact as model.onnx/model.plan; an ONNX's external data keeps the file name the graph refers to."""
    source = model.artifact.path
    shutil.copyfile(source, target)
    for name in list(model.record.files)[1:]:
        shutil.copyfile(source.with_name(name), target.parent / name)


def write_model(root: Path, model: TritonModel, opts: TritonOptions) -> None:
    folder = root / model.name
    version = folder / str(opts.version)
    version.mkdir(parents=True)
    (folder / "config.pbtxt").write_text(config_text(model, opts))
    if model.backend is TritonBackend.python:
        (version / PYTHON_MODEL).write_text(ONNX_MODEL_PY)
        _copy_model_file(model, version / FORMATS[FormatKey.onnx].triton.model_file)
    else:
        _copy_model_file(model, version / model.model_file)
    if model.classifier:
        (folder / "labels.txt").write_text("\n".join(model.record.model.labels()) + "\n")
    (folder / TRITON_RECORD).write_text(json.dumps(model.record.to_dict(), indent=2, default=str) + "\n")
    if opts.preprocess:
        pre = root / f"{model.name}_preprocess"
        (pre / "1").mkdir(parents=True)
        (pre / "config.pbtxt").write_text(preprocess_config_text(model, opts))
        (pre / "1" / "model.py").write_text(preprocess_model_py(model))
        ens = root / f"{model.name}_ensemble"
        (ens / "1").mkdir(parents=True)  # Triton wants a version folder, empty for an ensemble
        (ens / "config.pbtxt").write_text(ensemble_text(model))
        if model.classifier:  # the ensemble's own output names its classes too
            shutil.copyfile(folder / "labels.txt", ens / "labels.txt")


README_TITLE = "# Triton model repository written by fvdeploy"


def model_section(m: TritonModel, opts: TritonOptions) -> str:
    rec = m.record
    lines = [README_MARK.format(m.name), f"## {m.name}",
             f"- artifact: {m.artifact.path.name} ({rec.format}, {rec.precision}), model {rec.model.name} "
             f"{rec.model.resolution[0]}x{rec.model.resolution[1]}, batch 1..{m.max_batch}",
             f"- backend: {m.backend.value}, instances: {opts.instances} x {m.kind.name.upper()}",
             f"- inputs: {', '.join(t.describe() for t in rec.inputs)}",
             f"- outputs: {', '.join(t.describe() for t in rec.outputs)}"]
    if rec.format is FormatKey.tensorrt:
        lines.append(f"- **needs TensorRT {rec.details.get('tensorrt')}** (the serving container's TensorRT must "
                     f"match, unless built version-compatible: {rec.details.get('version_compatible')}); "
                     f"built on {rec.details.get('gpu')}")
    if opts.preprocess:
        lines.append(f"- `{m.name}_ensemble` takes encoded JPEG/PNG bytes ({IMAGE_BYTES}, TYPE_STRING)")
    return "\n".join(lines) + "\n"


def readme_sections(text: str) -> dict[str, str]:
    """A repository README's model sections by name, in order (what earlier fvdeploy runs wrote)."""
    start, sections = README_MARK.split("{}")
    out: dict[str, str] = {}
    parts = text.split(start)
    for part in parts[1:]:
        name, _, rest = part.partition(sections)
        out[name] = start + name + sections + rest.rstrip("\n") + "\n"
    return out


def readme_text(existing: str, models: list[TritonModel], opts: TritonOptions) -> str:
    """The repository's README: one section per model, the ones written now replaced, the others kept."""
    sections = readme_sections(existing)
    for m in models:
        sections[m.name] = model_section(m, opts)
    return README_TITLE + "\n\n" + "\n".join(sections.values())


def write_repository(opts: TritonOptions, models: list[TritonModel]) -> list[str]:
    """Write every model into a temporary folder beside the repository, check it, then move it in."""
    repo = opts.repository
    created = not repo.exists()
    repo.mkdir(parents=True, exist_ok=True)
    try:
        return _fill(repo, opts, models)
    except BaseException:
        if created:
            shutil.rmtree(repo, ignore_errors=True)  # made by this command, and nothing was moved in
        raise


def _fill(repo: Path, opts: TritonOptions, models: list[TritonModel]) -> list[str]:
    with scratch_folder(repo, prefix=".fvdeploy-") as work:
        for model in models:
            write_model(work, model, opts)
            problems = check_model(work / model.name, model, opts)  # parses the config, then compares
            if problems:
                raise CheckFailed(f"{model.name}/config.pbtxt: " + "; ".join(problems))
        checked = {model.name for model in models}
        for folder in sorted(work.iterdir()):
            if folder.is_dir() and folder.name not in checked:
                parse_config(folder / "config.pbtxt")  # the preprocess and ensemble configs
        readme = repo / "README.md"
        (work / "README.md").write_text(readme_text(readme.read_text() if readme.is_file() else "", models, opts))
        written = []
        for item in sorted(work.iterdir()):
            dest = repo / item.name
            if item.is_dir() and dest.is_dir():  # --overwrite: a model folder this command wrote before
                shutil.rmtree(dest)
            os.replace(item, dest)
            written.append(item.name)
        return written


def write(paths: list[Path], opts: TritonOptions) -> tuple[list[TritonModel], list[str]]:
    """Resolve every artifact (one --name each, if names are given), check the repository, write it."""
    names = list(opts.name)
    if names and len(names) != len(paths):
        raise FvdeployError(f"give one --name per artifact ({len(paths)} artifacts, {len(names)} names)")
    models = [resolve(path, opts, names[i] if names else None) for i, path in enumerate(paths)]
    check_repository(opts, models)
    return models, write_repository(opts, models)
