"""Labelled images on disk: an ImageFolder (one folder per class) or a folder with a labels file
(ImageNet's validation layout), mapped to the model's output indices once, in a fixed order.

Class folders and labels may be the model's class names, class indices, and for an ImageNet head its
synset ids (``n01440764``) or class names; a name that maps to no class is one error naming it. The
mapping used is part of what ``open_labelled`` returns (and of evaluate's JSON).
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Hashable, Sequence

import numpy as np

from ..core.classes import ClassMap
from ..core.model_spec import ModelDescription
from ..system.errors import FvdeployError
from .images import IMAGE_SUFFIXES, list_images, preprocess, readable_images, skipped_text

SAMPLE_SEED = 0


@dataclass(frozen=True)
class LabelledImages:
    root: Path
    layout: str  # "image-folder" | "labels-file"
    files: tuple[Path, ...]
    labels: tuple[int, ...]
    mapping: dict = field(default_factory=dict)  # folder or label text -> {"index", "name", "by"}
    listed: int = 0  # images found, before --limit
    sample: dict | None = None  # how --limit chose (seed, images per class)
    passed_over: tuple[str, ...] = ()  # what is in the folder but not read, and why (said, never silent)

    def mapping_text(self) -> str:
        """How the data set's classes were matched to the model's, in words (said with every evaluation)."""
        kinds = sorted({m["by"] for m in self.mapping.values()})
        what = "class folders" if self.layout == "image-folder" else "labels"
        return f"{len(self.mapping)} {what} matched to the model's classes by {' and '.join(kinds)}, one to one"

    def said(self) -> list[str]:
        """What every reader of labelled images says: the mapping, and what the folder holds but is not read."""
        return [self.mapping_text(), *(f"not read: {what}" for what in self.passed_over)]

    def describe(self) -> dict:
        counts = Counter(self.labels)
        return {"root": str(self.root), "layout": self.layout, "images_listed": self.listed,
                "images_chosen": len(self.files), "classes_present": len(counts), "mapping": self.mapping,
                "sample": self.sample, "passed_over": list(self.passed_over)}


def spread_sample(groups: Sequence[Hashable], n: int, seed: int = SAMPLE_SEED) -> tuple[list[int], dict]:
    """At most ``n`` positions, spread over the groups in proportion to their sizes (largest remainders),
    chosen at random within each group (seeded); returned in their original order, with what was chosen."""
    if n >= len(groups):
        return list(range(len(groups))), {"seed": seed, "chosen": len(groups), "of": len(groups)}
    by_group: dict[Hashable, list[int]] = {}
    for i, g in enumerate(groups):
        by_group.setdefault(g, []).append(i)
    exact = {g: n * len(members) / len(groups) for g, members in by_group.items()}
    quota = {g: int(q) for g, q in exact.items()}
    for g in sorted(exact, key=lambda g: (-(exact[g] - quota[g]), str(g)))[: n - sum(quota.values())]:
        quota[g] += 1
    rng = np.random.default_rng(seed)
    chosen = sorted(i for g, members in by_group.items() for i in rng.permutation(members)[: quota[g]].tolist())
    return chosen, {"seed": seed, "chosen": len(chosen), "of": len(groups),
                    "per_group": {str(g): quota[g] for g in sorted(by_group, key=str)}}


def _resolve(class_map: ClassMap, text: str, what: str) -> tuple[int, dict]:
    found = class_map.resolve(text)
    if found is None:
        raise FvdeployError(f"{what} {text!r} names no class of the model (classes are named by "
                            f"{class_map.explain()})")
    index, by = found
    return index, {"index": index, "name": class_map.names[index], "by": by}


def one_to_one(mapping: dict, what: str) -> dict:
    """A class mapping is one-to-one and of one kind: two folders (or labels) that name one class, or names and
    indices mixed (folder '1' is class 1 by index, or the class named '1'?), are refused, not guessed."""
    by_index: dict[int, str] = {}
    for key, m in mapping.items():
        if m["index"] in by_index:
            first = by_index[m["index"]]
            raise FvdeployError(f"{what} {first!r} and {key!r} both map to class {m['index']} ({m['name']!r}; "
                                f"{first!r} by {mapping[first]['by']}, {key!r} by {m['by']}): each class needs one")
        by_index[m["index"]] = key
    kinds = {m["by"] for m in mapping.values()}
    if len(kinds) > 1:
        examples = "; ".join(f"{k!r} by {m['by']}" for k, m in list(mapping.items())[:2])
        raise FvdeployError(f"{what}s match the model's classes in different ways ({', '.join(sorted(kinds))}: "
                            f"{examples}): name them all one way (class names, or indices 0..)")
    return mapping


def _images_in(folder: Path, passed_over: list[str]) -> list[Path]:
    """A folder's images at any depth; dangling links and files of other kinds are counted in ``passed_over``."""
    found, links, others = [], 0, 0
    for path in sorted(folder.rglob("*")):
        if path.is_symlink() and not path.exists():
            links += 1
        elif path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            found.append(path)
        elif path.is_file() and not path.name.startswith("."):
            others += 1
    if links:
        passed_over.append(f"{links} dangling link(s) in {folder}")
    if others:
        passed_over.append(f"{others} file(s) in {folder} that are not images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return found


def _image_folder(root: Path, class_map: ClassMap, passed_over: list[str]) -> tuple[list[Path], list[int], dict]:
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise FvdeployError(f"{root} has no class folders: use one folder per class (ImageFolder), or give "
                            "--labels-file for a flat folder")
    loose = [p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if loose:
        passed_over.append(f"{len(loose)} image(s) at the top of {root}, in no class folder (e.g. {loose[0].name})")
    files, labels, mapping = [], [], {}
    for folder in folders:
        index, mapping[folder.name] = _resolve(class_map, folder.name, "class folder")
        found = _images_in(folder, passed_over)
        if not found:
            passed_over.append(f"class folder {folder.name} has no image")
        files += found
        labels += [index] * len(found)
    one_to_one(mapping, "class folder")
    if not files:
        raise FvdeployError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in the class folders of {root}")
    return files, labels, mapping


def _rows(path: Path) -> list[tuple[str, str]]:
    """(file, label) rows of "file label" lines or CSV; a label field's first word is the label (ImageNet's
    LOC_val_solution.csv lists "n01751748 x y ..." boxes)."""
    text = path.read_text()
    first = next((line for line in text.splitlines() if line.strip()), "")
    if "," in first:
        rows = [r for r in csv.reader(io.StringIO(text)) if r and any(c.strip() for c in r)]
    else:
        rows = [line.split() for line in text.splitlines() if line.strip()]
    out = []
    for number, row in enumerate(rows, start=1):
        if len(row) < 2 or not row[1].split():
            raise FvdeployError(f"labels file {path.name}, line {number}: expected 'file label', got {' '.join(row)!r}")
        # "file label" lines: the label is the rest of the line ("cat.jpg tiger cat" is the class 'tiger cat');
        # CSV: the label field's first word
        label = " ".join(row[1:]) if "," not in first else row[1].split()[0]
        out.append((row[0].strip(), label))
    return out


def _find(root: Path, name: str) -> Path | None:
    path = root / name
    if not path.resolve().is_relative_to(root.resolve()):
        raise FvdeployError(f"the labels file names {name}, which is outside --data {root}: it lists the images of "
                            "that folder only")
    if path.is_file():
        return path
    for suffix in sorted(IMAGE_SUFFIXES | {s.upper() for s in IMAGE_SUFFIXES}):  # ImageIds come without one
        if (candidate := root / f"{name}{suffix}").is_file():
            return candidate
    return None


def _labels_file(root: Path, labels_file: Path, class_map: ClassMap) -> tuple[list[Path], list[int], dict]:
    if not Path(labels_file).is_file():
        raise FvdeployError(f"labels file not found: {labels_file}")
    rows = _rows(Path(labels_file))
    if rows and _find(root, rows[0][0]) is None and class_map.resolve(rows[0][1]) is None:
        rows = rows[1:]  # a CSV header (ImageId,PredictionString)
    files, labels, mapping, missing, lines = [], [], {}, [], {}
    for number, (name, label) in enumerate(rows, start=1):
        path = _find(root, name)
        if path is None:
            missing.append(name)
            continue
        if path in lines:  # counted twice, it would weigh twice
            raise FvdeployError(f"{Path(labels_file).name} lists {name} twice (entries {lines[path]} and {number}): "
                                "each image once")
        lines[path] = number
        if label not in mapping:
            _, mapping[label] = _resolve(class_map, label, f"label in {Path(labels_file).name}:")
        files.append(path)
        labels.append(mapping[label]["index"])
    if missing:
        raise FvdeployError(f"{len(missing)} files named in {Path(labels_file).name} are not in {root} "
                            f"(e.g. {missing[0]})")
    if not files:
        raise FvdeployError(f"{Path(labels_file).name} names no image")
    one_to_one(mapping, "label")
    return files, labels, mapping


def open_labelled(root: Path, class_map: ClassMap, labels_file: Path | None = None,
                  limit: int | None = None) -> LabelledImages:
    """The labelled images of ``root``, in a fixed order; ``limit``: a seeded subset spread over the classes."""
    root = Path(root)
    if not root.is_dir():
        raise FvdeployError(f"data folder not found: {root}" if not root.exists() else f"--data {root} is a file, "
                            "not a folder of images")
    passed_over: list[str] = []
    if labels_file is None:
        files, labels, mapping = _image_folder(root, class_map, passed_over)
        layout = "image-folder"
    else:
        if Path(labels_file).is_dir():
            raise FvdeployError(f"--labels-file {labels_file} is a folder: give the file of 'file label' lines")
        list_images(root)  # refuses a folder without images, naming the suffixes
        files, labels, mapping = _labels_file(root, labels_file, class_map)
        layout = "labels-file"
    sample = None
    if limit is not None and limit < len(files):
        chosen, sample = spread_sample(labels, limit)
        sample["per_group"] = {class_map.names[int(k)]: v for k, v in sample["per_group"].items()}
        files, labels = [files[i] for i in chosen], [labels[i] for i in chosen]
    return LabelledImages(root, layout, tuple(files), tuple(labels), mapping, len(labels) if sample is None else
                          sample["of"], sample, tuple(passed_over))


@dataclass
class LabelledBatch:
    """Labelled images preprocessed for one model, in memory (quantize's trials and debug's sensitivity measure
    accuracy on them), and the FP32 graph's top-1 on them once measured."""

    images: np.ndarray
    labels: np.ndarray
    fp32_top1: float = 0.0

    @classmethod
    def read(cls, folder: Path, labels_file: Path | None, limit: int | None, desc: ModelDescription,
             note: Callable[[str], None]) -> "LabelledBatch":
        """``--data``: the labelled images (a seeded subset with ``limit``), preprocessed once for ``desc``;
        unreadable files are skipped and told to ``note``."""
        data = open_labelled(folder, ClassMap.of(desc.config.num_classes, desc.class_names), labels_file, limit)
        for line in data.said():
            note(f"{folder}: {line}")
        skipped: list[str] = []
        arrays, labels, pending = [], [], iter(zip(data.files, data.labels))
        for path, img in readable_images(data.files, skipped):  # in order: each image decoded, then let go
            arrays.append(preprocess(img, desc.resolution, desc.preprocessing))
            labels.append(next(label for file, label in pending if file == path))  # past the skipped ones
        if not arrays:
            raise FvdeployError(f"no readable image in {folder}" + (f" ({skipped[0]})" if skipped else ""))
        if skipped:
            note(f"{folder}: {skipped_text(skipped)}")
        return cls(np.stack(arrays), np.asarray(labels))
