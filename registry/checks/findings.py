"""The one shape every review check reports in: a :class:`Finding` with a rule id, a severity and a span.

A finding says *which rule* fired (``poisoning.instruction-override``), *how bad* it is
(``info`` < ``low`` < ``medium`` < ``high`` < ``critical``), *where* (the tool, or ``None`` for
server-level text; the field, e.g. ``description`` or ``inputSchema.properties.path.description``;
the character span in that field's text) and *why* (a message a reviewer can act on).

Spans count Python ``str`` characters (Unicode code points) of the field's original text, end
exclusive. The excerpt is the matched text made visible: invisible and control characters are
written as ``<U+200B>`` escapes, so a reviewer sees what a renderer would hide.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "SEVERITIES",
    "Finding",
    "Severity",
    "Span",
    "is_hidden_char",
    "make_span",
    "severity_rank",
    "visible",
    "worst",
]

Severity = Literal["info", "low", "medium", "high", "critical"]
SEVERITIES: tuple[Severity, ...] = ("info", "low", "medium", "high", "critical")
EXCERPT_CHARS = 160


def severity_rank(severity: str) -> int:
    """0 (info) … 4 (critical); ValueError for anything else."""
    return SEVERITIES.index(severity)  # type: ignore[arg-type]


def worst(findings: Iterable[Finding]) -> Severity | None:
    """The highest severity among ``findings`` (None when there are none)."""
    best: Severity | None = None
    for finding in findings:
        if best is None or severity_rank(finding.severity) > severity_rank(best):
            best = finding.severity
    return best


def visible(text: str, limit: int = EXCERPT_CHARS) -> str:
    """``text`` with invisible/format/control characters escaped as ``<U+XXXX>``, cut at ``limit`` characters."""
    out = [ch if ch in "\n\t" or not is_hidden_char(ch) else f"<U+{ord(ch):04X}>" for ch in text[:limit]]
    result = "".join(out)
    return result if len(result) <= limit and len(text) <= limit else result[: limit - 1] + "…"


_HIDDEN_CATEGORIES = frozenset({"Cf", "Cc", "Co", "Cs", "Cn", "Zl", "Zp"})
# Characters that render as nothing (or as blank space) without being in a format/control category:
# Hangul fillers, the braille blank, the combining grapheme joiner, variation selectors, tag characters.
_BLANK_CODEPOINTS = frozenset({0x115F, 0x1160, 0x3164, 0xFFA0, 0x2800, 0x034F})


def is_hidden_char(ch: str) -> bool:
    """True for characters a renderer hides or that are not ordinary text (format, control, private use, …)."""
    cp = ord(ch)
    return (
        unicodedata.category(ch) in _HIDDEN_CATEGORIES
        or cp in _BLANK_CODEPOINTS
        or 0xFE00 <= cp <= 0xFE0F
        or 0xE0100 <= cp <= 0xE01EF
        or 0xE0000 <= cp <= 0xE007F
    )


@dataclass(frozen=True)
class Span:
    """Characters ``[start, end)`` of a field's text, and the excerpt a reviewer sees."""

    start: int
    end: int
    excerpt: str

    def to_dict(self) -> dict[str, Any]:
        return {"start": self.start, "end": self.end, "excerpt": self.excerpt}


def make_span(text: str, start: int, end: int) -> Span:
    return Span(start, end, visible(text[start:end]))


@dataclass(frozen=True)
class Finding:
    """One result of one review rule. ``evidence`` holds extra facts (JSON-serialisable) for the report."""

    rule: str
    severity: Severity
    tool: str | None
    field: str
    span: Span | None
    message: str
    evidence: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"unknown severity {self.severity!r}")

    @property
    def check(self) -> str:
        """The check this finding belongs to: the part of the rule id before the first dot."""
        return self.rule.split(".", 1)[0]

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "check": self.check,
            "severity": self.severity,
            "tool": self.tool,
            "field": self.field,
            "span": self.span.to_dict() if self.span else None,
            "message": self.message,
            "evidence": dict(self.evidence),
        }


#: A check fails when any of its findings has one of these severities.
FAILING_SEVERITIES = frozenset({"high", "critical"})



def finding(rule: str, severity: Severity, message: str, *, field: str = "$", tool: str | None = None,
            evidence: Mapping[str, Any] | None = None) -> Finding:
    """A :class:`kontor.registry.checks.findings.Finding` without a text span (``field``: a JSON path)."""
    return Finding(rule, severity, tool, field, None, message, dict(evidence or {}))


@dataclass(frozen=True)
class CheckResult:
    """What one review check produced: pass/fail, JSON-serialisable evidence and findings."""

    check: str
    passed: bool
    evidence: dict[str, Any] = field(default_factory=dict)
    findings: tuple[Finding, ...] = ()

    @classmethod
    def of(cls, check: str, evidence: dict[str, Any], findings: Sequence[Finding]) -> CheckResult:
        """A result that passes unless a finding is ``high`` or ``critical``."""
        findings = tuple(findings)
        return cls(check, not any(f.severity in FAILING_SEVERITIES for f in findings), evidence, findings)

    @property
    def worst_severity(self) -> str | None:
        return worst(self.findings)

    def rules(self) -> list[str]:
        return [f.rule for f in self.findings]

    def to_dict(self) -> dict[str, Any]:
        return {"check": self.check, "passed": self.passed, "evidence": self.evidence,
                "findings": [f.to_dict() for f in self.findings]}
