"""Runners (Polygraphy's loader/runner idea): activate once, then ``infer`` many times.

A runner is made from the artifact's record: its input and outputs (names, shapes, element types,
kinds) and its batch range. On activation it compares what the runtime loaded with the record and
refuses a file that disagrees. ``infer`` takes a normalised float32 NCHW batch, refuses to run before
activation, checks the batch against the record, and returns ``{output name: array}``.
"""

from __future__ import annotations

import abc
from typing import Iterable, Sequence

import numpy as np

from ..system.errors import FvdeployError
from .model_spec import CLASSIFIER_OUTPUT
from .tensors import TensorKind, TensorSpec

Outputs = dict[str, np.ndarray]


class Runner(abc.ABC):
    name = "runner"
    # A runner that is sent encoded images (JPEG, PNG) and preprocesses them itself, through ``infer_encoded``: a
    # served ensemble. ``infer`` takes the network's input.
    takes_encoded = False

    def __init__(self, inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...],
                 batch_range: tuple[int, int] | None = None) -> None:
        self.active = False
        self.input, self.outputs, self.batch_range = inputs[0], tuple(outputs), batch_range

    def __enter__(self) -> "Runner":
        self.activate()
        self.active = True
        return self

    def __exit__(self, *exc) -> None:
        self.active = False
        self.deactivate()

    def activate(self) -> None:  # noqa: B027 - optional hook
        pass

    def deactivate(self) -> None:  # noqa: B027 - optional hook
        pass

    def infer(self, batch: np.ndarray) -> Outputs:
        if not self.active:
            raise FvdeployError(f"{self.name} runner: infer() called before activation (use it in a `with` block)")
        check_batch(batch, self.input, self.batch_range, self.name)
        return self._infer(batch)

    @abc.abstractmethod
    def _infer(self, batch: np.ndarray) -> Outputs: ...

    def infer_encoded(self, images: Sequence[bytes]) -> Outputs:
        raise FvdeployError(f"{self.name} runner takes the network's input, not encoded images")

    def agree(self, what: str, inputs: Iterable[tuple[str, tuple, str]], outputs: Iterable[tuple[str, tuple, str]]) -> None:
        """Refuse a loaded artifact whose tensors (name, shape without batch, dtype) differ from the record's."""
        for kind, found, expected in (("input", list(inputs), [self.input]), ("outputs", list(outputs), self.outputs)):
            want = [(t.name, tuple(t.shape), t.dtype) for t in expected]
            got = [(n, tuple(s), d) for n, s, d in found]
            if got != want:
                raise FvdeployError(f"{what}: its {kind} {_show(got)} differ from its record's {_show(want)}")


def _show(tensors: list[tuple[str, tuple, str]]) -> str:
    return ", ".join(f"{n} [N, {', '.join(map(str, s))}] {d}" for n, s, d in tensors)


def check_batch(batch: np.ndarray, spec: TensorSpec, batch_range: tuple[int, int] | None, who: str) -> None:
    if not isinstance(batch, np.ndarray) or batch.dtype != np.float32:
        raise FvdeployError(f"{who}: input must be a float32 array, got {getattr(batch, 'dtype', type(batch).__name__)}")
    if batch.ndim != len(spec.shape) + 1 or tuple(batch.shape[1:]) != tuple(spec.shape):
        raise FvdeployError(f"{who}: {spec.name} takes [N, {', '.join(map(str, spec.shape))}], got {list(batch.shape)}")
    if batch_range is not None and not batch_range[0] <= len(batch) <= batch_range[1]:
        raise FvdeployError(f"{who}: batch {len(batch)} is outside the artifact's batch range "
                            f"{batch_range[0]}..{batch_range[1]}")


def softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def in_output_space(reference: Outputs, outputs: tuple[TensorSpec, ...]) -> Outputs:
    """Reference outputs (logits, maps) as the candidate gives them (a Core ML classifier returns probabilities)."""
    return {spec.name: softmax(reference[CLASSIFIER_OUTPUT]).astype(np.float32)
            if spec.kind is TensorKind.probabilities else reference[spec.name] for spec in outputs}
