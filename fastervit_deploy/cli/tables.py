"""The tables commands print (rich), built from the facts the work returned."""

from __future__ import annotations

from pathlib import Path

from rich import box
from rich.table import Table

from fastervit.geometry import plan_stages
from fastervit.params import count_params
from fastervit.registry import get_entry, list_models

from ..formats import FORMATS
from ..system.progress import counted


def model_rows(pattern: str = "*") -> list[dict]:
    """One row per registered variant, from its configuration alone (nothing is built: instant)."""
    rows = []
    for name in list_models(pattern):
        entry = get_entry(name)
        cfg = entry.config
        carriers = [f"s{p.index}:{p.carrier_grid[0]}x{p.carrier_grid[1]}" for p in plan_stages(cfg) if p.has_carriers]
        rows.append({
            "name": name,
            "params": count_params(cfg),
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


def format_rows() -> list[dict]:
    return [{"format": f.key.value, "files": list(f.suffixes), "precisions": [p.value for p in f.precisions],
             "made_by": ", ".join(f.made_by), "convert_here": f.missing_to_make() or "yes",
             "run_here": f.missing_to_run() or "yes"} for f in FORMATS.values()]


def formats_table(rows: list[dict]) -> Table:
    """Short cells (an 80-column terminal shows them whole); why a format cannot be made or run here goes below."""
    reasons: list[str] = []

    def here(value: str) -> str:
        if value == "yes":
            return value
        if value not in reasons:
            reasons.append(value)
        return f"no ({reasons.index(value) + 1})"

    table = Table(title="artifact formats", box=box.SIMPLE_HEAD, pad_edge=False, caption_justify="left")
    for col in ("format", "files", "precisions", "made by", "make here", "run here"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(r["format"], " ".join(r["files"]), ", ".join(r["precisions"]), r["made_by"].replace(", ", "\n"),
                      here(r["convert_here"]), here(r["run_here"]))
    table.caption = "\n".join(f"({i}) {reason}" for i, reason in enumerate(reasons, 1)) or None
    return table


def inspect_tables(report, name: str) -> list[Table]:
    io = Table(title=f"{name}: opset {report.opset}, {report.nodes} nodes")
    for col in ("", "name", "shape", "dtype"):
        io.add_column(col)
    for kind, values in (("input", report.inputs), ("output", report.outputs)):
        for v in values:
            io.add_row(kind, v["name"], str(v["shape"]), v["dtype"])
    ops = Table(title="ops")
    ops.add_column("op")
    ops.add_column("count", justify="right")
    for op, n in report.ops.items():
        ops.add_row(op, str(n))
    checks = Table(title="TensorRT readiness")
    for col in ("check", "", "detail"):
        checks.add_column(col)
    for f in report.findings:
        mark = "[green]ok[/green]" if f.ok else "[red]FAIL[/red]" if f.severity == "error" else "[yellow]note[/yellow]"
        checks.add_row(f.check, mark, f.detail)
    return [io, ops, checks]


def predictions_tables(rows: list[dict]) -> list[Table]:
    tables = []
    for row in rows:
        table = Table(title=row["image"], title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
        table.add_column("class")
        table.add_column("index", justify="right")
        table.add_column("probability", justify="right")
        for t in row["top"]:
            table.add_row(t["label"], str(t["index"]), f"{t['probability']:.4f}")
        tables.append(table)
    return tables


def evaluate_table(report: dict) -> Table:
    """One row per artifact (the reference first): accuracy, and speed when it was measured."""
    speed = any("speed" in r for r in report["results"])
    data = report["data"]
    classes = counted(data["classes_present"], "class", "classes")
    table = Table(title=f"{data['images']} images of {data['root']} ({classes})",
                  box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1), collapse_padding=True,
                  caption="drop: top-1 points below the reference; agree: top-1 agreement with it")
    table.add_column("artifact", overflow="fold")
    for col in ("format", "prec", "MB", "top-1", "top-5", "drop", "agree") + (("p50 ms", "img/s") if speed else ()):
        table.add_column(col, justify="right", no_wrap=True)
    for r in report["results"]:
        cells = [Path(r["artifact"]).name + (" (ref)" if r["reference"] else ""), r["format"], r["precision"],
                 "-" if r["size_mb"] is None else f"{r['size_mb']:.1f}", f"{r['top1']:.2%}", f"{r['top5']:.2%}",
                 f"{r['drop_points']:+.2f}", f"{r['top1_agreement']:.2%}"]
        if speed:
            cells += [f"{r['speed']['p50_ms']:.2f}", f"{r['speed']['throughput_ips']:.1f}"]
        table.add_row(*cells)
    for r in report.get("not_run", []):  # listed, as the README's table shows them: not measured, and why
        cells = [Path(r["artifact"]).name, r["format"], r["precision"],
                 "-" if r["size_mb"] is None else f"{r['size_mb']:.1f}", "not run here", "", "", ""]
        table.add_row(*cells, *(("", "") if speed else ()))
    return table


def layers_table(report: dict) -> Table:
    table = Table(title=f"{Path(report['candidate']).name} ({report['precision']}) against "
                        f"{Path(report['reference']).name}, layer by layer ({report['images']} images)",
                  box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1), collapse_padding=True)
    for col, justify in (("#", "right"), ("node", "left"), ("kind", "left"), ("cosine", "right"),
                         ("rel max |Δ|", "right"), ("", "left")):
        table.add_column(col, justify=justify, overflow="fold")
    for r in report["layers"]:
        mark = "[red]<- first beyond tolerance[/red]" if r["first"] else ("[yellow]beyond[/yellow]" if r["beyond"] else "")
        table.add_row(str(r["index"]), r["node"], r["kind"], f"{r['cosine']:.6f}", f"{r['max_abs_rel']:.2e}", mark)
    return table


def sensitivity_table(rows: list[dict], top: int = 10) -> Table:
    labelled = "drop_points" in rows[0]
    table = Table(title=f"site sensitivity: each group alone kept in FP16 (best {min(top, len(rows))} of {len(rows)})",
                  box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1), collapse_padding=True)
    for col in ("rank", "group (weighted op)", "+adds", "cosine", "top-1 agree") + (("drop",) if labelled else ()) + ("meets",):
        table.add_column(col, justify="left" if col.startswith("group") else "right", overflow="fold")
    for r in rows[:top]:
        cells = [str(r["rank"]), r["op"], str(len(r["residual_adds"])), f"{r['cosine_min']:.6f}",
                 f"{r.get('top1_agreement', 1.0):.1%}"]
        if labelled:
            cells.append(f"{r['drop_points']:+.2f}")
        table.add_row(*cells, "yes" if r["meets"] else "no")
    return table
