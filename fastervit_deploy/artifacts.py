"""Writing artifacts safely: temporary file then rename, sha256, and the JSON sidecar."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

from . import __version__
from .errors import FvdeployError

TOOL_PACKAGES = ("torch", "onnx", "onnxruntime", "onnxslim", "onnxsim", "numpy", "coremltools", "tensorrt",
                 "nvidia-modelopt")


def sha256(path: str | Path) -> str:
    """Digest of a file, or of every file below a directory (sorted by relative path)."""
    path = Path(path)
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        if path.is_dir():
            h.update(str(f.relative_to(path)).encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def tool_versions(*extra: str) -> dict[str, str]:
    versions = {"fvdeploy": __version__, "python": platform.python_version()}
    for name in (*TOOL_PACKAGES, *extra):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[name] = importlib.metadata.version(name)
    return versions


def check_output_path(path: Path, overwrite: bool, suffix: str | None = None) -> None:
    """Refuse a wrong suffix, or to clobber an artifact unless asked; make sure the folder is writable."""
    if suffix is not None and path.suffix != suffix:
        raise FvdeployError(f"output must end in {suffix}, got {path.name}")
    if path.exists() and not overwrite:
        raise FvdeployError(f"{path} exists (pass --overwrite to replace it)")
    parent = path.parent if str(path.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise FvdeployError(f"cannot create output folder {parent}: {err.strerror}") from None
    if not os.access(parent, os.W_OK):
        raise FvdeployError(f"output folder {parent} is not writable")


@contextlib.contextmanager
def atomic_output(path: str | Path, companions: tuple[str, ...] = ()) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it (and companion files) into place.

    ``companions`` are suffixes of files written next to the temporary path (e.g. ``.data`` for ONNX
    external data) that move along. On any failure nothing is left behind.
    """
    path = Path(path)
    tmpdir = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    tmp = tmpdir / path.name
    try:
        yield tmp
        for suffix in companions:
            side = tmpdir / (path.name + suffix)
            if side.exists():
                os.replace(side, path.parent / side.name)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def sidecar_path(artifact: str | Path) -> Path:
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + ".json")


def write_sidecar(artifact: str | Path, record: dict[str, Any]) -> Path:
    """``<artifact>.json`` with what the artifact is, how it was made and how well it matches."""
    record = {
        "artifact": Path(artifact).name,
        "sha256": sha256(artifact),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "tools": tool_versions(),
        **record,
    }
    out = sidecar_path(artifact)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(record, indent=2, default=_jsonable) + "\n")
    os.replace(tmp, out)
    return out


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
