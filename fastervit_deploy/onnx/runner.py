"""onnxruntime as a runner: one session per artifact, checked against the artifact's record."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.dtypes import from_ort
from ..core.options import Provider, RunOptions
from ..core.precision import Precision
from ..core.record import ArtifactRecord
from ..core.runner import Outputs, Runner
from ..system.errors import FvdeployError, MissingDependency
from .metadata import embedded_record

ORT_PROVIDERS = {
    Provider.cpu: ("CPUExecutionProvider",),
    Provider.cuda: ("CUDAExecutionProvider", "CPUExecutionProvider"),
    Provider.tensorrt: ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
}


def ort_providers(provider: Provider) -> list[str]:
    """The providers to ask onnxruntime for, or one line saying why this onnxruntime cannot."""
    import onnxruntime as ort

    wanted = ORT_PROVIDERS[Provider(provider)]
    if wanted[0] not in ort.get_available_providers():
        raise MissingDependency(
            f"--provider {Provider(provider).value} needs {wanted[0]}, which this onnxruntime does not have "
            f"(it has {', '.join(ort.get_available_providers())}); install onnxruntime-gpu on a CUDA machine")
    return list(wanted)


def session_options(threads: int | None = None, spinning: bool = True, fp8_on_cpu: bool = False):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if fp8_on_cpu:
        # The CPU provider's QDQ fusions take float8 for int8 (MatMulIntegerToFloat refuses the graph, and FP8
        # Transposes have no kernel once fused); its Quantize/DequantizeLinear kernels run FP8 at the basic level,
        # which is what the FP8 checks need. (Triton's Python-backend template does the same, for the same reason.)
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    return opts


class OnnxRuntimeRunner(Runner):
    name = "onnxruntime"

    def __init__(self, path: str | Path, record: ArtifactRecord | None = None, provider: Provider = Provider.cpu,
                 threads: int | None = None, batch_range: tuple[int, int] | None = None, spinning: bool = True) -> None:
        path = Path(path)
        if record is None:  # the identity the file carries
            record = embedded_record(path)
            if record is None:
                raise FvdeployError(f"{path.name} has no fvdeploy record: open it with open_artifact and model options")
        super().__init__(record.inputs, record.outputs, batch_range or record.batch_range)
        self.record_precision = record.precision
        self.path, self.provider, self.threads, self.spinning = path, Provider(provider), threads, spinning
        self.session = None
        if self.provider is not Provider.cpu:
            self.name = f"onnxruntime-{self.provider.value}"

    @classmethod
    def open(cls, path: Path, record: ArtifactRecord, opts: RunOptions) -> "OnnxRuntimeRunner":
        """The runner the format table opens (``formats.Format.runner``)."""
        return cls(path, record, opts.provider, opts.threads, spinning=opts.spinning)

    def activate(self) -> None:
        import onnxruntime as ort

        providers = ort_providers(self.provider)
        try:
            self.session = ort.InferenceSession(str(self.path), self._options(), providers=providers)
        except Exception as err:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise FvdeployError(f"onnxruntime cannot load {self.path.name}: {str(err).splitlines()[0]}") from err
        if self.session.get_providers()[0] != providers[0]:  # onnxruntime falls back silently
            raise MissingDependency(f"onnxruntime could not start {providers[0]} here (missing CUDA libraries?)")
        described = lambda args: [(a.name, tuple(a.shape[1:]), from_ort(a.type).name) for a in args]  # noqa: E731
        self.agree(self.path.name, described(self.session.get_inputs()), described(self.session.get_outputs()))

    def _options(self):
        return session_options(self.threads, self.spinning,
                               fp8_on_cpu=self.record_precision is Precision.fp8 and self.provider is Provider.cpu)

    def deactivate(self) -> None:
        self.session = None

    def _infer(self, batch: np.ndarray) -> Outputs:
        values = self.session.run([o.name for o in self.outputs], {self.input.name: batch})
        return {spec.name: v for spec, v in zip(self.outputs, values)}
