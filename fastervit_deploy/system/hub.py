"""Published weights by name: files fetched from a Hugging Face hub into its shared cache, checked before use.

``huggingface_hub`` does the fetching, so what timm or the official package already put in the user's Hugging
Face cache is not fetched again, and ``HF_HOME``, ``HF_ENDPOINT`` (a mirror), ``HF_HUB_OFFLINE`` and tokens work
as users expect. It does not compare the bytes with the sha256 the hub publishes for an LFS file (the file's
``X-Linked-Etag``), so this module does: the cache names each blob by that etag, and a blob whose bytes do not
hash to its own name is refused, removed, and never loaded. A cached file is used without asking the hub (the
published checkpoints do not change); an unfinished download stays an ``.incomplete`` file the cache never trusts.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import FvdeployError, MissingDependency
from .files import sha256

PUBLISHED_REPO = "ahatamiz/FasterViT"  # NVIDIA's FasterViT checkpoints, resolve/main/<file>
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_HUB_URL = re.compile(r"^(?P<endpoint>https?://[^/]+)/(?P<repo>[^/]+/[^/]+)/resolve/(?P<revision>[^/]+)/(?P<file>.+)$")


@dataclass(frozen=True)
class HubFile:
    repo: str
    filename: str
    revision: str = "main"
    endpoint: str | None = None  # a hub URL's own host; None: HF_ENDPOINT's (huggingface.co by default)

    @property
    def uri(self) -> str:
        """How a command line names it again (``--checkpoint hf://REPO/FILE``, or the hub URL it was given)."""
        if self.endpoint is not None:
            return f"{self.endpoint}/{self.repo}/resolve/{self.revision}/{self.filename}"
        return f"hf://{self.repo}/{self.filename}" + (f"@{self.revision}" if self.revision != "main" else "")


def remote_checkpoint(given: str | Path | None) -> HubFile | None:
    """``hf://REPO/FILE[@REVISION]`` or a hub's ``https://HOST/REPO/resolve/REVISION/FILE``, else None (a local
    file). A ``Path`` has collapsed the ``//`` of a URL: both spellings are read."""
    if given is None:
        return None
    text = str(given)
    for scheme in ("hf", "https", "http"):
        if text.startswith(f"{scheme}:/") and not text.startswith(f"{scheme}://"):
            text = text.replace(f"{scheme}:/", f"{scheme}://", 1)
    if text.startswith("hf://"):
        path, _, revision = text[len("hf://"):].partition("@")
        parts = path.split("/")
        if len(parts) < 3 or not all(parts):
            raise FvdeployError(f"--checkpoint {text}: hub files are named hf://OWNER/REPO/FILE")
        return HubFile("/".join(parts[:2]), "/".join(parts[2:]), revision or "main")
    if text.startswith(("https://", "http://")):
        match = _HUB_URL.match(text)
        if match is None:
            raise FvdeployError(f"--checkpoint {text}: fvdeploy fetches files of a Hugging Face hub "
                                "(https://HOST/OWNER/REPO/resolve/REVISION/FILE, or hf://OWNER/REPO/FILE); download "
                                "other URLs yourself and give the file")
        return HubFile(match["repo"], match["file"], match["revision"], match["endpoint"])
    return None


def published(checkpoint_file: str) -> HubFile:
    return HubFile(PUBLISHED_REPO, checkpoint_file)


def _import_hub():
    if importlib.util.find_spec("huggingface_hub") is None:
        raise MissingDependency("fetching weights needs huggingface_hub (pip install huggingface_hub; `make install` "
                                "installs it)")
    import huggingface_hub
    from huggingface_hub.utils import logging as hub_logging

    hub_logging.set_verbosity_error()  # its warnings name its own files; fvdeploy says what matters in one line
    return huggingface_hub


def _verified(snapshot: Path, wanted: HubFile) -> Path:
    """The cached file, if its bytes are what the hub published (the blob's name is the hub's sha256)."""
    blob = snapshot.resolve()
    published_sha = blob.name
    if not _SHA256.match(published_sha):
        raise FvdeployError(f"the hub published no sha256 for {wanted.uri} (not an LFS file, etag {published_sha}): "
                            "its bytes cannot be checked, so fvdeploy does not load it")
    actual = sha256(blob)
    if actual != published_sha:
        for path in (snapshot, blob):  # never trusted again: the next run fetches it anew
            path.unlink(missing_ok=True)
        raise FvdeployError(f"{wanted.uri}: the downloaded bytes have sha256 {actual}, the hub published "
                            f"{published_sha}; the file was removed from the cache (fetch it again)")
    return blob


def fetch(wanted: HubFile) -> Path:
    """The file from the Hugging Face cache, fetched first if it is not there; checked against the hub's sha256."""
    hub = _import_hub()
    from huggingface_hub import errors

    try:
        snapshot = hub.hf_hub_download(wanted.repo, wanted.filename, revision=wanted.revision, local_files_only=True,
                                       endpoint=wanted.endpoint)
        return _verified(Path(snapshot), wanted)  # in the cache: no request at all
    except errors.LocalEntryNotFoundError:
        pass
    if hub.constants.HF_HUB_OFFLINE:
        raise FvdeployError(f"{wanted.uri} is not in the Hugging Face cache ({hub.constants.HF_HUB_CACHE}) and "
                            "HF_HUB_OFFLINE is set: fetch it once online, or give --checkpoint FILE")
    import httpx2  # huggingface_hub's HTTP client: its transport errors outlive the retries it makes

    endpoint = wanted.endpoint or hub.constants.ENDPOINT
    try:
        snapshot = hub.hf_hub_download(wanted.repo, wanted.filename, revision=wanted.revision,
                                       endpoint=wanted.endpoint)
    except httpx2.TransportError as err:  # a connection dropped mid-file, again and again: the .incomplete stays
        raise FvdeployError(f"fetching {wanted.uri} from {endpoint} failed: {_cause(err)}; what "
                            "arrived, if anything, stays unfinished (never loaded) and the next run resumes it") from err
    except errors.RemoteEntryNotFoundError as err:
        raise FvdeployError(f"{wanted.uri}: the hub has no such file (404)") from err
    except errors.RepositoryNotFoundError as err:
        raise FvdeployError(f"{wanted.uri}: the hub has no repository {wanted.repo} (or it needs a token: "
                            "HF_TOKEN)") from err
    except errors.LocalEntryNotFoundError as err:  # no connection, a timeout: it says which
        raise FvdeployError(f"cannot reach the hub ({endpoint}) for {wanted.uri}: "
                            f"{_cause(err)}; set HF_ENDPOINT for a mirror, or give --checkpoint FILE") from err
    except errors.HfHubHTTPError as err:
        raise FvdeployError(f"the hub answered {wanted.uri} with an error: {str(err).splitlines()[0]}") from err
    return _verified(Path(snapshot), wanted)


def _cause(err: BaseException) -> str:
    """The innermost reason of a failed request, in one line."""
    while err.__cause__ is not None or err.__context__ is not None:
        err = err.__cause__ or err.__context__
    text = str(err).splitlines()[0] if str(err) else ""
    return f"{type(err).__name__}{': ' + text if text else ''}"
