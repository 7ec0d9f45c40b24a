"""Class names: ImageNet's for an ImageNet head, the model's own (a labels file, a checkpoint) otherwise,
and the mapping from what a data set calls its classes to the model's output indices."""

from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from ..system.errors import FvdeployError

IMAGENET_CLASSES = Path(__file__).parents[1] / "data" / "imagenet1k_classes.tsv"  # package data
IMAGENET_SIZE = 1000
_SYNSET = re.compile(r"^n\d{8}$")


@functools.cache
def _imagenet_rows() -> tuple[tuple[str, tuple[str, ...]], ...]:
    """(synset id, lemmas) in output order."""
    rows = IMAGENET_CLASSES.read_text().splitlines()[1:]
    return tuple((row.split("\t")[1], tuple(n.strip() for n in row.split("\t")[2].split(","))) for row in rows)


def imagenet_names() -> list[str]:
    """ImageNet-1k names in output order (first lemma of each synset)."""
    return [lemmas[0] for _, lemmas in _imagenet_rows()]


def imagenet_synsets() -> list[str]:
    return [synset for synset, _ in _imagenet_rows()]


def class_names(num_classes: int, names: tuple[str, ...] | None = None) -> list[str]:
    """The names of a head's classes: its own, else ImageNet's for a 1000-class head, else ``class i``."""
    if names:
        return list(names)
    return imagenet_names() if num_classes == IMAGENET_SIZE else [f"class {i}" for i in range(num_classes)]


def read_labels_file(path: Path, num_classes: int) -> tuple[str, ...]:
    """One class name per line, exactly ``num_classes`` lines (blank lines at the end ignored)."""
    path = Path(path)
    if not path.is_file():
        raise FvdeployError(f"labels file not found: {path}")
    try:
        names = tuple(line.strip() for line in path.read_text().rstrip("\n").splitlines())
    except UnicodeDecodeError as err:
        raise FvdeployError(f"labels file {path} is not text") from err
    if len(names) != num_classes:
        raise FvdeployError(f"labels file {path.name} has {len(names)} names, the model has {num_classes} classes "
                            "(one name per line, in output order)")
    if not all(names):
        raise FvdeployError(f"labels file {path.name} has an empty name on line {names.index('') + 1}")
    seen: dict[str, int] = {}
    for line, name in enumerate(names, start=1):
        if _key(name) in seen:
            raise FvdeployError(f"labels file {path.name} names {name!r} twice (lines {seen[_key(name)]} and {line}): "
                                "each class needs its own name")
        seen[_key(name)] = line
    return names


def _key(text: str) -> str:
    """How names are compared: case, runs of spaces and underscores, and Unicode spelling (NFC: a macOS folder
    name comes decomposed, NFD) do not count."""
    return re.sub(r"[\s_]+", " ", unicodedata.normalize("NFC", text).strip().lower())


@dataclass(frozen=True)
class ClassMap:
    """What a data set may call a class, to the model's output index: the model's class names, class
    indices, and for an ImageNet head its synset ids (``n01440764``) and lemmas (``tench``)."""

    names: tuple[str, ...]
    imagenet: bool  # an ImageNet-1k head: synsets and every lemma name its classes too

    @classmethod
    def of(cls, num_classes: int, names: tuple[str, ...] | None) -> "ClassMap":
        return cls(tuple(class_names(num_classes, names)), num_classes == IMAGENET_SIZE and not names)

    @functools.cached_property
    def _by_name(self) -> dict[str, set[int]]:
        table: dict[str, set[int]] = {}
        for i, name in enumerate(self.names):
            table.setdefault(_key(name), set()).add(i)
        if self.imagenet:
            for i, (_, lemmas) in enumerate(_imagenet_rows()):
                for lemma in lemmas:
                    table.setdefault(_key(lemma), set()).add(i)
        return table

    def resolve(self, token: str) -> tuple[int, str] | None:
        """(index, how it was recognised), or None; an ambiguous name (ImageNet has two 'crane's) is None."""
        token = token.strip()
        if self.imagenet and _SYNSET.match(token):
            synsets = imagenet_synsets()
            return (synsets.index(token), "synset") if token in synsets else None
        found = self._by_name.get(_key(token), set())
        if len(found) == 1:
            return (next(iter(found)), "name")
        digits = token.removeprefix("class ").removeprefix("class_")
        if digits.isdigit() and int(digits) < len(self.names):
            return (int(digits), "index")
        return None

    def explain(self) -> str:
        """What this model's classes may be called (for an error about a name that is none of them)."""
        ways = ["the model's class names" if not self.imagenet else "ImageNet class names", f"indices 0..{len(self.names) - 1}"]
        if self.imagenet:
            ways.insert(0, "ImageNet synset ids (n01440764)")
        return ", ".join(ways)
