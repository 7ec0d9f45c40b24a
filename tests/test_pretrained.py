"""`--pretrained` and hub checkpoints against a hub served on 127.0.0.1 (no network): what huggingface_hub 2.4
really asks (HEAD then GET of /OWNER/REPO/resolve/REVISION/FILE, with Range to resume) is answered as the hub
answers it (X-Repo-Commit, X-Linked-Etag = the LFS sha256, X-Linked-Size, X-Error-Code), with faults planted."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import re
import resource
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from .helpers import FVDEPLOY, tiny_checkpoint

pytest.importorskip("huggingface_hub")
PUBLISHED = "/ahatamiz/FasterViT/resolve/main/fastervit_0_224_1k.pth.tar"  # faster_vit_0_224's file
COMMIT = "0123456789abcdef0123456789abcdef01234567"


class Hub(http.server.ThreadingHTTPServer):
    """Files by path; ``mode``: "ok", "other-bytes" (the advertised sha256 is not the bytes'), "cut" (the body stops
    at half, every time), "mute" (no answer at all, for a while), "stall" (half the body, then nothing for a while)."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files: dict[str, bytes] = {}
        self.mode = "ok"
        self.requests: list[str] = []

    def handle_error(self, request, client_address) -> None:
        """Quiet: a client gone mid-answer is what some tests make happen (and a traceback printed from this thread
        would land in whatever another test captures meanwhile)."""

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: Hub

    def log_message(self, *args) -> None:  # quiet
        pass

    def _head(self) -> bytes | None:
        self.server.requests.append(f"{self.command} {self.path}")
        if self.server.mode == "mute":
            time.sleep(8)
        body = self.server.files.get(self.path.split("?")[0])
        if body is None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        advertised = hashlib.sha256(body).hexdigest()
        served = body if self.server.mode != "other-bytes" else bytes([body[0] ^ 1]) + body[1:]
        start = int(self.headers.get("Range", "bytes=0-").split("=")[1].split("-")[0] or 0)
        self.send_response(206 if start else 200)
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("X-Linked-Etag", f'"{advertised}"')
        self.send_header("ETag", f'"{advertised}"')
        self.send_header("X-Linked-Size", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(len(body) - start))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.end_headers()
        return served[start:]

    def do_HEAD(self) -> None:  # noqa: N802 - http.server's name
        self._head()

    def do_GET(self) -> None:  # noqa: N802
        body = self._head()
        if body is None:
            return
        if self.server.mode == "stall":
            self.wfile.write(body[:len(body) // 2])
            self.wfile.flush()
            time.sleep(20)
            return
        if self.server.mode == "cut":
            half = len(self.server.files[self.path.split("?")[0]]) // 2
            offset = len(self.server.files[self.path.split("?")[0]]) - len(body)
            self.wfile.write(body[:max(0, half - offset)])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)
            return
        self.wfile.write(body)


@pytest.fixture
def hub(tmp_path):
    server = Hub()
    server.files[PUBLISHED] = tiny_checkpoint(tmp_path / "published.pth.tar").read_bytes()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def hub_env(cwd: Path, hub: Hub, offline: bool = False) -> dict[str, str]:
    env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_HOME": str(cwd / "hf-home"), "HF_HUB_ETAG_TIMEOUT": "2",
           "HF_HUB_DOWNLOAD_TIMEOUT": "2", "HF_HUB_DISABLE_TELEMETRY": "1", "COLUMNS": "200"}
    env.pop("HF_HUB_OFFLINE", None)
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    return env


def fvdeploy(cwd: Path, hub: Hub, *args, offline: bool = False, preexec=None) -> subprocess.CompletedProcess:
    return subprocess.run([*FVDEPLOY, *map(str, args)], cwd=cwd, env=hub_env(cwd, hub, offline), capture_output=True,
                          text=True, timeout=300, preexec_fn=preexec)


def cached_blobs(cwd: Path) -> list[str]:
    blobs = cwd / "hf-home" / "hub" / "models--ahatamiz--FasterViT" / "blobs"
    return sorted(p.name for p in blobs.iterdir()) if blobs.is_dir() else []


def last_line(result: subprocess.CompletedProcess) -> str:
    return result.stderr.strip().splitlines()[-1]


def test_pretrained_fetches_once_checks_and_exports(hub, tmp_path):
    published_sha = hashlib.sha256(hub.files[PUBLISHED]).hexdigest()
    result = fvdeploy(tmp_path, hub, "export-onnx", "--model", "faster_vit_0_224", "--pretrained", "-o", "m.onnx",
                      "--no-verify")
    assert result.returncode == 0, result.stderr
    assert [r.split()[0] for r in hub.requests] == ["HEAD", "GET"]
    record = json.loads((tmp_path / "m.onnx.json").read_text())
    ckpt = record["model"]["checkpoint"]
    assert ckpt["sha256"] == published_sha and ckpt["as_given"] == "hf://ahatamiz/FasterViT/fastervit_0_224_1k.pth.tar"
    at = record["command"].index("--checkpoint")  # the command that remakes it names the file it fetched
    assert record["command"][at + 1] == "hf://ahatamiz/FasterViT/fastervit_0_224_1k.pth.tar"
    assert cached_blobs(tmp_path) == [published_sha]
    again = fvdeploy(tmp_path, hub, "export-onnx", "--model", "faster_vit_0_224", "--pretrained", "-o", "n.onnx",
                     "--no-verify")
    assert again.returncode == 0, again.stderr
    assert len(hub.requests) == 2  # the cached file: no request reached the hub
    offline = fvdeploy(tmp_path, hub, "export-onnx", "--model", "faster_vit_0_224", "--checkpoint",
                       "hf://ahatamiz/FasterViT/fastervit_0_224_1k.pth.tar", "-o", "o.onnx", "--no-verify", offline=True)
    assert offline.returncode == 0, offline.stderr
    checked = fvdeploy(tmp_path, hub, "verify", "m.onnx", "--pretrained", "--batch", 1, offline=True)  # its weights
    assert checked.returncode == 0, checked.stderr
    assert len(hub.requests) == 2


def test_bytes_that_are_not_what_the_hub_published_are_refused_and_not_kept(hub, tmp_path):
    hub.mode = "other-bytes"
    result = fvdeploy(tmp_path, hub, "export-onnx", "--model", "faster_vit_0_224", "--pretrained", "-o", "m.onnx")
    assert result.returncode == 2, result.stderr
    published_sha = hashlib.sha256(hub.files[PUBLISHED]).hexdigest()
    assert last_line(result).startswith("error: hf://ahatamiz/FasterViT/fastervit_0_224_1k.pth.tar: the downloaded "
                                        "bytes have sha256 ") and f"the hub published {published_sha}" in last_line(result)
    assert cached_blobs(tmp_path) == [] and not (tmp_path / "m.onnx").exists()
    hub.mode = "ok"  # the next run fetches it anew, and trusts it
    assert fvdeploy(tmp_path, hub, "export-onnx", "--model", "faster_vit_0_224", "--pretrained", "-o", "m.onnx",
                    "--no-verify").returncode == 0


def test_a_connection_cut_halfway_leaves_nothing_trusted_and_the_next_run_resumes(hub, tmp_path):
    hub.mode = "cut"
    result = fvdeploy(tmp_path, hub, "export-onnx", "--model", "faster_vit_0_224", "--pretrained", "-o", "m.onnx")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "fetching hf://ahatamiz/FasterViT/fastervit_0_224_1k.pth.tar from" in last_line(result) and \
        "the next run resumes it" in last_line(result)
    assert all(name.endswith(".incomplete") for name in cached_blobs(tmp_path)) and not (tmp_path / "m.onnx").exists()
    hub.mode, before = "ok", len(hub.requests)
    resumed = fvdeploy(tmp_path, hub, "export-onnx", "--model", "faster_vit_0_224", "--pretrained", "-o", "m.onnx",
                       "--no-verify")
    assert resumed.returncode == 0, resumed.stderr
    assert cached_blobs(tmp_path) == [hashlib.sha256(hub.files[PUBLISHED]).hexdigest()]
    assert len(hub.requests) > before


def test_failures_are_one_line_each(hub, tmp_path):
    offline = fvdeploy(tmp_path, hub, "export-onnx", "--model", "faster_vit_0_224", "--pretrained", offline=True)
    assert offline.returncode == 2 and "is not in the Hugging Face cache" in last_line(offline) and \
        "HF_HUB_OFFLINE is set" in last_line(offline)
    missing = fvdeploy(tmp_path, hub, "export-onnx", "--model", "faster_vit_1_224", "--pretrained")
    assert missing.returncode == 2 and last_line(missing) == \
        "error: hf://ahatamiz/FasterViT/fastervit_1_224_1k.pth.tar: the hub has no such file (404)"
    hub.shutdown()
    hub.server_close()
    down = fvdeploy(tmp_path, hub, "export-onnx", "--model", "faster_vit_0_224", "--pretrained")
    assert down.returncode == 2 and last_line(down).startswith("error: cannot reach the hub (http://127.0.0.1:")
    both = fvdeploy(tmp_path, hub, "export-onnx", "--model", "faster_vit_0_224", "--pretrained", "--checkpoint", "x")
    assert both.returncode == 2 and "give --pretrained" in last_line(both)
    other = fvdeploy(tmp_path, hub, "export-onnx", "--model", "faster_vit_0_224", "--checkpoint",
                     "https://example.com/weights.pth")
    assert other.returncode == 2 and "download other URLs yourself" in last_line(other)
    for result in (offline, missing, down, both, other):
        assert "Traceback" not in result.stderr and list(tmp_path.glob("*.onnx")) == []


def test_a_silent_hub_a_full_disk_and_ctrl_c_mid_download(hub, tmp_path):
    hub.mode = "mute"
    start = time.monotonic()
    silent = fvdeploy(tmp_path, hub, "export-onnx", "--model", "faster_vit_0_224", "--pretrained")
    assert silent.returncode == 2 and re.match(r"error: (cannot reach the hub|fetching hf://\S+ from http://127\.0\.0\.1:"
                                               r"\d+ failed).*(Timeout|timed out)", last_line(silent)), silent.stderr
    assert time.monotonic() - start < 60
    hub.mode = "ok"
    full = fvdeploy(tmp_path, hub, "export-onnx", "--model", "faster_vit_0_224", "--pretrained",
                    preexec=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (32 << 10, 32 << 10)))
    assert full.returncode == 2 and last_line(full).startswith("error: File too large"), full.stderr
    assert all(name.endswith(".incomplete") for name in cached_blobs(tmp_path))
    hub.mode = "stall"
    proc = subprocess.Popen([*FVDEPLOY, "export-onnx", "--model", "faster_vit_0_224", "--pretrained"], cwd=tmp_path,
                            env=hub_env(tmp_path, hub), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.monotonic() + 60
    while not [r for r in hub.requests if r.startswith("GET")][2:] and time.monotonic() < deadline:
        time.sleep(0.1)  # the third GET: the stalled one (after the mute HEAD and the full disk's)
    time.sleep(0.5)
    start = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 130 and time.monotonic() - start < 5 and "Traceback" not in err, err
    assert all(name.endswith(".incomplete") for name in cached_blobs(tmp_path))
    for result in (silent, full):
        assert "Traceback" not in result.stderr and list(tmp_path.glob("*.onnx")) == []



def test_a_hub_url_is_fetched_from_its_own_host_and_recorded_as_given(hub, tmp_path):
    url = f"{hub.endpoint}{PUBLISHED}"
    env_elsewhere = Hub()  # HF_ENDPOINT names another hub, which must not be asked
    try:
        result = subprocess.run([*FVDEPLOY, "export-onnx", "--model", "faster_vit_0_224", "--checkpoint", url, "-o",
                                 "m.onnx", "--no-verify"], cwd=tmp_path, env=hub_env(tmp_path, env_elsewhere),
                                capture_output=True, text=True, timeout=300)
    finally:
        env_elsewhere.server_close()
    assert result.returncode == 0, result.stderr
    assert [r.split()[0] for r in hub.requests] == ["HEAD", "GET"] and env_elsewhere.requests == []
    assert json.loads((tmp_path / "m.onnx.json").read_text())["model"]["checkpoint"]["as_given"] == url
