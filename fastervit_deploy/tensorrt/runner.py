"""A TensorRT or TensorRT for RTX engine as a runner (the record names the runtime): deserialized once; per call
the input shape is set, torch CUDA tensors are bound and ``execute_async_v3`` runs on a stream (TensorRT 10 and 11,
TensorRT for RTX 1.x alike)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.dtypes import from_tensorrt, torch_dtype
from ..core.options import RunOptions
from ..core.record import UNKNOWN_BATCH_RANGE, ArtifactRecord
from ..core.runner import Outputs, Runner
from ..system.errors import FvdeployError, MissingDependency
from .runtimes import RUNTIMES, RuntimeKey, missing_to_run


class TensorRTRunner(Runner):
    name = "tensorrt"

    def __init__(self, path: str | Path, record: ArtifactRecord) -> None:
        super().__init__(record.inputs, record.outputs, record.batch_range)
        self.path = Path(path)
        self.runtime_kind = RUNTIMES[RuntimeKey(record.details.get("runtime", RuntimeKey.tensorrt))]
        self.name = self.runtime_kind.key.value
        self.engine = self.context = self.stream = None

    @classmethod
    def open(cls, path: Path, record: ArtifactRecord, opts: RunOptions) -> "TensorRTRunner":
        """The runner the format table opens (``formats.Format.runner``); an engine this machine cannot run is said
        now, in one line, before any reference is built for it."""
        runner = cls(path, record)
        why = missing_to_run(runner.runtime_kind.key)
        if why:
            raise MissingDependency(f"{Path(path).name} is a {runner.runtime_kind.title} engine: {why}")
        return runner

    def activate(self) -> None:
        import torch

        kind = self.runtime_kind
        trt = self.trt = kind.load()
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise FvdeployError(f"{kind.title} {trt.__version__} cannot load {self.path.name} (built by another "
                                "version or for another GPU?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        described = lambda ns: [(n, tuple(self.engine.get_tensor_shape(n))[1:],  # noqa: E731
                                 from_tensorrt(trt, self.engine.get_tensor_dtype(n)).name) for n in ns]
        self.agree(self.path.name, described(inputs), described([n for n in names if n not in inputs]))
        low, _, high = self.engine.get_tensor_profile_shape(inputs[0], 0)
        profile = (int(low[0]), int(high[0]))
        if self.batch_range not in (profile, UNKNOWN_BATCH_RANGE):
            raise FvdeployError(f"{self.path.name}: its profile takes batches {profile[0]}..{profile[1]}, its record "
                                f"says {self.batch_range[0]}..{self.batch_range[1]}")
        self.batch_range = profile
        self.stream = torch.cuda.Stream()

    def deactivate(self) -> None:
        self.context = self.engine = self.runtime = None

    def _infer(self, batch: np.ndarray) -> Outputs:
        import torch

        name = self.input.name
        x = torch.from_numpy(batch).to("cuda", torch_dtype(self.input.dtype))
        self.context.set_input_shape(name, tuple(x.shape))
        self.context.set_tensor_address(name, x.data_ptr())
        outs = {}
        for spec in self.outputs:
            outs[spec.name] = torch.empty(tuple(self.context.get_tensor_shape(spec.name)), device="cuda",
                                          dtype=torch_dtype(spec.dtype))
            self.context.set_tensor_address(spec.name, outs[spec.name].data_ptr())
        self.stream.wait_stream(torch.cuda.current_stream())  # x was copied on the default stream
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise FvdeployError(f"{self.runtime_kind.title} execution failed")
        self.stream.synchronize()
        return {n: t.float().cpu().numpy() for n, t in outs.items()}
