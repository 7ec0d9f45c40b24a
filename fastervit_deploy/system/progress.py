"""Progress display for slow steps: a spinner while running, a ✓ line with the time when done."""

from __future__ import annotations

import contextlib
import time
from typing import Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn


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


def progress_bar(console: Console) -> Progress:
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, transient=False)
