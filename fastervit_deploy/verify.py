"""Parity of an artifact against PyTorch: error figures, top-k agreement, per-precision tolerances."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .artifacts import sidecar_path
from .errors import CheckFailed, FvdeployError
from .runners import Runner


@dataclass(frozen=True)
class Tolerance:
    max_abs: float | None = None
    min_cosine: float | None = None
    min_top1: float | None = None


# fp32 must match to rounding; reduced precisions are judged by direction (cosine) and decisions.
TOLERANCES = {
    "fp32": Tolerance(max_abs=1e-4, min_cosine=0.99999, min_top1=1.0),
    "fp16": Tolerance(min_cosine=0.999, min_top1=0.9),
    "int8": Tolerance(min_cosine=0.99, min_top1=0.8),
}


def compare(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """Error figures of candidate logits against reference logits ``[N, classes]``."""
    ref = np.asarray(reference, np.float64)
    out = np.asarray(candidate, np.float64)
    if ref.shape != out.shape:
        raise CheckFailed(f"output shape {list(out.shape)} differs from PyTorch's {list(ref.shape)}")
    diff = np.abs(ref - out)
    cos = (ref * out).sum(1) / np.maximum(np.linalg.norm(ref, axis=1) * np.linalg.norm(out, axis=1), 1e-30)
    k = min(5, ref.shape[1])
    top_ref, top_out = np.argsort(-ref, 1)[:, :k], np.argsort(-out, 1)[:, :k]
    return {
        "samples": int(ref.shape[0]),
        "max_abs": float(diff.max()),
        "mean_abs": float(diff.mean()),
        "cosine_min": float(cos.min()),
        "top1_agreement": float((top_ref[:, 0] == top_out[:, 0]).mean()),
        "top5_agreement": float(np.mean([set(a) == set(b) for a, b in zip(top_ref, top_out)])),
    }


def merge(results: Sequence[dict[str, float]]) -> dict[str, float]:
    """Combine per-batch figures (worst case for errors, sample-weighted for agreements)."""
    n = sum(r["samples"] for r in results)
    weighted = lambda key: sum(r[key] * r["samples"] for r in results) / n  # noqa: E731
    return {"samples": n, "max_abs": max(r["max_abs"] for r in results), "mean_abs": weighted("mean_abs"),
            "cosine_min": min(r["cosine_min"] for r in results), "top1_agreement": weighted("top1_agreement"),
            "top5_agreement": weighted("top5_agreement")}


def failures(metrics: dict[str, float], tol: Tolerance) -> list[str]:
    out = []
    if tol.max_abs is not None and metrics["max_abs"] > tol.max_abs:
        out.append(f"max |Δ| {metrics['max_abs']:.3g} > {tol.max_abs:g}")
    if tol.min_cosine is not None and metrics["cosine_min"] < tol.min_cosine:
        out.append(f"cosine {metrics['cosine_min']:.6f} < {tol.min_cosine:g}")
    if tol.min_top1 is not None and metrics["top1_agreement"] < tol.min_top1:
        out.append(f"top-1 agreement {metrics['top1_agreement']:.1%} < {tol.min_top1:.0%}")
    return out


def describe(metrics: dict[str, float]) -> str:
    return (f"max |Δ| {metrics['max_abs']:.2e}, mean |Δ| {metrics['mean_abs']:.2e}, cosine {metrics['cosine_min']:.6f}, "
            f"top-1 {metrics['top1_agreement']:.0%}, top-5 {metrics['top5_agreement']:.0%} ({metrics['samples']} images)")


def run_parity(reference: Callable[[np.ndarray], np.ndarray], candidate: Runner, batches: Sequence[np.ndarray],
               tol: Tolerance) -> dict:
    """Run every batch through both; return per-batch and overall figures plus pass/fail."""
    per_batch = {}
    for batch in batches:
        per_batch[str(len(batch))] = compare(reference(batch), candidate.infer(batch))
    overall = merge(list(per_batch.values()))
    problems = failures(overall, tol)
    return {"batches": per_batch, "overall": overall, "tolerance": asdict(tol), "passed": not problems,
            "failures": problems}


def read_sidecar(artifact: str | Path) -> dict:
    path = sidecar_path(artifact)
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        raise FvdeployError(f"sidecar {path} is not valid JSON") from None


def tolerance_for(precision: str, max_abs: float | None = None, min_cosine: float | None = None,
                  min_top1: float | None = None) -> Tolerance:
    if precision not in TOLERANCES:
        raise FvdeployError(f"unknown precision {precision!r} (known: {', '.join(TOLERANCES)})")
    base = TOLERANCES[precision]
    return Tolerance(max_abs if max_abs is not None else base.max_abs,
                     min_cosine if min_cosine is not None else base.min_cosine,
                     min_top1 if min_top1 is not None else base.min_top1)
