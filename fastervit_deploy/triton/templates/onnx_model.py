"""Triton Python-backend model written by `fvdeploy triton --backend python`: the ONNX graph beside it, on
onnxruntime (CPU). Requests that Triton batched together run as one batch.

Triton's Python backend runs this file in the server's own Python. FVDEPLOY_PYTHONPATH (set by fvdeploy's local
server) adds the folders that hold numpy and onnxruntime there; in NVIDIA's container, pip-install them.
"""

import json
import os
import site

for _folder in os.environ.get("FVDEPLOY_PYTHONPATH", "").split(os.pathsep):
    if _folder:
        site.addsitedir(_folder)

import numpy as np  # noqa: E402 - after the path set-up above
import onnxruntime as ort  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        here = os.path.dirname(os.path.abspath(__file__))
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(os.environ.get("FVDEPLOY_ORT_THREADS", "0"))
        parameters = json.loads(args["model_config"]).get("parameters", {})
        if parameters.get("fvdeploy.precision", {}).get("string_value") == "fp8":
            # FP8 Q/DQ on onnxruntime's CPU: its QDQ fusions take float8 for int8; the basic level runs the FP8
            # Quantize/DequantizeLinear kernels (fastervit_deploy/onnx/runner.py says the same)
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
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
