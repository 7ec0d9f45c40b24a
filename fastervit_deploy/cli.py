"""The `fvdeploy` command line: a thin layer over the backend modules."""

from __future__ import annotations

import functools
import sys
from typing import Annotated, Callable, Optional

import typer
from rich.console import Console

from . import __version__
from .errors import USER_ERRORS, FvdeployError

app = typer.Typer(
    name="fvdeploy",
    help="Deploy FasterViT to ONNX, TensorRT and Core ML, and prove the artifact computes what PyTorch computes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True, highlight=False)
_state = {"debug": False}


def log(message: str) -> None:
    console.print(message, markup=False)


def command(name: str | None = None, **kwargs) -> Callable:
    """Register a command whose known failures become one line on stderr and a non-zero exit."""

    def wrap(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def run(*args, **kw):
            try:
                return fn(*args, **kw)
            except typer.Exit:
                raise
            except USER_ERRORS as err:
                if _state["debug"]:
                    raise
                message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                console.print(f"error: {message}", markup=False, style="red", soft_wrap=True)
                raise typer.Exit(getattr(err, "exit_code", 2)) from None
            except KeyboardInterrupt:
                console.print("interrupted", style="red")
                raise typer.Exit(130) from None

        return app.command(name, **kwargs)(run)

    return wrap


def _version(value: bool) -> None:
    if value:
        print(f"fvdeploy {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks instead of one-line errors.")] = False,
    version: Annotated[
        Optional[bool], typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = None,
) -> None:
    _state["debug"] = debug


@command("models")
def models_cmd(
    pattern: Annotated[str, typer.Argument(help="Glob over model names.")] = "*",
) -> None:
    """List the registered FasterViT variants."""
    from .model_table import models_table

    table = models_table(pattern)
    if not table.row_count:
        raise FvdeployError(f"no model matches {pattern!r}")
    Console().print(table)


def _register_backends() -> None:
    # Each backend module adds its commands to `app`; imports stay light (heavy ones are lazy inside).
    from . import commands  # noqa: F401


def main() -> None:
    _register_backends()
    try:
        code = app(standalone_mode=False)
    except Exception as exc:
        # Usage errors (unknown option, missing value) come from the Click that Typer vendors: print them
        # as one line like every other error instead of a framed block.
        if not (hasattr(exc, "format_message") and hasattr(exc, "exit_code")):
            raise
        ctx = getattr(exc, "ctx", None)
        hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        console.print(f"error: {exc.format_message()}{hint}", markup=False, style="red", soft_wrap=True)
        sys.exit(exc.exit_code)
    sys.exit(code if isinstance(code, int) else 0)
