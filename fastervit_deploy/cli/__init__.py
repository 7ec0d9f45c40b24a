"""The `fvdeploy` command line (Typer lives in this package only)."""

from .app import app, main, run

__all__ = ["app", "main", "run"]
