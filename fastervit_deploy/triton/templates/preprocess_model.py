"""Triton Python-backend model written by `fvdeploy triton --preprocess`: encoded JPEG/PNG bytes in, the network's
input out, with the model's own evaluation preprocessing. The functions are fvdeploy's own
(``fastervit_deploy/data/pixels.py``, copied beside this file as ``fvdeploy_pixels.py``): the server has no fvdeploy.

The input and output names come from this model's config.pbtxt; the preprocessing settings from its
``preprocessing`` parameter. FVDEPLOY_PYTHONPATH (set by fvdeploy's local server) adds the folders that hold numpy
and pillow; in NVIDIA's container, pip-install them.
"""

import io
import json
import os
import site
import sys
from types import SimpleNamespace

for _folder in os.environ.get("FVDEPLOY_PYTHONPATH", "").split(os.pathsep):
    if _folder:
        site.addsitedir(_folder)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402 - after the path set-up above
import triton_python_backend_utils as pb_utils  # noqa: E402
from fvdeploy_pixels import preprocess, to_rgb  # noqa: E402
from PIL import Image  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = json.loads(config["parameters"]["preprocessing"]["string_value"])
        self.size = params.pop("resolution")
        self.pre = SimpleNamespace(**params)
        self.bytes_name, self.input_name = config["input"][0]["name"], config["output"][0]["name"]

    def execute(self, requests):
        responses = []
        for request in requests:
            encoded = pb_utils.get_input_tensor_by_name(request, self.bytes_name).as_numpy().reshape(-1)
            try:
                images = [to_rgb(Image.open(io.BytesIO(bytes(b)))) for b in encoded]
            except Exception as err:  # noqa: BLE001 - the client's bytes: an error for this request, not a traceback
                message = f"{self.bytes_name} holds bytes that are not a JPEG/PNG image ({type(err).__name__})"
                invalid = getattr(pb_utils.TritonError, "INVALID_ARG", None)  # HTTP 400 where the backend has it
                error = pb_utils.TritonError(message, invalid) if invalid is not None else pb_utils.TritonError(message)
                responses.append(pb_utils.InferenceResponse(error=error))
                continue
            batch = np.stack([preprocess(img, self.size, self.pre) for img in images])
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(self.input_name, batch)]))
        return responses
