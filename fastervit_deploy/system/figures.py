"""Matplotlib figures for the reports (`--plot`): drawn without a display, published like every output."""

from __future__ import annotations

from pathlib import Path

from .files import atomic_output


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed; imported only when a plot is asked for)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path: Path, overwrite: bool) -> None:
    """Write ``fig`` to ``path`` whole or not at all (checked before the work: ``check_output``), then free it."""
    try:
        with atomic_output(path, overwrite) as tmp:
            fig.savefig(tmp, dpi=100, format="png")
    finally:
        pyplot().close(fig)
