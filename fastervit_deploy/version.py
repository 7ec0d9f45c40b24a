"""fvdeploy's version, from the installed package's metadata (a leaf: imports nothing of ours)."""

from __future__ import annotations

import importlib.metadata

try:
    __version__ = importlib.metadata.version("fvdeploy")
except importlib.metadata.PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"
