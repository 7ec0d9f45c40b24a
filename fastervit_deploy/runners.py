"""Runners (Polygraphy's loader/runner idea): activate once, then ``infer`` many times.

Every runner takes a normalised float32 NCHW batch and returns ``{output name: array}``. ``infer``
refuses to run before activation and checks the batch against what the artifact accepts (shape, dtype,
batch range), so a mismatch is one clear line instead of an error deep inside a runtime.
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from .errors import FvdeployError, MissingDependency
from .model_spec import TensorSpec
from .optional import coreml_predict_missing, import_coremltools, import_tensorrt
from .options import Provider

Outputs = dict[str, np.ndarray]


class Runner(abc.ABC):
    name = "runner"

    def __init__(self) -> None:
        self.active = False
        self.input: TensorSpec | None = None  # known once activated
        self.outputs: tuple[TensorSpec, ...] = ()
        self.batch_range: tuple[int, int] | None = None

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


def check_batch(batch: np.ndarray, spec: TensorSpec, batch_range: tuple[int, int] | None, who: str) -> None:
    if not isinstance(batch, np.ndarray) or batch.dtype != np.float32:
        raise FvdeployError(f"{who}: input must be a float32 array, got {getattr(batch, 'dtype', type(batch).__name__)}")
    if batch.ndim != len(spec.shape) + 1 or tuple(batch.shape[1:]) != tuple(spec.shape):
        raise FvdeployError(f"{who}: {spec.name} takes [N, {', '.join(map(str, spec.shape))}], got {list(batch.shape)}")
    if batch_range is not None and not batch_range[0] <= len(batch) <= batch_range[1]:
        raise FvdeployError(f"{who}: batch {len(batch)} is outside the artifact's batch range "
                            f"{batch_range[0]}..{batch_range[1]}")


class TorchRunner(Runner):
    name = "pytorch"

    def __init__(self, model: torch.nn.Module, input: TensorSpec, outputs: tuple[TensorSpec, ...],
                 threads: int | None = None) -> None:
        super().__init__()
        self.model, self.input, self.outputs, self.threads = model.eval(), input, outputs, threads
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


ORT_PROVIDERS = {
    Provider.cpu: ("CPUExecutionProvider",),
    Provider.cuda: ("CUDAExecutionProvider", "CPUExecutionProvider"),
    Provider.tensorrt: ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
}
_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64"}


def ort_providers(provider: Provider) -> list[str]:
    """The providers to ask onnxruntime for, or one line saying why this onnxruntime cannot."""
    import onnxruntime as ort

    wanted = ORT_PROVIDERS[Provider(provider)]
    if wanted[0] not in ort.get_available_providers():
        raise MissingDependency(
            f"--provider {Provider(provider).value} needs {wanted[0]}, which this onnxruntime does not have "
            f"(it has {', '.join(ort.get_available_providers())}); install onnxruntime-gpu on a CUDA machine")
    return list(wanted)


class OnnxRuntimeRunner(Runner):
    name = "onnxruntime"

    def __init__(self, path: str | Path, provider: Provider = Provider.cpu, threads: int | None = None,
                 kinds: Mapping[str, str] | None = None, batch_range: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.path, self.provider, self.threads = Path(path), Provider(provider), threads
        self.kinds, self.batch_range = dict(kinds or {}), batch_range
        self.session = None
        if self.provider is not Provider.cpu:
            self.name = f"onnxruntime-{self.provider.value}"

    def activate(self) -> None:
        import onnxruntime as ort

        providers = ort_providers(self.provider)
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if self.threads:
            opts.intra_op_num_threads = self.threads
        try:
            self.session = ort.InferenceSession(str(self.path), opts, providers=providers)
        except Exception as err:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise FvdeployError(f"onnxruntime cannot load {self.path.name}: {str(err).splitlines()[0]}") from None
        if self.session.get_providers()[0] != providers[0]:  # onnxruntime falls back silently
            raise MissingDependency(f"onnxruntime could not start {providers[0]} here (missing CUDA libraries?)")
        (inp,) = self.session.get_inputs()
        self.input = TensorSpec(inp.name, tuple(inp.shape[1:]), "image", _ORT_TYPES.get(inp.type, inp.type))
        self.outputs = tuple(TensorSpec(o.name, tuple(o.shape[1:]), self.kinds.get(o.name, "logits"),
                                        _ORT_TYPES.get(o.type, o.type)) for o in self.session.get_outputs())

    def deactivate(self) -> None:
        self.session = None

    def _infer(self, batch: np.ndarray) -> Outputs:
        values = self.session.run(None, {self.input.name: batch})
        return {spec.name: v for spec, v in zip(self.outputs, values)}


def _torch_dtype(trt, dtype):
    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int8: torch.int8, trt.int32: torch.int32,
             trt.bool: torch.bool}
    for name in ("bfloat16", "int64"):
        if hasattr(trt, name):
            table[getattr(trt, name)] = getattr(torch, name)
    return table[dtype]


class TensorRTRunner(Runner):
    """Deserialize once; per call: set the input shape, bind torch CUDA tensors, execute_async_v3 on a stream."""

    name = "tensorrt"

    def __init__(self, path: str | Path, kinds: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self.path, self.kinds = Path(path), dict(kinds or {})
        self.engine = self.context = self.stream = None

    def activate(self) -> None:
        trt = self.trt = import_tensorrt()
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise FvdeployError(f"TensorRT {trt.__version__} cannot load {self.path.name} (built by another TensorRT "
                                "version or for another GPU?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        if len(inputs) != 1:
            raise FvdeployError(f"{self.path.name}: expected one input, got {inputs}")
        low, _, high = self.engine.get_tensor_profile_shape(inputs[0], 0)
        self.batch_range = (int(low[0]), int(high[0]))
        self.input = TensorSpec(inputs[0], tuple(int(d) for d in high[1:]), "image", "float32")
        self.outputs = tuple(TensorSpec(n, tuple(self.engine.get_tensor_shape(n))[1:], self.kinds.get(n, "logits"))
                             for n in names if n not in inputs)
        self.stream = torch.cuda.Stream()

    def deactivate(self) -> None:
        self.context = self.engine = self.runtime = None

    def _infer(self, batch: np.ndarray) -> Outputs:
        name = self.input.name
        x = torch.from_numpy(batch).to("cuda", _torch_dtype(self.trt, self.engine.get_tensor_dtype(name)))
        self.context.set_input_shape(name, tuple(x.shape))
        self.context.set_tensor_address(name, x.data_ptr())
        outs = {}
        for spec in self.outputs:
            outs[spec.name] = torch.empty(tuple(self.context.get_tensor_shape(spec.name)), device="cuda",
                                          dtype=_torch_dtype(self.trt, self.engine.get_tensor_dtype(spec.name)))
            self.context.set_tensor_address(spec.name, outs[spec.name].data_ptr())
        self.stream.wait_stream(torch.cuda.current_stream())  # x was copied on the default stream
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise FvdeployError("TensorRT execution failed")
        self.stream.synchronize()
        return {n: t.float().cpu().numpy() for n, t in outs.items()}


class CoreMLRunner(Runner):
    """Core ML predictions (macOS only): feeds images rebuilt exactly from the normalised batch."""

    name = "coreml"

    def __init__(self, path: str | Path, mean: tuple[float, ...], std: tuple[float, ...],
                 input: TensorSpec, outputs: tuple[TensorSpec, ...], batch_range: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.path = Path(path)
        self.mean, self.std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
        self.input, self.outputs, self.batch_range = input, outputs, batch_range
        self.model = None

    def activate(self) -> None:
        missing = coreml_predict_missing()
        if missing:
            raise MissingDependency(f"{missing}; on Linux `fvdeploy coreml` checks the package's spec instead. "
                                    f"Run `fvdeploy verify {self.path.name}` on a Mac.")
        self.model = import_coremltools().models.MLModel(str(self.path))
        self.image_name = self.model.get_spec().description.input[0].name

    def _infer(self, batch: np.ndarray) -> Outputs:
        from PIL import Image

        rows: dict[str, list[np.ndarray]] = {spec.name: [] for spec in self.outputs}
        for chw in batch:
            pixels = np.clip(np.rint((chw.transpose(1, 2, 0) * self.std + self.mean) * 255.0), 0, 255).astype(np.uint8)
            result = self.model.predict({self.image_name: Image.fromarray(pixels)})
            for spec in self.outputs:
                value = result[spec.name]
                if isinstance(value, dict):  # a classifier's probabilities, keyed by label in class order
                    value = list(value.values())
                rows[spec.name].append(np.asarray(value, np.float32).reshape(spec.shape))
        return {name: np.stack(values) for name, values in rows.items()}


def in_output_space(reference: Outputs, outputs: tuple[TensorSpec, ...]) -> Outputs:
    """PyTorch outputs as the candidate gives them (a Core ML classifier returns probabilities)."""
    return {spec.name: torch.from_numpy(reference["logits"]).softmax(-1).numpy() if spec.kind == "probabilities"
            else reference[spec.name] for spec in outputs}
