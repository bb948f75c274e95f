"""The evidence report of a review run: every finding, grouped by check, the derived scopes and a risk label.

Risk label (:func:`risk_label`), from all findings of the run, ``server.json`` problems included:

1. The label is the worst severity found, with ``info`` and ``low`` both giving ``low`` and no
   findings at all giving ``low``: ``low`` < ``medium`` < ``high`` < ``critical``.
2. Escalation: when one tool (or the server-level texts) carries ``high`` findings of two or more
   *different* rules of the tool-level checks (poisoning, shadowing, annotations) — a source and a
   sink, e.g. ``poisoning.sensitive-file`` and ``poisoning.exfiltration-directive``, or a shadowing
   name with a hidden tag — the label is ``critical``: together they make an attack chain, not two
   independent smells.

``server.json`` problems (:class:`kontor.registry.server_json.Problem`) enter as findings of the
check ``server_json``: ``namespace-not-owned`` is critical (someone publishing under a namespace
they did not prove), every other problem is high (the version cannot be published as it is).

Each check gets a status: ``fail`` when it has a ``high`` or ``critical`` finding, ``warn`` when it
has a ``low`` or ``medium`` one, ``pass`` otherwise (nothing, or ``info`` only). A reviewer sees
``fail`` as "blocks approval until resolved"; the lifecycle (``checks_failed`` / ``in_review``)
is the caller's decision.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from .findings import SEVERITIES, Finding, Severity, severity_rank, worst

__all__ = [
    "CHECK_ORDER",
    "ESCALATING_CHECKS",
    "REPORT_FORMAT",
    "RISK_LABELS",
    "RISK_RULE",
    "build_report",
    "check_status",
    "problem_findings",
    "risk_label",
]

REPORT_FORMAT = "kontor.registry.review-report/1"
RISK_LABELS = ("low", "medium", "high", "critical")
RISK_RULE = (
    "The label is the worst finding's severity (info and low give low; no findings give low). "
    "Two or more different high-severity rules of the poisoning, shadowing and annotations checks on the "
    "same tool (or on the server-level texts) escalate the label to critical. server.json problems count "
    "as high, a namespace the publisher does not own as critical."
)
CHECK_ORDER = ("server_json", "namespace", "endpoints", "snapshot", "poisoning", "shadowing", "annotations",
               "packages")
_CRITICAL_PROBLEMS = frozenset({"namespace-not-owned"})
# Checks whose findings describe what a tool (or the server's texts) does to the model; only these escalate.
ESCALATING_CHECKS = ("poisoning", "shadowing", "annotations")


def problem_findings(problems: Iterable[Any]) -> list[Finding]:
    """``server.json`` problems (with ``path``, ``message``, ``rule``) as findings of the check ``server_json``."""
    out: list[Finding] = []
    for p in problems:
        severity: Severity = "critical" if p.rule in _CRITICAL_PROBLEMS else "high"
        out.append(Finding(f"server_json.{p.rule}", severity, None, p.path, None, p.message,
                           {"path": p.path, "stage": getattr(p, "stage", None)}))
    return out


def _label(severity: str | None) -> str:
    if severity is None or severity in ("info", "low"):
        return "low"
    return severity


def risk_label(findings: Iterable[Finding]) -> str:
    """``low`` | ``medium`` | ``high`` | ``critical`` by :data:`RISK_RULE`."""
    return _risk(list(findings))[0]


def _risk(findings: list[Finding]) -> tuple[str, list[str]]:
    label = _label(worst(findings))
    reasons: list[str] = []
    if findings:
        top = max(findings, key=lambda f: severity_rank(f.severity))
        reasons.append(f"worst finding: {top.rule} ({top.severity})")
    high_rules: dict[str | None, set[str]] = defaultdict(set)
    for f in findings:
        if f.severity == "high" and f.check in ESCALATING_CHECKS:
            high_rules[f.tool].add(f.rule)
    for tool, rules in sorted(high_rules.items(), key=lambda kv: kv[0] or ""):
        if len(rules) >= 2:
            label = "critical"
            where = f"tool {tool!r} has" if tool else "the server-level texts have"
            reasons.append(f"{where} high findings of {len(rules)} rules: {', '.join(sorted(rules))}")
    return label, reasons


def check_status(findings: Iterable[Finding]) -> str:
    """``fail`` (high/critical), ``warn`` (low/medium) or ``pass`` (nothing or info only)."""
    w = worst(findings)
    if w is None or w == "info":
        return "pass"
    return "fail" if severity_rank(w) >= severity_rank("high") else "warn"


def build_report(findings: Iterable[Finding] = (), *, problems: Iterable[Any] = (),
                 policies: Iterable[Any] = (), checks_run: Iterable[str] = (),
                 server: str | None = None, version: str | None = None,
                 generated_at: datetime | None = None, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The evidence report as a JSON-serialisable dict.

    ``findings``: from every check; ``problems``: ``server.json`` problems; ``policies``: the
    :class:`kontor.registry.checks.annotations.ToolPolicy` of each tool (their scopes are listed);
    ``checks_run``: names of checks that ran, so a check without findings still shows as ``pass``;
    ``extra``: further top-level facts (e.g. the snapshot hash), copied as they are.
    """
    all_findings = [*problem_findings(problems), *findings]
    label, reasons = _risk(all_findings)
    grouped: dict[str, list[Finding]] = defaultdict(list)
    for f in all_findings:
        grouped[f.check].append(f)
    names = list(dict.fromkeys([*checks_run, *grouped]))
    names.sort(key=lambda n: (CHECK_ORDER.index(n) if n in CHECK_ORDER else len(CHECK_ORDER), n))
    checks = {}
    for name in names:
        items = sorted(grouped.get(name, []), key=lambda f: (-severity_rank(f.severity), f.tool or "", f.field,
                                                              f.span.start if f.span else -1, f.rule))
        checks[name] = {"status": check_status(items), "findings": [f.to_dict() for f in items]}
    counts = Counter(f.severity for f in all_findings)
    policy_dicts = [p.to_dict() if hasattr(p, "to_dict") else dict(p) for p in policies]
    report: dict[str, Any] = {
        "format": REPORT_FORMAT,
        "server": server,
        "version": version,
        "generated_at": (generated_at or datetime.now(UTC)).isoformat(),
        "risk": {"label": label, "rule": RISK_RULE, "reasons": reasons},
        "summary": {"findings": len(all_findings), "by_severity": {s: counts.get(s, 0) for s in SEVERITIES},
                    "failed_checks": [n for n, c in checks.items() if c["status"] == "fail"]},
        "checks": checks,
        "tools": policy_dicts,
        "scopes": sorted({p["scope"] for p in policy_dicts if p.get("scope")}),
    }
    if extra:
        report.update({k: v for k, v in extra.items() if k not in report})
    return report
