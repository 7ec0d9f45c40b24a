"""Options declared once, on the dataclass field they fill (Polygraphy's argument groups, without Typer).

An option group is a frozen dataclass whose fields carry their command-line declaration (``option``):
flags, help, range, and how a command-line value becomes the field's value and back. From that one
declaration the CLI layer builds the Typer parameters (``cli/groups.py``), ``from_cli`` parses what
Typer read, and ``argv`` writes the options that reproduce the group's values. Field names are option
names (``calib_dir`` is ``--calib-dir``); each default is the field's default, stated once.

What the user gave is recorded when the command line is parsed (``given``), never inferred from values:
``--method entropy`` given explicitly is given even though entropy is the default, and a step whose own
default differs (FP8 calibrates with max unless a method is given) must see that. The declared ``min`` and
``max`` are enforced here, for the command line and the Python API alike.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar

from ..system.errors import FvdeployError


class Choice(str, enum.Enum):
    """An enum whose members read as their values (in f-strings, JSON and command lines)."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


@dataclass(frozen=True)
class Opt:
    """How one field appears on the command line."""

    help: str
    flags: tuple[str, ...] = ()  # default: --field-name
    metavar: str | None = None
    min: float | None = None
    max: float | None = None
    cli_type: Any = None  # what Typer parses, where it differs from the field's type
    parse: Callable[[Any], Any] | None = None  # Typer's value -> the field's value
    text: Callable[[Any], list[str]] | None = None  # the field's value -> its command-line words
    choices: tuple[Any, ...] | None = None  # a subset of an enum field's members
    negatable: bool = False  # --x/--no-x (an Optional[bool] field)
    repeat: bool = False  # may be given several times (a tuple field)
    required: bool = False
    bare: str | None = None  # the value the flag stands for when no value follows it (Typer has no optional values)
    one_for_both: bool = False  # a two-value option given one value means it twice (--resolution 224: 224 224)
    panel: str | None = None  # default: the group's
    reproduce: bool = True  # part of the command line that remakes an artifact


def option(default: Any, help: str, **declaration: Any) -> Any:
    """A dataclass field with its command-line declaration."""
    return dataclasses.field(default=default, metadata={"cli": Opt(help=help, **declaration)})


def ints(flag: str) -> Callable[[Any], tuple[int, ...] | None]:
    """``"7,7,12,6"`` or ``"7 7"`` (or a repeated option's list) → a tuple of ints."""

    def parse(text: str | list[str] | None) -> tuple[int, ...] | None:
        if text is None or text == [] or text == ():
            return None
        if isinstance(text, tuple) and all(isinstance(v, int) for v in text):
            return text
        parts = [text] if isinstance(text, str) else [str(t) for t in text]
        try:
            return tuple(int(p) for chunk in parts for p in chunk.replace(",", " ").split())
        except ValueError as err:
            raise FvdeployError(f"{flag} must be integers, got {' '.join(parts)!r}") from err

    return parse


def joined(values: tuple[int, ...]) -> list[str]:
    return [",".join(map(str, values))]


def _words(value: Any) -> list[str]:
    if isinstance(value, enum.Enum):
        return [str(value.value)]
    if isinstance(value, float):
        return [repr(value)]
    if isinstance(value, tuple):
        return [w for v in value for w in _words(v)]
    return [str(value)]


def _field_type(hint: Any) -> Any:
    """``X | None`` → X."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if (typing.get_origin(hint) in (typing.Union, types.UnionType)) and len(args) == 1:
        return args[0]
    return hint


@dataclass(frozen=True)
class OptionGroup:
    """Base of the option groups (frozen dataclasses whose fields are declared with ``option``)."""

    PANEL: ClassVar[str] = ""

    # The fields the user gave: set by the command-line parser (``from_cli``); a group built in code counts the
    # fields whose value differs from the default as given. Not part of the group's value (not compared).
    given: frozenset[str] = dataclasses.field(default=None, kw_only=True, compare=False, repr=False)  # type: ignore[assignment]

    @classmethod
    @functools.cache
    def declared(cls) -> tuple[tuple[dataclasses.Field, Opt, Any], ...]:
        """(field, declaration, field type) of every command-line field, in declaration order."""
        hints = typing.get_type_hints(cls)
        return tuple((f, f.metadata["cli"], hints[f.name]) for f in dataclasses.fields(cls) if "cli" in f.metadata)

    @classmethod
    def declaration(cls, name: str) -> Opt:
        return next(o for f, o, _ in cls.declared() if f.name == name)

    @classmethod
    def flag(cls, name: str) -> str:
        opt = cls.declaration(name)
        return opt.flags[0].split("/")[0] if opt.flags else "--" + name.replace("_", "-")

    @classmethod
    def from_cli(cls, given: frozenset[str] | set[str] = frozenset(), **values: Any) -> "OptionGroup":
        """The group from the values a command line gave (``given``: the fields it named; the others take their
        defaults)."""
        parsed = {}
        for f, opt, _ in cls.declared():
            if f.name not in given:
                continue
            value = values[f.name]
            if opt.parse is not None:
                value = opt.parse(value)
            elif isinstance(value, list):
                value = tuple(value)
            parsed[f.name] = value
        return cls(given=frozenset(given), **parsed)

    def __post_init__(self) -> None:
        # API callers may give enum members as their string values, and lists for tuples.
        for f, opt, hint in self.declared():
            kind, value = _field_type(hint), getattr(self, f.name)
            if isinstance(kind, type) and issubclass(kind, enum.Enum) and value is not None and not isinstance(value, kind):
                try:
                    object.__setattr__(self, f.name, kind(value))
                except ValueError as err:
                    choices = ", ".join(repr(m.value) for m in kind)
                    raise FvdeployError(f"{self.flag(f.name)}: {value!r} is not one of {choices}") from err
            elif isinstance(value, list):
                object.__setattr__(self, f.name, tuple(value))
            elif kind is Path and isinstance(value, str):
                object.__setattr__(self, f.name, Path(value))
            self._check_range(f.name, opt, getattr(self, f.name))
        if self.given is None:
            object.__setattr__(self, "given", frozenset(self.changed()))

    def _check_range(self, name: str, opt: Opt, value: Any) -> None:
        """The declared bounds (inclusive), for every number the field holds."""
        if opt.min is None and opt.max is None:
            return
        for v in value if isinstance(value, tuple) else (value,):
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                continue
            if (opt.min is not None and v < opt.min) or (opt.max is not None and v > opt.max):
                bound = (f"{opt.min:g}..{opt.max:g}" if opt.min is not None and opt.max is not None else
                         f"at least {opt.min:g}" if opt.min is not None else f"at most {opt.max:g}")
                raise FvdeployError(f"{self.flag(name)} must be {bound}, got {v:g}")

    def changed(self) -> tuple[str, ...]:
        """Names of the fields whose value is not the default (not what the user gave: that is ``given``)."""
        return tuple(f.name for f, _, _ in self.declared() if getattr(self, f.name) != f.default)

    def given_flags(self) -> list[str]:
        """The flags of the given fields, in declaration order (for messages)."""
        return [self.flag(f.name) for f, _, _ in self.declared() if f.name in self.given]

    def values(self) -> dict[str, Any]:
        """The declared fields' values, by name."""
        return {f.name: getattr(self, f.name) for f, _, _ in self.declared()}

    def argv(self) -> list[str]:
        """The options that reproduce this group's values: the given ones and those that differ from the default
        (a default given explicitly is kept: a later step may have another default of its own)."""
        words: list[str] = []
        for f, opt, _ in self.declared():
            value = getattr(self, f.name)
            if not opt.reproduce or (value == f.default and f.name not in self.given):
                continue
            flags = opt.flags[0].split("/") if opt.flags else ["--" + f.name.replace("_", "-")]
            if isinstance(value, bool):
                if value or opt.negatable:
                    words.append(flags[0] if value else flags[1])
            elif opt.repeat:
                for item in value:
                    words += [flags[0], *(opt.text(item) if opt.text else _words(item))]
            else:
                words += [flags[0], *(opt.text(value) if opt.text else _words(value))]
        return words

    def replace(self, **changes: Any) -> "OptionGroup":
        return dataclasses.replace(self, **changes)
