"""Findings and reports of the static checks every artifact goes through (graph, package, engine)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class Finding:
    check: str
    ok: bool
    detail: str
    severity: str = "error"  # "error" fails the artifact, "info" only reports
    facts: dict = field(default_factory=dict)  # what the check counted (tests and tools read numbers here)


@dataclass
class CheckReport:
    title: str  # what was checked, e.g. "graph check", "Core ML package check", "engine precision audit"
    findings: list[Finding] = field(default_factory=list)
    facts: dict = field(default_factory=dict)  # what the check measured, kept in the record

    @property
    def passed(self) -> bool:
        return all(f.ok for f in self.findings if f.severity == "error")

    def failures(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error" and not f.ok]

    def failure_summary(self) -> str:
        return "; ".join(f"{f.check}: {f.detail}" for f in self.failures())

    def lines(self) -> list[str]:
        return [f"{'ok  ' if f.ok else ('FAIL' if f.severity == 'error' else 'note')} {f.check}: {f.detail}"
                for f in self.findings]

    def finding(self, check: str) -> Finding:
        return next(f for f in self.findings if f.check == check)

    def to_dict(self) -> dict:
        return {"title": self.title, "passed": self.passed, "findings": [asdict(f) for f in self.findings], **self.facts}
