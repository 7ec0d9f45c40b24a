"""Run a model repository on this machine with the `tritonserver` that the nvidia-pytriton wheel ships (CPU).

The wheel holds a real Triton server and its Python backend; this module lays out a backend folder with the
stub for the running Python, and starts the server on 127.0.0.1 with the environment its Python models need:
numpy 1.x for the stub (its pybind11 predates numpy 2; `make install` puts numpy 1.26 in
`.venv/triton-stub`) ahead of this environment's packages (onnxruntime, pillow).
Usage: fvdeploy triton-serve REPOSITORY [--http-port 8000]. The wheel's server has the Python backend only:
repositories written with `fvdeploy triton --backend python` run here; the onnxruntime and tensorrt backends
need NVIDIA's tritonserver container (checked before the server starts).

The server runs in a process group of its own (its Python-backend stubs with it), is stopped as a group when
fvdeploy ends, however it ends, and dies with fvdeploy if fvdeploy is killed (parent-death signal).
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

from ..system import lifecycle
from ..system.errors import FvdeployError, MissingDependency
from ..system.files import scratch_folder, shown

STUB_NUMPY = Path(sys.prefix) / "triton-stub"
SERVER_WHEEL = Path(sys.prefix) / "triton-server"  # `make install` puts nvidia-pytriton here (--target)
SHARED_MEMORY = "/dev/shm"
PYTHON_ENV_FOLDERS = "/tmp/python_env_*"  # the Python backend's mkdtemp template (not TMPDIR)


def wheel_root() -> Path:
    """The wheel's ``pytriton`` folder: in the venv's triton-server folder, else wherever Python finds it."""
    roots = [SERVER_WHEEL / "pytriton"]
    spec = importlib.util.find_spec("pytriton")
    if spec is not None and spec.submodule_search_locations:
        roots.append(Path(next(iter(spec.submodule_search_locations))))
    for root in roots:
        if (root / "tritonserver" / "bin" / "tritonserver").is_file():
            return root
    raise MissingDependency("nvidia-pytriton is not installed: its wheel carries the tritonserver binary "
                            "(make install puts it in .venv/triton-server)")


def backend_folder(work: Path) -> Path:
    """backends/python with the wheel's backend library, its utilities and the stub for this Python."""
    server = wheel_root() / "tritonserver"
    stub = server / "python_backend_stubs" / f"{sys.version_info.major}.{sys.version_info.minor}" / "triton_python_backend_stub"
    if not stub.is_file():
        raise MissingDependency(f"the tritonserver wheel has no Python-backend stub for Python {sys.version_info[:2]}")
    python = work / "backends" / "python"
    python.mkdir(parents=True)
    for item in (server / "backends" / "python").iterdir():
        if item.is_file():
            os.symlink(item, python / item.name)
    shutil.copy2(stub, python / stub.name)
    return work / "backends"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_port(port: int) -> None:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind: a closed port's TIME_WAIT is free
        try:
            s.bind(("127.0.0.1", port))
        except OSError as err:
            raise FvdeployError(f"port {port} on 127.0.0.1 is taken ({err.strerror}): pass another --http-port") from err


def check_servable(repository: Path) -> list[str]:
    """The repository's models, refused before the server starts unless the wheel's server can load every one."""
    from .model import served_file
    from .schema import parse_config

    repository = Path(repository)
    if not repository.is_dir():
        raise FvdeployError(f"model repository not found: {repository}" if not repository.exists() else
                            f"{repository} is a file: give the model repository folder (`fvdeploy triton --repository`)")
    configs = sorted(repository.glob("*/config.pbtxt"))
    if not configs:
        raise FvdeployError(f"{repository} holds no Triton model (no */config.pbtxt): write one with `fvdeploy triton`")
    foreign, advice = [], []
    for path in configs:
        cfg = parse_config(path)
        backend = cfg.backend or cfg.platform
        if backend not in ("python", "ensemble"):
            foreign.append(f"{path.parent.name} ({backend})")
            if backend == "onnxruntime_onnx":  # its model.onnx is an artifact (with its record): runnable advice
                served = served_file(path.parent)
                advice.append(f"fvdeploy triton {shown(served)} --repository {shown(repository)}_cpu --name "
                              f"{path.parent.name} --backend python")
    if foreign:
        how = (f"to serve it here, write a Python-backend repository: {'; '.join(advice)}" if advice else
               "serve it with NVIDIA's tritonserver container")
        raise FvdeployError(f"the nvidia-pytriton wheel's tritonserver has the Python backend only, and "
                            f"{', '.join(foreign)} need{'s' if len(foreign) == 1 else ''} another: {how}")
    return [p.parent.name for p in configs]


class LocalTritonServer:
    """``with LocalTritonServer(repo) as server: server.url`` - started, ready, and always stopped."""

    def __init__(self, repository: Path, http_port: int | None = None, ready_timeout_s: float = 120) -> None:
        self.repository = Path(repository).resolve()  # the Python backend needs absolute model paths
        self.port = http_port or free_port()
        self.ready_timeout_s = ready_timeout_s
        self.process: subprocess.Popen | None = None
        self.log_path: Path | None = None
        # What the Python backend leaves behind when its server is stopped hard: shared-memory regions (named with
        # a prefix of ours, so exactly ours are removed) and an empty /tmp/python_env_* folder (a fixed template).
        self.shm_prefix = f"fvdeploy-{os.getpid()}-{self.port}-"
        self._env_folders_before: set[str] = set()

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> "LocalTritonServer":
        self._stack = contextlib.ExitStack()
        try:
            self._start()
            self._wait_ready()
        except BaseException as err:
            self.__exit__(type(err), err, None)
            raise
        return self

    def _start(self) -> None:
        work = self._stack.enter_context(scratch_folder(prefix="fvdeploy-triton-"))
        root = wheel_root()
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(root.parent / "nvidia_pytriton.libs"),
                                                             env.get("LD_LIBRARY_PATH", "")) if p)
        env["FVDEPLOY_PYTHONPATH"] = os.pathsep.join([str(STUB_NUMPY), sysconfig.get_paths()["purelib"]])
        self.log_path = work / "server.log"
        command = [str(root / "tritonserver" / "bin" / "tritonserver"), "--model-repository", str(self.repository),
                   "--backend-directory", str(backend_folder(work)), "--http-address", "127.0.0.1",
                   "--http-port", str(self.port), "--allow-grpc", "false", "--allow-metrics", "false",
                   "--exit-on-error", "true", "--exit-timeout-secs", "2",  # stopping waits at most 2 s for requests
                   "--backend-config", f"python,shm-region-prefix-name={self.shm_prefix}"]
        self._env_folders_before = set(glob.glob(PYTHON_ENV_FOLDERS))
        # Registered before the server exists: it runs in its own session, so only we can stop it.
        self._stack.enter_context(lifecycle.on_end(self._kill))
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True, preexec_fn=lifecycle.server_signals)

    def _signal_group(self, signum: int) -> None:
        """The server and its Python-backend stubs: one process group (its own session's)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signum)

    def _kill(self) -> None:
        if self.process is not None:
            self._signal_group(signal.SIGKILL)
            self._remove_leftovers()

    def _remove_leftovers(self) -> None:
        for region in Path(SHARED_MEMORY).glob(self.shm_prefix + "*"):
            region.unlink(missing_ok=True)
        for folder in set(glob.glob(PYTHON_ENV_FOLDERS)) - self._env_folders_before:
            with contextlib.suppress(OSError):  # only empty ones: a folder in use by another server is not
                os.rmdir(folder)

    def _wait_ready(self) -> None:
        import urllib.request

        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise FvdeployError(f"tritonserver exited ({self.process.returncode}): {self.log_tail()}")
            try:
                with urllib.request.urlopen(f"http://{self.url}/v2/health/ready", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.3)
        raise FvdeployError(f"tritonserver not ready after {self.ready_timeout_s:.0f} s: {self.log_tail()}")

    def log_tail(self, lines: int = 5) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""
        return " | ".join(line for line in text.splitlines() if line.startswith("E") or "error" in line)[-800:] or \
            " | ".join(text.splitlines()[-lines:])

    def serve(self) -> None:
        """Until the server exits or fvdeploy is interrupted (waiting in short steps, so a signal is seen)."""
        while self.process.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(0.5)
        code = self.process.returncode
        if code < 0:  # ended from outside: its log's last errors (a GPU probe at start-up) would be another story
            raise FvdeployError(f"tritonserver was ended by {signal.Signals(-code).name}, not by fvdeploy")
        raise FvdeployError(f"tritonserver exited ({code}): {self.log_tail()}")

    def __exit__(self, exc_type=None, *exc) -> None:
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            lifecycle.acknowledge()  # stopping: no further interruption may cut the stop short
        try:
            if self.process is not None:
                if self.process.poll() is None:
                    self._signal_group(signal.SIGTERM)
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        self.process.wait(2.5)
                self._kill()  # stubs that outlived the server, and a server that would not stop (and their files)
                self.process.wait()
        finally:
            self._stack.close()  # the server's folder (logs, backend) and its registration with ``lifecycle``


if __name__ == "__main__":  # the former entry point: the command has the one-line errors and the signal handling
    print("error: the local server is now a command: fvdeploy triton-serve REPOSITORY [--http-port 8000]",
          file=sys.stderr)
    sys.exit(2)
