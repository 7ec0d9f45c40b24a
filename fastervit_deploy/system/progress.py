"""Progress display for slow steps: a spinner while running, a ✓ line with the time when done."""

from __future__ import annotations

import contextlib
import time
from typing import Callable, Iterator

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
        self._done(title, start)

    @contextlib.contextmanager
    def counted(self, title: str, total: int, unit: str) -> Iterator[Callable[[int], None]]:
        """A step that knows how much it has to do: a bar with done/total, the rate and the time left while it
        runs (the caller advances it), then the same ✓ line as any step."""
        start = time.perf_counter()
        if self.console.is_terminal:
            with progress_bar(self.console, unit, transient=True) as bar:
                task = bar.add_task(title, total=total)
                yield lambda n=1: bar.advance(task, n)
        else:  # a log file or a pipe: the ✓ line alone (a bar's redraws would be noise there)
            yield lambda n=1: None
        self._done(title, start)

    def _done(self, title: str, start: float) -> None:
        took = time.perf_counter() - start
        self.timings[title] = round(took, 3)
        self.console.print(f"[green]✓[/green] {title} [dim]({took:.1f} s)[/dim]", highlight=False)

    def note(self, message: str) -> None:
        self.console.print(f"  {message}", markup=False, highlight=False, soft_wrap=True)

    def bar(self, unit: str | None = None) -> Progress:
        """A progress bar on this output, for work with several counted parts (e.g. trials in two phases)."""
        return progress_bar(self.console, unit)

    def quiet(self) -> "Steps":
        """Steps that print nothing: a step run again inside another (its lines would repeat the outer one's)."""
        return Steps(Console(quiet=True))


class RateColumn(ProgressColumn):
    """Items per second (images/s), once rich has measured a rate."""

    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task) -> Text:
        return Text(f"{task.speed:.1f} {self.unit}/s" if task.speed else "", style="progress.data.speed")


def progress_bar(console: Console, unit: str | None = None, transient: bool = False) -> Progress:
    """A bar with done/total and elapsed time; with ``unit``, also the rate and the time left."""
    columns = [SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    if unit is not None:
        columns += [RateColumn(unit), TextColumn("left"), TimeRemainingColumn()]
    return Progress(*columns, console=console, transient=transient)


def counted(n: int, singular: str, plural: str | None = None) -> str:
    """``1 class``, ``2 classes``: a count with its noun in the right number."""
    return f"{n} {singular if n == 1 else (plural or singular + 's')}"
