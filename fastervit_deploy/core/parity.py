"""Parity of an artifact against a reference: error figures per output, top-k agreement, tolerances."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..system.errors import CheckFailed
from .precision import Tolerance
from .runner import Outputs, Runner
from .tensors import TensorKind


def compare(reference: np.ndarray, candidate: np.ndarray, kind: TensorKind = TensorKind.logits) -> dict[str, float]:
    """Error figures of one output ``[N, ...]``; top-k agreement for class scores."""
    ref = np.asarray(reference, np.float64).reshape(len(reference), -1)
    out = np.asarray(candidate, np.float64).reshape(len(candidate), -1)
    if np.shape(reference) != np.shape(candidate):
        raise CheckFailed(f"output shape {list(np.shape(candidate))} differs from the reference's {list(np.shape(reference))}")
    diff = np.abs(ref - out)
    cos = (ref * out).sum(1) / np.maximum(np.linalg.norm(ref, axis=1) * np.linalg.norm(out, axis=1), 1e-30)
    metrics = {"samples": int(ref.shape[0]), "max_abs": float(diff.max()), "mean_abs": float(diff.mean()),
               "max_abs_rel": float(diff.max() / max(np.abs(ref).max(), 1e-30)), "cosine_min": float(cos.min())}
    if TensorKind(kind).classes:
        k = min(5, ref.shape[1])
        top_ref, top_out = np.argsort(-ref, 1)[:, :k], np.argsort(-out, 1)[:, :k]
        metrics["top1_agreement"] = float((top_ref[:, 0] == top_out[:, 0]).mean())
        metrics["top5_agreement"] = float(np.mean([set(a) == set(b) for a, b in zip(top_ref, top_out)]))
    return metrics


def merge(results: Sequence[dict[str, float]]) -> dict[str, float]:
    """Combine figures (worst case for errors, sample-weighted for means and agreements)."""
    n = sum(r["samples"] for r in results)
    weighted = lambda key: sum(r[key] * r["samples"] for r in results) / n  # noqa: E731
    out = {"samples": n, "max_abs": max(r["max_abs"] for r in results), "mean_abs": weighted("mean_abs"),
           "max_abs_rel": max(r["max_abs_rel"] for r in results), "cosine_min": min(r["cosine_min"] for r in results)}
    if all("top1_agreement" in r for r in results):
        out.update(top1_agreement=weighted("top1_agreement"), top5_agreement=weighted("top5_agreement"))
    return out


def failures(metrics: dict[str, float], tol: Tolerance, label: str = "") -> list[str]:
    prefix = f"{label}: " if label else ""
    out = []
    if tol.max_abs is not None and metrics["max_abs"] > tol.max_abs:
        out.append(f"{prefix}max |Δ| {metrics['max_abs']:.3g} > {tol.max_abs:g}")
    if tol.min_cosine is not None and metrics["cosine_min"] < tol.min_cosine:
        out.append(f"{prefix}cosine {metrics['cosine_min']:.6f} < {tol.min_cosine:g}")
    if tol.min_top1 is not None and "top1_agreement" in metrics and metrics["top1_agreement"] < tol.min_top1:
        out.append(f"{prefix}top-1 agreement {metrics['top1_agreement']:.1%} < {tol.min_top1:.1%}")
    return out


def describe(metrics: dict[str, float]) -> str:
    text = (f"max |Δ| {metrics['max_abs']:.2e} (rel {metrics['max_abs_rel']:.1e}), mean |Δ| {metrics['mean_abs']:.2e}, "
            f"cosine {metrics['cosine_min']:.6f}")
    if "top1_agreement" in metrics:
        text += f", top-1 {metrics['top1_agreement']:.0%}, top-5 {metrics['top5_agreement']:.0%}"
    n = metrics["samples"]
    return f"{text} ({n} image{'s' if n != 1 else ''})"


def report_lines(result: dict) -> list[str]:
    """One line per output when there are several (a backbone's levels), else the overall figures."""
    outputs = result["outputs"]
    if len(outputs) == 1:
        return [describe(result["overall"])]
    return [f"{name}: {describe(o['overall'])}" for name, o in outputs.items()]


@dataclass(frozen=True)
class ParityJob:
    """Compare an artifact (opened by ``runner``) with ``reference`` on real images."""

    title: str
    runner: Callable[[Path], Runner]
    reference: Callable[[np.ndarray], Outputs]
    batches: Sequence[np.ndarray]
    tolerance: Tolerance

    def run(self, path: Path) -> dict:
        with self.runner(path) as runner:
            return run_parity(self.reference, runner, self.batches, self.tolerance)


def run_parity(reference: Callable[[np.ndarray], Outputs], candidate: Runner, batches: Sequence[np.ndarray],
               tol: Tolerance, encoded: Sequence[Sequence[bytes]] | None = None) -> dict:
    """Every batch through both; per output and batch figures, overall figures, pass/fail. ``encoded``: the images
    of each batch as files, for a candidate that preprocesses them itself (``Runner.takes_encoded``)."""
    per_output: dict[str, dict[str, dict]] = {}
    for i, batch in enumerate(batches):
        ref = reference(batch)
        out = candidate.infer_encoded(encoded[i]) if encoded is not None else candidate.infer(batch)
        for spec in candidate.outputs:
            per_output.setdefault(spec.name, {})[str(len(batch))] = compare(ref[spec.name], out[spec.name], spec.kind)
    outputs = {name: {"batches": b, "overall": merge(list(b.values()))} for name, b in per_output.items()}
    problems = [p for name, o in outputs.items()
                for p in failures(o["overall"], tol, name if len(outputs) > 1 else "")]
    overall = merge([o["overall"] for o in outputs.values()]) if len(outputs) > 1 else next(iter(outputs.values()))["overall"]
    if len(outputs) > 1:  # samples count images, not outputs
        overall["samples"] = next(iter(outputs.values()))["overall"]["samples"]
    return {"outputs": outputs, "overall": overall, "tolerance": tol.to_dict(), "passed": not problems,
            "failures": problems}
