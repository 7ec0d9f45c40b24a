"""No output replaces a file without --overwrite, none is ever one of the command's inputs, and every output path
is checked before the work.

Each test makes the situation a user met, runs the real command, and re-reads the files afterwards: the input
must be byte-for-byte what it was, and the refusal must come before any work (no step line printed)."""

import hashlib
import json
import os
from pathlib import Path

import pytest

from fastervit_deploy.core.record import sidecar_path
from fastervit_deploy.system.files import TEMP_NAME_EXTRA

from .helpers import assert_one_line_error, cli, export_tiny, tiny_checkpoint


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()




def no_work_done(output: str) -> bool:
    return "✓" not in output  # every step that ran prints a ✓ line


@pytest.mark.parametrize("command", [
    ["predict", "{m}", "{photo}", "--json", "{m}.json"],
    ["verify", "{m}", "--batch", "1", "--json", "{m}.json"],
    ["benchmark", "{m}", "--batch", "1", "--iterations", "1", "--no-pytorch", "--json", "{m}.json"],
])
def test_a_report_never_replaces_the_artifacts_own_sidecar_even_with_overwrite(tiny_onnx_and_photo, command):
    m, photo = tiny_onnx_and_photo
    before = digest(sidecar_path(m))
    args = [a.format(m=m, photo=photo) for a in command]
    for extra in ([], ["--overwrite"]):
        result = cli(*args, *extra)
        assert_one_line_error(result, r"--json .*m\.onnx\.json is one of this command's inputs", 2)
        assert no_work_done(result.output)
    assert digest(sidecar_path(m)) == before
    assert cli("verify", m, "--batch", 1).exit_code == 0  # the record still describes the artifact


def test_a_plot_replaces_an_existing_file_only_with_overwrite_and_never_an_input_through_a_link(tiny_onnx_and_photo, tmp_path):
    m, photo = tiny_onnx_and_photo
    kept = tmp_path / "photo.png"
    kept.write_bytes(photo.read_bytes())
    result = cli("benchmark", m, "--batch", 1, "--iterations", 1, "--no-pytorch", "--plot", kept)
    assert_one_line_error(result, r"--plot .*photo\.png exists \(pass --overwrite to replace it\)", 2)
    assert no_work_done(result.output) and kept.read_bytes() == photo.read_bytes()
    # The same input under another name (a symbolic and a hard link): refused by identity, --overwrite or not.
    (tmp_path / "soft.json").symlink_to(sidecar_path(m))
    os.link(sidecar_path(m), tmp_path / "hard.json")
    for name in ("soft.json", "hard.json"):
        assert_one_line_error(cli("predict", m, photo, "--json", tmp_path / name, "--overwrite"),
                              rf"--json .*{name} is one of this command's inputs \(.*m\.onnx\.json\)", 2)
    # With --overwrite an existing file that is no input is replaced, and the report is what the command says.
    result = cli("benchmark", m, "--batch", 1, "--iterations", 1, "--no-pytorch", "--plot", kept, "--overwrite")
    assert result.exit_code == 0, result.output
    assert kept.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and kept.read_bytes() != photo.read_bytes()


def test_two_reports_in_one_file_are_refused(tiny_onnx_and_photo, tmp_path):
    m, _ = tiny_onnx_and_photo
    same = tmp_path / "a.png"
    assert_one_line_error(cli("evaluate", m, "--data", tmp_path / "data", "--plot", same, "--speed", "--speed-plot", same),
                          r"--speed-plot .*a\.png is (one of this command's inputs|already another report's file)", 2)


def test_a_report_never_goes_among_the_images_a_command_reads(tiny_onnx_and_photo, tmp_path):
    """`--plot data/0/0024.png --overwrite` replaced that labelled image; a new file there would be read as one."""
    m, photo = tiny_onnx_and_photo
    image = tmp_path / "data" / "0" / "0024.png"
    image.parent.mkdir(parents=True)
    image.write_bytes(photo.read_bytes())
    before = digest(image)
    for command in (["evaluate", m, "--data", tmp_path / "data", "--plot", image],
                    ["evaluate", m, "--data", tmp_path / "data", "--speed", "--speed-plot", image],
                    ["evaluate", m, "--data", tmp_path / "data", "--json", tmp_path / "data" / "new.json"],
                    ["debug", m, "--images", image.parent, "--plot", image],
                    ["verify", m, "--images", image.parent, "--json", image.parent / "v.json"],
                    ["predict", m, tmp_path / "data", "--json", image.parent / "p.json"]):
        result = cli(*command, "--overwrite")
        assert_one_line_error(result, r"--(plot|speed-plot|json) .* is inside .*data.*, whose files this command "
                                      r"reads", 2)
        assert no_work_done(result.output)
    assert digest(image) == before and sorted(p.name for p in image.parent.iterdir()) == ["0024.png"]


def test_debug_never_writes_over_the_reference_its_record_names(tmp_path):
    """The FP32 graph a candidate's record names is read by `debug` without --reference: its sidecar is an input."""
    fp32, _ = export_tiny(tmp_path, filename="d.onnx", verify=False)
    fp16 = tmp_path / "d16.onnx"
    assert cli("quantize", fp32, "--fp16", "-o", fp16).exit_code == 0
    before = digest(sidecar_path(fp32))
    result = cli("debug", fp16, "--json", sidecar_path(fp32), "--overwrite")
    assert_one_line_error(result, r"--json .*d\.onnx\.json is one of this command's inputs", 2)
    assert digest(sidecar_path(fp32)) == before
    # A sidecar replaced by some other JSON is said to be no record (not "a record of another version").
    sidecar_path(fp32).write_text('{"passed": true}\n')
    assert_one_line_error(cli("verify", fp32), r"d\.onnx\.json is not an fvdeploy record .*not an fvdeploy record "
                                               r"\(JSON without a record_version\)|not an fvdeploy record", 2)


def test_no_artifact_output_is_one_of_its_inputs(tiny_onnx_and_photo, tmp_path):
    m, _ = tiny_onnx_and_photo
    ckpt = tiny_checkpoint(tmp_path / "ck.onnx")  # a checkpoint that happens to end in .onnx
    before = digest(ckpt)
    for output in (ckpt, tmp_path / "link.onnx"):
        if output.name == "link.onnx":
            output.symlink_to(ckpt)
        result = cli("export-onnx", "--model", "faster_vit_0_224", "--checkpoint", ckpt, "--output", output, "--overwrite")
        assert_one_line_error(result, r"output .*\.onnx is one of this command's inputs", 2)
        assert no_work_done(result.output)
    assert digest(ckpt) == before
    # quantize's input, and its input's sidecar, likewise (the output's own suffix rule aside)
    assert_one_line_error(cli("quantize", m, "--fp16", "-o", m, "--overwrite"), r"output .*m\.onnx is one of", 2)


def test_a_cache_that_cannot_be_written_is_refused_before_calibrating(tiny_onnx_and_photo, tmp_path):
    m, photo = tiny_onnx_and_photo
    calib = tmp_path / "calib"
    calib.mkdir()
    (calib / "a.png").write_bytes(photo.read_bytes())
    result = cli("quantize", m, "--int8", "--calib-dir", calib, "--calib-cache", "/proc/fvdeploy.cache",
                 "-o", tmp_path / "q.onnx")
    assert_one_line_error(result, r"--calib-cache folder /proc is not writable", 2)
    assert no_work_done(result.output) and not (tmp_path / "q.onnx").exists()
    assert_one_line_error(cli("quantize", m, "--int8", "--calib-dir", calib, "--calib-cache", tmp_path,
                              "-o", tmp_path / "q.onnx"), r"--calib-cache .* is a folder", 2)


def test_an_output_name_too_long_for_its_temporary_folder_is_refused_at_once(tmp_path):
    limit = os.pathconf(tmp_path, "PC_NAME_MAX") - TEMP_NAME_EXTRA
    fits, too_long = "a" * (limit - len(".onnx")) + ".onnx", "a" * (limit - len(".onnx") + 1) + ".onnx"
    result = cli("export-onnx", "--model", "faster_vit_0_224", "-o", tmp_path / too_long)
    assert_one_line_error(result, rf"output name a+\.\.\. is {limit + 1} bytes: .* at most {limit} bytes here", 2)
    assert no_work_done(result.output) and list(tmp_path.iterdir()) == []
    ckpt = tiny_checkpoint(tmp_path / "tiny.pth.tar")
    result = cli("export-onnx", "--model", "faster_vit_0_224", "--checkpoint", ckpt, "--no-verify", "-o", tmp_path / fits)
    assert result.exit_code == 0, result.output  # the longest name that fits is written, sidecar and all
    assert (tmp_path / fits).is_file() and json.loads(sidecar_path(tmp_path / fits).read_text())["precision"] == "fp32"


def test_no_record_names_the_temporary_folder_it_was_written_in(tiny_onnx_and_photo, tmp_path):
    m, _ = tiny_onnx_and_photo
    half = tmp_path / "m_fp16.onnx"
    assert cli("quantize", m, "--fp16", "-o", half).exit_code == 0
    for artifact in (m, half):
        text = sidecar_path(artifact).read_text()
        # The checks report names the file it read: the published one, never ".m.onnx.xxxxxxxx.tmp/m.onnx".
        assert ".tmp" not in text, [line for line in text.splitlines() if ".tmp" in line]
        assert json.loads(text)["checks"]["path"] == str(artifact)


def test_the_python_preprocess_takes_one_image_or_a_list_and_says_when_there_is_none(tiny_onnx_and_photo):
    import fastervit_deploy
    from fastervit_deploy.system.errors import FvdeployError

    m, photo = tiny_onnx_and_photo
    one = fastervit_deploy.preprocess(str(photo), m)  # a path, not its characters
    assert one.shape[0] == 1 and one.shape == fastervit_deploy.preprocess([photo], m).shape
    with pytest.raises(FvdeployError, match="no images given"):
        fastervit_deploy.preprocess([], m)
