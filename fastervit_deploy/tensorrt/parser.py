"""NVIDIA's ONNX parser, through either runtime: networks for the builder, and `inspect`'s `tensorrt-parser` check.

Our op table (`inspect`'s `tensorrt-ops`) is the fast check that needs nothing installed; the parser is the real
one. Where both ran and disagree, the parser wins, and both findings say so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..core.checks import CheckReport, Finding
from ..core.precision import QuantTarget
from ..system.errors import FvdeployError
from .runtimes import Runtime, parsing_runtime


def collecting_logger(trt):
    """A trt.ILogger that keeps the errors (the compiler's refusals become fvdeploy's one-line errors) and prints
    nothing (the progress monitor shows the build)."""

    class Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity, msg) -> None:
            if severity in (trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR):
                self.errors.append(str(msg).strip())

    return Logger()


def new_network(runtime: Runtime, trt, builder):
    """A strongly typed network: the flag TensorRT 10 needs (11 and TensorRT for RTX type every network strongly)."""
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if runtime.strongly_typed_flag else 0
    return builder.create_network(flags)


@dataclass(frozen=True)
class Rejection:
    node: str
    op: str
    reason: str

    def __str__(self) -> str:
        return f"{self.node or '?'}{f' ({self.op})' if self.op else ''}: {self.reason}"


def parse_into(trt, network, logger, onnx_path: Path) -> list[Rejection]:
    """Parse ``onnx_path`` (external data beside it read too) into ``network``; the nodes the parser refused."""
    parser = trt.OnnxParser(network, logger)
    if parser.parse_from_file(str(onnx_path)):
        return []
    rejections = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        node = err.node_name() if hasattr(err, "node_name") else f"node #{err.node()}"
        op = err.node_operator() if hasattr(err, "node_operator") else ""
        rejections.append(Rejection(node, op, err.desc().strip().splitlines()[0] if err.desc().strip() else ""))
    return rejections or [Rejection("", "", "the parser failed without naming a node")]


def parse_network(runtime: Runtime, trt, network, logger, onnx_path: Path) -> None:
    """Parse for a build: a rejection is one line naming the nodes."""
    rejected = parse_into(trt, network, logger, onnx_path)
    if rejected:
        raise FvdeployError(f"{runtime.title}'s ONNX parser rejected {onnx_path.name}: "
                            + "; ".join(map(str, rejected[:3])) + (f" (+{len(rejected) - 3} more)" if len(rejected) > 3
                                                                   else ""))


def parser_finding(onnx_path: Path) -> Finding:
    """The graph parsed by the real parser of whichever runtime is installed (TensorRT first)."""
    found = parsing_runtime()
    if found is None:
        return Finding("tensorrt-parser", True, "not run: neither TensorRT nor TensorRT for RTX is installed (make "
                                                "install installs TensorRT for RTX)", severity="info",
                       facts={"runtime": None})
    runtime, trt = found
    logger = collecting_logger(trt)
    builder = trt.Builder(logger)
    network = new_network(runtime, trt, builder)
    rejected = parse_into(trt, network, logger, Path(onnx_path))
    facts = {"runtime": runtime.key.value, "version": trt.__version__, "layers": network.num_layers,
             "rejected": [{"node": r.node, "op": r.op, "reason": r.reason} for r in rejected]}
    who = f"{runtime.title} {trt.__version__}"
    if rejected:
        return Finding("tensorrt-parser", False, f"{who}'s parser refused {len(rejected)} node(s): "
                       + "; ".join(map(str, rejected[:3])), facts=facts)
    return Finding("tensorrt-parser", True, f"{who}'s parser took every node ({network.num_layers} layers)",
                   facts=facts)


def with_parser(report: CheckReport, onnx_path: Path) -> CheckReport:
    """``report`` (an ONNX graph check) with the real parser's finding; where it and our op table disagree, the
    parser's verdict stands and both findings say so."""
    if getattr(report, "target", None) == QuantTarget.onnxruntime_cpu:
        report.findings.append(Finding("tensorrt-parser", True, "not run: the graph is made for onnxruntime's CPU "
                                       "kernels (asymmetric uint8), which TensorRT does not take by design",
                                       severity="info", facts={"runtime": None}))
        return report
    parsed = parser_finding(onnx_path)
    report.findings.append(parsed)
    table = next((f for f in report.findings if f.check == "tensorrt-ops"), None)
    if table is None or parsed.facts.get("runtime") is None or table.ok == parsed.ok:
        return report
    if parsed.ok:  # the table flagged ops the parser took: a note, not a failure
        table.ok, table.severity = True, "info"
        table.detail += " (the TensorRT parser accepts them: it wins)"
    else:
        parsed.detail += " (our op table accepted these ops: the parser wins)"
    return report
