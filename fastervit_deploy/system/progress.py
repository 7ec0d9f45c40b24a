"""Progress display for slow steps: a spinner while running, a ✓ line with the time when done."""

from __future__ import annotations

import contextlib
import time
from typing import Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text


# Progress and errors go to stderr; tables and JSON that users pipe go to stdout.
console = Console(stderr=True, highlight=False)


class Steps:
    def __init__(self, out: Console = console) -> None:
        self.console = out
        self.timings: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, title: str) -> Iterator[None]:
        start = time.perf_counter()
        with self.console.status(f"{title} ...", spinner="dots"):
            yield
        took = time.perf_counter() - start
        self.timings[title] = round(took, 3)
        self.console.print(f"[green]✓[/green] {title} [dim]({took:.1f} s)[/dim]", highlight=False)

    def note(self, message: str) -> None:
        self.console.print(f"  {message}", markup=False, highlight=False, soft_wrap=True)


class RateColumn(ProgressColumn):
    """Items per second (images/s), once rich has measured a rate."""

    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task) -> Text:
        return Text(f"{task.speed:.1f} {self.unit}/s" if task.speed else "", style="progress.data.speed")


def progress_bar(console: Console, unit: str | None = None) -> Progress:
    """A bar with done/total and elapsed time; with ``unit``, also the rate and the time left."""
    columns = [SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    if unit is not None:
        columns += [RateColumn(unit), TextColumn("left"), TimeRemainingColumn()]
    return Progress(*columns, console=console, transient=False)
