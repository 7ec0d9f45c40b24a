"""Triton's own ModelConfig schema (tritonclient's compiled proto): every config.pbtxt fvdeploy writes is parsed
strictly with it, and compared with the artifact's record."""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

from ..core.dtypes import from_triton
from ..core.options import TritonOptions
from ..system.errors import CheckFailed, MissingDependency
from .model import CONFIG_FILE, RECORD_PARAMETER, TritonModel, decode_record


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
    cfg = parse_config(folder / CONFIG_FILE)
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
    carried = cfg.parameters[RECORD_PARAMETER].string_value if RECORD_PARAMETER in cfg.parameters else ""
    if not carried or decode_record(carried, cfg.name).identity() != rec.identity():
        problems.append(f"its {RECORD_PARAMETER} parameter does not read back as the artifact's record")
    version = folder / str(opts.version) / model.model_file
    if not version.is_file():
        problems.append(f"{version} is missing")
    return problems
