"""fastervit: a clean-room, export-friendly FasterViT that loads the official checkpoints."""

from .checkpoint import CheckpointError, LoadReport, load_checkpoint, read_checkpoint, save_checkpoint
from .config import FasterViTConfig, ModelEntry, PretrainedCfg
from .init import checkpoint_like_
from .geometry import MemoryEstimate, StagePlan, UnsupportedResolutionError, estimate_memory, plan_stages, suggest_windows
from .model import FasterViT
from .registry import (
    UnknownModelError, any_res_variant, build_meta, create_model, get_entry, instantiate, list_models, model_config,
)

__all__ = [
    "CheckpointError", "FasterViT", "MemoryEstimate", "FasterViTConfig", "LoadReport", "ModelEntry", "PretrainedCfg", "StagePlan",
    "UnknownModelError", "UnsupportedResolutionError", "any_res_variant", "build_meta", "checkpoint_like_",
    "create_model", "estimate_memory", "get_entry", "instantiate", "list_models", "load_checkpoint", "model_config", "plan_stages",
    "read_checkpoint", "save_checkpoint", "suggest_windows",
]
