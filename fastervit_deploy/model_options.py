"""The model argument group shared by every command: which variant, which weights, which size."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Callable, Optional

import torch
import typer

from fastervit import FasterViT, create_model, get_entry, load_checkpoint, read_checkpoint, suggest_windows
from fastervit.checkpoint import saved_config
from fastervit.geometry import runtime_stage_sizes

from .errors import FvdeployError

ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Registered variant (see `fvdeploy models`).")]
CheckpointOpt = Annotated[
    Optional[Path], typer.Option(help="Official .pth.tar or fvdeploy checkpoint; random weights if omitted.")
]
ResolutionOpt = Annotated[
    Optional[tuple[int, int]], typer.Option(help="Input height and width (default: the variant's).")
]
WindowOpt = Annotated[
    Optional[str],
    typer.Option(help="Window size: one value or four comma-separated (stage 0..3), e.g. 7,7,12,6."),
]
CtSizeOpt = Annotated[Optional[int], typer.Option(help="Carrier tokens per window side (official: 2).")]


def parse_int_list(text: str | list[str] | None, what: str) -> list[int] | None:
    """``"7,7,12,6"``, ``"7 7"`` or a repeated option's list → ints (None stays None)."""
    if text is None or text == []:
        return None
    parts = [text] if isinstance(text, str) else list(text)
    try:
        return [int(p) for chunk in parts for p in chunk.replace(",", " ").split()]
    except ValueError:
        raise FvdeployError(f"{what} must be integers, got {' '.join(parts)!r}") from None


@dataclass
class ModelSpec:
    name: str
    checkpoint: Path | None = None
    resolution: tuple[int, int] | None = None
    window_size: list[int] | None = None
    ct_size: int | None = None
    notes: list[str] = field(default_factory=list)
    # Without a checkpoint the weights are random but reproducible, so an artifact made in one
    # command can be verified against PyTorch in another.
    seed: int = 0
    extra: dict = field(default_factory=dict)  # further constructor overrides (API use, tiny test models)

    def copy(self, **changes) -> "ModelSpec":
        """The same model request (e.g. at another resolution), without the notes of earlier builds."""
        return dataclasses.replace(self, notes=[], extra=dict(self.extra), **changes)

    @classmethod
    def from_cli(cls, model: str, checkpoint: Path | None = None, resolution: tuple[int, int] | None = None,
                 window_size: str | None = None, ct_size: int | None = None) -> "ModelSpec":
        windows = parse_int_list(window_size, "--window-size")
        if windows is not None and len(windows) not in (1, 4):
            raise FvdeployError(f"--window-size takes 1 or 4 values, got {len(windows)}")
        if resolution is not None and min(resolution) <= 0:
            raise FvdeployError(f"--resolution must be positive, got {resolution[0]} {resolution[1]}")
        return cls(model, checkpoint, tuple(resolution) if resolution else None, windows, ct_size)

    def overrides(self) -> dict:
        entry = get_entry(self.name)
        out: dict = dict(self.extra)
        if self.resolution is not None:
            if not entry.config.any_res and self.resolution[0] != self.resolution[1]:
                raise FvdeployError(
                    f"{self.name} takes square inputs; use {self.name.rsplit('_', 1)[0]}_any_res for "
                    f"{self.resolution[0]}x{self.resolution[1]}"
                )
            out["resolution"] = self.resolution
        if self.window_size is not None:
            out["window_size"] = self.window_size * 4 if len(self.window_size) == 1 else self.window_size
        elif entry.config.any_res and "window_size" not in out:
            res = self.resolution or tuple(out.get("resolution", entry.config.resolution))
            chosen = suggest_windows(res)
            sizes = runtime_stage_sizes(res)
            out["window_size"] = chosen
            self.notes.append(
                f"windows {','.join(map(str, chosen))} chosen for {res[0]}x{res[1]} (stage maps "
                f"{sizes[2][0]}x{sizes[2][1]}, {sizes[3][0]}x{sizes[3][1]}); pass --window-size to override"
            )
        if self.ct_size is not None:
            out["ct_size"] = self.ct_size
        return out

    def build(self, log: Callable[[str], None] = lambda _: None) -> FasterViT:
        ckpt = read_checkpoint(self.checkpoint) if self.checkpoint is not None else None
        if ckpt is not None:
            # fvdeploy checkpoints carry their architecture; command-line options still win.
            arch = {k: v for k, v in saved_config(ckpt).items() if k != "any_res"}
            self.extra = {**arch, **self.extra}
        overrides = self.overrides()
        with torch.random.fork_rng():
            torch.manual_seed(self.seed)
            model = create_model(self.name, **overrides)
        for note in self.notes:
            log(note)
        if ckpt is not None:
            report = load_checkpoint(model, ckpt)
            self.notes.append(report.summary())
            log(f"checkpoint: {report.summary()}")
        return model.eval()

    def describe(self, model: FasterViT) -> dict:
        """What goes into a sidecar about the model."""
        cfg = model.cfg
        return {
            "model": self.name,
            "resolution": list(cfg.resolution),
            "window_size": list(cfg.window_size),
            "ct_size": cfg.ct_size,
            "num_classes": cfg.num_classes,
            "params": model.num_params(),
            "checkpoint": str(self.checkpoint) if self.checkpoint else None,
            "weights": "checkpoint" if self.checkpoint else f"random (seed {self.seed})",
            "preprocessing": {k: model.pretrained_cfg[k] for k in ("mean", "std", "crop_pct", "crop_mode", "interpolation")},
        }
