"""Safe checkpoint loading: official ``.pth.tar`` files and our own, never running pickled code."""

from __future__ import annotations

import argparse
import collections
import os
import pickle
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from .config import FasterViTError

# Official files are timm CheckpointSaver dicts whose `args` entry is an argparse.Namespace
# (SPEC.md §1.4). That is the only global we allow the weights-only unpickler to rebuild.
SAFE_GLOBALS = [argparse.Namespace]

# Buffers that are pure functions of the window/carrier geometry (or caches of the position MLPs):
# always recomputed from the model's own construction, never trusted from a file.
DERIVED_BUFFER_SUFFIXES = ("relative_coords_table", "relative_position_index", "relative_bias")


class CheckpointError(FasterViTError):
    """A checkpoint that cannot be read or does not fit the model."""


@dataclass
class LoadReport:
    loaded: int = 0
    recomputed: list[str] = field(default_factory=list)  # derived buffers whose shape differed
    dropped: list[str] = field(default_factory=list)  # checkpoint keys without a module here
    missing_counters: list[str] = field(default_factory=list)  # BatchNorm num_batches_tracked
    unused: list[str] = field(default_factory=list)  # classifier/later-stage keys a backbone does not build
    prefix: str = ""
    left_by_prefix: int = 0  # checkpoint keys outside ``prefix`` (a detector's neck and head)

    def summary(self) -> str:
        parts = [f"loaded {self.loaded} tensors"]
        if self.prefix:
            parts[0] += f" under {self.prefix!r} (left {self.left_by_prefix} other keys)"
        if self.unused:
            parts.append(f"left {len(self.unused)} keys the backbone does not use ({_short(sorted({k.split('.')[0] + '.*' if not k.startswith('levels.') else '.'.join(k.split('.')[:3]) + '.*' for k in self.unused}))})")
        if self.recomputed:
            parts.append(f"recomputed {len(self.recomputed)} geometry buffers for this resolution/windows")
        if self.dropped:
            prefixes = sorted({k.split(".hat_pos_embed")[0] + ".hat_pos_embed.*" if ".hat_pos_embed." in k else k for k in self.dropped})
            parts.append(f"dropped {len(self.dropped)} keys with no module here ({_short(prefixes)})")
        return "; ".join(parts)


def _short(names: list[str], limit: int = 3) -> str:
    return ", ".join(names[:limit]) + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def read_checkpoint(path: str | Path, mmap: bool = False) -> dict[str, Any]:
    """``torch.load`` with ``weights_only=True``; anything that would run code is refused.

    ``mmap=True`` maps the tensors instead of reading them (zip-format files): a cheap way to look at
    a checkpoint's keys and saved configuration before any slow work.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"cannot read checkpoint {path.name}: the file is empty")
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and zipfile.is_zipfile(path))
    except pickle.UnpicklingError as err:
        culprit = next((line.strip() for line in str(err).splitlines() if "unsupported global" in line.lower()), None)
        if culprit is None:  # not a pickle at all, or a damaged one
            raise CheckpointError(f"cannot read checkpoint {path.name}: not a PyTorch checkpoint") from err
        raise CheckpointError(f"refusing to load {path.name}: not a weights-only checkpoint ({culprit})") from err
    except Exception as err:  # noqa: BLE001 - zip, EOF and stream errors: torch's own messages name its internals
        raise CheckpointError(f"cannot read checkpoint {path.name}: the file is truncated, damaged or not a "
                              "PyTorch checkpoint") from err
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"checkpoint {path.name} holds a {type(obj).__name__}, not a state_dict")
    return dict(obj)


def extract_state_dict(obj: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Pick the weights the way the official loader does (``state_dict`` / ``model`` / bare dict)."""
    for key in ("state_dict", "model"):
        if isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    state = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise CheckpointError("checkpoint has no tensors under 'state_dict', 'model' or at the top level")
    keys = list(state)
    if keys[0].startswith("module."):
        state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    if sorted(state)[0].startswith("encoder"):
        state = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
    return state


def _is_derived(key: str) -> bool:
    return key.rsplit(".", 1)[-1] in DERIVED_BUFFER_SUFFIXES


def _unused_by_backbone(model: nn.Module, key: str) -> bool:
    """A classifier checkpoint in a backbone: head, final norm, stages and the downsampler it does not build."""
    cfg = getattr(model, "cfg", None)
    if cfg is None or not cfg.features_only:
        return False
    if key.startswith(("head.", "norm.")):
        return True
    parts = key.split(".")
    if parts[0] == "levels" and len(parts) > 2 and parts[1].isdigit():
        level = int(parts[1])
        return level >= len(model.levels) or (parts[2] == "downsample" and model.levels[level].downsample is None)
    return False


def has_feature_norms(state: Mapping[str, Any]) -> bool:
    """A detection backbone's per-level channel LayerNorms (``norm0``.., and a ``norm`` that is no BatchNorm)."""
    return any(f"norm{i}.weight" in state for i in range(3)) or ("norm.weight" in state and "norm.running_mean" not in state)


STEM = "patch_embed."  # every FasterViT state_dict has its stem's keys at the top


def nested_prefix(state: Mapping[str, Any]) -> str | None:
    """The prefix a model's keys sit under when the state has no stem at the top (a detector's ``backbone.0.``),
    or None: a FasterViT checkpoint at the top level, or no FasterViT inside."""
    if any(k.startswith(STEM) for k in state):
        return None
    found = collections.Counter(k.split(STEM)[0] for k in state if STEM in k)
    found = collections.Counter({p: n for p, n in found.items() if p.endswith(".")})
    return found.most_common(1)[0][0] if found else None


def take_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> tuple[dict[str, torch.Tensor], int]:
    """The keys under ``prefix`` (a detector's ``backbone.0.``), renamed; and how many other keys were left."""
    if not prefix:
        return dict(state), 0
    taken = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not taken:
        heads = sorted({k.split(".")[0] + "." for k in state})
        raise CheckpointError(f"no checkpoint key starts with {prefix!r} (keys start with {_short(heads)})")
    return taken, len(state) - len(taken)


def match_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """Check ``state`` against the model; return the full dict to load strictly, and the report.

    Accepted differences: derived buffers (kept from the model), ``hat_pos_embed.*`` keys where this
    model has no carrier position MLP (non-square carrier grid), missing ``num_batches_tracked``.
    Anything else is an error naming the keys.
    """
    own = model.state_dict()
    report = LoadReport()
    merged: dict[str, torch.Tensor] = {}
    missing, mismatched = [], []
    for key, ref in own.items():
        if _is_derived(key):
            merged[key] = ref
            if key in state and tuple(state[key].shape) != tuple(ref.shape):
                report.recomputed.append(key)
            continue
        if key not in state:
            if key.endswith("num_batches_tracked"):
                merged[key] = ref
                report.missing_counters.append(key)
            else:
                missing.append(key)
            continue
        if tuple(state[key].shape) != tuple(ref.shape):
            mismatched.append(f"{key} {list(state[key].shape)} vs model {list(ref.shape)}")
            continue
        merged[key] = state[key]
        report.loaded += 1
    unexpected = []
    for key in state:
        if key in own:
            continue
        if ".hat_pos_embed." in key or _is_derived(key):
            report.dropped.append(key)
        elif _unused_by_backbone(model, key):
            report.unused.append(key)
        else:
            unexpected.append(key)
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} keys ({_short(missing)})")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches ({_short(mismatched)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys ({_short(unexpected)})")
    if problems:
        raise CheckpointError("checkpoint does not fit the model: " + "; ".join(problems))
    return merged, report


def load_checkpoint(model: nn.Module, checkpoint: str | Path | Mapping[str, Any], prefix: str = "") -> LoadReport:
    """Load an official or fvdeploy checkpoint (a path, or what :func:`read_checkpoint` returned).

    ``prefix``: take only the keys under it (e.g. ``backbone.0.`` of a detector) and report the rest."""
    if getattr(model, "deployed", False):
        raise CheckpointError("load weights before deploy(): the deployed model has folded norms")
    obj = checkpoint if isinstance(checkpoint, Mapping) else read_checkpoint(checkpoint)
    state, left = take_prefix(extract_state_dict(obj), prefix)
    merged, report = match_state_dict(model, state)
    report.prefix, report.left_by_prefix = prefix, left
    model.load_state_dict(merged, strict=True)
    return report


def saved_config(obj: Mapping[str, Any]) -> dict[str, Any]:
    """Architecture stored by :func:`save_checkpoint` (empty for official checkpoints)."""
    meta = obj.get("fvdeploy")
    return dict(meta.get("config") or {}) if isinstance(meta, Mapping) else {}


def save_checkpoint(model: nn.Module, path: str | Path, **extra: Any) -> None:
    """Write ``{"state_dict", "fvdeploy": {...}}`` atomically (official layout plus our metadata)."""
    path = Path(path)
    cfg = getattr(model, "cfg", None)
    payload = {"state_dict": model.state_dict(), "fvdeploy": {"config": cfg.to_dict() if cfg else None, **extra}}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
