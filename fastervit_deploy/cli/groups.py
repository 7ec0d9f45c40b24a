"""Option groups as Typer parameters, built from their one declaration (``core.declare``).

A command names a group class as a parameter type; ``command`` expands it into the group's
options for Typer (flags, help, ranges, choices, panel) and hands the command the parsed, immutable
group. Typer stays in this package; the groups themselves know nothing of it.
"""

from __future__ import annotations

import enum
import inspect
import typing
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer

from ..core.declare import Opt, OptionGroup, _field_type


def _cli_type(name: str, opt: Opt, hint: Any, default: Any) -> Any:
    kind = opt.cli_type or _field_type(hint)
    if opt.choices:  # Typer offers exactly these members
        kind = enum.Enum(f"{name}_choices", {c.name: c.value for c in opt.choices}, type=str)
    if opt.repeat and opt.cli_type is None:
        kind = list[typing.get_args(kind)[0]] if typing.get_args(kind) else list[str]
    if default is None or opt.repeat:
        kind = Optional[kind]
    return kind


def _flag_only(opt: Opt, hint: Any) -> bool:
    """A plain flag (``--fp16``): present or not, no value and no --no- form."""
    return _field_type(hint) is bool and not opt.negatable


def _shown_default(opt: Opt, default: Any) -> bool | str:
    """The default as --help shows it (Typer itself sees None: an option left out is then told from one given)."""
    if opt.repeat or default is None or isinstance(default, bool):
        return False
    return str(default)


def _parameter(group: type[OptionGroup], field, opt: Opt, hint: Any) -> inspect.Parameter:
    flags = opt.flags
    flag_only = _flag_only(opt, hint)
    if not flags and flag_only:
        flags = ("--" + field.name.replace("_", "-"),)  # a plain flag (Typer would add --no-...)
    declaration = typer.Option(*flags, help=opt.help, min=opt.min, max=opt.max, metavar=opt.metavar,
                               rich_help_panel=opt.panel or group.PANEL or None,
                               show_default=_shown_default(opt, field.default))
    # Typer's default is None for every option that takes a value (False for a plain flag): a value that is not
    # None (True) was given on the command line.
    annotation = Annotated[_cli_type(field.name, opt, hint, None if not flag_only else field.default), declaration]
    default = inspect.Parameter.empty if opt.required else (False if flag_only else None)
    return inspect.Parameter(field.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)


def parameters(group: type[OptionGroup]) -> list[inspect.Parameter]:
    return [_parameter(group, f, opt, hint) for f, opt, hint in group.declared()]


def parse(group: type[OptionGroup], values: dict[str, Any]) -> OptionGroup:
    """The group from Typer's values, with the fields the command line gave (None or a plain flag's False: left
    out)."""
    parsed = {}
    for f, opt, hint in group.declared():
        value = values.pop(f.name)
        if isinstance(value, enum.Enum):
            value = value.value  # a choices subset's member too: the field's own enum takes its value
        left_out = value is None or value == [] or (value is False and _flag_only(opt, hint))
        if not left_out:
            parsed[f.name] = value
    return group.from_cli(given=frozenset(parsed), **parsed)


def command(fn: Callable) -> Callable:
    """``fn`` as a Typer command: each ``OptionGroup``-typed parameter becomes the group's declared options.

    Typer reads a command's options from its signature, so the command Typer sees is a new function whose
    ``__signature__`` lists the groups' options (built from their declarations) beside ``fn``'s own parameters;
    it parses each group once and calls ``fn`` with the immutable groups. ``fn`` itself is not changed.
    """
    hints = typing.get_type_hints(fn, include_extras=True)
    params: list[inspect.Parameter] = []
    groups: dict[str, type[OptionGroup]] = {}
    for p in inspect.signature(fn).parameters.values():
        hint = hints.get(p.name, p.annotation)
        if isinstance(hint, type) and issubclass(hint, OptionGroup):
            groups[p.name] = hint
            params.extend(parameters(hint))
        else:
            params.append(p.replace(annotation=hint, kind=inspect.Parameter.KEYWORD_ONLY))
    names = [p.name for p in params]
    if len(names) != len(set(names)):
        raise TypeError(f"{fn.__name__}: two options share a name: {sorted(n for n in names if names.count(n) > 1)}")

    def run(**values: Any) -> Any:
        for name, group in groups.items():
            values[name] = parse(group, values)
        return fn(**values)

    run.__name__, run.__qualname__, run.__doc__, run.__module__ = fn.__name__, fn.__qualname__, fn.__doc__, fn.__module__
    run.__signature__ = inspect.Signature(params)  # what Typer reads (inspect.signature honours it)
    return run


JsonOpt = Annotated[Optional[Path], typer.Option("--json", help="Also write the results as JSON here.")]
PlotOpt = Annotated[Optional[Path], typer.Option("--plot", help="Write a PNG plot here.")]
OverwriteReports = Annotated[bool, typer.Option("--overwrite", help="Replace existing --json/--plot files (never "
                                                                   "one of the command's inputs).")]
