"""Latency and throughput of runners on this machine, measured interleaved so they see the same load."""

from __future__ import annotations

import contextlib
import dataclasses
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from rich.console import Console
from rich.table import Table

from ..artifact import open_artifact
from ..core.options import ModelRequest, RunOptions
from ..core.reference import TorchRunner
from ..system.errors import FvdeployError
from ..system.figures import pyplot, save_png
from ..system.machine import cpu
from ..system.progress import progress_bar


@dataclass
class Timing:
    runner: str
    batch: int
    samples_ms: list[float] = field(default_factory=list)

    def summary(self) -> dict:
        s = np.asarray(self.samples_ms)
        median = float(np.median(s))
        return {"runner": self.runner, "batch": self.batch, "iterations": int(s.size), "mean_ms": float(s.mean()),
                "p50_ms": median, "p90_ms": float(np.percentile(s, 90)), "p99_ms": float(np.percentile(s, 99)),
                "min_ms": float(s.min()), "throughput_ips": self.batch * 1000.0 / median}


ORDER_SEED = 0


def round_orders(names: Sequence[str], rounds: int, seed: int = ORDER_SEED) -> list[list[str]]:
    """The order the runners take their turns in, per round: a seeded shuffle, then rotated by one each round, so
    every runner is first (right after the previous round's last, with caches the others left) equally often. A
    fixed order favours whoever follows the slowest: measured 7-10 % for the first ONNX runner after PyTorch."""
    base = [names[i] for i in np.random.default_rng(seed).permutation(len(names))]
    return [base[r % len(base):] + base[:r % len(base)] for r in range(rounds)]


def measure(runners: dict[str, Callable[[np.ndarray], object]], batches: dict[int, np.ndarray], warmup: int,
            iterations: int, console: Console | None = None, seed: int = ORDER_SEED) -> list[dict]:
    """Round-robin over runners for each batch size: one call each per round, in ``round_orders`` (rotated per
    round, seeded), warm-up rounds excluded. Each row keeps its per-round samples in round order, so a ratio can be
    taken round by round (``ratios``)."""
    results = []
    # Counted in images, not rounds: a round at batch 32 takes about 32 times one at batch 1, so the rate and the
    # time left hold across batch sizes.
    total = sum(len(batch) for batch in batches.values()) * (warmup + iterations) * len(runners)
    with progress_bar(console or Console(stderr=True), unit="images") as bar:
        task = bar.add_task("benchmarking", total=total)
        for batch_size, batch in batches.items():
            timings = {name: Timing(name, batch_size) for name in runners}
            for i, order in enumerate(round_orders(list(runners), warmup + iterations, seed)):
                for name in order:
                    fn = runners[name]
                    start = time.perf_counter()
                    fn(batch)
                    took = (time.perf_counter() - start) * 1000.0
                    if i >= warmup:
                        timings[name].samples_ms.append(took)
                bar.advance(task, len(batch) * len(runners))
            results.extend({**t.summary(), "samples_ms": [round(v, 4) for v in t.samples_ms]}
                           for t in timings.values())
    return results


def order_facts(seed: int = ORDER_SEED) -> dict:
    """How the runners took turns (recorded beside the figures)."""
    return {"rule": "a seeded shuffle, rotated by one each round (each runner first equally often)", "seed": seed}


def ratios(results: list[dict], baseline: str) -> dict[str, dict[int, float]]:
    """Speed of every runner relative to ``baseline`` (p50 latency ratio; > 1 means faster)."""
    return {name: {n: r["median"] for n, r in by.items()} for name, by in ratio_spread(results, baseline).items()}


def ratio_spread(results: list[dict], baseline: str) -> dict[str, dict[int, dict]]:
    """Per runner and batch: the ratio of p50 latencies (``ratio``) and the ratios taken round by round (each round
    ran both, in rotated order): their median and the 10th-90th percentile spread. A spread that holds 1.0 says
    the two are not told apart by this run."""
    base = {r["batch"]: r for r in results if r["runner"] == baseline}
    out: dict[str, dict[int, dict]] = {}
    for r in results:
        b = base.get(r["batch"])
        if r["runner"] == baseline or b is None:
            continue
        rounds = np.asarray(b["samples_ms"]) / np.asarray(r["samples_ms"])
        out.setdefault(r["runner"], {})[r["batch"]] = {
            "ratio": b["p50_ms"] / r["p50_ms"], "median": float(np.median(rounds)),
            "p10": float(np.percentile(rounds, 10)), "p90": float(np.percentile(rounds, 90))}
    return out


def results_table(results: list[dict], title: str = "latency (ms) and throughput") -> Table:
    table = Table(title=title)
    table.add_column("runner", overflow="fold")
    for col in ("batch", "p50", "p90", "p99", "mean", "img/s"):
        table.add_column(col, justify="right")
    for r in results:
        table.add_row(r["runner"], str(r["batch"]), f"{r['p50_ms']:.2f}", f"{r['p90_ms']:.2f}", f"{r['p99_ms']:.2f}",
                      f"{r['mean_ms']:.2f}", f"{r['throughput_ips']:.1f}")
    return table


def machine(threads: int | None) -> dict:
    """What the figures depend on: CPU, its integer instruction sets, cores, threads used, and the tool versions."""
    from ..core.record import tool_versions

    facts = cpu()
    return {"cpu": facts["cpu"], "cores": facts["cores"], "threads": threads or facts["cores"], "isa": facts["flags"],
            "vnni": facts["vnni"], "system": platform.system(), "versions": tool_versions()}


def plot(report: dict, path: Path, overwrite: bool = False) -> None:
    save_png(figure(report), path, overwrite)


def figure(report: dict):
    """Latency and throughput against batch size, one line per runner, its precision in the legend below the
    axes (never over a point); the title names the model, the machine and the tools."""
    plt = pyplot()
    from matplotlib.ticker import LogLocator, NullLocator, ScalarFormatter

    results, info = report["results"], report["machine"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4.8), layout="constrained")
    sizes = sorted({r["batch"] for r in results})
    for name in dict.fromkeys(r["runner"] for r in results):
        rows = sorted((r for r in results if r["runner"] == name), key=lambda r: r["batch"])
        xs, label = [r["batch"] for r in rows], f"{name} ({rows[0].get('precision', '?')})"
        ax1.plot(xs, [r["p50_ms"] for r in rows], marker="o", label=label)
        ax2.plot(xs, [r["throughput_ips"] for r in rows], marker="o", label=label)
    ax1.set(xlabel="batch", ylabel="p50 latency (ms, log)", title="latency", xscale="log", yscale="log")
    ax2.set(xlabel="batch", ylabel="images / s", title="throughput", xscale="log")
    # A log latency axis labelled at 1-2-5 steps of every decade it spans, not only at the powers of ten.
    ax1.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax1.yaxis.set_major_formatter(ScalarFormatter())
    ax1.yaxis.set_minor_locator(NullLocator())
    for ax in (ax1, ax2):
        ax.set_xticks(sizes, [str(n) for n in sizes])  # labelled at the measured batch sizes, nothing between
        ax.xaxis.set_minor_locator(NullLocator())
        ax.grid(True, alpha=0.3)
    handles, labels = ax1.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(3, len(labels)), fontsize=8, frameon=False)
    versions = info["versions"]
    model = f"{report.get('model', '')} {'x'.join(map(str, report.get('resolution', [])))}".strip()
    fig.suptitle(f"{model}: p50 latency and throughput\n{info['cpu']}, {info['threads']} of {info['cores']} threads; "
                 f"onnxruntime {versions.get('onnxruntime', versions.get('onnxruntime-gpu', '-'))}, "
                 f"torch {versions.get('torch', '-')}", fontsize=9)
    return fig


def synthetic_batches(sizes: Sequence[int], shape: tuple[int, int, int], seed: int = 0) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {n: rng.standard_normal((n, *shape), dtype=np.float32) for n in sizes}


def benchmark(paths: list[Path], model: ModelRequest, runtime: RunOptions, sizes: tuple[int, ...], warmup: int, iterations: int,
              pytorch: bool, console: Console) -> dict:
    """Open every artifact, check they take one input size and the batch sizes, time them interleaved."""
    if min(sizes) < 1:
        raise FvdeployError("batch sizes must be at least 1")
    arts = [open_artifact(a, model) for a in paths]
    for art in arts:
        if note := art.runtime_note(runtime):
            console.print(note, markup=False, highlight=False, soft_wrap=True)
    first = arts[0]
    for art in arts[1:]:
        if art.model.input.shape != first.model.input.shape:
            raise FvdeployError(f"{art.path.name} takes [N, {', '.join(map(str, art.model.input.shape))}] but "
                                f"{first.path.name} takes [N, {', '.join(map(str, first.model.input.shape))}]: "
                                "benchmark artifacts of one input size together")
    for art in arts:
        low, high = art.record.batch_range
        outside = [n for n in sizes if not low <= n <= high]
        if outside:
            raise FvdeployError(f"batch {outside[0]} is outside {art.path.name}'s batch range {low}..{high}")
    desc = first.model
    fns = {}
    runtime = dataclasses.replace(runtime, spinning=False)  # runners take turns: none may keep the cores busy
    precisions = {}
    with contextlib.ExitStack() as stack:
        for art in arts:
            runner = stack.enter_context(art.runner(runtime))
            name = f"{runner.name}:{art.path.name}"
            fns[name], precisions[name] = runner.infer, art.record.precision.value
        if pytorch:
            fns["pytorch-eager"] = stack.enter_context(
                TorchRunner(desc.build(), desc.input, desc.outputs, threads=runtime.threads)).infer
            precisions["pytorch-eager"] = "fp32"
        results = measure(fns, synthetic_batches(sizes, desc.input.shape), warmup, iterations, console)
    for row in results:
        row["precision"] = precisions[row["runner"]]
    return {"results": results, "model": desc.name, "resolution": list(desc.resolution),
            "machine": machine(runtime.threads), "order": order_facts()}
