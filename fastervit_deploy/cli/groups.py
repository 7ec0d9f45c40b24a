"""Option groups as Typer parameters, built from their one declaration (``core.declare``).

A command names a group class as a parameter type; ``with_groups`` expands it into the group's
options for Typer (flags, help, ranges, choices, panel) and hands the command the parsed, immutable
group. Typer stays in this package; the groups themselves know nothing of it.
"""

from __future__ import annotations

import enum
import functools
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


def _parameter(group: type[OptionGroup], field, opt: Opt, hint: Any) -> inspect.Parameter:
    flags = opt.flags
    if not flags and _field_type(hint) is bool and not opt.negatable:
        flags = ("--" + field.name.replace("_", "-"),)  # a plain flag (Typer would add --no-...)
    declaration = typer.Option(*flags, help=opt.help, min=opt.min, max=opt.max, metavar=opt.metavar,
                               rich_help_panel=opt.panel or group.PANEL or None, show_default=not opt.repeat)
    annotation = Annotated[_cli_type(field.name, opt, hint, field.default), declaration]
    default = inspect.Parameter.empty if opt.required else (None if opt.repeat else field.default)
    return inspect.Parameter(field.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)


def parameters(group: type[OptionGroup]) -> list[inspect.Parameter]:
    return [_parameter(group, f, opt, hint) for f, opt, hint in group.declared()]


def parse(group: type[OptionGroup], values: dict[str, Any]) -> OptionGroup:
    """The group from Typer's values: an option left out takes the field's default."""
    parsed = {}
    for f, _, _ in group.declared():
        value = values.pop(f.name)
        if isinstance(value, enum.Enum):
            value = value.value  # a choices subset's member too: the field's own enum takes its value
        parsed[f.name] = f.default if value is None and f.default is not None else value
    return group.from_cli(**parsed)


def with_groups(fn: Callable) -> Callable:
    """Expand every ``OptionGroup``-typed parameter of ``fn`` into the group's options (for Typer)."""
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
    @functools.wraps(fn)
    def command(**values: Any) -> Any:
        for name, group in groups.items():
            values[name] = parse(group, values)
        return fn(**values)

    del command.__wrapped__  # Typer must see the expanded signature below, not fn's
    command.__signature__ = inspect.Signature(params)
    command.__annotations__ = {p.name: p.annotation for p in params}
    return command


JsonOpt = Annotated[Optional[Path], typer.Option("--json", help="Also write the results as JSON here.")]
PlotOpt = Annotated[Optional[Path], typer.Option("--plot", help="Write a PNG plot here.")]
OverwriteReports = Annotated[bool, typer.Option("--overwrite", help="Replace existing --json/--plot files (never "
                                                                   "one of the command's inputs).")]
