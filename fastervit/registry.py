"""Name-keyed registry of the released FasterViT variants (SPEC.md §1)."""

from __future__ import annotations

import difflib
import fnmatch
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import FasterViTConfig, FasterViTError, ModelEntry, PretrainedCfg

if TYPE_CHECKING:  # the registry is read without torch (`fvdeploy models`, option checks)
    from .model import FasterViT

_REGISTRY: dict[str, ModelEntry] = {}

_HAT_STAGE2 = (False, False, True, False)
_LARGE = dict(layer_scale=1e-5, do_propagation=True)

# name -> (hyper-parameters, crop_pct, checkpoint file)
_FAMILY_1K: dict[str, tuple[dict[str, Any], float, str]] = {
    "faster_vit_0": (dict(dim=64, in_dim=64, depths=(2, 3, 6, 5), num_heads=(2, 4, 8, 16), drop_path_rate=0.2), 0.875, "fastervit_0_224_1k.pth.tar"),
    "faster_vit_1": (dict(dim=80, in_dim=32, depths=(1, 3, 8, 5), num_heads=(2, 4, 8, 16), drop_path_rate=0.2), 1.0, "fastervit_1_224_1k.pth.tar"),
    "faster_vit_2": (dict(dim=96, in_dim=64, depths=(3, 3, 8, 5), num_heads=(2, 4, 8, 16), drop_path_rate=0.2), 1.0, "fastervit_2_224_1k.pth.tar"),
    "faster_vit_3": (dict(dim=128, in_dim=64, depths=(3, 3, 12, 5), num_heads=(2, 4, 8, 16), drop_path_rate=0.3, **_LARGE), 1.0, "fastervit_3_224_1k.pth.tar"),
    "faster_vit_4": (dict(dim=196, in_dim=64, depths=(3, 3, 12, 5), num_heads=(4, 8, 16, 32), drop_path_rate=0.3, **_LARGE), 1.0, "fastervit_4_224_1k.pth.tar"),
    "faster_vit_5": (dict(dim=320, in_dim=64, depths=(3, 3, 12, 5), num_heads=(4, 8, 16, 32), drop_path_rate=0.3, **_LARGE), 1.0, "fastervit_5_224_1k.pth.tar"),
    "faster_vit_6": (dict(dim=320, in_dim=64, depths=(3, 3, 16, 8), num_heads=(4, 8, 16, 32), drop_path_rate=0.5, **_LARGE), 1.0, "fastervit_6_224_1k.pth.tar"),
}

_21K_BASE = dict(dim=196, in_dim=64, depths=(3, 3, 12, 5), num_heads=(4, 8, 16, 32), drop_path_rate=0.42,
                 hat=(False,) * 4, **_LARGE)
# resolution -> (stage-2/3 windows, crop_pct, checkpoint file)
_FAMILY_21K: dict[int, tuple[tuple[int, int], float, str]] = {
    224: ((14, 7), 0.95, "fastervit_4_21k_224_w14.pth.tar"),
    384: ((24, 12), 1.0, "fastervit_4_21k_384_w24.pth.tar"),
    512: ((32, 16), 1.0, "fastervit_4_21k_512_w32.pth.tar"),
    768: ((48, 24), 0.93, "fastervit_4_21k_768_w48.pth.tar"),
}


def register(entry: ModelEntry) -> None:
    if entry.name in _REGISTRY:
        raise ValueError(f"model {entry.name} registered twice")
    _REGISTRY[entry.name] = entry


def _register_all() -> None:
    for base, (hp, crop, ckpt) in _FAMILY_1K.items():
        cfg = FasterViTConfig(hat=_HAT_STAGE2, resolution=(224, 224), **hp)
        pre = PretrainedCfg(crop_pct=crop, checkpoint_file=ckpt)
        register(ModelEntry(f"{base}_224", cfg, pre, "ImageNet-1K, 224x224"))
        any_res = (541, 960) if base == "faster_vit_2" else (576, 960)
        register(ModelEntry(f"{base}_any_res", cfg.replace(resolution=any_res, any_res=True), pre,
                            "any resolution (224 weights load into it)"))
    for res, ((w2, w3), crop, ckpt) in _FAMILY_21K.items():
        cfg = FasterViTConfig(window_size=(7, 7, w2, w3), resolution=(res, res), **_21K_BASE)
        pre = PretrainedCfg(input_size=(3, res, res), crop_pct=crop, crop_mode="squash", checkpoint_file=ckpt)
        register(ModelEntry(f"faster_vit_4_21k_{res}", cfg, pre, f"ImageNet-21K pre-trained, 1K fine-tuned, {res}x{res}"))
        register(ModelEntry(f"faster_vit_4_21k_{res}_any_res", cfg.replace(any_res=True, drop_path_rate=0.3), pre,
                            f"any resolution, 21K weights ({res})"))


def list_models(pattern: str = "*") -> list[str]:
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


class UnknownModelError(FasterViTError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def get_entry(name: str) -> ModelEntry:
    try:
        return _REGISTRY[name]
    except KeyError as err:
        close = difflib.get_close_matches(name, _REGISTRY, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see `fvdeploy models`"
        raise UnknownModelError(f"unknown model '{name}'{hint}") from err


def model_config(name: str, **overrides: Any) -> FasterViTConfig:
    return get_entry(name).config.replace(**overrides) if overrides else get_entry(name).config


def any_res_variant(name: str) -> str | None:
    """The registered any-resolution model that takes ``name``'s weights (the same checkpoint file)."""
    entry = get_entry(name)
    if entry.config.any_res:
        return name
    twins = [e.name for e in _REGISTRY.values()
             if e.config.any_res and e.pretrained.checkpoint_file == entry.pretrained.checkpoint_file]
    return twins[0] if twins else None


def instantiate(name: str, cfg: FasterViTConfig) -> FasterViT:
    """Build ``cfg`` (a complete configuration) with the preprocessing of the registered ``name``."""
    from .model import FasterViT

    entry = get_entry(name)
    model = FasterViT(cfg)
    pre = entry.pretrained.to_dict()
    pre["input_size"] = [cfg.in_chans, *cfg.resolution]
    pre["num_classes"] = cfg.num_classes
    pre["architecture"] = name
    model.pretrained_cfg = pre
    return model.eval()


def create_model(name: str, checkpoint: str | Path | None = None, features_only: bool = False,
                 checkpoint_prefix: str = "", **overrides: Any) -> FasterViT:
    """Build a registered variant; ``overrides`` are constructor hyper-parameters (SPEC.md §1).

    ``features_only=True`` (timm's convention) builds the backbone: ``out_indices`` (default all four
    stages) chooses the maps it returns; ``model.feature_info`` gives their channels and strides."""
    if features_only and overrides.get("out_indices") is None:
        overrides["out_indices"] = (0, 1, 2, 3)
    model = instantiate(name, model_config(name, **overrides))
    if checkpoint is not None:
        from .checkpoint import load_checkpoint

        load_checkpoint(model, checkpoint, prefix=checkpoint_prefix)
    return model


def build_meta(name: str, **overrides: Any) -> FasterViT:
    """Build on the ``meta`` device: shapes and counts without allocating (1.3 B-parameter variants too)."""
    import torch

    from .model import FasterViT

    with torch.device("meta"):
        return FasterViT(model_config(name, **overrides))


_register_all()
