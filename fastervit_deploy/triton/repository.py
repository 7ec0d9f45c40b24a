"""A Triton Inference Server model repository from fvdeploy artifacts, checked with Triton's own schema.

Everything comes from the artifact's record: tensor names, shapes and types, the batch range (Triton's
``max_batch_size``; Triton sends any batch from 1 up to it), precision, preprocessing and labels. The parts:
``model`` resolves each artifact's place, ``config`` writes the config.pbtxt texts, ``schema`` checks them,
``templates/`` holds the Python-backend models (real files, copied), and this module writes the repository.

Layout written (``--preprocess`` adds the last two)::

    DIR/README.md                      what was written, and the TensorRT version/GPU a plan needs
    DIR/NAME/config.pbtxt
    DIR/NAME/labels.txt                classifiers: Triton's classification extension returns names
    DIR/NAME/VERSION/model.plan | model.onnx (+ its .data) | model.py + model.onnx (python backend)
    DIR/NAME/VERSION/model.onnx.json   the served file's record (the sidecar every artifact has)
    DIR/NAME_preprocess/...            Python model: encoded JPEG/PNG bytes -> the network's input
    DIR/NAME_ensemble/config.pbtxt     bytes in, the network's outputs out
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..core.options import TritonBackend, TritonOptions
from ..core.record import FormatKey, files_read, write_record
from ..data import pixels
from ..system.errors import CheckFailed, FvdeployError
from ..system.files import check_output, scratch_folder
from .config import config_text, ensemble_text, preprocess_config_text
from .model import CONFIG_FILE, IMAGE_BYTES, PYTHON_MODEL, TritonModel, resolve, served_record
from .schema import check_model, parse_config

TEMPLATES = Path(__file__).parent / "templates"
PIXELS_MODULE = "fvdeploy_pixels.py"  # data/pixels.py, beside the preprocessing model that imports it
README_MARK = "<!-- fvdeploy model: {} -->"


def check_repository(opts: TritonOptions, models: list[TritonModel]) -> None:
    """Refuse what would clobber or cannot be written, before anything is copied."""
    repo = opts.repository
    if repo.exists() and not repo.is_dir():
        raise FvdeployError(f"--repository {repo} is a file, not a folder")
    names = [m.name for m in models] + [f"{m.name}_{suffix}" for m in models if opts.preprocess
                                        for suffix in ("preprocess", "ensemble")]
    if len(set(names)) != len(names):
        raise FvdeployError(f"two artifacts would share the model name {names[0]!r}: pass one --name per artifact")
    for name in names:
        folder = repo / name
        if folder.exists() and not opts.overwrite:
            raise FvdeployError(f"{folder} exists (pass --overwrite to replace that model)")
        if folder.exists() and not (folder / CONFIG_FILE).is_file():
            raise FvdeployError(f"{folder} is not a Triton model folder: fvdeploy will not replace it")
        for model in models:  # --overwrite replaces the folder: never one an input lives in
            if folder.is_dir() and any(f.resolve().is_relative_to(folder.resolve()) for f in files_read(model.artifact.path)):
                raise FvdeployError(f"{model.artifact.path} is inside {folder}, which this command would replace: "
                                    "copy it out first, or choose another --name")
    check_output(repo / "README.md", True, ".md")  # the folder (or its nearest parent) is writable


def stale_companions(opts: TritonOptions, models: list[TritonModel]) -> list[Path]:
    """The preprocessing and ensemble models an earlier `--preprocess` wrote beside a model now replaced without
    it: left in place, the ensemble would wire the old preprocessing to the new model (or refuse to load)."""
    repo = opts.repository
    return [repo / f"{m.name}_{suffix}" for m in models if not opts.preprocess and (repo / m.name).is_dir()
            for suffix in ("preprocess", "ensemble") if (repo / f"{m.name}_{suffix}" / CONFIG_FILE).is_file()]


def _copy_model_file(model: TritonModel, target: Path, published: Path) -> None:
    """The artifact as model.onnx/model.plan, with its sidecar record (written by the one sidecar writer); an
    ONNX's external data keeps the file name the graph refers to. ``published``: where ``target``'s folder will be
    (the record's relative paths are computed from there)."""
    source, record = model.artifact.path, model.served
    shutil.copyfile(source, target)
    for name in list(record.files)[1:]:
        shutil.copyfile(source.with_name(name), target.parent / name)
    write_record(target, record, published)


def write_model(root: Path, repo: Path, model: TritonModel, opts: TritonOptions) -> None:
    """The model's folders under ``root`` (a scratch folder that becomes part of ``repo``)."""
    folder = root / model.name
    version = folder / str(opts.version)
    version.mkdir(parents=True)
    (folder / CONFIG_FILE).write_text(config_text(model, opts))
    published = repo / model.name / str(opts.version)
    if model.backend is TritonBackend.python:
        shutil.copyfile(TEMPLATES / "onnx_model.py", version / PYTHON_MODEL)
    _copy_model_file(model, version / model.file_name, published)
    if model.classifier:
        (folder / "labels.txt").write_text("\n".join(model.record.model.labels()) + "\n")
    if opts.preprocess:
        pre = root / f"{model.name}_preprocess"
        (pre / "1").mkdir(parents=True)
        (pre / CONFIG_FILE).write_text(preprocess_config_text(model, opts))
        shutil.copyfile(TEMPLATES / "preprocess_model.py", pre / "1" / PYTHON_MODEL)
        shutil.copyfile(pixels.__file__, pre / "1" / PIXELS_MODULE)
        ens = root / f"{model.name}_ensemble"
        (ens / "1").mkdir(parents=True)  # Triton wants a version folder, empty for an ensemble
        (ens / CONFIG_FILE).write_text(ensemble_text(model))
        if model.classifier:  # the ensemble's own output names its classes too
            shutil.copyfile(folder / "labels.txt", ens / "labels.txt")


README_TITLE = "# Triton model repository written by fvdeploy"


def model_section(m: TritonModel, opts: TritonOptions) -> str:
    rec = m.record
    lines = [README_MARK.format(m.name), f"## {m.name}",
             f"- artifact: {m.artifact.path.name} ({rec.format}, {rec.precision}), model {rec.model.name} "
             f"{rec.model.resolution[0]}x{rec.model.resolution[1]}, batch 1..{m.max_batch}",
             f"- backend: {m.backend.value}, instances: {opts.instances} x {m.kind.name.upper()}",
             f"- inputs: {', '.join(t.describe() for t in rec.inputs)}",
             f"- outputs: {', '.join(t.describe() for t in rec.outputs)}"]
    if rec.format is FormatKey.tensorrt:
        lines.append(f"- **needs TensorRT {rec.details.get('tensorrt')}** (the serving container's TensorRT must "
                     f"match, unless built version-compatible: {rec.details.get('version_compatible')}); "
                     f"built on {rec.details.get('gpu')}")
    if opts.preprocess:
        lines.append(f"- `{m.name}_ensemble` takes encoded JPEG/PNG bytes ({IMAGE_BYTES}, TYPE_STRING)")
    lines.append(f"- once served, check it: `fvdeploy verify triton://HOST:8000/{m.name}` (its config.pbtxt carries "
                 "its record)")
    return "\n".join(lines) + "\n"


def readme_sections(text: str) -> dict[str, str]:
    """A repository README's model sections by name, in order (what earlier fvdeploy runs wrote)."""
    start, sections = README_MARK.split("{}")
    out: dict[str, str] = {}
    parts = text.split(start)
    for part in parts[1:]:
        name, _, rest = part.partition(sections)
        out[name] = start + name + sections + rest.rstrip("\n") + "\n"
    return out


def readme_text(existing: str, models: list[TritonModel], opts: TritonOptions) -> str:
    """The repository's README: one section per model, the ones written now replaced, the others kept, and whatever
    else the file holds (the user's own text, before the first section) kept as it is: a repository's own files
    are inputs."""
    sections = readme_sections(existing)
    for m in models:
        sections[m.name] = model_section(m, opts)
    preamble = existing.split(README_MARK.split("{}")[0])[0]
    if not preamble.strip():
        preamble = README_TITLE + "\n\n"
    elif not preamble.endswith("\n\n"):
        preamble += "\n" if preamble.endswith("\n") else "\n\n"
    return preamble + "\n".join(sections.values())


def write_repository(opts: TritonOptions, models: list[TritonModel]) -> list[str]:
    """Write every model into a temporary folder beside the repository, check it, then move it in."""
    repo = opts.repository
    created = not repo.exists()
    repo.mkdir(parents=True, exist_ok=True)
    try:
        return _fill(repo, opts, models)
    except BaseException:
        if created:
            shutil.rmtree(repo, ignore_errors=True)  # made by this command, and nothing was moved in
        raise


def _fill(repo: Path, opts: TritonOptions, models: list[TritonModel]) -> list[str]:
    with scratch_folder(repo, prefix=".fvdeploy-") as work:
        for model in models:
            write_model(work, repo, model, opts)
            problems = check_model(work / model.name, model, opts)  # parses the config, then compares
            served = served_record(work / model.name)  # the served file's record, re-read with every check
            if served.record.identity() != model.record.identity():
                problems.append("the served file's record does not read back as the artifact's")
            if problems:
                raise CheckFailed(f"{model.name}/config.pbtxt: " + "; ".join(problems))
        checked = {model.name for model in models}
        for folder in sorted(work.iterdir()):
            if folder.is_dir() and folder.name not in checked:
                parse_config(folder / CONFIG_FILE)  # the preprocess and ensemble configs
        readme = repo / "README.md"
        (work / "README.md").write_text(readme_text(readme.read_text() if readme.is_file() else "", models, opts))
        written, stale = [], stale_companions(opts, models)
        for item in sorted(work.iterdir()):
            dest = repo / item.name
            if item.is_dir() and dest.is_dir():  # --overwrite: a model folder this command wrote before
                shutil.rmtree(dest)
            os.replace(item, dest)
            written.append(item.name)
        for folder in stale:
            shutil.rmtree(folder)
        return written


def write(paths: list[Path], opts: TritonOptions) -> tuple[list[TritonModel], list[str]]:
    """Resolve every artifact (one --name each, if names are given), check the repository, write it."""
    names = list(opts.name)
    if names and len(names) != len(paths):
        raise FvdeployError(f"give one --name per artifact ({len(paths)} artifacts, {len(names)} names)")
    models = [resolve(path, opts, names[i] if names else None) for i, path in enumerate(paths)]
    check_repository(opts, models)
    return models, write_repository(opts, models)
