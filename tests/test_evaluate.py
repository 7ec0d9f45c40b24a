"""`fvdeploy evaluate` on real labelled data: scikit-learn's 360 held-out digits as an ImageFolder, and the
committed digits model as FP32, FP16 and INT8 ONNX; class names that travel with the model."""

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from fastervit import create_model, load_checkpoint
from fastervit_deploy.artifact import read_record
from fastervit_deploy.core.model_spec import resolve_model
from fastervit_deploy.core.options import ModelRequest, OnnxOptions, OutputTarget
from fastervit_deploy.data.images import open_image, preprocess, skimage_photos
from fastervit_deploy.plan import plan_export

from .helpers import DIGITS_CKPT
from .helpers import assert_one_line_error, cli, export_tiny, quiet_steps

pytestmark = pytest.mark.xdist_group("digits-evaluate")


def evaluate(tmp_path, *args) -> dict:
    out = tmp_path / f"eval{len(list(tmp_path.glob('eval*.json')))}.json"
    result = cli("evaluate", *args, "--json", out)
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text())


def rows(report) -> dict[str, dict]:
    return {Path(r["artifact"]).name: r for r in report["results"]}


def torch_predictions(folder: Path) -> tuple[list[Path], np.ndarray, np.ndarray]:
    """Files, labels and top-1 of the digits model in PyTorch, computed here without evaluate's code."""
    ckpt = torch.load(DIGITS_CKPT, weights_only=True)
    model = create_model("faster_vit_0_224", **ckpt["fvdeploy"]["config"]).eval()
    load_checkpoint(model, DIGITS_CKPT)
    files = sorted(folder.rglob("*.png"))
    labels = np.array([int(f.parent.name) for f in files])
    pre = resolve_model(ModelRequest("faster_vit_0_224", checkpoint=DIGITS_CKPT)).preprocessing
    x = torch.from_numpy(np.stack([preprocess(open_image(f), model.cfg.resolution, pre) for f in files]))
    with torch.no_grad():
        probs = torch.cat([model(x[i:i + 90]) for i in range(0, len(x), 90)]).softmax(-1).numpy()
    return files, labels, probs


def test_fp32_top1_equals_pytorch_and_reduced_precisions_keep_their_documented_drops(digits_folder, digits_artifacts,
                                                                                      tmp_path):
    report = evaluate(tmp_path, digits_artifacts["fp32"], digits_artifacts["fp16"], digits_artifacts["int8"],
                      "--data", digits_folder)
    files, labels, probs = torch_predictions(digits_folder)
    independent = float((probs.argmax(1) == labels).mean())
    by = rows(report)
    print({k: (r["top1"], r["drop_points"]) for k, r in by.items()})
    assert report["data"]["images"] == len(files) == 360 and independent >= 0.99
    assert by["pytorch"]["top1"] == independent and by["digits.onnx"]["top1"] == independent
    assert by["digits.onnx"]["top1_agreement"] == 1.0 and by["digits.onnx"]["drop_points"] == 0
    assert by["digits_fp16.onnx"]["drop_points"] <= 0.2 and by["digits_int8.onnx"]["drop_points"] <= 1.0
    for r in report["results"]:
        confusion = np.array(r["confusion"])
        assert confusion.sum() == 360 and np.trace(confusion) == round(r["top1"] * 360)
        assert [c["support"] for c in r["per_class"]] == np.bincount(labels, minlength=10).tolist()
    assert report["data"]["mapping"]["3"] == {"index": 3, "name": "class 3", "by": "index"}


def test_five_images_in_a_wrong_folder_cost_every_artifact_exactly_5_of_360(digits_folder, digits_artifacts, tmp_path):
    arts = [digits_artifacts[k] for k in ("fp32", "fp16", "int8")]
    before = rows(evaluate(tmp_path, *arts, "--data", digits_folder))
    files, labels, probs = torch_predictions(digits_folder)
    sure = [i for i in np.argsort(-probs.max(1)) if probs[i].argmax() == labels[i]][:5]  # the most certain right answers
    planted = tmp_path / "planted"
    shutil.copytree(digits_folder, planted)
    for i in sure:
        wrong = planted / str((labels[i] + 1) % 10)
        shutil.move(planted / files[i].relative_to(digits_folder), wrong / files[i].name)
    after = rows(evaluate(tmp_path, *arts, "--data", planted))
    for name in before:
        assert round((before[name]["top1"] - after[name]["top1"]) * 360) == 5, name
        assert np.array(after[name]["confusion"]).sum() == 360


def test_imagenet_validation_layouts_give_the_same_figures(tmp_path):
    """A 1000-class head: synset folders, ImageNet names, 'file synset' lines and ImageNet's CSV all map alike."""
    model, _ = export_tiny(tmp_path, filename="in1k.onnx", verify=False, num_classes=1000)
    photos = skimage_photos()
    synsets = ["n01440764", "n01443537", "n01440764", "n02123045", "n01443537", "n02123045", "n01440764", "n01443537"]
    names = {"n01440764": "tench", "n01443537": "goldfish", "n02123045": "tabby"}
    flat, by_synset, by_name = tmp_path / "val", tmp_path / "by_synset", tmp_path / "by_name"
    flat.mkdir()
    for i, (photo, synset) in enumerate(zip(photos, synsets)):
        photo.save(flat / f"ILSVRC2012_val_{i:08d}.JPEG", format="JPEG")
        for root, folder in ((by_synset, synset), (by_name, names[synset])):
            (root / folder).mkdir(parents=True, exist_ok=True)
            photo.save(root / folder / f"ILSVRC2012_val_{i:08d}.JPEG", format="JPEG")
    lines = tmp_path / "val.txt"
    lines.write_text("".join(f"ILSVRC2012_val_{i:08d}.JPEG {s}\n" for i, s in enumerate(synsets)))
    solution = tmp_path / "LOC_val_solution.csv"  # ImageNet's own: a header, ids without suffix, boxes after the synset
    solution.write_text("ImageId,PredictionString\n" + "".join(f"ILSVRC2012_val_{i:08d},{s} 1 2 3 4 {s} 5 6 7 8\n"
                                                                 for i, s in enumerate(synsets)))
    reports = [evaluate(tmp_path, model, "--data", flat, "--labels-file", lines),
               evaluate(tmp_path, model, "--data", flat, "--labels-file", solution),
               evaluate(tmp_path, model, "--data", by_synset), evaluate(tmp_path, model, "--data", by_name)]
    figures = [[(r["top1"], r["top5"], r["confusion"]) for r in rep["results"]] for rep in reports]
    assert all(f == figures[0] for f in figures) and reports[0]["data"]["images"] == 8
    assert reports[0]["data"]["layout"] == "labels-file" and reports[2]["data"]["layout"] == "image-folder"
    assert reports[2]["data"]["mapping"]["n02123045"] == {"index": 281, "name": "tabby", "by": "synset"}
    assert reports[3]["data"]["mapping"]["goldfish"]["by"] == "name"
    # Two 1000 x 1000 confusion matrices: one line per row (indenting each number made 2 million lines, 6 s to write).
    text = (tmp_path / "eval0.json").read_text()
    assert len(text.splitlines()) < 50_000 and "[0, 0, 0, 0," in text
    (by_name / "zebrafish").mkdir()
    photos[0].save(by_name / "zebrafish" / "x.png")
    assert_one_line_error(cli("evaluate", model, "--data", by_name), r"class folder 'zebrafish' names no class of the "
                          r"model \(classes are named by ImageNet synset ids", 2)


def test_labels_travel_with_the_model_into_predict_triton_and_evaluate(digits_folder, tmp_path):
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    (tmp_path / "names.txt").write_text("\n".join(names) + "\n")
    out = tmp_path / "named.onnx"
    result = cli("export-onnx", "--model", "faster_vit_0_224", "--checkpoint", DIGITS_CKPT, "--labels",
                 tmp_path / "names.txt", "-o", out, "--no-verify")
    assert result.exit_code == 0, result.output
    assert read_record(out).model.class_names == tuple(names)
    three = next((digits_folder / "3").iterdir())
    predicted = cli("predict", out, three, "--top", 1, "--json", tmp_path / "p.json")
    assert predicted.exit_code == 0 and "three" in predicted.stdout
    assert json.loads((tmp_path / "p.json").read_text())["predictions"][0]["top"][0]["label"] == "three"
    assert cli("triton", out, "--repository", tmp_path / "repo", "--name", "digits").exit_code == 0
    assert (tmp_path / "repo" / "digits" / "labels.txt").read_text().splitlines() == names
    named = tmp_path / "named_folders"  # class folders named by the model's own names
    for folder in digits_folder.iterdir():
        shutil.copytree(folder, named / names[int(folder.name)])
    report = evaluate(tmp_path, out, "--data", named, "--limit", 50)
    assert report["data"]["mapping"]["seven"] == {"index": 7, "name": "seven", "by": "name"}
    assert report["data"]["images"] == 50 and sum(report["data"]["sample"]["per_group"].values()) == 50
    assert min(report["data"]["sample"]["per_group"].values()) >= 4  # spread over the classes, not the first 50
    (tmp_path / "short.txt").write_text("zero\none\n")
    assert_one_line_error(cli("export-onnx", "--model", "faster_vit_0_224", "--checkpoint", DIGITS_CKPT, "--labels",
                              tmp_path / "short.txt", "-o", tmp_path / "x.onnx"),
                          r"labels file short.txt has 2 names, the model has 10 classes", 2)


def test_a_plain_state_dict_fine_tune_takes_its_class_count_from_its_head(digits_folder, tmp_path):
    """No fvdeploy metadata: the head's shape says how many classes (today's users fine-tune FasterViT-0 to 10)."""
    ckpt = torch.load(DIGITS_CKPT, weights_only=True)
    plain = tmp_path / "plain.pth"
    torch.save(ckpt["state_dict"], plain)
    architecture = {k: v for k, v in ckpt["fvdeploy"]["config"].items() if k not in ("num_classes", "any_res")}
    desc = resolve_model(ModelRequest("faster_vit_0_224", checkpoint=plain, overrides=architecture))
    assert desc.config.num_classes == 10 and any("from the checkpoint's head" in n for n in desc.notes)
    out = tmp_path / "plain.onnx"
    plan_export(ModelRequest("faster_vit_0_224", checkpoint=plain, overrides=architecture), OutputTarget(out),
                OnnxOptions(no_verify=True)).run(quiet_steps())
    assert [d.dim_value for d in onnx.load(str(out)).graph.output[0].type.tensor_type.shape.dim][1:] == [10]
    by = rows(evaluate(tmp_path, out, "--data", digits_folder))
    assert by["plain.onnx"]["top1"] >= 0.99 and by["plain.onnx"]["drop_points"] == 0
    # Class names a checkpoint carries go into the description (and so into every record made from it).
    torch.save({"state_dict": ckpt["state_dict"], "class_names": [f"digit {i}" for i in range(10)]}, tmp_path / "n.pth")
    named = resolve_model(ModelRequest("faster_vit_0_224", checkpoint=tmp_path / "n.pth", overrides=architecture))
    assert named.labels() == [f"digit {i}" for i in range(10)]
    # The full-size case of the issue: a FasterViT-0 whose head was fine-tuned to 10 classes, as a bare state_dict.
    fv0 = create_model("faster_vit_0_224", num_classes=10)
    torch.save(fv0.state_dict(), tmp_path / "fv0_10.pth")
    assert resolve_model(ModelRequest("faster_vit_0_224", checkpoint=tmp_path / "fv0_10.pth")).config.num_classes == 10


def test_a_gate_on_the_drop_unreadable_files_and_bad_input(digits_folder, digits_artifacts, tmp_path):
    other, _ = export_tiny(tmp_path, filename="untrained.onnx", verify=False)  # 10 classes, 224x224, random weights
    data = tmp_path / "data"
    shutil.copytree(digits_folder, data)
    (data / "4" / "broken.png").write_bytes(b"\x89PNG not really")
    out = tmp_path / "gate.json"
    result = cli("evaluate", other, "--reference", digits_artifacts["fp32"], "--data", data, "--max-drop", 1.0,
                 "--json", out)
    assert_one_line_error(result, r"untrained.onnx drops [\d.]+ points \(> 1\)", 1)
    report = json.loads(out.read_text())  # the figures are written before the gate fails
    assert not report["passed"] and report["data"]["images"] == 360 and len(report["data"]["skipped"]) == 1
    assert "note: skipped 1 unreadable: " in result.output and "broken.png" in result.output  # said, not only written
    assert rows(report)["untrained.onnx"]["drop_points"] > 50 and report["reference"] == "reference:digits.onnx"
    assert_one_line_error(cli("evaluate", digits_artifacts["fp32"], "--data", tmp_path / "absent"), r"data folder not found", 2)
    assert_one_line_error(cli("evaluate", "--data", data), r"give artifacts to evaluate, or --model", 2)
    assert_one_line_error(cli("evaluate", digits_artifacts["fp32"], "--data", data, "--speed-plot", tmp_path / "s.png"),
                          r"--speed-plot needs --speed", 2)
    features, _ = export_tiny(tmp_path, filename="feat.onnx", verify=False, out_indices=(3,))
    assert_one_line_error(cli("evaluate", features, "--data", data), r"feat.onnx is a backbone", 2)


def test_speed_table_and_plots(digits_folder, digits_artifacts, tmp_path):
    report = evaluate(tmp_path, digits_artifacts["fp32"], digits_artifacts["int8"], "--data", digits_folder,
                      "--limit", 40, "--speed", "--speed-batch", 4, "--iterations", 2, "--plot", tmp_path / "cm.png",
                      "--speed-plot", tmp_path / "speed.png")
    assert report["machine"]["cores"] and report["machine"]["versions"]["onnxruntime"]
    for r in report["results"]:
        assert r["speed"]["batch"] == 4 and r["speed"]["p50_ms"] > 0 and r["speed"]["throughput_ips"] > 0
    assert rows(report)["digits.onnx"]["size_mb"] > rows(report)["digits_int8.onnx"]["size_mb"] > 0
    for png in ("cm.png", "speed.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def image_folder(root: Path, classes, per_class: int = 1) -> Path:
    photo = skimage_photos()[0].resize((32, 32))
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            photo.save(root / name / f"{i}.png")
    return root


def test_a_class_mapping_is_one_to_one_and_of_one_kind(tmp_path):
    """Names '1'..'10' (`export-onnx --labels`): folder '0' is class 0 by index, folder '1' class 0 by name. Two
    folders on one class, or names and indices mixed, are refused, never guessed (it scored 10 % silently)."""
    from fastervit_deploy.core.classes import ClassMap
    from fastervit_deploy.data.labelled import open_labelled
    from fastervit_deploy.system.errors import FvdeployError

    root = image_folder(tmp_path / "digits", [str(i) for i in range(10)])
    with pytest.raises(FvdeployError, match=r"class folder '0' and '1' both map to class 0 \('1'; '0' by index, "
                                            r"'1' by name\)"):
        open_labelled(root, ClassMap.of(10, tuple(str(i) for i in range(1, 11))))
    mixed = image_folder(tmp_path / "mixed", ["cat", "1"])
    with pytest.raises(FvdeployError, match=r"class folders match the model's classes in different ways \(index, name"):
        open_labelled(mixed, ClassMap.of(2, ("cat", "dog")))
    data = open_labelled(root, ClassMap.of(10, None))  # 'class i' names: every folder by index, said
    assert data.mapping_text() == "10 class folders matched to the model's classes by index, one to one"
    nfd = image_folder(tmp_path / "nfd", ["cafe\u0301", "the"])  # a macOS folder name comes decomposed
    assert open_labelled(nfd, ClassMap.of(2, ("caf\u00e9", "the"))).mapping["cafe\u0301"]["index"] == 0


def test_labels_files_count_each_image_once_and_keep_whole_labels(tmp_path):
    from fastervit_deploy.core.classes import ClassMap, read_labels_file
    from fastervit_deploy.data.labelled import open_labelled
    from fastervit_deploy.system.errors import FvdeployError

    flat = tmp_path / "flat"
    flat.mkdir()
    for name in ("a.png", "b.png"):
        skimage_photos()[0].resize((32, 32)).save(flat / name)
    classes = ClassMap.of(2, ("tiger", "tiger cat"))
    (tmp_path / "labels.txt").write_text("a.png tiger cat\nb.png tiger\n")
    data = open_labelled(flat, classes, tmp_path / "labels.txt")
    assert dict(zip((f.name for f in data.files), data.labels)) == {"a.png": 1, "b.png": 0}  # not 'tiger'
    (tmp_path / "twice.txt").write_text("a.png tiger\nb.png tiger cat\na.png tiger\n")
    with pytest.raises(FvdeployError, match=r"twice\.txt lists a\.png twice \(entries 1 and 3\)"):
        open_labelled(flat, classes, tmp_path / "twice.txt")
    (tmp_path / "names.txt").write_text("cat\ndog\nCat\n")
    with pytest.raises(FvdeployError, match=r"names 'Cat' twice \(lines 1 and 3\)"):
        read_labels_file(tmp_path / "names.txt", 3)
    with pytest.raises(FvdeployError, match=r"--labels-file .* is a folder"):
        open_labelled(flat, classes, tmp_path)


def test_what_an_image_folder_holds_but_is_not_read_is_said(tmp_path):
    """Loose images at the top, dangling links, other files and emptied class folders were skipped in silence;
    GIFs were not read at all."""
    src, _ = export_tiny(tmp_path, filename="t.onnx", verify=False)
    root = image_folder(tmp_path / "data", ["0", "1", "2"])
    skimage_photos()[1].resize((32, 32)).save(root / "loose.png")
    (root / "1" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    (root / "1" / "notes.txt").write_text("who took these")
    skimage_photos()[2].resize((32, 32)).save(root / "2" / "anim.gif")
    (root / "3").mkdir()
    result = cli("evaluate", src, "--data", root)
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    for part in ("4 class folders matched to the model's classes by index, one to one",
                 "not read: 1 image(s) at the top of", "(e.g. loose.png)", "1 dangling link(s) in",
                 "1 file(s) in", "that are not images", "class folder 3 has no image"):
        assert part in said, part
    report = evaluate(tmp_path, src, "--data", root)
    assert report["data"]["images"] == 4 and len(report["data"]["passed_over"]) == 4  # the GIF counts


def test_options_that_would_do_nothing_or_something_else_are_refused_before_work(tmp_path):
    src, _ = export_tiny(tmp_path, filename="t.onnx", verify=False)  # batch 1..64
    root = image_folder(tmp_path / "data", ["0", "1"])
    result = cli("evaluate", src, "--data", root, "--speed", "--speed-batch", 100)  # it ran at 64, said in JSON only
    assert_one_line_error(result, r"--speed-batch 100 is above .*batch range 1\.\.64: choose at most 64", 2)
    assert "✓" not in result.output
    for extra, flags in ((["--max-drop", 5], "--max-drop"), (["--limit", 8], "--limit")):
        result = cli("quantize", src, "--int8", "--calib-dir", root / "0", "--fallback", "auto", *extra)
        assert_one_line_error(result, rf"{flags} measure top-1 on labelled images: give --data", 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "t.onnx", "t.onnx.json"]
