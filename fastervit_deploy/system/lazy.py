"""Heavy code named by ``"module:attribute"`` strings, imported on first use (tables stay cheap to read)."""

from __future__ import annotations

import functools
import importlib
from typing import Any


@functools.cache
def load(spec: str) -> Any:
    """``"package.module:Name.attr"`` → that object (the module imported now, once)."""
    module, _, attribute = spec.partition(":")
    target: Any = importlib.import_module(module)
    for part in attribute.split("."):
        target = getattr(target, part)
    return target
