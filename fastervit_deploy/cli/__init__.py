"""The `fvdeploy` command line (Typer lives in this package only)."""

from __future__ import annotations

import sys


def main() -> None:
    """The console script: signals are routed first (``lifecycle``), then the CLI is imported and run."""
    import os

    from ..system import lifecycle

    try:
        os.getcwd()
    except FileNotFoundError:  # relative paths mean nothing, and native libraries fail to load (oneMKL)
        print("error: the current folder no longer exists (deleted or moved): cd into an existing folder",
              file=sys.stderr)
        sys.exit(2)
    lifecycle.install()
    try:
        from .app import run

        code = run()
    except (KeyboardInterrupt, Exception) as exc:  # before or after a command (a command reports its own)
        if not (isinstance(exc, KeyboardInterrupt) or lifecycle.interrupted()):
            raise
        lifecycle.acknowledge()
        print("interrupted", file=sys.stderr)
        code = lifecycle.exit_code()
    sys.exit(code)


def run(argv: list[str] | None = None, prog_name: str | None = None) -> int:
    """Run one command line in this process and return its exit code (no signal routing)."""
    from .app import run as run_app

    return run_app(argv, prog_name)


__all__ = ["main", "run"]
