"""JSON text for the reports (`--json`): indented for people, with each list of plain numbers on one line.

Indenting every number puts each on a line of its own: a 1000-class confusion matrix became two million lines per
artifact, and Python's indenting encoder (pure Python; only compact output takes the C encoder) took 6 s to write it.
Here the number lists are encoded compactly by the C encoder and spliced into the indented rest."""

from __future__ import annotations

import json
import re
import secrets
from typing import Any, Callable

_NUMBER = (bool, int, float, type(None))


def dumps(data: Any, default: Callable[[Any], Any] = str) -> str:
    lines: list[str] = []
    mark = secrets.token_hex(8)  # placeholders no string in the data can spell by chance

    def fold(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: fold(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            if value and all(isinstance(v, _NUMBER) for v in value):
                lines.append(json.dumps(list(value), separators=(", ", ": ")))
                return f"@{mark}:{len(lines) - 1}@"
            return [fold(v) for v in value]
        return value

    text = json.dumps(fold(data), indent=2, default=default)
    return re.sub(rf'"@{mark}:(\d+)@"', lambda m: lines[int(m.group(1))], text)
