"""A model request resolved once into a complete, immutable description.

``ModelRequest`` is what a user asked for (a command line or an API call): a variant name and
optional checkpoint, resolution, windows. ``resolve_model`` turns it into a ``ModelDescription``
before anything slow runs: the exact architecture (the checkpoint's saved configuration included),
windows chosen for any-resolution inputs, input and output tensors, preprocessing, and the checkpoint's
sha256. Every later step (export, quantize, build, verify, the artifact record, the commands printed
to reproduce a stage) reads the description; nothing re-derives it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from fastervit.config import FasterViTConfig
from fastervit.geometry import check_resolution, runtime_stage_sizes, suggest_windows
from fastervit.params import count_params
from fastervit.registry import any_res_variant, get_entry, instantiate

from ..system.errors import FvdeployError
from ..system.files import sha256
from ..system.hub import HubFile, fetch, published, remote_checkpoint
from ..system.resources import check_fits
from .classes import class_names, read_labels_file
from .options import ModelRequest
from .tensors import TensorKind, TensorSpec

if TYPE_CHECKING:  # torch loads only when a model is built or a checkpoint read
    from fastervit import FasterViT

INPUT_NAME = "input"
CLASSIFIER_OUTPUT = "logits"


@dataclass(frozen=True)
class Preprocessing:
    """Evaluation preprocessing of the weights: resize by crop_pct, centre crop, normalise."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    crop_pct: float
    crop_mode: str
    interpolation: str

    def to_dict(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std), "crop_pct": self.crop_pct,
                "crop_mode": self.crop_mode, "interpolation": self.interpolation}

    @classmethod
    def from_dict(cls, d: Mapping) -> "Preprocessing":
        return cls(tuple(d["mean"]), tuple(d["std"]), float(d["crop_pct"]), d["crop_mode"], d["interpolation"])


@dataclass(frozen=True)
class CheckpointRef:
    """A checkpoint file: where it is (absolute), how the user named it, and what it contains."""

    path: Path
    sha256: str
    as_given: str
    prefix: str = ""  # the keys taken (a detector's ``backbone.0.``)

    def to_dict(self) -> dict:
        return {"path": str(self.path), "sha256": self.sha256, "as_given": self.as_given, "prefix": self.prefix}

    @classmethod
    def from_dict(cls, d: Mapping) -> "CheckpointRef":
        return cls(Path(d["path"]), d["sha256"], d.get("as_given", d["path"]), d.get("prefix", ""))


@dataclass(frozen=True)
class ModelDescription:
    name: str
    config: FasterViTConfig
    preprocessing: Preprocessing
    checkpoint: CheckpointRef | None = None
    seed: int = 0
    notes: tuple[str, ...] = ()
    # False when API-only overrides (tiny test models) make the architecture inexpressible as CLI options.
    cli_exact: bool = True
    class_names: tuple[str, ...] | None = None  # a classifier's own names (None: ImageNet's, or indices)
    labels_file: str | None = None  # where they came from, as given (--labels); None: the checkpoint or nowhere

    def labels(self) -> list[str] | None:
        """The names of the head's classes, in output order (None for a backbone)."""
        return None if self.config.features_only else class_names(self.config.num_classes, self.class_names)

    @property
    def resolution(self) -> tuple[int, int]:
        return self.config.resolution

    @property
    def input(self) -> TensorSpec:
        return TensorSpec(INPUT_NAME, (self.config.in_chans, *self.config.resolution), TensorKind.image)

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        cfg = self.config
        if not cfg.features_only:
            return (TensorSpec(CLASSIFIER_OUTPUT, (cfg.num_classes,), TensorKind.logits),)
        sizes = runtime_stage_sizes(cfg.resolution)  # a stage's output, before its downsampler, keeps its input size
        return tuple(TensorSpec(feature_output_name(cfg.feature_stride(i)), (cfg.stage_width(i), *sizes[i]),
                                TensorKind.features) for i in cfg.out_indices)

    @property
    def weights(self) -> str:
        return "checkpoint" if self.checkpoint else f"random, checkpoint-like (seed {self.seed})"

    @property
    def stem(self) -> str:
        """File-name stem for default outputs: ``faster_vit_0_any_res_576x960``; a backbone's names its levels
        (``..._576x960_features_s8-s32``), so that it never takes the classifier's file."""
        stem = f"{self.name}_{self.resolution[0]}x{self.resolution[1]}"
        levels = self.config.out_indices
        if levels is not None:
            stem += f"_features_s{2 ** (levels[0] + 2)}" + (f"-s{2 ** (levels[-1] + 2)}" if len(levels) > 1 else "")
        return stem

    def request(self) -> ModelRequest:
        """The model options that rebuild exactly this description (the resolution and windows spelled out)."""
        entry, cfg = get_entry(self.name), self.config
        windows = cfg.any_res or cfg.window_size != entry.config.window_size
        return ModelRequest(
            self.name, checkpoint=Path(self.checkpoint.as_given) if self.checkpoint else None,
            resolution=cfg.resolution, window_size=cfg.window_size if windows else None,
            ct_size=cfg.ct_size if cfg.ct_size != entry.config.ct_size else None,
            seed=self.seed if self.checkpoint is None else 0, features=cfg.out_indices if cfg.features_only else None,
            checkpoint_prefix=self.checkpoint.prefix if self.checkpoint else "",
            labels=Path(self.labels_file) if self.labels_file else None)

    def cli_args(self) -> list[str]:
        return self.request().argv()

    def params(self) -> int:
        return count_params(self.config)

    def build(self, log: Callable[[str], None] = lambda _: None) -> FasterViT:
        """The eager PyTorch model (eval mode): the checkpoint's weights, or seeded checkpoint-like ones."""
        import torch

        from fastervit import checkpoint_like_, load_checkpoint

        with torch.random.fork_rng():
            torch.manual_seed(self.seed)
            model = instantiate(self.name, self.config)
        if self.checkpoint is None:
            return checkpoint_like_(model, self.seed).eval()
        report = load_checkpoint(model, self.checkpoint.path, prefix=self.checkpoint.prefix)
        log(f"checkpoint: {report.summary()}")
        return model.eval()

    def to_dict(self) -> dict:
        return {
            "name": self.name, "config": self.config.to_dict(), "preprocessing": self.preprocessing.to_dict(),
            "checkpoint": self.checkpoint.to_dict() if self.checkpoint else None, "seed": self.seed,
            "weights": self.weights, "input": self.input.to_dict(), "outputs": [o.to_dict() for o in self.outputs],
            "notes": list(self.notes), "cli_exact": self.cli_exact,
            "class_names": list(self.class_names) if self.class_names else None, "labels_file": self.labels_file,
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> "ModelDescription":
        return cls(d["name"], FasterViTConfig(**d["config"]), Preprocessing.from_dict(d["preprocessing"]),
                   CheckpointRef.from_dict(d["checkpoint"]) if d.get("checkpoint") else None, int(d.get("seed", 0)),
                   tuple(d.get("notes", ())), bool(d.get("cli_exact", True)),
                   tuple(d["class_names"]) if d.get("class_names") else None, d.get("labels_file"))

    def replace(self, **changes: Any) -> "ModelDescription":
        return dataclasses.replace(self, **changes)


def feature_output_name(stride: int) -> str:
    return f"feat_s{stride}"


def _square_only_error(name: str, resolution: tuple[int, int]) -> FvdeployError:
    twin = any_res_variant(name)
    hint = f"; use {twin} for {resolution[0]}x{resolution[1]}" if twin else ""
    return FvdeployError(f"{name} takes square inputs{hint}")


def checkpoint_file(req: ModelRequest) -> tuple[Path | None, HubFile | None]:
    """The local checkpoint file a request names, and the hub file it came from: --pretrained (the variant's
    published file) and hub checkpoints are fetched into the Hugging Face cache and checked against the hub's
    sha256 first."""
    if req.pretrained and req.checkpoint is not None:
        raise FvdeployError("give --pretrained (NVIDIA's weights of the variant) or --checkpoint, not both")
    if req.pretrained and req.model is None:
        raise FvdeployError("--pretrained fetches a variant's published weights: give --model NAME")
    remote = published(get_entry(req.model).pretrained.checkpoint_file) if req.pretrained else \
        remote_checkpoint(req.checkpoint)
    return (fetch(remote) if remote is not None else req.checkpoint), remote


def resolve_model(req: ModelRequest) -> ModelDescription:
    """Resolve ``req`` completely (cheap: the checkpoint is mapped, not read)."""
    if req.model is None:
        raise FvdeployError("give --model NAME (see `fvdeploy models`)")
    entry = get_entry(req.model)
    overrides: dict[str, Any] = {}
    checkpoint, saved_names, notes = None, None, []
    local, remote = checkpoint_file(req)
    if local is not None:
        from fastervit.checkpoint import (STEM, extract_state_dict, has_feature_norms, nested_prefix, read_checkpoint,
                                          saved_config, take_prefix)

        contents = read_checkpoint(local, mmap=True)  # CheckpointError: missing, damaged, runs code
        checkpoint = CheckpointRef(Path(local).resolve(), sha256(local), remote.uri if remote else str(local),
                                   req.checkpoint_prefix)
        # fvdeploy checkpoints carry their architecture; options given on the command line still win.
        overrides.update({k: v for k, v in saved_config(contents).items() if k != "any_res"})
        state, _ = take_prefix(extract_state_dict(contents), req.checkpoint_prefix)
        nested = nested_prefix(state)
        if nested is not None:  # now, not as hundreds of missing and unexpected keys after the model is built
            prefix = req.checkpoint_prefix + nested
            raise FvdeployError(f"{Path(local).name}: the model's keys are under {prefix!r} (its stem: "
                                f"{prefix}{STEM}*): pass --checkpoint-prefix {prefix}")
        if req.features is not None and has_feature_norms(state):
            overrides["feature_norms"] = True  # a detection backbone's per-level norms
        head = state.get("head.weight")
        if req.features is None and head is not None and head.ndim == 2 and \
                head.shape[0] != overrides.get("num_classes", entry.config.num_classes):
            overrides["num_classes"] = int(head.shape[0])  # a fine-tuned head loads as it is
            notes.append(f"{head.shape[0]} classes, from the checkpoint's head (head.weight {list(head.shape)})")
        saved_names = checkpoint_class_names(contents)
        if req.seed:
            raise FvdeployError("--seed sets random weights: it has no effect with --checkpoint")
    elif req.checkpoint_prefix:
        raise FvdeployError("--checkpoint-prefix needs --checkpoint")
    if req.features is not None:
        overrides["out_indices"] = tuple(req.features)
    overrides.update(req.overrides)
    if req.resolution is not None:
        if min(req.resolution) <= 0:
            raise FvdeployError(f"--resolution must be positive, got {req.resolution[0]} {req.resolution[1]}")
        if not entry.config.any_res and req.resolution[0] != req.resolution[1]:
            raise _square_only_error(req.model, req.resolution)
        overrides["resolution"] = tuple(req.resolution)
    if req.window_size is not None:
        if len(req.window_size) not in (1, 4) or min(req.window_size) <= 0:
            raise FvdeployError(f"--window-size takes 1 or 4 positive values, got {','.join(map(str, req.window_size))}")
        overrides["window_size"] = tuple(req.window_size) * (4 if len(req.window_size) == 1 else 1)
    elif entry.config.any_res and "window_size" not in overrides:
        res = tuple(overrides.get("resolution", entry.config.resolution))
        overrides["window_size"] = chosen = suggest_windows(res)
        sizes = runtime_stage_sizes(res)
        notes.append(f"windows {','.join(map(str, chosen))} chosen for {res[0]}x{res[1]} (stage maps "
                     f"{sizes[2][0]}x{sizes[2][1]}, {sizes[3][0]}x{sizes[3][1]}); pass --window-size to override")
    if req.ct_size is not None:
        overrides["ct_size"] = req.ct_size
    try:
        config = entry.config.replace(**overrides)
    except TypeError as err:  # a value of the wrong type in an API caller's overrides
        raise FvdeployError(f"model options: {err}") from err
    check_resolution(config)  # UnsupportedResolutionError names the sizes that work
    check_fits(req.model, config)
    names = _class_names(req, config, saved_names)
    pre = entry.pretrained
    return ModelDescription(
        req.model, config, Preprocessing(pre.mean, pre.std, pre.crop_pct, pre.crop_mode, pre.interpolation),
        checkpoint, req.seed, tuple(notes), not req.overrides, names, str(req.labels) if req.labels else None,
    )


def checkpoint_class_names(contents: Mapping[str, Any]) -> tuple[str, ...] | None:
    """Class names a checkpoint carries: top-level ``class_names``/``classes`` or fvdeploy's metadata."""
    meta = contents.get("fvdeploy") if isinstance(contents.get("fvdeploy"), Mapping) else {}
    for value in (contents.get("class_names"), contents.get("classes"), meta.get("class_names")):
        if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
            return tuple(value)
    return None


def _class_names(req: ModelRequest, config: FasterViTConfig, saved: tuple[str, ...] | None) -> tuple[str, ...] | None:
    if config.features_only:
        if req.labels is not None:
            raise FvdeployError("--labels names a classifier's classes: a backbone (--features) has none")
        return None
    if req.labels is not None:
        return read_labels_file(req.labels, config.num_classes)
    if saved is not None and len(saved) != config.num_classes:
        raise FvdeployError(f"the checkpoint names {len(saved)} classes but its head has {config.num_classes}: "
                            "pass --labels FILE")
    return saved

