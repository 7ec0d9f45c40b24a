"""fastervit: a clean-room, export-friendly FasterViT that loads the official checkpoints.

Names are imported on first use (PEP 562): the registry, configurations and geometry need no torch,
so tools can read them (and refuse bad input) before torch loads.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "checkpoint": ("CheckpointError", "LoadReport", "load_checkpoint", "read_checkpoint", "save_checkpoint"),
    "config": ("FasterViTConfig", "FasterViTError", "ModelEntry", "PretrainedCfg"),
    "init": ("checkpoint_like_",),
    "geometry": ("MemoryEstimate", "StagePlan", "UnsupportedResolutionError", "estimate_memory", "plan_stages",
                 "suggest_windows"),
    "model": ("FasterViT",),
    "params": ("count_params",),
    "registry": ("UnknownModelError", "any_res_variant", "build_meta", "create_model", "get_entry", "instantiate",
                 "list_models", "model_config"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'fastervit' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
