"""The `fvdeploy` application: commands registered explicitly, every known failure one line on stderr."""

from __future__ import annotations

import functools
import sys
import warnings
from typing import Annotated, Callable, Optional

import typer

from ..version import __version__
from ..system import lifecycle
from ..core import options
from ..core.declare import Opt, OptionGroup
from ..system.errors import EXIT_INTERNAL, FvdeployError, exit_code_of, internal_error_line, one_line, reader_gone
from ..system.progress import console
from . import commands
from .groups import command

app = typer.Typer(
    name="fvdeploy",
    help="Deploy FasterViT to ONNX, TensorRT and Core ML, and prove the artifact computes what PyTorch computes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
_state = {"debug": False}


def one_line_errors(fn: Callable) -> Callable:
    """Known failures become ``error: <message>`` and their exit code; --debug keeps the traceback."""

    @functools.wraps(fn)
    def run(**kwargs):
        try:
            return fn(**kwargs)
        except typer.Exit:
            raise
        except BrokenPipeError:
            raise typer.Exit(reader_gone()) from None
        except KeyboardInterrupt:
            raise typer.Exit(_interrupted()) from None
        except Exception as err:  # noqa: BLE001 - classified below; anything unknown keeps its traceback
            if lifecycle.interrupted() and not _state["debug"]:
                # A library that swallowed the KeyboardInterrupt fails later on what it left half-done:
                # that failure is the interruption, not an error of its own.
                raise typer.Exit(_interrupted()) from None
            if _state["debug"]:
                raise
            code = exit_code_of(err)
            line = f"error: {one_line(err)}" if code is not None else internal_error_line(err)
            console.print(line, markup=False, style="red", soft_wrap=True)
            raise typer.Exit(EXIT_INTERNAL if code is None else code) from err

    return run


def _interrupted() -> int:
    lifecycle.acknowledge()
    console.print("interrupted", style="red", highlight=False)
    return lifecycle.exit_code()


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


COMMANDS: tuple[tuple[str, Callable], ...] = (
    ("models", commands.models),
    ("formats", commands.formats),
    ("export-onnx", commands.export_onnx),
    ("inspect", commands.inspect),
    ("verify", commands.verify),
    ("benchmark", commands.benchmark),
    ("predict", commands.predict),
    ("evaluate", commands.evaluate),
    ("quantize", commands.quantize),
    ("debug", commands.debug),
    ("build-trt", commands.build_trt),
    ("coreml", commands.coreml),
    ("triton", commands.triton),
    ("triton-serve", commands.triton_serve),
)
for _name, _fn in COMMANDS:
    app.command(_name)(one_line_errors(command(_fn)))


def _declared(keep: Callable[[Opt], bool]) -> dict[str, Opt]:
    """The declared options that ``keep`` picks, by flag."""
    groups = [g for g in vars(options).values() if isinstance(g, type) and issubclass(g, OptionGroup) and g is not OptionGroup]
    return {g.flag(f.name): opt for g in groups for f, opt, _ in g.declared() if keep(opt)}


def _integer(word: str | None) -> bool:
    return word is not None and word.lstrip("-").isdigit() and not word.startswith("--")


def _takes(opt: Opt, word: str) -> bool:
    try:
        opt.parse(word)
    except FvdeployError:
        return False
    return not word.startswith("-")


def expand_optional_values(argv: list[str]) -> list[str]:
    """A bare option stands for its declared value: ``--features`` followed by no index list is ``--features 0,1,2,3``;
    a two-value option followed by one number means it twice: ``--resolution 224`` is ``--resolution 224 224``."""
    bare, doubled = _declared(lambda o: o.bare is not None), _declared(lambda o: o.one_for_both)
    out: list[str] = []
    for i, arg in enumerate(argv):
        out.append(arg)
        following = argv[i + 1:i + 3] + [None, None]
        if arg in bare and (i + 1 == len(argv) or not _takes(bare[arg], argv[i + 1])):
            out.append(bare[arg].bare)
        elif arg in doubled and _integer(following[0]) and not _integer(following[1]):
            out.append(following[0])
    return out


def run(argv: list[str] | None = None, prog_name: str | None = None) -> int:
    """Run one command line; return its exit code. Every error, usage errors included, is one line."""
    argv = expand_optional_values(sys.argv[1:] if argv is None else list(argv))
    if "--debug" not in argv[:1]:
        # Libraries' warnings (torch's exporter, PIL's decompression-bomb notice) name their own source files and
        # say nothing a user can act on; what matters is checked and said in fvdeploy's own lines. --debug shows them.
        warnings.filterwarnings("ignore")
    try:
        code = app(args=argv, prog_name=prog_name, standalone_mode=False)
    except Exception as exc:
        # Usage errors (unknown option, bad value) come from the Click that Typer vendors: print them as
        # one line like every other error instead of a framed block.
        if not (hasattr(exc, "format_message") and hasattr(exc, "exit_code")):
            raise
        ctx = getattr(exc, "ctx", None)
        hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        if exc.format_message():  # no arguments: the help was printed, and there is nothing else to say
            console.print(f"error: {exc.format_message()}{hint}", markup=False, style="red", soft_wrap=True)
        return exc.exit_code
    return code if isinstance(code, int) else 0

