"""A served model as an artifact argument: ``triton://HOST:PORT/MODEL[/VERSION]``.

Pure text, no client imported: the command line recognises an address before anything loads (it is no file to
check, read or write beside). A ``Path`` collapses the two slashes (``triton:/HOST:PORT/MODEL``): both spellings
parse. gRPC (``triton+grpc://``) is recognised and refused with its reason, not mistaken for a file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..system.errors import FvdeployError

DEFAULT_PORT = 8000  # Triton's HTTP port
SCHEME = "triton"
_ADDRESS = re.compile(r"(?P<scheme>triton(?:\+\w+)?):/{1,2}(?P<host>\[[^\]/]+\]|[^/:\[\]]+)(?::(?P<port>\d+))?"
                      r"/(?P<model>[^/]+)(?:/(?P<version>[^/]+))?/?")


@dataclass(frozen=True)
class ServedAddress:
    host: str
    port: int
    model: str
    version: str = ""  # "" : the version the server picks (its newest ready one)

    @property
    def url(self) -> str:
        """HOST:PORT, as Triton's HTTP client takes it."""
        return f"{self.host}:{self.port}"

    def __str__(self) -> str:
        return f"{SCHEME}://{self.url}/{self.model}" + (f"/{self.version}" if self.version else "")


def is_address(text: str | Path | None) -> bool:
    """Whether a command-line argument names a served model (a file is never named ``triton:...``)."""
    return text is not None and str(text).split(":", 1)[0].split("+")[0] == SCHEME and ":" in str(text)


def parse_address(text: str | Path) -> ServedAddress:
    """The address, or one line saying how to write one."""
    text = str(text)
    match = _ADDRESS.fullmatch(text)
    if match is None:
        raise FvdeployError(f"{text!r} is not a served-model address: write triton://HOST:PORT/MODEL[/VERSION]")
    if match["scheme"] != SCHEME:
        raise FvdeployError(f"{match['scheme']}:// is not supported: fvdeploy talks to Triton over HTTP "
                            f"({SCHEME}://HOST:PORT/MODEL, the server's --http-port; gRPC needs grpcio, not installed)")
    port = int(match["port"]) if match["port"] else DEFAULT_PORT
    if not 1 <= port <= 65535:
        raise FvdeployError(f"{text}: port {port} is not 1..65535")
    version = match["version"] or ""
    if version and not version.isdigit():
        raise FvdeployError(f"{text}: the version {version!r} is not a number (triton://HOST:PORT/MODEL/VERSION)")
    return ServedAddress(match["host"], port, match["model"], version)
