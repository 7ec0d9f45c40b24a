"""Faults and bad input: signals, full disks, too little memory, races, folders in the way, wrong inputs.

Signal, disk and memory tests run the real console script in a subprocess (the way a user meets them);
each asserts the exit code, one `error:`/`interrupted` line, no traceback and nothing left behind.
"""

import hashlib
import json
import os
import resource
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from fastervit_deploy.system.errors import FvdeployError
from fastervit_deploy.system.files import atomic_output
from fastervit_deploy.quantize.convert import modelopt_available

from .helpers import FVDEPLOY, assert_one_line_error, cli, export_tiny, interrupt, leftovers, spawn, tiny_checkpoint, wait_for_line

@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_during_export_ends_within_5s_and_leaves_nothing(tmp_path, sig, code):
    ckpt = tiny_checkpoint(tmp_path / "tiny.pth.tar", "faster_vit_0_any_res", resolution=(224, 224))
    out, tmpdir = tmp_path / "out", tmp_path / "tmp"
    tmpdir.mkdir()
    # A large resolution keeps the export busy for seconds (3 s here: exporting, then simplifying); the signal lands
    # while the artifact's temporary folder (and the output folder made for it) exist.
    proc = spawn(["export-onnx", "--model", "faster_vit_0_any_res", "--checkpoint", ckpt, "--resolution", 1536, 2048,
                  "--no-verify", "-o", out / "m.onnx"], tmp_path, tmpdir)
    wait_for_line(proc, "✓ building model")
    deadline = time.monotonic() + 30
    while not out.is_dir() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert out.is_dir()
    time.sleep(0.5)
    returncode, took, rest = interrupt(proc, sig, to_group=sig == signal.SIGINT)  # Ctrl-C reaches the whole group
    assert returncode == code and took < 5, (returncode, took, rest)
    assert "interrupted" in rest and "Traceback" not in rest
    assert not out.exists() and leftovers(tmpdir) == []


@pytest.mark.skipif(not modelopt_available(), reason="needs nvidia-modelopt (make install installs it)")
@pytest.mark.parametrize("sig,code,to_group", [(signal.SIGINT, 130, True), (signal.SIGTERM, 143, False),
                                               (signal.SIGTERM, 143, True)], ids=["ctrl-c", "term", "term-group"])
def test_a_signal_during_the_modelopt_worker_stops_it_and_leaves_nothing(tmp_path, sig, code, to_group):
    src, _ = export_tiny(tmp_path, verify=False)
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    tmpdir, out = tmp_path / "tmp", tmp_path / "q" / "int8.onnx"
    tmpdir.mkdir()
    photos = tmp_path / "photos"
    photos.mkdir()
    from fastervit_deploy.data.images import skimage_photos

    for i, photo in enumerate(skimage_photos()):
        photo.save(photos / f"{i}.jpg")
    proc = spawn(["quantize", src, "--int8", "--calib-dir", photos, "--backend", "modelopt", "-o", out], tmp_path, tmpdir)
    wait_for_line(proc, "✓ calibrating")  # the next step runs in the ModelOpt worker process
    time.sleep(1.0)
    returncode, took, rest = interrupt(proc, sig, to_group=to_group)
    assert returncode == code and took < 5, (returncode, took, rest)
    assert "Traceback" not in rest
    assert not out.parent.exists() and leftovers(tmpdir) == []
    assert hashlib.sha256(src.read_bytes()).hexdigest() == digest


def run_limited(args, cwd, limit, value) -> subprocess.CompletedProcess:
    def set_limit():
        resource.setrlimit(limit, (value, value))

    return subprocess.run([*FVDEPLOY, *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          preexec_fn=set_limit, timeout=300)


def test_disk_full_is_one_line_and_leaves_nothing(tmp_path):
    """A write that the OS refuses part-way (RLIMIT_FSIZE: the file-size limit a full disk also imposes)."""
    ckpt = tiny_checkpoint(tmp_path / "tiny.pth.tar")
    result = run_limited(["export-onnx", "--model", "faster_vit_0_224", "--checkpoint", ckpt, "-o", "out/m.onnx"],
                         tmp_path, resource.RLIMIT_FSIZE, 256 << 10)
    assert result.returncode == 2, result.stderr
    # the line names the file it was writing (a full disk's "No space left on device" named none)
    assert result.stderr.strip().splitlines()[-1] == "error: File too large: out/m.onnx", result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.pth.tar"]


def test_reports_are_written_together_or_not_at_all(tmp_path):
    """The --json stayed when the --plot after it failed; now the plot goes first and a failure leaves neither."""
    src, _ = export_tiny(tmp_path, filename="t.onnx", verify=False)
    result = run_limited(["benchmark", src, "--batch", 1, "--warmup", 0, "--iterations", 1, "--no-pytorch",
                          "--json", "b.json", "--plot", "b.png"], tmp_path, resource.RLIMIT_FSIZE, 8 << 10)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1] == "error: File too large: b.png", result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.onnx", "t.onnx.json"]


def test_out_of_memory_during_export_is_one_line(tmp_path):
    """An allocation that fails (address-space limit) although the size passed the up-front estimate."""
    result = run_limited(["export-onnx", "--model", "faster_vit_0_any_res", "--resolution", 4096, 4096,
                          "--window-size", 8, "-o", "m.onnx"], tmp_path, resource.RLIMIT_AS, 3 << 30)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1] == "error: out of memory (try a smaller resolution or batch)"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args,largest", [
    (["--resolution", 100000, 100000], r"stage 2 carrier attention 8x6250000x6250000"),
    (["--resolution", 224, 224, "--window-size", 1000], r"stage 3 attention 1x16x1000000x1000000"),
])
def test_sizes_that_cannot_fit_are_refused_with_the_estimate(tmp_path, args, largest):
    start = time.monotonic()
    result = cli("export-onnx", "--model", "faster_vit_0_any_res", *args, "-o", tmp_path / "m.onnx")
    assert_one_line_error(result, rf"needs about [\d.]+ TiB of memory \(largest tensor: {largest}\); this machine "
                                  r"has [\d.]+ [GT]iB available", code=2)
    assert time.monotonic() - start < 2 and list(tmp_path.iterdir()) == []


def test_overwrite_never_deletes_a_folder(tmp_path):
    victim = tmp_path / "victim.onnx"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep")
    for extra in ([], ["--overwrite"]):
        result = cli("export-onnx", "--model", "faster_vit_0_224", "-o", victim, *extra)
        assert_one_line_error(result, r"victim.onnx is a folder: fvdeploy never replaces a folder", code=2)
    assert (victim / "precious.txt").read_text() == "keep"


def test_a_file_that_appears_meanwhile_is_not_replaced(tmp_path):
    target = tmp_path / "m.onnx"
    with pytest.raises(FvdeployError, match="appeared while fvdeploy was writing it"):
        with atomic_output(target) as tmp:
            tmp.write_text("ours")
            tmp.with_name(tmp.name + ".json").write_text("{}")
            target.write_text("theirs")  # another process published first
    assert target.read_text() == "theirs" and sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
    with atomic_output(target, overwrite=True) as tmp:  # --overwrite: replaced on purpose
        tmp.write_text("ours")
    assert target.read_text() == "ours"


def test_outputs_that_cannot_be_written_are_refused_before_the_work(tmp_path):
    path, _ = export_tiny(tmp_path)
    for option, name in (("--json", "b.json"), ("--plot", "b.png")):
        start = time.monotonic()
        result = cli("benchmark", path, option, Path("/proc") / name)  # not writable, even for root
        assert_one_line_error(result, rf"{option} folder /proc is not writable", code=2)
        assert "benchmarking" not in result.output and time.monotonic() - start < 5


def test_precision_inputs_are_refused_for_what_they_are(tmp_path):
    src, _ = export_tiny(tmp_path, verify=False)
    half = tmp_path / "half.onnx"
    assert cli("quantize", src, "--fp16", "-o", half).exit_code == 0
    for args in (["--fp16"], ["--int8", "--calib-dir", tmp_path]):
        result = cli("quantize", half, *args, "-o", tmp_path / "again.onnx")
        assert_one_line_error(result, r"half.onnx is already fp16: quantize the FP32 ONNX it came from \(.*faster_vit_0_224.onnx\)", 2)
    # An ONNX that already carries its precision needs no calibration to be built.
    result = cli("build-trt", "--onnx", half, "--fp16")
    assert "--calib-dir" not in result.output and "trtexec --onnx=" in result.output.replace("\n", "")
    assert_one_line_error(cli("build-trt", "--onnx", half, "--int8"), r"half.onnx is already fp16; start from the FP32", 2)


def test_benchmark_records_the_machine_and_threads(tmp_path):
    path, _ = export_tiny(tmp_path)
    result = cli("benchmark", path, "--batch", "1,3", "--warmup", 0, "--iterations", 1, "--threads", 1,
                 "--json", tmp_path / "b.json", "--plot", tmp_path / "b.png")
    assert result.exit_code == 0, result.output
    machine = json.loads((tmp_path / "b.json").read_text())["machine"]
    assert machine["threads"] == 1 and machine["cores"] == os.cpu_count() and machine["cpu"]
    assert machine["versions"]["onnxruntime"] and machine["versions"]["torch"]
    assert (tmp_path / "b.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_models_table_fits_80_columns_and_lists_as_json():
    from rich.cells import cell_len

    result = subprocess.run([*FVDEPLOY, "models"], capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})
    lines = result.stdout.splitlines()
    assert result.returncode == 0 and max(cell_len(line.rstrip()) for line in lines) <= 80
    assert "…" not in result.stdout and any("faster_vit_4_21k_768" in line for line in lines)
    rows = json.loads(cli("models", "faster_vit_0_*", "--json").stdout)
    assert [r["name"] for r in rows] == ["faster_vit_0_224", "faster_vit_0_any_res"] and rows[0]["params"] == 31404840
    formats = {f["format"]: f for f in json.loads(cli("formats", "--json").stdout)}
    assert formats["onnx"]["run_here"] == "yes" and formats["tensorrt"]["run_here"] != "yes"


@pytest.mark.parametrize("after_s", [0.2, 0.5, 0.8, 1.2, 2.0])
def test_ctrl_c_while_starting_is_one_line(tmp_path, after_s):
    """Interrupted while importing torch and numpy, parsing or building: no traceback, nothing written.
    (A KeyboardInterrupt raised inside an import is swallowed by torch and breaks numpy later.)"""
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    proc = spawn(["export-onnx", "--model", "faster_vit_0_224", "-o", tmp_path / "m.onnx"], tmp_path, tmpdir)
    time.sleep(after_s)
    returncode, took, rest = interrupt(proc, signal.SIGINT, to_group=True)
    lines = rest.strip().splitlines()  # step lines may come first; nothing from a swallowed interruption
    assert returncode == 130 and took < 5 and lines[-1] == "interrupted", (returncode, rest)
    assert not any(word in rest for word in ("Traceback", "Exception", "error")), rest
    assert not (tmp_path / "m.onnx").exists() and leftovers(tmpdir) == []


def test_damaged_checkpoints_are_named_not_traced(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "tiny.pth.tar")
    data = ckpt.read_bytes()
    (tmp_path / "cut.pth.tar").write_bytes(data[: len(data) // 2])  # an interrupted download
    (tmp_path / "empty.pth.tar").write_bytes(b"")
    for name, reason in (("cut.pth.tar", r"cannot read checkpoint cut.pth.tar: .*(damaged|truncated|incomplete)"),
                         ("empty.pth.tar", r"cannot read checkpoint empty.pth.tar: the file is empty")):
        result = cli("export-onnx", "--model", "faster_vit_0_224", "--checkpoint", tmp_path / name, "-o", tmp_path / "x.onnx")
        assert_one_line_error(result, reason, 2)
        assert "IndexError" not in result.output and "EOFError" not in result.output


def test_sixteen_bit_images_keep_their_content():
    """A 16-bit grey PNG is scaled to 8 bits, not clipped to white."""
    from PIL import Image

    from fastervit_deploy.data.images import skimage_photos, to_rgb

    grey = skimage_photos()[0].convert("L")
    deep = Image.fromarray(np.asarray(grey, np.uint16) * 257)
    assert deep.mode.startswith("I;16")
    assert np.abs(np.asarray(to_rgb(deep), np.int16) - np.asarray(grey.convert("RGB"), np.int16)).max() <= 1


def test_benchmark_of_artifacts_with_different_input_sizes_is_one_line(tmp_path):
    a, _ = export_tiny(tmp_path, filename="a.onnx", verify=False)
    b, _ = export_tiny(tmp_path, "faster_vit_0_any_res", filename="b.onnx", verify=False, resolution=(160, 288))
    assert_one_line_error(cli("benchmark", a, b), r"b.onnx takes \[N, 3, 160, 288\] but a.onnx takes \[N, 3, 224, 224\]", 2)
