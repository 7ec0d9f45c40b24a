"""`fvdeploy evaluate`: accuracy on labelled images for every artifact side by side, against a reference.

Trustworthy by construction: every artifact and the reference see the same images in the same order,
batch by batch; each image is decoded once and preprocessed once per distinct preprocessing (the
recorded resolution, crop and normalisation), so two artifacts of one model get identical inputs.
Nothing is kept per image: each runner's counts (top-1, top-5, agreement with the reference, the
confusion matrix) are updated batch by batch, so memory stays flat in the data set's size.

A served model (``triton://...``) is a member like a file; it gets each read batch as ``--concurrency`` requests in
flight, and a served ensemble is sent the image files' own bytes (its server preprocesses them).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from rich.console import Console

from ..artifact import Artifact, open_artifact
from ..core.accuracy import Tally
from ..core.classes import ClassMap
from ..core.model_spec import ModelDescription, resolve_model
from ..core.options import ModelRequest, RunOptions, ServerOptions
from ..core.reference import TorchRunner
from ..core.runner import Runner
from ..core.tensors import class_output
from ..data.images import preprocess, readable_images, skipped_text
from ..data.labelled import LabelledImages, open_labelled
from ..system.errors import FvdeployError, MissingDependency
from ..system.figures import pyplot, save_png
from ..system.progress import progress_bar
from .benchmark import machine, measure, order_facts
from .predict import run_batches

if TYPE_CHECKING:
    from ..triton.served import ServedModel

DEFAULT_BATCH = 32
MAX_PLOTTED_CLASSES = 100


@dataclass
class Member:
    """One thing evaluated: an artifact (a file or a served model), or the PyTorch model; its runner and the
    preprocessing it needs."""

    name: str
    model: ModelDescription
    runner: Runner
    artifact: "Artifact | ServedModel | None" = None
    tally: "Tally | None" = None

    @property
    def preprocessing_key(self) -> tuple:
        return (tuple(self.model.resolution), json.dumps(self.model.preprocessing.to_dict(), sort_keys=True))

    def scores(self, batch: np.ndarray, files: list[bytes]) -> np.ndarray:
        """Class scores [N, classes] (logits or probabilities: the ranking is the same) of the preprocessed
        ``batch``, or of the image ``files`` for a runner that preprocesses them itself."""
        spec = class_output(self.runner.outputs)
        if self.runner.takes_encoded:
            high = self.runner.batch_range[1]
            return np.concatenate([self.runner.infer_encoded(files[i:i + high])[spec.name]
                                   for i in range(0, len(files), high)])
        outs = [out[spec.name] for out in run_batches(self.runner, batch, self.runner.batch_range or (1, len(batch)))]
        return np.concatenate(outs)

    def describe(self) -> dict:
        art = self.artifact
        if art is None:
            return {"artifact": self.name, "format": "pytorch", "precision": "fp32", "size_mb": None}
        row = {"artifact": art.location, "format": art.record.format.value, "precision": art.record.precision.value,
               "size_mb": art.size_mb()}
        if (served := art.facts()) is not None:  # a served model: where, and what the server said of itself
            row.update(format=f"triton ({art.record.format.value})", served=served)
        return row


def _classifier(member_model: ModelDescription, what: str) -> int:
    if member_model.config.features_only:
        raise FvdeployError(f"{what} is a backbone (feature maps): evaluate needs a classifier")
    return member_model.config.num_classes


def _members(paths: list[Path], model: ModelRequest, reference: Path | None, runtime: RunOptions,
             console: Console, not_run: list[dict], server: ServerOptions) -> tuple[Member, list[Member]]:
    """The reference and the artifacts that run here; one that cannot (a Core ML package off macOS, an engine without
    its GPU) is said in a note and kept in ``not_run``, and the others are evaluated (unless none can be)."""
    arts = [open_artifact(p, model, server) for p in paths]
    for art in arts:  # before the reference is built
        _classifier(art.model, art.name)
        if note := art.runtime_note(runtime):
            console.print(note, markup=False, highlight=False, soft_wrap=True)
    if reference is not None:
        ref_art = open_artifact(reference, model, server)
        ref = Member(f"reference:{ref_art.name}", ref_art.model, ref_art.runner(runtime), ref_art)
    else:
        desc = arts[0].model if arts else resolve_model(model)
        ref = Member("pytorch", desc, TorchRunner(desc.build(), desc.input, desc.outputs, threads=runtime.threads))
    classes = _classifier(ref.model, ref.name)
    members = []
    for art in arts:
        if _classifier(art.model, art.name) != classes:
            raise FvdeployError(f"{art.name} has {art.model.config.num_classes} classes, the reference {classes}")
        if art.model.labels() != ref.model.labels():
            raise FvdeployError(f"{art.name} names its classes differently from the reference ({ref.name})")
        name = art.name if sum(a.name == art.name for a in arts) == 1 else art.location
        try:
            runner = art.runner(runtime)
        except MissingDependency as err:
            if len(arts) == 1:
                raise
            not_run.append({**Member(name, art.model, None, art).describe(), "not_run": str(err)})
            console.print(f"note: not evaluated here: {err}", markup=False, highlight=False, soft_wrap=True)
            continue
        members.append(Member(name, art.model, runner, art))
    if arts and not members:
        raise MissingDependency("none of the artifacts runs here: " + "; ".join(r["not_run"] for r in not_run))
    return ref, members


def _decode(files: tuple[Path, ...], skipped: list[str]) -> tuple[list, list[int]]:
    """The readable images of ``files`` and their positions there (the labels go by position)."""
    read = dict(readable_images(files, skipped))
    kept = [i for i, path in enumerate(files) if path in read]
    return [read[files[i]] for i in kept], kept


def _file_bytes(files: tuple[Path, ...], kept: list[int], everyone: list[Member]) -> list[bytes]:
    """The kept files as they are on disk, for members that preprocess images themselves (read only for them)."""
    return [files[i].read_bytes() for i in kept] if any(m.runner.takes_encoded for m in everyone) else []


def _chunk_size(batch: int, members: list[Member]) -> int:
    """The images read at a time: at most ``batch`` and what every member takes in one call."""
    return max(1, min([batch] + [m.runner.batch_range[1] for m in members if m.runner.batch_range]))


def accuracy_pass(ref: Member, members: list[Member], data: LabelledImages, batch: int, console: Console) -> list[str]:
    """Every image through every member, in order; returns the files skipped as unreadable."""
    everyone = [ref, *members]
    classes = ref.model.config.num_classes
    for m in everyone:
        m.tally = Tally(classes)
    groups: dict[tuple, list[Member]] = {}
    for m in everyone:
        groups.setdefault(m.preprocessing_key, []).append(m)
    chunk = _chunk_size(batch, everyone)
    skipped: list[str] = []
    with progress_bar(console, unit="images") as bar:
        task = bar.add_task("evaluating", total=len(data.files))
        for start in range(0, len(data.files), chunk):
            files = data.files[start:start + chunk]
            images, kept = _decode(files, skipped)
            if images:
                labels = np.asarray([data.labels[start + i] for i in kept])
                scores, raw = {}, _file_bytes(files, kept, everyone)
                for members_of_key in groups.values():
                    desc = members_of_key[0].model
                    x = np.stack([preprocess(img, desc.resolution, desc.preprocessing) for img in images])
                    for m in members_of_key:
                        scores[id(m)] = m.scores(x, raw)
                ref_top1 = ref.tally.add(scores[id(ref)], labels, np.argmax(scores[id(ref)], axis=1))
                for m in members:
                    m.tally.add(scores[id(m)], labels, ref_top1)
            bar.advance(task, len(files))
    return skipped


def speed_pass(ref: Member, members: list[Member], data: LabelledImages, batch: int, warmup: int, iterations: int,
               console: Console) -> dict[str, dict]:
    """p50 latency and images/s at ``batch`` of every member, timed interleaved (as `benchmark` does)."""
    everyone = [ref, *members]
    sizes = [batch] + [m.runner.batch_range[1] for m in everyone if m.runner.batch_range]
    n = min(sizes)
    images, kept = _decode(data.files[: max(n, 1)], [])
    if not images:
        raise FvdeployError("no readable image to time with")
    raw = _file_bytes(data.files, kept, everyone)
    fns = {}
    for m in everyone:
        desc = m.model
        x = np.stack([preprocess(images[i % len(images)], desc.resolution, desc.preprocessing) for i in range(n)])
        files = [raw[i % len(raw)] for i in range(n)] if raw else []
        fns[m.name] = lambda _batch, x=x, m=m, files=files: m.scores(x, files)
    # Each member times its own preprocessed batch; ``measure`` is given only the batch size (an empty [n, 0] array:
    # its progress counts images by the batch's length).
    results = measure(fns, {n: np.empty((n, 0), np.float32)}, warmup, iterations, console)
    return {r["runner"]: {"batch": n, "p50_ms": r["p50_ms"], "throughput_ips": r["throughput_ips"]} for r in results}


def evaluate(paths: list[Path], data_dir: Path, model: ModelRequest, runtime: RunOptions, console: Console,
             labels_file: Path | None = None, reference: Path | None = None, batch: int = DEFAULT_BATCH,
             limit: int | None = None, speed_batch: int | None = None, warmup: int = 3, iterations: int = 10,
             confusion_plot: bool = False, server: ServerOptions = ServerOptions()) -> dict:
    """The evaluation report (JSON-able): data, the reference's figures and every artifact's."""
    if speed_batch:  # the runners take turns in the timing: none may keep the cores busy (RunOptions.spinning)
        runtime = dataclasses.replace(runtime, spinning=False)
    not_run: list[dict] = []
    ref, members = _members(paths, model, reference, runtime, console, not_run, server)
    for m in [ref, *members] if speed_batch else []:  # said before the accuracy pass, not clipped in silence
        if m.runner.batch_range and speed_batch > m.runner.batch_range[1]:
            raise FvdeployError(f"--speed-batch {speed_batch} is above {m.name}'s batch range "
                                f"{m.runner.batch_range[0]}..{m.runner.batch_range[1]}: choose at most "
                                f"{m.runner.batch_range[1]}")
    names = ref.model.labels()
    if confusion_plot and len(names) > MAX_PLOTTED_CLASSES:
        raise FvdeployError(f"--plot draws confusion matrices of up to {MAX_PLOTTED_CLASSES} classes; the model has "
                            f"{len(names)} (the JSON has them all)")
    data = open_labelled(data_dir, ClassMap.of(len(names), ref.model.class_names), labels_file, limit)
    for line in data.said():
        console.print(f"note: {line}", markup=False, highlight=False, soft_wrap=True)
    with contextlib.ExitStack() as stack:
        for m in [ref, *members]:
            stack.enter_context(m.runner)
        skipped = accuracy_pass(ref, members, data, batch, console)
        if ref.tally.images == 0:
            raise FvdeployError(f"no readable image in {data_dir} ({skipped[0] if skipped else 'none listed'})")
        if skipped:
            console.print(f"note: {skipped_text(skipped)}", markup=False, highlight=False, soft_wrap=True)
        timings = speed_pass(ref, members, data, speed_batch, warmup, iterations, console) if speed_batch else {}
    ref_top1 = ref.tally.top1 / ref.tally.images
    rows = []
    for m in [ref, *members]:
        row = {**m.describe(), **m.tally.summary(ref_top1, names), "reference": m is ref}
        if m.name in timings:
            row["speed"] = timings[m.name]
        rows.append(row)
    report = {"data": {**data.describe(), "images": ref.tally.images, "skipped": skipped}, "classes": names,
              "reference": ref.name, "results": rows, "not_run": not_run}
    if timings:
        report["machine"], report["order"] = machine(runtime.threads), order_facts()
    return report


def drops_over(report: dict, max_drop: float) -> list[str]:
    return [f"{r['artifact']} drops {r['drop_points']:.2f} points (> {max_drop:g})" for r in report["results"]
            if not r["reference"] and r["drop_points"] > max_drop]


def plot_confusion(report: dict, path: Path, overwrite: bool = False) -> None:
    plt = pyplot()

    rows, names = report["results"], report["classes"]
    fig, axes = plt.subplots(1, len(rows), figsize=(4.2 * len(rows), 4.8), squeeze=False, layout="constrained")
    for ax, row in zip(axes[0], rows):
        m = np.asarray(row["confusion"], np.float64)
        shown = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
        ax.imshow(shown, cmap="Blues", vmin=0, vmax=1)
        ax.set_title(f"{Path(row['artifact']).name} ({row['precision']})\ntop-1 {row['top1']:.2%}", fontsize=9)
        ax.set(xlabel="predicted", ylabel="true")
        if len(names) <= 20:
            ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
            ax.set_yticks(range(len(names)), names, fontsize=7)
    fig.suptitle(f"confusion (rows: true class, normalised), {report['data']['images']} images", fontsize=9)
    save_png(fig, path, overwrite)


def plot_speed(report: dict, path: Path, overwrite: bool = False) -> None:
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(7.2, 4.4), layout="constrained")
    markers = "osD^vP*X"
    for i, row in enumerate(report["results"]):
        ax.scatter([row["speed"]["p50_ms"]], [row["top1"] * 100], s=50, marker=markers[i % len(markers)],
                   label=f"{Path(row['artifact']).name} ({row['format']}, {row['precision']}): "
                         f"{row['top1']:.2%}, {row['speed']['p50_ms']:.1f} ms")
    batch = report["results"][0]["speed"]["batch"]
    ax.set(xlabel=f"p50 latency at batch {batch} (ms, log)", ylabel="top-1 (%)", xscale="log")
    ax.set_ylim(top=min(ax.get_ylim()[1], 100.5))
    ax.grid(True, alpha=0.3, which="both")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), fontsize=8, frameon=False)  # below: never over a point
    info = report["machine"]
    ax.set_title(f"{report['results'][0]['artifact'] if report['results'][0]['format'] == 'pytorch' else 'artifacts'}"
                 f" vs artifacts, {report['data']['images']} images\n{info['cpu']}, {info['threads']} of "
                 f"{info['cores']} threads", fontsize=9)
    save_png(fig, path, overwrite)


