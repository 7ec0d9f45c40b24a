"""Running TensorRT engines with torch CUDA tensors as buffers (no pycuda), for verify and benchmark."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import FvdeployError
from .runners import Runner
from .trt_support import import_tensorrt


def _torch_dtype(trt, dtype):
    import torch

    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int8: torch.int8, trt.int32: torch.int32,
             trt.bool: torch.bool}
    if hasattr(trt, "bfloat16"):
        table[trt.bfloat16] = torch.bfloat16
    if hasattr(trt, "int64"):
        table[trt.int64] = torch.int64
    return table[dtype]


class TensorRTRunner(Runner):
    """Deserialize once; per call: set the input shape, bind tensor addresses, execute_async_v3 on a stream."""

    name = "tensorrt"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.engine = self.context = self.stream = None

    def activate(self) -> None:
        import torch

        trt = import_tensorrt()
        self.trt = trt
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise FvdeployError(f"TensorRT {trt.__version__} cannot load {self.path.name} (built by another version or GPU?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(self.inputs) != 1 or len(self.outputs) != 1:
            raise FvdeployError(f"{self.path.name}: expected one input and one output, got {self.inputs} / {self.outputs}")
        self.min_shape, _, self.max_shape = self.engine.get_tensor_profile_shape(self.inputs[0], 0)
        self.stream = torch.cuda.Stream()
        from .verify import read_sidecar

        self.precision = read_sidecar(self.path).get("precision", "fp32")

    def deactivate(self) -> None:
        self.context = self.engine = self.runtime = None

    def infer(self, batch: np.ndarray) -> np.ndarray:
        import torch

        n = batch.shape[0]
        if not self.min_shape[0] <= n <= self.max_shape[0]:
            raise FvdeployError(f"batch {n} is outside the engine's profile {self.min_shape[0]}..{self.max_shape[0]}")
        inp, out = self.inputs[0], self.outputs[0]
        x = torch.from_numpy(np.ascontiguousarray(batch)).to("cuda", _torch_dtype(self.trt, self.engine.get_tensor_dtype(inp)))
        self.context.set_input_shape(inp, tuple(x.shape))
        y = torch.empty(tuple(self.context.get_tensor_shape(out)), device="cuda",
                        dtype=_torch_dtype(self.trt, self.engine.get_tensor_dtype(out)))
        self.context.set_tensor_address(inp, x.data_ptr())
        self.context.set_tensor_address(out, y.data_ptr())
        self.stream.wait_stream(torch.cuda.current_stream())  # x was copied on the default stream
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise FvdeployError("TensorRT execution failed")
        self.stream.synchronize()
        return y.float().cpu().numpy()
