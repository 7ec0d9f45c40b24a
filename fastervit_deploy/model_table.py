"""The `fvdeploy models` table."""

from __future__ import annotations

from rich import box
from rich.table import Table

from fastervit import build_meta, get_entry, list_models


def model_rows(pattern: str = "*") -> list[dict]:
    rows = []
    for name in list_models(pattern):
        entry = get_entry(name)
        cfg = entry.config
        model = build_meta(name)  # meta device: counts without allocating
        carriers = [f"s{p.index}:{p.carrier_grid[0]}x{p.carrier_grid[1]}" for p in model.plans if p.has_carriers]
        rows.append({
            "name": name,
            "params": model.num_params(),
            "resolution": f"{cfg.resolution[0]}x{cfg.resolution[1]}",
            "windows": ",".join(map(str, cfg.window_size[2:])),
            "hat": " ".join(carriers) or "-",
            "crop_pct": entry.pretrained.crop_pct,
            "description": entry.description,
        })
    return rows


def models_table(rows: list[dict]) -> Table:
    # Fits 80 columns at its natural width (no truncated cells): a light box, short headers.
    table = Table(title="FasterViT variants", box=box.SIMPLE_HEAD, pad_edge=False,
                  caption="windows: stages 2,3; carriers: carrier-token grid per stage")
    table.add_column("model", no_wrap=True)
    for col in ("params", "input", "windows", "carriers", "crop"):
        table.add_column(col, justify="right", no_wrap=True)
    for r in rows:
        table.add_row(r["name"], f"{r['params'] / 1e6:.2f}M", r["resolution"], r["windows"], r["hat"],
                      f"{r['crop_pct']:.3g}")
    return table
