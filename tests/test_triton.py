"""`fvdeploy triton`: repositories checked with Triton's own schema, then served for real by tritonserver."""

import contextlib
import io
import json
import os
import re
import shlex
import signal
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from fastervit_deploy.data.images import preprocess, skimage_photos
from fastervit_deploy.core.options import BatchProfile
from fastervit_deploy.artifact import read_record
from fastervit_deploy.core.reference import TorchRunner
from fastervit_deploy.onnx.runner import OnnxRuntimeRunner
from fastervit_deploy.system.errors import FvdeployError
from fastervit_deploy.triton.schema import parse_config

import fastervit_deploy
from fastervit_deploy.triton.local import check_servable, free_port

from .helpers import assert_one_line_error, cli, export_tiny, interrupt, leftovers, spawn, wait_for_line

tritonclient_http = pytest.importorskip("tritonclient.http")




def test_repository_is_valid_for_triton_and_matches_the_artifacts(triton_artifacts, tmp_path):
    root, classifier, backbone = triton_artifacts
    repo = tmp_path / "repo"
    result = cli("triton", classifier, backbone, "--repository", repo, "--name", "cls", "--name", "feat",
                 "--instances", 2, "--preferred-batch", "2,8")
    assert result.exit_code == 0, result.output
    cls = parse_config(repo / "cls" / "config.pbtxt")  # strict: Triton's ModelConfig message
    assert cls.platform == "onnxruntime_onnx" and cls.max_batch_size == 16
    assert [(t.name, list(t.dims)) for t in cls.input] == [("input", [3, 224, 224])]
    assert [(t.name, list(t.dims), t.label_filename) for t in cls.output] == [("logits", [10], "labels.txt")]
    assert list(cls.dynamic_batching.preferred_batch_size) == [2, 8]
    assert cls.instance_group[0].count == 2 and cls.instance_group[0].kind == 1  # KIND_GPU
    assert (repo / "cls" / "labels.txt").read_text().splitlines() == [f"class {i}" for i in range(10)]
    assert (repo / "cls" / "1" / "model.onnx").read_bytes() == classifier.read_bytes()
    feat = parse_config(repo / "feat" / "config.pbtxt")
    assert [(t.name, list(t.dims)) for t in feat.output] == [("feat_s8", [64, 20, 36]), ("feat_s32", [256, 5, 9])]
    assert not any(t.label_filename for t in feat.output) and not (repo / "feat" / "labels.txt").exists()
    assert json.loads((repo / "feat" / "1" / "model.onnx.json").read_text())["outputs"][0]["name"] == "feat_s8"
    assert read_record(repo / "feat" / "1" / "model.onnx").identity() == read_record(backbone).identity()  # re-checked
    served = repo / "cls" / "1" / "model.onnx"
    served.write_bytes(served.read_bytes() + b"\0")  # replaced after fvdeploy wrote it: its record no longer holds
    with pytest.raises(FvdeployError, match="changed since its sidecar"):
        fastervit_deploy.preprocess([skimage_photos()[0]], repo / "cls")
    # The onnxruntime backend's TensorRT accelerator, for ONNX on GPU hosts.
    ort_trt = cli("triton", classifier, "--repository", repo, "--name", "cls_trt", "--ort-tensorrt")
    assert ort_trt.exit_code == 0, ort_trt.output
    accel = parse_config(repo / "cls_trt" / "config.pbtxt").optimization.execution_accelerators.gpu_execution_accelerator[0]
    assert accel.name == "tensorrt" and accel.parameters["precision_mode"] == "FP16"


def test_bad_input_is_one_line(triton_artifacts, tmp_path):
    root, classifier, _ = triton_artifacts
    repo = tmp_path / "repo"
    assert cli("triton", classifier, "--repository", repo, "--name", "m").exit_code == 0
    assert_one_line_error(cli("triton", classifier, "--repository", repo, "--name", "m"), r"m exists \(pass --overwrite", 2)
    assert cli("triton", classifier, "--repository", repo, "--name", "m", "--overwrite").exit_code == 0
    (tmp_path / "file").write_text("")
    assert_one_line_error(cli("triton", classifier, "--repository", tmp_path / "file"), r"is a file, not a folder", 2)
    bare = tmp_path / "bare.onnx"
    model = onnx.load(str(classifier))
    del model.metadata_props[:]  # the record embedded in the graph, gone; and no sidecar beside it
    onnx.save(model, str(bare))
    assert_one_line_error(cli("triton", bare, "--repository", repo), r"bare.onnx has no fvdeploy record", 2)
    assert_one_line_error(cli("triton", classifier, "--repository", repo, "--preferred-batch", 32),
                          r"--preferred-batch 32 is outside cls.onnx's batch range 1..16", 2)
    fixed, _ = export_tiny(tmp_path, filename="fixed.onnx", verify=False,
                           batch=BatchProfile(min_batch=4, max_batch=8))
    assert_one_line_error(cli("triton", fixed, "--repository", repo), r"takes batches 4..8, but Triton sends any batch", 2)
    assert_one_line_error(cli("triton", classifier, "--repository", repo, "--backend", "tensorrt"),
                          r"the tensorrt backend serves .plan engines", 2)
    assert sorted(p.name for p in repo.iterdir()) == ["README.md", "m"]


def _infer(client, model, x, output="logits"):
    inp = tritonclient_http.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return client.infer(model, [inp]).as_numpy(output)


def test_served_by_tritonserver_matches_pytorch_and_batches_under_load(triton_artifacts, tmp_path):
    from fastervit_deploy.triton.local import LocalTritonServer

    root, classifier, _ = triton_artifacts
    repo = tmp_path / "repo"
    result = cli("triton", classifier, "--repository", repo, "--name", "cls", "--backend", "python", "--preprocess",
                 "--max-queue-delay-us", 20000)
    assert result.exit_code == 0, result.output
    record = read_record(classifier)
    desc = record.model
    photos = skimage_photos()
    x = np.stack([preprocess(p, desc.resolution, desc.preprocessing) for p in photos[:4]])
    with TorchRunner(desc.build(), desc.input, desc.outputs) as torch_runner:
        expected = torch_runner.infer(x)["logits"]
    with LocalTritonServer(repo) as server:
        client = tritonclient_http.InferenceServerClient(server.url)
        # 1. real images, as a batch, against PyTorch with verify's fp32 tolerance
        got = _infer(client, "cls", x)
        assert np.abs(got - expected).max() <= 1e-4 and (got.argmax(1) == expected.argmax(1)).all()
        # 2. encoded JPEG bytes through the preprocessing ensemble
        encoded = []
        for photo in photos[:2]:
            buf = io.BytesIO()
            photo.save(buf, format="JPEG", quality=95)
            encoded.append(buf.getvalue())
        inp = tritonclient_http.InferInput("image_bytes", [2, 1], "BYTES")
        inp.set_data_from_numpy(np.array(encoded, dtype=object).reshape(2, 1))
        via_bytes = client.infer("cls_ensemble", [inp]).as_numpy("logits")
        decoded = np.stack([preprocess(Image.open(io.BytesIO(b)).convert("RGB"), desc.resolution, desc.preprocessing)
                            for b in encoded])
        with TorchRunner(desc.build(), desc.input, desc.outputs) as torch_runner:
            assert np.abs(via_bytes - torch_runner.infer(decoded)["logits"]).max() <= 1e-4
        # bytes that are no image: an error for that request (HTTP 400), not a server error with PIL's traceback
        junk = tritonclient_http.InferInput("image_bytes", [1, 1], "BYTES")
        junk.set_data_from_numpy(np.array([b"not an image"], dtype=object).reshape(1, 1))
        with pytest.raises(Exception) as refused:
            client.infer("cls_ensemble", [junk])
        assert "not a JPEG/PNG image" in str(refused.value) and "Traceback" not in str(refused.value)
        assert refused.value.status() == "400"  # the client's error, not the server's
        # 3. bounded load: 200 single-image requests from 8 clients, every answer checked
        with OnnxRuntimeRunner(classifier) as local:
            answers = {i: local.infer(x[i : i + 1])["logits"] for i in range(len(x))}
        errors, before = [], client.get_inference_statistics("cls")["model_stats"][0]

        def worker(k: int) -> None:
            own = tritonclient_http.InferenceServerClient(server.url)
            for j in range(25):
                i = (k + j) % len(x)
                try:
                    out = _infer(own, "cls", x[i : i + 1])
                    if np.abs(out - answers[i]).max() > 1e-4:
                        errors.append(f"request {k}/{j}: wrong answer")
                except Exception as err:  # noqa: BLE001 - collected and asserted below
                    errors.append(f"request {k}/{j}: {err}")

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert errors == [] and not any(t.is_alive() for t in threads)
        stats = client.get_inference_statistics("cls")["model_stats"][0]
        requests = stats["inference_count"] - before["inference_count"]
        executions = stats["execution_count"] - before["execution_count"]
        assert requests == 200 and executions < requests, (requests, executions)  # dynamic batching happened
    assert server.process.poll() is not None  # stopped, always


@pytest.mark.gpu(needs="tensorrt")
def test_tensorrt_plan_repository_names_its_tensorrt_version(triton_artifacts, tmp_path):
    root, _, backbone = triton_artifacts
    plan = tmp_path / "feat.plan"
    assert cli("build-trt", "--onnx", backbone, "--fp16", "--max-batch", 8, "-o", plan).exit_code == 0
    repo = tmp_path / "repo"
    assert cli("triton", plan, "--repository", repo, "--name", "feat").exit_code == 0
    cfg = parse_config(repo / "feat" / "config.pbtxt")
    assert cfg.platform == "tensorrt_plan" and cfg.max_batch_size == 8 and [t.name for t in cfg.output] == ["feat_s8", "feat_s32"]
    import tensorrt

    assert f"needs TensorRT {tensorrt.__version__}" in (repo / "README.md").read_text()


def test_the_repository_readme_keeps_one_section_per_model(triton_artifacts, tmp_path):
    from fastervit_deploy.triton.repository import readme_sections

    root, classifier, backbone = triton_artifacts
    repo = tmp_path / "repo"
    assert cli("triton", classifier, "--repository", repo, "--name", "cls").exit_code == 0
    assert cli("triton", backbone, "--repository", repo, "--name", "feat").exit_code == 0
    first = readme_sections((repo / "README.md").read_text())
    assert list(first) == ["cls", "feat"] and "feat_s32" in first["feat"] and "logits" in first["cls"]
    # Rewriting one model rewrites its section only.
    assert cli("triton", classifier, "--repository", repo, "--name", "cls", "--instances", 3, "--overwrite").exit_code == 0
    again = readme_sections((repo / "README.md").read_text())
    assert list(again) == ["cls", "feat"] and again["feat"] == first["feat"]
    assert "instances: 3 x GPU" in again["cls"] and "instances: 1 x GPU" in first["cls"]


def test_the_users_own_readme_is_kept_whole(triton_artifacts, tmp_path):
    """A repository's own files are inputs: `triton` adds its sections to the user's README, never replaces it."""
    from fastervit_deploy.triton.repository import readme_sections

    _, classifier, backbone = triton_artifacts
    repo = tmp_path / "proj"
    repo.mkdir()
    mine = "# Our models\n\nDeployed by the vision team; ask Ana before changing them.\n"
    (repo / "README.md").write_text(mine)
    assert cli("triton", classifier, "--repository", repo, "--name", "cls").exit_code == 0
    assert cli("triton", backbone, "--repository", repo, "--name", "feat").exit_code == 0
    text = (repo / "README.md").read_text()
    assert text.startswith(mine) and list(readme_sections(text)) == ["cls", "feat"]
    assert "Triton model repository written by fvdeploy" not in text


# ---- names, the local server's life, the README's client ------------------------------------------------------

@pytest.mark.parametrize("name", ["../escape", "a/b", ".hidden", "", "x" * 201])
def test_a_model_name_is_one_folder_name_triton_accepts(triton_artifacts, tmp_path, name):
    _, classifier, _ = triton_artifacts
    repo = tmp_path / "repo"
    result = cli("triton", classifier, "--repository", repo, "--name", name)
    assert_one_line_error(result, r"is not a Triton model name: one folder name of letters, digits", 2)
    assert not repo.exists() and not (tmp_path / "escape").exists()  # nothing written, not even the repository


def test_overwrite_never_replaces_the_folder_an_input_lives_in(triton_artifacts, tmp_path):
    _, classifier, _ = triton_artifacts
    repo = tmp_path / "repo"
    assert cli("triton", classifier, "--repository", repo, "--name", "m").exit_code == 0
    served = repo / "m" / "1" / "model.onnx"
    before = served.read_bytes()
    assert_one_line_error(cli("triton", served, "--repository", repo, "--name", "m", "--overwrite"),
                          r"model\.onnx is inside .*m, which this command would replace", 2)
    assert served.read_bytes() == before


def test_triton_serve_refuses_what_the_wheels_server_cannot_load_before_starting(triton_artifacts, tmp_path,
                                                                               monkeypatch):
    _, classifier, _ = triton_artifacts
    monkeypatch.chdir(tmp_path)
    repo = tmp_path / "repo"
    assert cli("triton", classifier, "--repository", repo, "--name", "m").exit_code == 0  # onnxruntime backend
    refused = cli("triton-serve", repo)
    assert_one_line_error(refused, r"has the Python backend only, and m \(onnxruntime_onnx\) needs another: to serve "
                                   r"it here, write a Python-backend repository: fvdeploy triton", 2)
    advice = re.search(r"(fvdeploy triton .*--backend python)", " ".join(refused.output.split())).group(1)
    assert "..." not in advice
    ran = cli(*shlex.split(advice)[1:])  # as printed, from where the user is
    assert ran.exit_code == 0, ran.output
    assert check_servable(tmp_path / "repo_cpu") == ["m"]
    assert_one_line_error(cli("triton-serve", tmp_path / "none"), r"model repository not found", 2)
    assert_one_line_error(cli("triton-serve", tmp_path), r"holds no Triton model", 2)
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        python_repo = tmp_path / "py"
        assert cli("triton", classifier, "--repository", python_repo, "--backend", "python").exit_code == 0
        assert_one_line_error(cli("triton-serve", python_repo, "--http-port", taken.getsockname()[1]),
                              r"port \d+ on 127\.0\.0\.1 is taken", 2)


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if text in (proc / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(proc.name))
            except OSError:
                pass
    return found


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_the_local_server_and_its_stubs_end_with_fvdeploy(triton_artifacts, tmp_path, sig, code):
    _, classifier, _ = triton_artifacts
    repo = tmp_path / f"repo-{sig.name}"  # the server's and its stubs' command lines name it
    assert cli("triton", classifier, "--repository", repo, "--backend", "python").exit_code == 0
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    port = free_port()
    proc = spawn(["triton-serve", repo, "--http-port", port], tmp_path, tmpdir)
    wait_for_line(proc, "tritonserver ready", limit_s=120)
    assert len(_processes_mentioning(str(repo.resolve()))) >= 2  # the server and a Python-backend stub
    regions = f"fvdeploy-{proc.pid}-{port}-*"  # the Python backend's shared memory, named by fvdeploy
    assert list(Path("/dev/shm").glob(regions))
    returncode, took, rest = interrupt(proc, sig, to_group=sig == signal.SIGINT)
    assert returncode == code and took < 5, (returncode, took, rest)
    assert "Traceback" not in rest
    deadline = time.monotonic() + 5
    while _processes_mentioning(str(repo.resolve())) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _processes_mentioning(str(repo.resolve())) == [], "tritonserver or a stub outlived fvdeploy"
    assert leftovers(tmpdir) == [] and list(Path("/dev/shm").glob(regions)) == []  # they stayed behind


def test_a_server_killed_from_outside_is_said_as_such(triton_artifacts, tmp_path):
    """It printed the server log's last error, a GPU probe at start-up ("CudaDriverHelper has not been
    initialized"), which has nothing to do with why it stopped."""
    _, classifier, _ = triton_artifacts
    repo = tmp_path / "repo-killed"
    assert cli("triton", classifier, "--repository", repo, "--backend", "python").exit_code == 0
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    proc = spawn(["triton-serve", repo, "--http-port", free_port()], tmp_path, tmpdir)
    wait_for_line(proc, "tritonserver ready", limit_s=120)
    server = next(pid for pid in _processes_mentioning(str(repo.resolve()))
                  if b"tritonserver" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0])
    os.kill(server, signal.SIGKILL)
    rest = proc.communicate(timeout=30)[1]
    assert proc.returncode == 2 and rest.strip().splitlines()[-1] == \
        "error: tritonserver was ended by SIGKILL, not by fvdeploy", rest


def readme_block(after: str) -> str:
    """The first ```python block of README.md after the line containing ``after``."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    rest = text[text.index(after):]
    start = rest.index("```python\n") + len("```python\n")
    return rest[start:rest.index("```", start)]


def test_the_readmes_client_snippet_runs_as_written(triton_artifacts, tmp_path, monkeypatch):
    from fastervit_deploy.triton.local import LocalTritonServer

    _, classifier, _ = triton_artifacts
    monkeypatch.chdir(tmp_path)
    # The README's two commands, then its snippet: a cat photo, the server on the port the snippet names.
    assert cli("triton", classifier, "--repository", "models", "--name", "fastervit", "--backend", "python").exit_code == 0
    skimage_photos()[1].save("cat.jpg")  # scikit-image's chelsea
    snippet = readme_block("Then, from Python")
    port = free_port()
    with LocalTritonServer(Path("models"), port):
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(compile(snippet.replace("127.0.0.1:8000", f"127.0.0.1:{port}"), "README.md", "exec"), {})
    top = printed.getvalue()
    with OnnxRuntimeRunner(classifier) as local:
        logits = local.infer(fastervit_deploy.preprocess(["cat.jpg"], classifier))["logits"][0]
    entries = re.findall(r"b'([^']+)'", top)  # "score:index:label"
    assert [int(e.split(":")[1]) for e in entries] == np.argsort(-logits)[:5].tolist(), top
    assert abs(float(entries[0].split(":")[0]) - logits.max()) < 1e-3  # the scores are logits, as the README says


def test_overwriting_without_preprocess_removes_the_old_preprocessing_and_ensemble(triton_artifacts, tmp_path):
    """They stayed, wired to the replaced model, and the server then refused the repository."""
    _, classifier, _ = triton_artifacts
    repo = tmp_path / "repo"
    first = cli("triton", classifier, "--repository", repo, "--name", "m", "--backend", "python", "--preprocess")
    assert first.exit_code == 0, first.output
    assert sorted(p.name for p in repo.iterdir()) == ["README.md", "m", "m_ensemble", "m_preprocess"]
    again = cli("triton", classifier, "--repository", repo, "--name", "m", "--backend", "python", "--overwrite")
    assert again.exit_code == 0, again.output
    assert sorted(p.name for p in repo.iterdir()) == ["README.md", "m"]
    assert check_servable(repo) == ["m"]
    assert "m_ensemble" not in (repo / "README.md").read_text()
