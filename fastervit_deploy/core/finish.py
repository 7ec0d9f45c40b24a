"""The last step of every converter, written once: check the written file, compare it, record it.

A converter writes its artifact to a temporary path (``files.atomic_output``) and hands it here with
its record, a static check and a parity job. A failed check or parity raises ``CheckFailed`` (exit 1,
with the figures) before any sidecar is written, so the temporary folder and everything in it go.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..system.errors import CheckFailed
from ..system.files import published_path
from ..system.progress import Steps
from .checks import CheckReport
from .parity import ParityJob, report_lines
from .record import ArtifactRecord, write_sidecar


def finish(tmp: Path, record: ArtifactRecord, steps: Steps, check: Callable[[Path], CheckReport] | None = None,
           parity: ParityJob | None = None) -> ArtifactRecord:
    """Check, compare, then write the sidecar beside ``tmp``; returns the final record."""
    if check is not None:
        with steps(f"checking {record.format} artifact"):
            report = check(tmp)
        for line in report.lines():
            steps.note(line)
        if not report.passed:
            raise CheckFailed(f"{report.title} failed: {report.failure_summary()}")
        checks = report.to_dict()
        if "path" in checks:  # the report names the file it read: the published one, not the temporary
            checks["path"] = str(published_path(tmp))
        record = record.replace(checks=checks)
    if parity is not None:
        with steps(parity.title):
            result = parity.run(tmp)
        for line in report_lines(result):
            steps.note(line)
        if not result["passed"]:
            raise CheckFailed(f"{record.precision} parity check failed: " + "; ".join(result["failures"]))
        record = record.replace(parity=result)
    return write_sidecar(tmp, record.replace(timings_s=dict(steps.timings)))
