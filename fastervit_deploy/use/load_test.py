"""`fvdeploy benchmark triton://...`: what perf_analyzer measures, from pip: latency and throughput of a served
model under a concurrency sweep or a request-rate sweep, beside the server's own statistics for the same requests.

Per concurrency ``c``, ``c`` clients each send a request, wait for its answer, and send the next (a closed loop,
as perf_analyzer's concurrency mode). Per request rate ``r``, a request is sent every ``1/r`` seconds whatever the
answers (an open loop, perf_analyzer's constant request rate), its latency counted from when it was due (a client
that falls behind is not hidden). Measured in windows: each window starts with no request in flight, runs for
``window_s``, then lets the requests in flight finish, so the server's statistics read before and after it cover
exactly its requests (the server is asked again, briefly, until its count has caught up with the answers: it
counts a request when it has released it, just after answering). Stable when the last ``STABLE_WINDOWS`` windows'
throughput and p50 latency each lie within ``STABLE_SPREAD`` of their mean; a step reports those windows pooled
(or all of them, said as unstable, after ``max_windows``). A server that stops answering ends the sweep: the steps
measured are kept and the failure is said.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from rich.console import Console
from rich.table import Table

from ..artifact import open_artifact
from ..core.options import ModelRequest, ServerOptions
from ..data.images import encoded, preprocess, skimage_photos
from ..system.errors import FvdeployError
from ..system.figures import pyplot, save_png
from ..system.progress import progress_bar
from ..triton.served import Connection, ServedModel, request, together
from .benchmark import machine

STABLE_WINDOWS = 3
STABLE_SPREAD = 0.10
STATS_CATCH_UP_S = 2.0
TIMES = ("queue", "compute_input", "compute_infer", "compute_output")


@dataclass(frozen=True)
class Load:
    """How the server is loaded: ``mode`` "concurrency" (clients in a closed loop) or "request_rate" (requests per
    second, an open loop), at each of ``levels``."""

    mode: str
    levels: tuple[float, ...]

    def __post_init__(self) -> None:
        if self.mode not in ("concurrency", "request_rate"):
            raise FvdeployError(f"unknown load mode {self.mode!r}")
        if not self.levels or min(self.levels) <= 0:
            raise FvdeployError(f"--{self.mode.replace('_', '-')} values must be positive")

    @property
    def connections(self) -> int | None:
        """Connections to open at most (None: as many as the requests in flight)."""
        return int(max(self.levels)) if self.mode == "concurrency" else None


@dataclass
class Window:
    latencies_ms: list[float]
    seconds: float
    server: dict  # the statistics' difference over the window

    @property
    def requests(self) -> int:
        return len(self.latencies_ms)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    @property
    def p50(self) -> float:
        return float(np.median(self.latencies_ms)) if self.latencies_ms else float("nan")


def rule(window_s: float, max_windows: int) -> dict:
    return {"window_s": window_s, "max_windows": max_windows, "stable_windows": STABLE_WINDOWS,
            "stable_spread": STABLE_SPREAD,
            "text": f"windows of {window_s:g} s, each from idle to drained; stable when the last {STABLE_WINDOWS} "
                    f"windows' throughput and p50 latency lie within {STABLE_SPREAD:.0%} of their mean; at most "
                    f"{max_windows} windows"}


def stable(windows: Sequence[Window]) -> bool:
    if len(windows) < STABLE_WINDOWS:
        return False
    last = windows[-STABLE_WINDOWS:]
    for values in ([w.rate for w in last], [w.p50 for w in last]):
        mean = float(np.mean(values))
        if mean <= 0 or any(abs(v - mean) > STABLE_SPREAD * mean for v in values):
            return False
    return True


def _difference(before: dict, after: dict) -> dict:
    stats_b, stats_a = before["inference_stats"], after["inference_stats"]
    slot = lambda key, part: stats_a.get(key, {}).get(part, 0) - stats_b.get(key, {}).get(part, 0)  # noqa: E731
    return {"requests": slot("success", "count"), "failed": slot("fail", "count"),
            "inferences": after["inference_count"] - before["inference_count"],
            "executions": after["execution_count"] - before["execution_count"],
            **{f"{key}_ns": slot(key, "ns") for key in TIMES}}


async def _window(conn: Connection, served: ServedModel, payload: np.ndarray, mode: str, level: float,
                  seconds: float, label: str) -> Window:
    before = await conn.statistics()
    latencies: list[float] = []
    start = time.perf_counter()
    deadline = start + seconds

    async def timed(request_id: str, since: float) -> None:
        await request(conn, served, payload, request_id)
        latencies.append((time.perf_counter() - since) * 1000.0)

    async def client(k: int) -> None:
        i = 0
        while time.perf_counter() < deadline:
            await timed(f"{label}-{k}-{i}", time.perf_counter())
            i += 1

    async def schedule() -> None:
        sent, i = [], 0
        while (due := start + i / level) < deadline:
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            sent.append(asyncio.ensure_future(timed(f"{label}-{i}", due)))
            i += 1
        await together(sent)

    # One request failing stops the others.
    await (together([client(k) for k in range(int(level))]) if mode == "concurrency" else schedule())
    took = time.perf_counter() - start
    settle = time.perf_counter() + STATS_CATCH_UP_S
    while True:
        difference = _difference(before, await conn.statistics())
        if difference["requests"] + difference["failed"] >= len(latencies) or time.perf_counter() > settle:
            return Window(latencies, took, difference)
        await asyncio.sleep(0.02)


def _pooled(windows: Sequence[Window], load: Load, level: float, batch: int, is_stable: bool) -> dict:
    latencies = np.asarray([v for w in windows for v in w.latencies_ms])
    seconds = sum(w.seconds for w in windows)
    server = {key: sum(w.server[key] for w in windows) for key in windows[0].server}
    requests = int(latencies.size)
    per_request = {f"{key}_us": server[f"{key}_ns"] / max(server["requests"], 1) / 1000.0 for key in TIMES}
    return {"mode": load.mode, load.mode: level, "batch": batch, "requests": requests, "images": requests * batch,
            "seconds": seconds, "throughput_rps": requests / seconds, "throughput_ips": requests * batch / seconds,
            "p50_ms": float(np.percentile(latencies, 50)), "p90_ms": float(np.percentile(latencies, 90)),
            "p95_ms": float(np.percentile(latencies, 95)), "p99_ms": float(np.percentile(latencies, 99)),
            "mean_ms": float(latencies.mean()), "windows": len(windows), "stable": is_stable,
            "server": {**server, **per_request,
                       "images_per_execution": server["inferences"] / server["executions"] if server["executions"]
                       else None}}


def payload_of(served: ServedModel, batch: int) -> np.ndarray:
    """One request's input: a real photo, preprocessed here (a plain model) or as PNG bytes (an ensemble)."""
    photo, desc = skimage_photos()[0], served.model
    if served.takes_encoded:
        return np.array([encoded(photo)] * batch, dtype=np.object_).reshape(batch, 1)
    return np.ascontiguousarray(np.stack([preprocess(photo, desc.resolution, desc.preprocessing)] * batch))


def load_test(address: str, model: ModelRequest, server: ServerOptions, load: Load, batch: int,
              window_s: float, max_windows: int, console: Console) -> dict:
    """The sweep's report: one step per load level (the ones measured, if the server stopped answering)."""
    served = open_artifact(address, model, server)
    if not 1 <= batch <= served.max_batch:
        raise FvdeployError(f"--batch {batch} is outside {served.name}'s max_batch_size 1..{served.max_batch}")
    payload = payload_of(served, batch)
    steps: list[dict] = []
    incomplete = None
    with Connection(served.address, server.timeout, load.connections) as conn, \
            progress_bar(console, unit="windows") as bar:
        task = bar.add_task("load test", total=len(load.levels) * max_windows)
        for level in load.levels:
            windows: list[Window] = []
            try:
                while len(windows) < max_windows and not stable(windows):
                    label = f"{load.mode[0]}{level:g}w{len(windows)}"
                    windows.append(conn.run(_window(conn, served, payload, load.mode, level, window_s, label)))
                    bar.advance(task)
            except FvdeployError as err:
                incomplete = f"at {load.mode.replace('_', ' ')} {level:g}: {err}"
                break
            bar.advance(task, max_windows - len(windows))
            used = windows[-STABLE_WINDOWS:] if stable(windows) else windows
            steps.append(_pooled(used, load, level, batch, stable(windows)))
    return {"served": {**served.facts(), "server": {k: served.server.get(k) for k in ("name", "version", "extensions")},
                       "config": served.config},
            "model": served.model.name, "resolution": list(served.model.resolution), "batch": batch, "mode": load.mode,
            "rule": rule(window_s, max_windows), "steps": steps, "incomplete": incomplete,
            "machine": machine(None)}


def steps_tables(report: dict) -> list[Table]:
    """The client's figures per concurrency, then the server's for the same requests."""
    steps = report["steps"]
    client = Table(title=f"{report['served']['address']}, batch {report['batch']}: latency (ms) and throughput")
    level = "clients" if report["mode"] == "concurrency" else "asked req/s"
    for col in (level, "requests", "img/s", "p50", "p90", "p95", "p99", "stable (windows)"):
        client.add_column(col, justify="right")
    for s in steps:
        client.add_row(f"{s[s['mode']]:g}", str(s["requests"]), f"{s['throughput_ips']:.1f}", f"{s['p50_ms']:.2f}",
                       f"{s['p90_ms']:.2f}", f"{s['p95_ms']:.2f}", f"{s['p99_ms']:.2f}",
                       f"{'yes' if s['stable'] else 'no'} ({s['windows']})")
    server = Table(title="the server's statistics for the same windows (µs per request)")
    for col in (level, "requests", "executions", "img/execution", "queue", "input", "infer", "output"):
        server.add_column(col, justify="right")
    for s in steps:
        srv = s["server"]
        server.add_row(f"{s[s['mode']]:g}", str(srv["requests"]), str(srv["executions"]),
                       f"{srv['images_per_execution']:.2f}" if srv["images_per_execution"] else "-",
                       *(f"{srv[f'{key}_us']:.0f}" for key in TIMES))
    return [client, server]


def plot(report: dict, path: Path, overwrite: bool = False) -> None:
    """Throughput against p99 latency, one point per concurrency or request rate (labelled with it)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4), layout="constrained")
    steps = report["steps"]
    xs, ys = [s["p99_ms"] for s in steps], [s["throughput_ips"] for s in steps]
    ax.plot(xs, ys, marker="o")
    for s, x, y in zip(steps, xs, ys):
        ax.annotate(f"c={s['concurrency']}" if s["mode"] == "concurrency" else f"{s['request_rate']:g}/s", (x, y), textcoords="offset points", xytext=(6, -10), fontsize=8)
    ax.set(xlabel="p99 latency (ms)", ylabel="images / s", title=f"{report['served']['address']}, batch "
           f"{report['batch']}\nserver {report['served']['server'].get('version', '?')}; client "
           f"{report['machine']['cpu']}")
    ax.title.set_fontsize(9)
    ax.margins(x=0.12, y=0.08)  # room for the labels of the outermost points
    ax.grid(True, alpha=0.3)
    save_png(fig, path, overwrite)
