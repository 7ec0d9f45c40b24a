"""The text of each config.pbtxt `fvdeploy triton` writes: the served model, and with --preprocess its preprocessing
model and the ensemble of the two. Everything comes from the artifact's record."""

from __future__ import annotations

import json

from ..core.dtypes import by_name
from ..core.options import TritonBackend, TritonOptions
from ..formats import FORMATS
from .model import IMAGE_BYTES, RECORD_PARAMETER, TritonModel, encode_record


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
    lines.append(_record_parameter(model))
    return "\n".join(lines) + "\n"


def _record_parameter(model: TritonModel) -> str:
    """The served file's record, which a client reads back with `get_model_config` (``served.ServedModel``)."""
    return f'parameters {{ key: "{RECORD_PARAMETER}" value {{ string_value: "{encode_record(model.served)}" }} }}'


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
{_record_parameter(model)}
'''


def preprocess_config_text(model: TritonModel, opts: TritonOptions) -> str:
    pre = model.record.model.preprocessing
    params = {"resolution": list(model.record.model.resolution), **pre.to_dict()}
    return (f'name: "{model.name}_preprocess"\nbackend: "python"\nmax_batch_size: {model.max_batch}\n'
            f'input [ {{ name: "{IMAGE_BYTES}" data_type: TYPE_STRING dims: [ 1 ] }} ]\n'
            f'output [\n{_tensor(model.record.input)}\n]\n'
            f"instance_group [ {{ kind: KIND_CPU count: {opts.instances} }} ]\n"
            f"parameters {{ key: \"preprocessing\" value {{ string_value: {json.dumps(json.dumps(params))} }} }}\n")
