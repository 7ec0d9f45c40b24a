"""Shared test helpers: CLI invocation and small exports."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from typer.testing import CliRunner

from fastervit_deploy import commands  # noqa: F401 - registers the commands on the app
from fastervit_deploy.cli import app
from fastervit_deploy.model_options import ModelSpec
from fastervit_deploy.onnx_export import ExportOptions, export_onnx
from fastervit_deploy.progress import Steps

from .conftest import TINY


def quiet_steps() -> Steps:
    return Steps(Console(quiet=True))


def cli(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def assert_one_line_error(result, pattern: str, code: int | None = None) -> None:
    import re

    assert result.exit_code != 0, result.output
    if code is not None:
        assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.output
    assert re.search(pattern, result.output.replace("\n", " ")), result.output


def tiny_spec(name: str = "faster_vit_0_224", **extra) -> ModelSpec:
    return ModelSpec(name, extra={**TINY, **extra})


def export_tiny(tmp_path: Path, name: str = "faster_vit_0_224", opts: ExportOptions | None = None, **extra) -> dict:
    spec = tiny_spec(name, **extra)
    return export_onnx(spec, tmp_path / f"{name}.onnx", opts or ExportOptions(), quiet_steps())
