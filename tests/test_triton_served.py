"""A served model is an artifact: verify, evaluate, benchmark and predict `triton://HOST:PORT/MODEL` against the
nvidia-pytriton wheel's real tritonserver on 127.0.0.1 (Python backend, CPU)."""

import json
import re
import shutil
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from fastervit_deploy.core.address import parse_address
from fastervit_deploy.data.datasets import digits_split
from fastervit_deploy.system.errors import FvdeployError
from fastervit_deploy.triton.local import LocalTritonServer, free_port
from fastervit_deploy.triton.model import RECORD_PARAMETER

from .helpers import assert_one_line_error, cli, export_tiny, interrupt, spawn

tritonclient_http = pytest.importorskip("tritonclient.http")
pytestmark = pytest.mark.xdist_group("served")  # one worker starts the server once for the module


def _write(*args) -> None:
    result = cli("triton", *args)
    assert result.exit_code == 0, result.output


def _edit_config(folder: Path, edit) -> None:
    config = folder / "config.pbtxt"
    config.write_text(edit(config.read_text()))


@pytest.fixture(scope="module")
def served(triton_artifacts, digits_artifacts, tmp_path_factory):
    """One server: a tiny classifier with its preprocessing ensemble; the same record over other weights (seed 1);
    one whose configuration lost its record; one whose configuration says 12 classes; the digits model with its
    ensemble. Yields (address prefix, repository, the tiny classifier's ONNX)."""
    root = tmp_path_factory.mktemp("served")
    _, classifier, _ = triton_artifacts
    repo = root / "repo"
    python = ("--backend", "python", "--repository", repo)
    _write(classifier, *python, "--name", "cls", "--preprocess", "--max-queue-delay-us", 20000)
    _write(classifier, *python, "--name", "wrong")
    other, _ = export_tiny(root, filename="seed1.onnx", seed=1, verify=False)
    shutil.copyfile(other, repo / "wrong" / "1" / "model.onnx")  # the file replaced on the server, its record kept
    _write(classifier, *python, "--name", "bare")
    _edit_config(repo / "bare", lambda text: "\n".join(line for line in text.splitlines()
                                                       if RECORD_PARAMETER not in line) + "\n")
    _write(classifier, *python, "--name", "reshaped")
    _edit_config(repo / "reshaped", lambda text: text.replace('dims: [ 10 ] label_filename: "labels.txt"',
                                                              "dims: [ 12 ]"))
    _write(classifier, *python, "--name", "twelve")
    twelve, _ = export_tiny(root, filename="twelve.onnx", num_classes=12, verify=False)
    shutil.copyfile(twelve, repo / "twelve" / "1" / "model.onnx")  # answers 12 scores where its record says 10
    _write(digits_artifacts["fp32"], *python, "--name", "digits", "--preprocess")
    with LocalTritonServer(repo) as server:
        yield f"triton://{server.url}", repo, classifier


@pytest.fixture(scope="module")
def digits_jpeg(tmp_path_factory) -> Path:
    """120 held-out digits as JPEG files in class folders (what a user's client would send as they are)."""
    root = tmp_path_factory.mktemp("digits_jpeg")
    _, _, test, labels = digits_split()
    for i, (img, label) in enumerate(list(zip(test, labels))[:120]):
        (root / str(label)).mkdir(exist_ok=True)
        img.save(root / str(label) / f"{i:04d}.jpg", quality=90)
    return root


def _stats(prefix: str, model: str) -> dict:
    client = tritonclient_http.InferenceServerClient(parse_address(f"{prefix}/{model}").url)
    return client.get_inference_statistics(model)["model_stats"][0]


def test_addresses_parse_in_both_spellings_and_refuse_what_is_not_one():
    a = parse_address("triton://10.0.0.5:8001/fv0/3")
    assert (a.host, a.port, a.model, a.version, str(a)) == ("10.0.0.5", 8001, "fv0", "3", "triton://10.0.0.5:8001/fv0/3")
    assert parse_address(Path("triton://h:9/m")) == parse_address("triton://h:9/m")  # a Path drops one slash
    assert parse_address("triton://h/m").port == 8000  # Triton's HTTP port
    with pytest.raises(FvdeployError, match=r"triton\+grpc:// is not supported"):
        parse_address("triton+grpc://h:8001/m")
    with pytest.raises(FvdeployError, match="is not a served-model address"):
        parse_address("triton://h:9")
    with pytest.raises(FvdeployError, match="version 'latest' is not a number"):
        parse_address("triton://h:9/m/latest")


def test_verify_a_served_model_its_ensemble_and_one_that_is_not_its_record(served, tmp_path):
    prefix, repo, classifier = served
    report = tmp_path / "cls.json"
    ok = cli("verify", f"{prefix}/cls", "--json", report)
    assert ok.exit_code == 0, ok.output
    data = json.loads(report.read_text())
    assert data["artifact"] == f"{prefix}/cls" and data["runner"] == "triton" and data["passed"]
    assert data["overall"]["max_abs"] <= 1e-4 and data["overall"]["samples"] == 8
    assert data["served"]["platform"] == "python" and data["served"]["max_batch_size"] == 16
    # The ensemble is sent PNG bytes: the server's preprocessing (its copy of fvdeploy's) against fvdeploy's.
    ensemble = cli("verify", f"{prefix}/cls_ensemble", "--batch", 10, "--json", tmp_path / "ens.json")
    assert ensemble.exit_code == 0, ensemble.output
    assert json.loads((tmp_path / "ens.json").read_text())["overall"]["max_abs"] <= 1e-4
    # A trained checkpoint (non-zero biases, BatchNorm statistics, layer scales: the graph a user's checkpoint makes),
    # plain and through its ensemble.
    for name in ("digits", "digits_ensemble"):
        trained = cli("verify", f"{prefix}/{name}", "--json", tmp_path / f"{name}.json")
        assert trained.exit_code == 0, trained.output
        figures = json.loads((tmp_path / f"{name}.json").read_text())["overall"]
        assert figures["max_abs"] <= 1e-4 and figures["top1_agreement"] == 1.0, figures
    # Other weights behind the same record: the check fails (exit 1), it is not an error.
    wrong = cli("verify", f"{prefix}/wrong", "--json", tmp_path / "wrong.json")
    assert wrong.exit_code == 1 and "verification failed" in wrong.output, wrong.output
    assert json.loads((tmp_path / "wrong.json").read_text())["overall"]["max_abs"] > 1e-2
    # The record the server carries is the artifact's: the same tensors, the same model.
    assert cli("verify", f"{prefix}/cls", "--model", "faster_vit_1_224").exit_code == 2


def test_served_failures_are_one_line_each(served, tmp_path):
    prefix, _, _ = served
    assert_one_line_error(cli("verify", f"{prefix}/nope"), r"has no model 'nope' \(it has: bare, cls, ", 2)
    assert_one_line_error(cli("verify", f"{prefix}/cls/7"), r"model 'cls' has no ready version 7 \(ready: 1\)", 2)
    assert_one_line_error(cli("verify", f"{prefix}/bare"), r"carries no fvdeploy record in its configuration .*: "
                                                           r"pass --model", 2)
    photo = tmp_path / "photo.png"
    from fastervit_deploy.data.images import skimage_photos

    skimage_photos()[0].save(photo)
    assert_one_line_error(cli("predict", f"{prefix}/bare", photo), r"writes one\)\s*$", 2)  # predict takes no model options
    assert_one_line_error(cli("verify", f"{prefix}/reshaped"),
                          r"the server's outputs logits \[N, 12\] float32 differ from its record's logits \[N, 10\]", 1)
    assert_one_line_error(cli("verify", f"{prefix}/twelve"),
                          r"answered logits as \[8, 12\] float32; its record says \[8, 10\] float32", 1)
    assert_one_line_error(cli("verify", f"triton://127.0.0.1:{free_port()}/cls"),
                          r"no Triton server answers at 127\.0\.0\.1:\d+ \(connection refused\)", 2)
    assert_one_line_error(cli("verify", "triton+grpc://127.0.0.1:8001/cls"), r"triton\+grpc:// is not supported", 2)
    assert_one_line_error(cli("predict", f"{prefix}/cls", tmp_path / "none.jpg"), r"image not found", 2)
    assert_one_line_error(cli("debug", "x.onnx", "--reference", f"{prefix}/cls"), r"not a served model", 2)
    # A server that accepts the connection and never answers: --timeout bounds the wait.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        start = time.monotonic()
        result = cli("verify", f"triton://127.0.0.1:{silent.getsockname()[1]}/cls", "--timeout", 1)
        assert time.monotonic() - start < 5
    assert_one_line_error(result, r"no answer within --timeout 1 s", 2)


def test_a_served_model_without_a_record_takes_the_model_options(served):
    from fastervit_deploy.core.options import RunOptions
    from fastervit_deploy.core.precision import Tolerance
    from fastervit_deploy.use.verify import verify

    from .helpers import quiet_steps, tiny_request

    prefix, _, _ = served
    result = verify(f"{prefix}/bare", tiny_request(), Tolerance(), RunOptions(), None, 4, quiet_steps())
    assert result["passed"] and result["overall"]["max_abs"] <= 1e-4
    other = verify(f"{prefix}/bare", tiny_request(seed=1), Tolerance(), RunOptions(), None, 4, quiet_steps())
    assert not other["passed"]  # the options' word is taken, and checked


def test_evaluate_served_rows_equal_the_files_also_through_the_ensemble(served, digits_artifacts, digits_jpeg, tmp_path):
    prefix, _, _ = served
    onnx_file = digits_artifacts["fp32"]
    report = tmp_path / "eval.json"
    result = cli("evaluate", f"{prefix}/digits", f"{prefix}/digits_ensemble", "--reference", onnx_file,
                 "--data", digits_jpeg, "--concurrency", 4, "--batch", 16, "--json", report)
    assert result.exit_code == 0, result.output
    rows = {Path(r["artifact"]).name if not r["artifact"].startswith("triton") else r["artifact"].rsplit("/", 1)[1]: r
            for r in json.loads(report.read_text())["results"]}
    file_row = rows["digits.onnx"]
    assert file_row["reference"] and file_row["images"] == 120 and file_row["top1"] > 0.9  # a trained model
    for name in ("digits", "digits_ensemble"):
        row = rows[name]
        assert row["top1_agreement"] == 1.0 and row["top1"] == file_row["top1"] and row["confusion"] == file_row["confusion"]
        assert row["served"]["takes_encoded"] == (name == "digits_ensemble") and row["served"]["record"] == "server"
    # The ensemble was sent every file once, as it is: the server decoded 120 JPEGs.
    assert _stats(prefix, "digits_preprocess")["inference_count"] >= 120


def test_predict_through_the_ensemble_matches_the_file(served, tmp_path):
    prefix, _, classifier = served
    photos = tmp_path / "photos"
    photos.mkdir()
    from fastervit_deploy.data.images import skimage_photos

    for i, photo in enumerate(skimage_photos()[:3]):
        photo.save(photos / f"{i}.jpg")
    runs = {}
    for name, artifact in (("file", classifier), ("ensemble", f"{prefix}/cls_ensemble"), ("plain", f"{prefix}/cls")):
        result = cli("predict", artifact, photos, "--json", tmp_path / f"{name}.json")
        assert result.exit_code == 0, result.output
        runs[name] = [[(t["index"], round(t["probability"], 5)) for t in row["top"]]
                      for row in json.loads((tmp_path / f"{name}.json").read_text())["predictions"]]
    assert runs["ensemble"] == runs["file"] == runs["plain"]


def test_benchmark_counts_equal_the_servers_and_dynamic_batching_shows(served, tmp_path):
    prefix, _, _ = served
    report, plot = tmp_path / "bench.json", tmp_path / "bench.png"
    result = cli("benchmark", f"{prefix}/cls", "--concurrency", "1,4,8", "--window", 0.3, "--json", report,
                 "--plot", plot)
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    assert [s["concurrency"] for s in data["steps"]] == [1, 4, 8] and data["incomplete"] is None
    for step in data["steps"]:
        assert step["requests"] == step["server"]["requests"] > 0, step  # the same windows, counted by both
        assert step["p50_ms"] <= step["p90_ms"] <= step["p95_ms"] <= step["p99_ms"]
        assert 3 <= step["windows"] <= 10
    one, eight = data["steps"][0]["server"], data["steps"][2]["server"]
    assert one["executions"] == one["requests"]  # one client: nothing to batch
    assert eight["executions"] < eight["requests"]  # eight clients: the server batched their requests
    assert data["served"]["server"]["name"] == "triton" and data["served"]["config"]["max_batch_size"] == 16
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # A request rate: sent on schedule (an open loop), the rate achieved is the rate asked while the server keeps up.
    rated = cli("benchmark", f"{prefix}/cls", "--request-rate", "10,40", "--window", 0.5, "--json", tmp_path / "r.json")
    assert rated.exit_code == 0, rated.output
    steps = json.loads((tmp_path / "r.json").read_text())["steps"]
    assert [s["request_rate"] for s in steps] == [10, 40]
    for step in steps:
        assert step["requests"] == step["server"]["requests"]
        assert abs(step["throughput_rps"] - step["request_rate"]) <= 0.2 * step["request_rate"], step
    assert_one_line_error(cli("benchmark", f"{prefix}/cls", "--request-rate", 5, "--concurrency", 2), r"give one of", 2)
    assert_one_line_error(cli("benchmark", f"{prefix}/cls", "--batch", "1,8"), r"one batch size", 2)
    assert_one_line_error(cli("benchmark", f"{prefix}/cls", "--batch", 32), r"--batch 32 is outside .* 1\.\.16", 2)


def _serve_alone(repo: Path, tmp_path: Path):
    """A server of its own (these tests end it, or interrupt its client)."""
    own = tmp_path / "repo"
    shutil.copytree(repo / "digits", own / "digits")
    return LocalTritonServer(own)


def _wait_for_requests(url: str, model: str, limit_s: float = 120) -> None:
    client = tritonclient_http.InferenceServerClient(url)
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        with_stats = client.get_inference_statistics(model)["model_stats"]
        if with_stats and with_stats[0]["inference_count"] > 0:
            return
        time.sleep(0.1)
    raise AssertionError("no request reached the server")


def test_a_server_killed_mid_evaluate_is_one_line_within_seconds(served, digits_artifacts, digits_folder, tmp_path):
    _, repo, _ = served
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    with _serve_alone(repo, tmp_path) as server:
        proc = spawn(["evaluate", f"triton://{server.url}/digits", "--reference", digits_artifacts["fp32"], "--data",
                      digits_folder, "--batch", 4], tmp_path, tmpdir)
        _wait_for_requests(server.url, "digits")
        server._signal_group(signal.SIGKILL)
        start = time.monotonic()
        _, err = proc.communicate(timeout=30)
        took = time.monotonic() - start
    assert proc.returncode == 2 and took < 5, (proc.returncode, took, err)
    last = err.strip().splitlines()[-1]
    assert "Traceback" not in err and re.fullmatch(r"error: (no Triton server answers at|the Triton server at) "
                                                   r"127\.0\.0\.1:\d+ .*", last), err


def test_ctrl_c_abandons_the_requests_in_flight(served, tmp_path):
    _, repo, _ = served
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    with _serve_alone(repo, tmp_path) as server:
        proc = spawn(["benchmark", f"triton://{server.url}/digits", "--concurrency", 8, "--window", 30], tmp_path,
                     tmpdir)
        _wait_for_requests(server.url, "digits")
        code, took, rest = interrupt(proc, signal.SIGINT, to_group=True)
    assert code == 130 and took < 5, (code, took, rest)
    assert "Traceback" not in rest and rest.strip().splitlines()[-1] == "interrupted", rest


def test_a_server_gone_mid_benchmark_keeps_the_steps_measured(served, tmp_path):
    _, repo, _ = served
    report = tmp_path / "partial.json"
    with _serve_alone(repo, tmp_path) as server:

        def stop_soon() -> None:  # a few seconds into the sweep: its first step (3 windows of 0.4 s) is measured
            _wait_for_requests(server.url, "digits")
            time.sleep(3.0)
            server._signal_group(signal.SIGKILL)

        stopper = threading.Thread(target=stop_soon, daemon=True)
        stopper.start()
        result = cli("benchmark", f"triton://{server.url}/digits", "--concurrency", "1,2,4,8,16,32", "--window", 0.4,
                     "--max-windows", 3, "--json", report)
        stopper.join(30)
    assert result.exit_code == 2, result.output
    assert re.search(r"error: the sweep ended early, at concurrency \d+: .*\(the steps before it are reported\)",
                     result.output), result.output
    data = json.loads(report.read_text())
    assert data["incomplete"] and 1 <= len(data["steps"]) < 6
    assert all(s["requests"] == s["server"]["requests"] for s in data["steps"])
