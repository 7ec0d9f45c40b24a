"""A model served by Triton, opened like an artifact file: its record read from the server, a runner that sends
requests to it.

``fvdeploy triton`` writes the served file's record into config.pbtxt's parameters (``RECORD_PARAMETER``);
``open_served`` reads it back with ``get_model_config`` and rebuilds the PyTorch model from it exactly as an
artifact's sidecar does (the checkpoint found by content; ``--checkpoint`` says where it is on this machine). A
served model without a record needs the model options, like an ONNX without a sidecar.

A plain model takes fvdeploy's preprocessed tensors; an ensemble (``fvdeploy triton --preprocess``) takes encoded
images, so that the server's own preprocessing is what gets checked (``TritonRunner.takes_encoded``).

Talking to the server: Triton's asyncio HTTP client, one event loop per ``Connection``, each call run to
completion; ``--timeout`` bounds every request (connecting included), and whatever the client raises becomes one
line naming the server (``_said``).
"""

from __future__ import annotations

import asyncio
import math
import os
from dataclasses import dataclass, field
from typing import Any, Awaitable, Sequence

import numpy as np

from ..artifact import model_for
from ..core.address import ServedAddress
from ..core.dtypes import from_triton
from ..core.model_spec import ModelDescription, resolve_model
from ..core.options import ModelRequest, Provider, RunOptions, ServerOptions
from ..core.precision import Precision
from ..core.record import ArtifactRecord, FormatKey, NoRecord
from ..core.runner import Outputs, Runner
from ..system.errors import CheckFailed, FvdeployError, MissingDependency
from .model import RECORD_PARAMETER, decode_record

PLATFORMS = {"onnxruntime_onnx": FormatKey.onnx, "tensorrt_plan": FormatKey.tensorrt, "python": FormatKey.onnx}
BYTES = "TYPE_STRING"  # an ensemble's encoded-image input


class ServerGone(FvdeployError):
    """The server stopped answering (refused, reset, closed) after it had answered."""


def _client_module():
    try:
        import tritonclient.http.aio as aio
    except ImportError as err:
        raise MissingDependency("tritonclient[http] is not installed (pip install tritonclient[http]): it talks to "
                                "Triton") from err
    return aio


def _said(err: BaseException, address: ServedAddress, timeout_s: float) -> BaseException:
    """Whatever the client raised, as one line naming the server."""
    import aiohttp
    from tritonclient.utils import InferenceServerException

    if isinstance(err, FvdeployError):
        return err
    if isinstance(err, (asyncio.TimeoutError, TimeoutError)):
        return FvdeployError(f"{address}: no answer within --timeout {timeout_s:g} s")
    if isinstance(err, aiohttp.ClientConnectorError):
        code = getattr(err.os_error, "errno", None)
        why = os.strerror(code) if code else str(err.os_error or err)
        return ServerGone(f"no Triton server answers at {address.url} ({why.lower()}): is it running, and is "
                          f"{address.port} its HTTP port?")
    if isinstance(err, (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError, aiohttp.ClientPayloadError)):
        return ServerGone(f"the Triton server at {address.url} closed the connection mid-request (did it stop?)")
    if isinstance(err, InferenceServerException):
        return FvdeployError(f"{address}: the server answered: {(err.message() or str(err)).splitlines()[0]}")
    if isinstance(err, aiohttp.ClientError):
        return FvdeployError(f"{address}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
    return err  # not the client's: raised as it is (a bug, or an interruption)


class Connection:
    """One event loop and one HTTP client to one server: ``with Connection(...) as c: c.run(coroutine)``."""

    def __init__(self, address: ServedAddress, timeout_s: float, connections: int | None = 1) -> None:
        self.address, self.timeout_s, self.connections = address, timeout_s, connections
        self.client = None

    def __enter__(self) -> "Connection":
        aio = _client_module()
        self._loop = asyncio.new_event_loop()

        async def connect():  # aiohttp's session belongs to the loop it is made in
            return aio.InferenceServerClient(self.address.url, conn_limit=self.connections or 0,  # 0: no limit
                                             conn_timeout=self.timeout_s)

        self.client = self._loop.run_until_complete(connect())
        return self

    def run(self, call: Awaitable) -> Any:
        try:
            return self._loop.run_until_complete(call)
        except Exception as err:  # noqa: BLE001 - the client's and aiohttp's errors, said in one line
            said = _said(err, self.address, self.timeout_s)
            if said is err:
                raise
            raise said from err

    def __exit__(self, *exc) -> None:
        try:
            self._loop.run_until_complete(self._close())
        except Exception:  # noqa: BLE001,S110 - closing a connection to a server that is gone
            pass
        finally:
            self._loop.close()

    async def _close(self) -> None:
        """Cancel the requests an error or an interruption abandoned, then close the client's session."""
        pending = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if self.client is not None:
            await self.client.close()

    async def model_config(self) -> dict:
        """The model's configuration, after checking that the server is up and the model (and version) ready."""
        client, address = self.client, self.address
        if not await client.is_server_live():
            raise FvdeployError(f"the Triton server at {address.url} is not live")
        index = await client.get_model_repository_index()
        states = [m for m in index if m.get("name") == address.model]
        if not states:
            known = ", ".join(sorted({m.get("name", "?") for m in index})) or "none"
            raise FvdeployError(f"the Triton server at {address.url} has no model {address.model!r} (it has: {known})")
        ready = sorted((m.get("version", "") for m in states if m.get("state") == "READY"), key=_version_key)
        if address.version and address.version not in ready:
            raise FvdeployError(f"{address}: model {address.model!r} has no ready version {address.version} (ready: "
                                f"{', '.join(ready) or 'none'})")
        if not ready:
            why = "; ".join(f"{m.get('state', '?')}: {m.get('reason', '')}".rstrip(": ") for m in states)
            raise FvdeployError(f"{address}: model {address.model!r} is not ready ({why})")
        return await client.get_model_config(address.model, address.version)

    async def server_metadata(self) -> dict:
        return await self.client.get_server_metadata()

    async def statistics(self) -> dict:
        """The model's statistics, summed over its versions (one version when the address names one)."""
        stats = (await self.client.get_inference_statistics(self.address.model, self.address.version))["model_stats"]
        return _summed(stats)


def _version_key(version: str) -> int:
    return int(version) if version.isdigit() else -1


def _summed(stats: list[dict]) -> dict:
    total: dict[str, Any] = {"inference_count": 0, "execution_count": 0, "inference_stats": {}}
    for s in stats:
        total["inference_count"] += int(s.get("inference_count", 0))
        total["execution_count"] += int(s.get("execution_count", 0))
        for key, value in s.get("inference_stats", {}).items():
            slot = total["inference_stats"].setdefault(key, {"count": 0, "ns": 0})
            slot["count"] += int(value.get("count", 0))
            slot["ns"] += int(value.get("ns", 0))
    return total


def _tensors(config: dict, key: str) -> list[tuple[str, tuple, str]]:
    """(name, dims without the batch, fvdeploy's element type) of a config's inputs or outputs."""
    out = []
    for t in config.get(key, []):
        kind = t.get("data_type", "")
        out.append((t["name"], tuple(int(d) for d in t.get("dims", [])),
                    "bytes" if kind == BYTES else from_triton(kind).name))
    return out


@dataclass(frozen=True)
class ServedModel:
    """A served model opened for use (the counterpart of ``artifact.Artifact``): its address, the record its
    configuration carries, the PyTorch model that record names, and what the server said of itself."""

    address: ServedAddress
    record: ArtifactRecord
    model: ModelDescription
    config: dict = field(repr=False)
    server: dict = field(repr=False)
    options: ServerOptions = ServerOptions()
    recorded: bool = True  # False: the record was made from the model options (the server carried none)

    @property
    def name(self) -> str:
        return str(self.address)

    location = name

    @property
    def takes_encoded(self) -> bool:
        """An ensemble that takes encoded images (the server preprocesses), not the network's input."""
        inputs = self.config.get("input", [])
        return len(inputs) == 1 and inputs[0].get("data_type") == BYTES

    @property
    def description(self) -> str:
        what = f"{self.config.get('platform') or self.config.get('backend', '?')} model"
        return f"Triton {what}{' (encoded images in)' if self.takes_encoded else ''}"

    @property
    def max_batch(self) -> int:
        return int(self.config.get("max_batch_size", 0)) or 1

    def runner(self, opts: RunOptions = RunOptions()) -> "TritonRunner":
        if opts.provider is not Provider.cpu:
            raise FvdeployError(f"--provider chooses onnxruntime's execution provider here: {self.name} runs on its "
                                "server (its configuration says how)")
        return TritonRunner(self)

    def runtime_note(self, opts: RunOptions = RunOptions()) -> None:
        return None

    def size_mb(self) -> None:
        return None

    def facts(self) -> dict:
        """What reports record of the server and the model it serves."""
        return {"address": str(self.address), "server": {k: self.server.get(k) for k in ("name", "version")},
                "platform": self.config.get("platform") or self.config.get("backend"),
                "max_batch_size": self.config.get("max_batch_size"), "takes_encoded": self.takes_encoded,
                "record": "server" if self.recorded else "model options",
                "dynamic_batching": self.config.get("dynamic_batching"),
                "instance_group": self.config.get("instance_group"), "optimization": self.config.get("optimization")}


def open_served(address: ServedAddress, model: ModelRequest | None, options: ServerOptions) -> ServedModel:
    """Ask the server for the model's configuration and the record in it; check it against the record."""
    with Connection(address, options.timeout) as conn:
        config = conn.run(conn.model_config())
        server = conn.run(conn.server_metadata())
    carried = config.get("parameters", {}).get(RECORD_PARAMETER, {}).get("string_value")
    given = model or ModelRequest()
    if carried:
        record = decode_record(carried, str(address))
        served = ServedModel(address, record, model_for(record, str(address), given), config, server, options)
    else:
        if not given.any_given:
            advice = "" if model is None else ": pass --model and the options it was made with"
            raise NoRecord(f"{address} carries no fvdeploy record in its configuration (serve it with `fvdeploy "
                           f"triton`, which writes one){advice}")
        desc = resolve_model(given)
        precision = config.get("parameters", {}).get("fvdeploy.precision", {}).get("string_value") or Precision.fp32
        kind = PLATFORMS.get(config.get("platform") or config.get("backend"), FormatKey.onnx)
        record = ArtifactRecord(kind, precision, desc, (1, int(config.get("max_batch_size", 0)) or 1), (desc.input,),
                                desc.outputs)
        served = ServedModel(address, record, desc, config, server, options, recorded=False)
    check_config(served)
    return served


def check_config(served: ServedModel) -> None:
    """The configuration's tensors against the record's (an ensemble's one input: encoded images)."""
    record, config = served.record, served.config
    want_out = [(t.name, tuple(t.shape), t.dtype) for t in record.outputs]
    got_out = _tensors(config, "output")
    if got_out != want_out:
        raise CheckFailed(f"{served.name}: the server's outputs {_show(got_out)} differ from its record's "
                          f"{_show(want_out)}")
    if served.takes_encoded:
        return
    want_in = [(t.name, tuple(t.shape), t.dtype) for t in record.inputs]
    got_in = _tensors(config, "input")
    if got_in != want_in:
        raise CheckFailed(f"{served.name}: the server's input {_show(got_in)} differs from its record's "
                          f"{_show(want_in)}")


def _show(tensors: Sequence[tuple[str, tuple, str]]) -> str:
    return ", ".join(f"{n} [N, {', '.join(map(str, s))}] {d}" for n, s, d in tensors) or "none"


class TritonRunner(Runner):
    """Requests to a served model (opened by ``open_served``, which checked its configuration against the record).
    ``infer`` takes fvdeploy's preprocessed batch (a plain model); ``infer_encoded``
    takes encoded images (an ensemble). Either way a call's images are spread over ``concurrency`` requests in
    flight at once (each at most the model's max_batch_size), and every answer is checked: its request id, the
    outputs' shapes and element types against the record."""

    name = "triton"

    def __init__(self, served: ServedModel) -> None:
        self.served = served
        self.concurrency = max(1, served.options.concurrency)
        super().__init__(served.record.inputs, served.record.outputs, (1, served.max_batch * self.concurrency))
        self.connection: Connection | None = None

    @property
    def takes_encoded(self) -> bool:
        return self.served.takes_encoded

    def activate(self) -> None:
        # The configuration was read and checked against the record when the model was opened (``open_served``);
        # what the server answers from here on is checked answer by answer (``request``).
        self.connection = Connection(self.served.address, self.served.options.timeout, self.concurrency).__enter__()

    def deactivate(self) -> None:
        if self.connection is not None:
            self.connection.__exit__()
            self.connection = None

    def _infer(self, batch: np.ndarray) -> Outputs:
        if self.takes_encoded:
            raise FvdeployError(f"{self.served.name} takes encoded images (an ensemble): use infer_encoded")
        return self._send(batch, len(batch))

    def infer_encoded(self, images: Sequence[bytes]) -> Outputs:
        """Class scores (or maps) of encoded images (JPEG, PNG, ...), preprocessed by the server."""
        if not self.active:
            raise FvdeployError(f"{self.name} runner: infer_encoded() called before activation")
        if not self.takes_encoded:
            raise FvdeployError(f"{self.served.name} takes the network's input, not encoded images: use infer")
        return self._send(np.array([bytes(b) for b in images], dtype=np.object_).reshape(-1, 1), len(images))

    def _send(self, payload: np.ndarray, n: int) -> Outputs:
        pieces = max(min(self.concurrency, n), math.ceil(n / self.served.max_batch))
        bounds = np.linspace(0, n, pieces + 1).astype(int)
        chunks = [payload[a:b] for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
        answers = self.connection.run(send_all(self.connection, self.served, chunks, self.concurrency))
        return {spec.name: np.concatenate([a[spec.name] for a in answers]) for spec in self.outputs}


async def send_all(conn: Connection, served: ServedModel, chunks: Sequence[np.ndarray], concurrency: int,
                   first_id: int = 0) -> list[Outputs]:
    """Every chunk as one request, at most ``concurrency`` in flight; the answers in the chunks' order."""
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int, chunk: np.ndarray) -> Outputs:
        async with gate:
            return await request(conn, served, chunk, str(first_id + i))

    return await together([one(i, c) for i, c in enumerate(chunks)])


async def together(calls: Sequence[Awaitable]) -> list:
    """Every call's result, in order; the first failure cancels the others and is raised (asyncio.gather would
    leave them running)."""
    tasks = [asyncio.ensure_future(c) for c in calls]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()


def inputs_of(served: ServedModel, payload: np.ndarray) -> list:
    """The request's one input: encoded images (BYTES [n, 1]) for an ensemble, the float batch otherwise."""
    from tritonclient.http import InferInput

    name = served.config["input"][0]["name"]
    tensor = InferInput(name, list(payload.shape), "BYTES" if served.takes_encoded else "FP32")
    tensor.set_data_from_numpy(payload, binary_data=True)
    return [tensor]


async def request(conn: Connection, served: ServedModel, payload: np.ndarray, request_id: str) -> Outputs:
    """One request; its answer checked against the record (id, every output's shape and element type)."""
    from tritonclient.http import InferRequestedOutput

    outputs = [InferRequestedOutput(t.name, binary_data=True) for t in served.record.outputs]
    result = await conn.client.infer(served.address.model, inputs_of(served, payload), served.address.version,
                                     outputs=outputs, request_id=request_id)
    answered = result.get_response().get("id", "")
    if answered != request_id:
        raise CheckFailed(f"{served.name}: the answer to request {request_id} came back as {answered or 'no id'}")
    got = {}
    for spec in served.record.outputs:
        value = result.as_numpy(spec.name)
        want = (len(payload), *spec.shape)
        if value is None or tuple(value.shape) != want or value.dtype != np.dtype(spec.dtype):
            shown = "nothing" if value is None else f"{list(value.shape)} {value.dtype}"
            raise CheckFailed(f"{served.name} answered {spec.name} as {shown}; its record says {list(want)} "
                              f"{spec.dtype}")
        got[spec.name] = value
    return got
