"""Messages say what is so, advice runs as printed, and no library noise or traceback reaches the user. Each case
is what a new user met; every printed command line is run as printed."""

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from fastervit_deploy.artifact import read_record
from fastervit_deploy.core.options import BatchProfile, OnnxOptions
from fastervit_deploy.data.images import skimage_photos

from .helpers import FVDEPLOY, assert_one_line_error, cli, export_tiny, tiny_checkpoint




def photo_folder(folder: Path, good: int = 1, corrupt: bool = True) -> Path:
    """``good`` real photos, and four files no reader can decode (named after what is wrong with them)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(skimage_photos()[:good]):
        img.save(folder / f"good{i}.png")
    if corrupt:
        (folder / "text.jpg").write_text("not an image")
        (folder / "empty.png").write_bytes(b"")
        (folder / "header.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"x" * 16)
        (folder / "garbage.webp").write_bytes(os.urandom(64))
    return folder


def printed_command(text: str) -> list[str]:
    """The fvdeploy command line a message advises (in backticks, or after 'build from it: ')."""
    found = re.search(r"`(fvdeploy [^`]+)`|: (fvdeploy [^;()]+?)(?:$|;)", text.replace("\n", " "))
    assert found, text
    return shlex.split(found.group(1) or found.group(2))[1:]


# ---- item 4: tracebacks -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("ct", [8, 100])
def test_a_carrier_size_larger_than_the_window_is_one_line(ct, tmp_path):
    result = cli("export-onnx", "--model", "faster_vit_0_224", "--ct-size", ct, "-o", tmp_path / "m.onnx")
    assert_one_line_error(result, rf"carrier size {ct} is larger than stage 2's window 7: .*ct_size 1\.\.7\) *$", 2)
    assert "nearby" not in result.output  # no input size helps, so none is offered


# ---- item 8: advice -----------------------------------------------------------------------------------------------

def test_an_onnx_without_a_record_gets_advice_its_command_can_follow(tmp_path):
    # A tiny model from a checkpoint that carries its architecture: the options the advice asks for fit the graph.
    ckpt = tiny_checkpoint(tmp_path / "tiny.pth.tar")
    made = tmp_path / "made.onnx"
    assert cli("export-onnx", "--model", "faster_vit_0_224", "--checkpoint", ckpt, "--no-verify", "-o", made).exit_code == 0
    bare = tmp_path / "bare.onnx"
    model = onnx.load(str(made))
    del model.metadata_props[:]
    onnx.save(model, str(bare))
    for args in (["quantize", bare, "--fp16"], ["build-trt", "--onnx", bare]):
        result = cli(*args)
        assert_one_line_error(result, r"has no fvdeploy record .*: start from an ONNX that `fvdeploy export-onnx "
                                      r"--model NAME` made", 2)
    for args in (["predict", bare, tmp_path], ["triton", bare, "--repository", tmp_path / "r"]):
        result = cli(*args)  # no --model: the advice may not name one
        assert result.exit_code == 2 and "--model and" not in result.output, result.output
    result = cli("verify", bare, "--batch", 1)  # verify has --model, and following the advice works
    assert "pass --model and the options it was made with" in result.output
    follow = cli("verify", bare, "--model", "faster_vit_0_224", "--checkpoint", ckpt, "--batch", 1)
    assert follow.exit_code == 0 and "verification passed" in follow.output, follow.output


def test_a_nested_checkpoint_gets_the_prefix_that_fits_and_the_advice_runs(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "tiny.pth.tar")
    contents = torch.load(ckpt, weights_only=True)
    detector = dict(contents, state_dict={f"backbone.0.{k}": v for k, v in contents["state_dict"].items()})
    detector["state_dict"]["transformer.decoder.weight"] = torch.zeros(2)
    torch.save(detector, tmp_path / "dino.pth")
    base = ["export-onnx", "--model", "faster_vit_0_224", "--checkpoint", tmp_path / "dino.pth", "--features",
            "--no-verify", "-o", tmp_path / "b.onnx"]
    for given in ([], ["--checkpoint-prefix", "backbone.0"]):  # none, and the prefix without its dot
        result = cli(*base, *given)
        assert_one_line_error(result, r"the model's keys are under 'backbone\.0\.' .*: pass --checkpoint-prefix "
                                      r"backbone\.0\. *$", 2)
    advice = result.output.strip().rsplit("pass ", 1)[1].split()
    followed = cli(*base, *advice)
    assert followed.exit_code == 0, followed.output
    assert read_record(tmp_path / "b.onnx").model.checkpoint.prefix == "backbone.0."


def test_build_trt_names_the_existing_intermediate_to_build_from_and_that_line_runs(tiny_onnx, tmp_path):
    m = tmp_path / "m.onnx"
    m.write_bytes(tiny_onnx.read_bytes())
    (tmp_path / "m.onnx.json").write_bytes(tiny_onnx.with_name("m.onnx.json").read_bytes())
    made = cli("quantize", m, "--fp16", "--keep-fp32", "Softmax")  # another command's m_fp16.onnx
    assert made.exit_code == 0, made.output
    result = cli("build-trt", "--onnx", m, "--fp16")
    assert_one_line_error(result, r"m_fp16\.onnx exists, made by another command: pass --overwrite .* build from "
                                  r"it: fvdeploy build-trt --onnx .*m_fp16\.onnx *$", 2)
    followed = cli(*printed_command(result.output))
    if followed.exit_code == 3:  # no TensorRT here: the line to run where it is, and nothing remade
        assert "m_fp16.onnx is ready" in followed.output and "trtexec --onnx=" in followed.output
    else:
        assert followed.exit_code == 0, followed.output


def test_an_engine_profile_takes_the_exports_range_unless_given(tmp_path):
    path, _ = export_tiny(tmp_path, filename="mb.onnx", verify=False, batch=BatchProfile(1, 100))
    shown = cli("build-trt", "--onnx", path).output.replace("\n", " ")
    assert "--maxShapes=input:100x3x224x224" in shown and "--minShapes=input:1x3x224x224" in shown
    narrowed = cli("build-trt", "--onnx", path, "--max-batch", 16).output.replace("\n", " ")
    assert "--maxShapes=input:16x3x224x224" in narrowed


def test_one_resolution_value_means_a_square_and_takes_nothing_after_it(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "tiny.pth.tar", "faster_vit_0_any_res", resolution=(224, 224))
    result = cli("export-onnx", "--model", "faster_vit_0_any_res", "--checkpoint", ckpt, "--resolution", 192,
                 "--no-verify", "-o", tmp_path / "r.onnx")
    assert result.exit_code == 0, result.output
    assert read_record(tmp_path / "r.onnx").model.resolution == (192, 192)


def test_keep_fp32_adds_to_the_policys_layernorm(tiny_onnx, tmp_path):
    out = tmp_path / "h.onnx"
    result = cli("quantize", tiny_onnx, "--fp16", "--keep-fp32", "Softmax", "-o", out)
    assert result.exit_code == 0, result.output  # before: the LayerNorms went FP16 and the policy check failed
    # The written graph re-opened, its types inferred by onnx (not by the policy code quantize checked itself with).
    model = onnx.shape_inference.infer_shapes(onnx.load(str(out)))
    types = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.value_info, *model.graph.input]}
    kept = {(n.op_type, onnx.TensorProto.DataType.Name(types[n.input[0]])) for n in model.graph.node
            if n.op_type in ("LayerNormalization", "Softmax")}
    assert kept == {("LayerNormalization", "FLOAT"), ("Softmax", "FLOAT")}
    assert sorted(read_record(out).command[3:7]) == ["--keep-fp32", "--keep-fp32", "LayerNormalization", "Softmax"]


# ---- item 9: messages ---------------------------------------------------------------------------------------------

def test_inspect_names_what_it_was_given_and_fails_on_missing_external_data(tmp_path):
    package = tmp_path / "x.mlpackage"
    package.mkdir()
    assert_one_line_error(cli("inspect", package), r"x\.mlpackage is a folder \(a Core ML package", 2)
    assert_one_line_error(cli("inspect", tmp_path), r"is a folder: inspect reads ONNX files", 2)
    path, _ = export_tiny(tmp_path, filename="e.onnx", verify=False, onnx=OnnxOptions(external_data=True))
    ok = cli("inspect", path, "--json")
    assert ok.exit_code == 0 and any(f["check"] == "external-data" and f["ok"]
                                     for f in json.loads(ok.stdout)["findings"]), ok.output
    (tmp_path / "e.onnx.data").rename(tmp_path / "elsewhere")
    missing = cli("inspect", path, "--json")
    finding = next(f for f in json.loads(missing.stdout)["findings"] if f["check"] == "external-data")
    assert missing.exit_code == 1 and not finding["ok"] and finding["detail"] == "e.onnx.data is missing"


def test_predict_reads_a_folder_and_says_which_files_it_skipped(tiny_onnx, tmp_path):
    folder = photo_folder(tmp_path / "photos", good=2)
    out = tmp_path / "p.json"
    result = cli("predict", tiny_onnx, folder, "--top", 1, "--json", out)
    assert result.exit_code == 0, result.output
    assert [Path(r["image"]).name for r in json.loads(out.read_text())["predictions"]] == ["good0.png", "good1.png"]
    assert "skipped 4 unreadable: " in result.output and "object at 0x" not in result.output
    # a file named on the command line must be readable
    assert_one_line_error(cli("predict", tiny_onnx, folder / "text.jpg"), r"text\.jpg: not an image PIL can identify", 2)


def test_calibration_counts_what_it_used_and_names_every_skipped_file(tiny_onnx, tmp_path):
    folder = photo_folder(tmp_path / "calib", good=1)
    result = cli("quantize", tiny_onnx, "--int8", "--calib-dir", folder, "--backend", "onnxruntime", "--min-cosine", 0,
                 "--min-top1", 0, "--max-abs", 1e9, "-o", tmp_path / "q.onnx")
    assert result.exit_code == 0, result.output
    line = next(t for t in result.output.splitlines() if "used 1 of the 5 images" in t)
    # all four counted, the first three (in order) named with why, the fourth counted
    assert "skipped 4 unreadable: empty.png (not an image PIL can identify), garbage.webp (not an image PIL can " \
           "identify), header.png (" in line and line.endswith(", and 1 more")
    assert "BytesIO" not in result.output and "object at 0x" not in result.output
    facts = read_record(tmp_path / "q.onnx").details["int8"]["calibration"]
    assert facts["images"] == 1 and len(facts["skipped"]) == 4
    assert_one_line_error(cli("quantize", tiny_onnx, "--int8", "--calib-dir", folder / "good0.png"),
                          r"--calib-dir .*good0\.png is a file: give the folder of calibration images", 2)


def test_a_calibration_sample_is_spread_over_the_class_folders_and_recorded(tiny_onnx, tmp_path):
    root = tmp_path / "classes"
    photos = skimage_photos()
    for c in range(3):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(10):
            photos[(c + i) % len(photos)].resize((64 + i, 64)).save(root / f"class{c}" / f"{i}.png")
    result = cli("quantize", tiny_onnx, "--int8", "--calib-dir", root, "--calib-images", 6, "--backend", "onnxruntime",
                 "--min-cosine", 0, "--min-top1", 0, "--max-abs", 1e9, "-o", tmp_path / "q.onnx")
    assert result.exit_code == 0, result.output
    assert "a sample of 6 of the 30 images" in result.output and "spread over 3 folder(s)" in result.output
    sample = read_record(tmp_path / "q.onnx").details["int8"]["calibration"]["sample"]
    # the first 6 in sorted order would all be class0's
    assert (sample["chosen"], sample["of"], sample["folders_used"], sample["per_folder_min"],
            sample["per_folder_max"], sample["seed"]) == (6, 30, 3, 2, 2, 0)


def test_verify_says_how_many_distinct_images_its_batch_holds(tiny_onnx, tmp_path):
    folder = photo_folder(tmp_path / "one", good=1)
    result = cli("verify", tiny_onnx, "--images", folder, "--batch", 2)
    assert result.exit_code == 0, result.output
    assert "1 distinct image in a batch of 2" in result.output and "skipped 4 unreadable" in result.output


def test_no_arguments_print_the_help_and_no_empty_error_line():
    result = subprocess.run([*FVDEPLOY], capture_output=True, text=True)
    assert "Usage: fvdeploy" in result.stdout + result.stderr
    assert not any(line.strip() == "error:" or line.startswith("error:  ") for line in result.stderr.splitlines())


def test_a_reader_that_stops_reading_is_no_failure_and_no_message(tiny_onnx, tmp_path):
    folder = photo_folder(tmp_path / "many", good=2, corrupt=False)
    command = " ".join(shlex.quote(str(a)) for a in [*FVDEPLOY, "predict", tiny_onnx, folder])
    # `true` reads nothing and is gone long before fvdeploy's first table (`| head -1` after its first line).
    result = subprocess.run(["bash", "-c", f"set -o pipefail; {command} | true"], capture_output=True, text=True)
    assert result.returncode == 141, result.stderr  # what a shell reports for SIGPIPE: the reader went away
    assert result.stderr.strip() == ""


def test_a_deleted_current_folder_is_one_line(tmp_path):
    gone = tmp_path / "gone"
    gone.mkdir()
    code = f"import os; os.chdir({str(gone)!r}); os.rmdir({str(gone)!r}); " + FVDEPLOY[2]
    result = subprocess.run([sys.executable, "-c", code, "models"], capture_output=True, text=True)
    assert result.returncode == 2 and "FATAL" not in result.stderr
    assert result.stderr.strip() == "error: the current folder no longer exists (deleted or moved): cd into an existing folder"


def test_library_warnings_stay_out_of_the_output(tiny_onnx, tmp_path):
    big = tmp_path / "big"
    big.mkdir()
    # Over PIL's decompression-bomb warning threshold (89.5 Mpixel) but under its error threshold.
    Image.fromarray(np.zeros((9500, 9500), np.uint8)).save(big / "huge.png")
    result = subprocess.run([*FVDEPLOY, "predict", str(tiny_onnx), str(big / "huge.png"), "--top", "1"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "Warning" not in result.stderr and "site-packages" not in result.stderr


def test_a_counted_step_shows_done_total_rate_and_time_left_on_a_terminal_and_one_line_elsewhere():
    import io
    import time

    from rich.console import Console

    from fastervit_deploy.system.progress import Steps

    for terminal in (True, False):
        out = io.StringIO()
        steps = Steps(Console(file=out, force_terminal=terminal, width=160, highlight=False))
        with steps.counted("calibrating on images from x", 20, "images") as advance:
            for _ in range(20):
                time.sleep(0.02)
                advance(1)
        text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())  # the terminal's cursor and colour codes
        lines = [line for line in text.splitlines() if "calibrating on images from x" in line]
        assert lines[-1].endswith("s)") and "✓" in lines[-1]  # the step's ✓ line, with its time
        if terminal:
            assert re.search(r"\d+/20", text) and "images/s" in text and "left" in text
        else:
            assert len(lines) == 1 and "images/s" not in text  # a log gets the ✓ line alone


def test_verify_with_a_moved_checkpoint_takes_its_new_path_and_the_model_from_the_record(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "tiny.pth.tar")
    out = tmp_path / "m.onnx"
    assert cli("export-onnx", "--model", "faster_vit_0_224", "--checkpoint", ckpt, "--no-verify", "-o", out).exit_code == 0
    (tmp_path / "moved").mkdir()
    moved = ckpt.rename(tmp_path / "moved" / "renamed.pth.tar")
    lost = cli("verify", out, "--batch", 1)
    assert_one_line_error(lost, r"which is not there .*: pass --checkpoint with its new path", 2)
    followed = cli("verify", out, "--checkpoint", moved, "--batch", 1)  # the advice, as printed: no --model needed
    assert followed.exit_code == 0 and "verification passed" in followed.output, followed.output


# ---- the README journey -------------------------------------------------------------------------------------------

def test_the_benchmark_plot_keeps_its_legend_off_the_data_and_names_model_and_precisions():
    from fastervit_deploy.use.benchmark import figure

    runners = [("onnxruntime:m.onnx", "fp32"), ("onnxruntime:m_fp16.onnx", "fp16"), ("onnxruntime:m_int8.onnx", "int8")]
    results = [{"runner": r, "precision": p, "batch": b, "p50_ms": 40.0 * b * (i + 1), "throughput_ips": 25.0 / (i + 1)}
               for i, (r, p) in enumerate(runners) for b in (1, 8, 32)]
    machine = {"cpu": "cpu", "threads": 2, "cores": 2, "versions": {"onnxruntime": "1.31", "torch": "2.13"}}
    fig = figure({"results": results, "model": "faster_vit_0_224", "resolution": [224, 224], "machine": machine})
    fig.canvas.draw()
    legend = fig.legends[0].get_window_extent()
    for ax in fig.axes:
        assert not legend.overlaps(ax.get_window_extent())  # below both axes, never over a point
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [f"{r} ({p})" for r, p in runners]
    assert fig._suptitle.get_text().startswith("faster_vit_0_224 224x224")
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels() if t.get_text()]
    assert len(labels) >= 4  # a log latency axis labelled within its decades, not only at powers of ten


def test_the_formats_table_fits_80_columns_whole():
    result = subprocess.run([*FVDEPLOY, "formats"], capture_output=True, text=True, env={**os.environ, "COLUMNS": "80"})
    assert result.returncode == 0
    assert "…" not in result.stdout and max(len(line) for line in result.stdout.splitlines()) <= 80
    assert "export-onnx" in result.stdout and "fp8" in result.stdout


def test_a_backbone_and_its_classifier_get_different_default_files():
    from fastervit_deploy.core.model_spec import resolve_model
    from fastervit_deploy.core.options import ModelRequest

    classifier = resolve_model(ModelRequest("faster_vit_0_any_res", resolution=(576, 960)))
    backbone = resolve_model(ModelRequest("faster_vit_0_any_res", resolution=(576, 960), features=(1, 2, 3)))
    assert classifier.stem == "faster_vit_0_any_res_576x960"
    assert backbone.stem == "faster_vit_0_any_res_576x960_features_s8-s32"


def test_small_things_said_before_the_work(tiny_onnx, tmp_path):
    """Refused only after the first step, or not at all: each is now one line before anything runs."""
    empty = tmp_path / "empty"
    empty.mkdir()
    for args, pattern in ((["verify", tiny_onnx, "--batch", 100], r"--batch 100 is outside m\.onnx's batch range 1\.\.64"),
                          (["quantize", tiny_onnx, "--int8", "--calib-dir", empty], r"no images .* in .*empty"),
                          (["verify", tiny_onnx, "--threads", 1000], r"--threads 1000: this machine has \d+ cores")):
        result = cli(*args)
        assert_one_line_error(result, pattern, 2)
        assert "✓" not in result.output, args


def test_a_labels_file_names_images_of_its_folder_only_and_counts_read_right(tiny_onnx, tmp_path):
    data, outside = tmp_path / "flat", tmp_path / "elsewhere"
    for folder in (data, outside):
        folder.mkdir()
        skimage_photos()[0].resize((32, 32)).save(folder / "a.png")
    (tmp_path / "labels.txt").write_text("a.png 1\n../elsewhere/a.png 2\n")
    result = cli("evaluate", tiny_onnx, "--data", data, "--labels-file", tmp_path / "labels.txt")
    assert_one_line_error(result, r"names \.\./elsewhere/a\.png, which is outside --data", 2)
    (tmp_path / "one.txt").write_text("a.png 1\n")
    result = cli("evaluate", tiny_onnx, "--data", data, "--labels-file", tmp_path / "one.txt")
    assert result.exit_code == 0, result.output
    assert "(1 class)" in result.output and "(1 classes)" not in result.output
