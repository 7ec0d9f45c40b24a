"""Backends as loader/runner pairs: each runner maps an NCHW float32 batch to logits (numpy)."""

from __future__ import annotations

import abc
from pathlib import Path

import numpy as np
import torch

from .errors import FvdeployError
from .onnx_metadata import onnx_precision


class Runner(abc.ABC):
    """Activate once (load the artifact), then ``infer`` many times."""

    name = "runner"
    precision = "fp32"
    outputs = "logits"  # or "probabilities" (a Core ML classifier)

    def __enter__(self) -> "Runner":
        self.activate()
        return self

    def __exit__(self, *exc) -> None:
        self.deactivate()

    def activate(self) -> None:  # noqa: B027 - optional hook
        pass

    def deactivate(self) -> None:  # noqa: B027 - optional hook
        pass

    @abc.abstractmethod
    def infer(self, batch: np.ndarray) -> np.ndarray: ...


class TorchRunner(Runner):
    name = "pytorch"

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model.eval()

    @torch.no_grad()
    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self.model(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))).numpy()


class OnnxRuntimeRunner(Runner):
    name = "onnxruntime"

    def __init__(self, path: str | Path, providers: tuple[str, ...] = ("CPUExecutionProvider",),
                 threads: int | None = None) -> None:
        self.path, self.providers, self.threads = Path(path), providers, threads
        self.session = None

    def activate(self) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if self.threads:
            opts.intra_op_num_threads = self.threads
        try:
            self.session = ort.InferenceSession(str(self.path), opts, providers=list(self.providers))
        except Exception as err:  # noqa: BLE001 - ORT raises its own exception types
            raise FvdeployError(f"onnxruntime cannot load {self.path.name}: {str(err).splitlines()[0]}") from None
        self.input_name = self.session.get_inputs()[0].name
        self.precision = onnx_precision(self.path)

    def deactivate(self) -> None:
        self.session = None

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)})[0]


def reference_fn(model: torch.nn.Module, outputs: str = "logits"):
    """PyTorch reference in the artifact's output space (a classifier package returns probabilities)."""
    run = TorchRunner(model).infer
    if outputs != "probabilities":
        return run
    return lambda batch: torch.from_numpy(run(batch)).softmax(-1).numpy()
