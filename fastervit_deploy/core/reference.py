"""The PyTorch reference: the eager model as a runner (what every artifact is compared with)."""

from __future__ import annotations

import numpy as np
import torch

from .runner import Outputs, Runner
from .tensors import TensorSpec


class TorchRunner(Runner):
    name = "pytorch"

    def __init__(self, model: torch.nn.Module, input: TensorSpec, outputs: tuple[TensorSpec, ...],
                 threads: int | None = None) -> None:
        super().__init__((input,), outputs)
        self.model, self.threads = model.eval(), threads
        self._saved_threads: int | None = None

    def activate(self) -> None:
        if self.threads:  # torch's thread count is process-wide: set while active, restored after
            self._saved_threads = torch.get_num_threads()
            torch.set_num_threads(self.threads)

    def deactivate(self) -> None:
        if self._saved_threads is not None:
            torch.set_num_threads(self._saved_threads)
            self._saved_threads = None

    @torch.no_grad()
    def _infer(self, batch: np.ndarray) -> Outputs:
        out = self.model(torch.from_numpy(batch))
        tensors = out if isinstance(out, (list, tuple)) else [out]
        return {spec.name: t.numpy() for spec, t in zip(self.outputs, tensors)}
