"""The readable pages of a review: the evidence report and the diff of tool definitions, server-rendered.

:func:`render_report_page` turns an evidence report (:attr:`kontor.registry.review.ReviewOutcome.report`,
or any :func:`kontor.registry.checks.report.build_report` dict) into one self-contained HTML page:
inline CSS, no JavaScript, no external resources, readable on a phone. It shows the server,
version, risk label and verdict; one section per check with its status, duration and findings
(rule, severity, tool, field, message and the offending span highlighted inside the text around
it); the snapshot's tools with the scope each needs; every check's evidence in ``<details>``.

Everything a submitter controls is treated as hostile text:

* Jinja2 autoescaping is on, so ``<script>`` in a description is shown, never run;
* every interpolated string additionally goes through :func:`reveal` (the environment's
  ``finalize`` hook, so no template can forget it): invisible, format, control, bidirectional
  and tag characters are replaced by visible badges such as ``<U+202E>`` — a right-to-left
  override cannot reorder the page, a zero-width space cannot hide, and a tag-character payload
  shows up as the row of badges it is;
* submitter text never goes into attributes, URLs or CSS.

:func:`render_tool_diff` compares two snapshots (the previously approved one and the new one):
added, removed and changed tools — for a changed tool, which pinned fields differ (the fields of
:data:`kontor.gateway.pinning.DEFINITION_FIELDS`, the ones the pin hash covers), each changed
value, the scope change, and a unified diff of the pretty-printed canonical JSON.
:func:`render_tool_diff_html` renders it as an HTML partial (or a standalone page) for the
admin's "diff against the previously approved version" page.
"""

from __future__ import annotations

import difflib
import json
import re
import unicodedata
from collections.abc import Iterable, Mapping
from functools import cache
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup, escape

from kontor.gateway.pinning import DEFINITION_FIELDS, canonical_json, definition_hash, definition_of
from kontor.gateway.scopes import tool_scope
from kontor.registry.checks.findings import SEVERITIES, is_hidden_char, severity_rank

__all__ = [
    "CHECK_TITLES",
    "DIFF_FORMAT",
    "environment",
    "render_outcome_page",
    "render_report_page",
    "render_tool_diff",
    "render_tool_diff_html",
    "reveal",
]

DIFF_FORMAT = "kontor.registry.tool-diff/1"
MAX_EVIDENCE_CHARS = 60_000  # per <details> block; the JSON report keeps everything
MAX_PATHS = 50
MAX_VALUE_CHARS = 2_000

#: check id → (title, what it checks), in the order of issue 4, section 3.
CHECK_TITLES: dict[str, tuple[str, str]] = {
    "server_json": ("Schema and semantics", "The server.json against the 2025-12-11 schema and the registry's "
                    "publish rules; every problem with its JSON path."),
    "namespace": ("Namespace ownership", "The name's namespace is one the publisher proved (HTTPS well-known "
                  "or DNS TXT proof with a signed challenge)."),
    "endpoints": ("Remote endpoints", "Every remote through the SSRF-safe client: https only, public addresses "
                  "only, redirects re-checked, size and time limits; does it speak MCP?"),
    "snapshot": ("Live snapshot", "initialize, tools/list, prompts/list and resources/list against the running "
                 "server; every tool's full definition and its pin hash."),
    "poisoning": ("Tool poisoning", "Hidden or imperative instructions aimed at the model, secrets, exfiltration "
                  "targets, invisible and bidirectional characters, encoded blobs, oversized text."),
    "shadowing": ("Shadowing and typosquatting", "Tool and server names that collide with, or look like, "
                  "first-party and catalog names."),
    "annotations": ("Annotation policy", "Each tool has a title and readOnlyHint or destructiveHint; the scope it "
                    "needs follows from them."),
    "packages": ("Package facts", "Exact versions pinned; the MCPB file's SHA-256 verified when reachable."),
}

_STATUSES = ("pass", "warn", "fail", "skipped")
_CODEPOINT_TOKEN = re.compile(r"<U\+([0-9A-F]{4,6})>")


# --------------------------------------------------------------------------- making text safe and visible


def _badge(ch: str) -> str:
    cp = ord(ch)
    name = unicodedata.name(ch, "") or _range_name(cp)
    title = f' title="{escape(name)}"' if name else ""
    return f'<span class="cp"{title}>&lt;U+{cp:04X}&gt;</span>'


def _range_name(cp: int) -> str:
    if 0xE0000 <= cp <= 0xE007F:
        return "TAG CHARACTER"
    if 0xE000 <= cp <= 0xF8FF or cp >= 0xF0000:
        return "PRIVATE USE"
    if 0xD800 <= cp <= 0xDFFF:
        return "SURROGATE"
    return "UNASSIGNED"


def reveal(value: Any) -> Markup:
    """``value`` as HTML: escaped, with every hidden character (see
    :func:`kontor.registry.checks.findings.is_hidden_char`) shown as a ``<U+XXXX>`` badge. Newlines and tabs stay.
    Markup passes unchanged (it was made safe by this module)."""
    if isinstance(value, Markup):
        return value
    if value is None:
        return Markup("")
    text = value if isinstance(value, str) else str(value)
    out: list[str] = []
    plain: list[str] = []
    for ch in text:
        if ch not in "\n\t" and is_hidden_char(ch):
            if plain:
                out.append(str(escape("".join(plain))))
                plain.clear()
            out.append(_badge(ch))
        else:
            plain.append(ch)
    if plain:
        out.append(str(escape("".join(plain))))
    return Markup("".join(out))


def _excerpt(value: Any) -> Markup:
    """A finding's excerpt, where hidden characters were already written as ``<U+XXXX>`` text: those become badges."""
    if value is None:
        return Markup("")
    parts: list[str] = []
    last = 0
    text = str(value)
    for m in _CODEPOINT_TOKEN.finditer(text):
        parts.append(str(reveal(text[last:m.start()])))
        cp = int(m.group(1), 16)
        parts.append(_badge(chr(cp)) if cp <= 0x10FFFF else str(escape(m.group(0))))
        last = m.end()
    parts.append(str(reveal(text[last:])))
    return Markup("".join(parts))


def _finalize(value: Any) -> Any:
    """Every ``{{ … }}`` output: strings revealed (and escaped), Markup and numbers as they are."""
    if value is None:
        return ""
    if isinstance(value, Markup | int | float):
        return value
    if isinstance(value, str):
        return reveal(value)
    return reveal(str(value))


def _pretty(value: Any, limit: int = MAX_EVIDENCE_CHARS) -> str:
    text = json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False, default=str)
    if len(text) > limit:
        text = text[:limit] + f"\n… ({len(text) - limit} more characters in the JSON report)"
    return text


def _short(value: Any, n: int = 12) -> str:
    return str(value)[:n] if value else ""


@cache
def environment() -> Environment:
    """The Jinja2 environment of the registry's pages: autoescape on, every output revealed (see module doc)."""
    env = Environment(loader=PackageLoader("kontor.registry", "templates"),
                      autoescape=select_autoescape(["html"], default_for_string=True, default=True),
                      finalize=_finalize, trim_blocks=True, lstrip_blocks=True)
    env.filters.update({"reveal": reveal, "excerpt": _excerpt, "pretty": _pretty, "short": _short,
                        "diff_class": _diff_line_class})
    return env


# --------------------------------------------------------------------------- the report page


def _tool_entries(report: Mapping[str, Any], snapshot: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    if snapshot is not None:
        raw = snapshot.get("tools") if "tools" in snapshot else snapshot
    else:
        raw = ((report.get("checks") or {}).get("snapshot") or {}).get("evidence", {}).get("tools")
    defs = _definitions(raw or {})
    policies = {p.get("tool"): p for p in report.get("tools") or () if isinstance(p, Mapping)}
    worst: dict[str, str] = {}
    count: dict[str, int] = {}
    for check in (report.get("checks") or {}).values():
        for f in check.get("findings") or ():
            tool = f.get("tool")
            if tool is None or f.get("severity") == "info":
                continue
            count[tool] = count.get(tool, 0) + 1
            if tool not in worst or severity_rank(f["severity"]) > severity_rank(worst[tool]):
                worst[tool] = f["severity"]
    entries = []
    for name, (definition, digest) in defs.items():
        policy = policies.get(name, {})
        entries.append({"name": name, "title": definition.get("title") or (definition.get("annotations") or {}
                                                                             ).get("title"),
                        "description": definition.get("description"), "hash": digest,
                        "scope": policy.get("scope"), "effect": policy.get("effect"),
                        "definition": definition, "worst": worst.get(name), "findings": count.get(name, 0)})
    return entries


def _sections(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    sections = []
    checks = report.get("checks") or {}
    order = [c for c in CHECK_TITLES if c in checks] + [c for c in checks if c not in CHECK_TITLES]
    for number, name in enumerate(order, 1):
        entry = checks[name]
        title, blurb = CHECK_TITLES.get(name, (name, ""))
        findings = [dict(f, severity=f.get("severity") if f.get("severity") in SEVERITIES else "info")
                    for f in entry.get("findings") or () if isinstance(f, Mapping)]
        status = entry.get("status") if entry.get("status") in _STATUSES else "pass"
        counts = {s: sum(1 for f in findings if f.get("severity") == s) for s in SEVERITIES}
        sections.append({"id": f"check-{re.sub(r'[^a-z0-9-]', '-', name.lower())}", "name": name,
                         "number": number, "title": title, "blurb": blurb, "status": status,
                         "reason": entry.get("reason"), "duration_ms": entry.get("duration_ms"),
                         "findings": findings, "counts": {s: n for s, n in counts.items() if n},
                         "evidence": entry.get("evidence")})
    return sections


def _verdict(report: Mapping[str, Any]) -> bool:
    review = report.get("review")
    if isinstance(review, Mapping) and isinstance(review.get("passed"), bool):
        return review["passed"]
    return not (report.get("summary") or {}).get("failed_checks")


def _safe_class(value: Any, allowed: Iterable[str], default: str) -> str:
    return value if isinstance(value, str) and value in set(allowed) else default


def render_report_page(report: Mapping[str, Any], *, snapshot: Mapping[str, Any] | None = None,
                       diff: Mapping[str, Any] | None = None, title: str | None = None) -> str:
    """The evidence report as one self-contained HTML page (see the module docstring).

    ``snapshot``: the stored snapshot (default: the one in the report's snapshot evidence); ``diff``: a
    :func:`render_tool_diff` result to show below the tools (the admin's comparison with the approved version).
    """
    risk = report.get("risk") or {}
    label = _safe_class(risk.get("label"), ("low", "medium", "high", "critical"), "unknown")
    review = report.get("review") if isinstance(report.get("review"), Mapping) else {}
    snap = snapshot
    if snap is None:
        snap_ev = ((report.get("checks") or {}).get("snapshot") or {}).get("evidence") or {}
        snap = {"instructions": snap_ev.get("instructions"), "instructions_hash": snap_ev.get("instructions_hash")}
    summary = report.get("summary") or {}
    context = {
        "page_title": title or f"Review of {report.get('server') or 'a server'} {report.get('version') or ''}".strip(),
        "report": report, "server": report.get("server"), "version": report.get("version"),
        "label": label, "risk": risk, "passed": _verdict(report), "review": review,
        "summary": summary, "by_severity": {s: n for s, n in (summary.get("by_severity") or {}).items() if n},
        "sections": _sections(report), "tools": _tool_entries(report, snapshot),
        "instructions": snap.get("instructions") if isinstance(snap, Mapping) else None,
        "instructions_hash": snap.get("instructions_hash") if isinstance(snap, Mapping) else None,
        "snapshot_summary": report.get("snapshot"), "diff": diff, "severities": SEVERITIES,
    }
    return environment().get_template("review_report.html").render(context)


def render_outcome_page(outcome: Any, *, diff: Mapping[str, Any] | None = None) -> str:
    """:func:`render_report_page` for a :class:`kontor.registry.review.ReviewOutcome`."""
    return render_report_page(outcome.report, snapshot=outcome.snapshot, diff=diff)


# --------------------------------------------------------------------------- the tool diff


def _definitions(tools: Any) -> dict[str, tuple[dict[str, Any], str]]:
    """name → (definition, hash) from a snapshot's tools in any of their shapes (see :func:`render_tool_diff`)."""
    out: dict[str, tuple[dict[str, Any], str]] = {}
    items: Iterable[tuple[Any, Any]]
    if isinstance(tools, Mapping):
        items = tools.items()
    elif isinstance(tools, list | tuple):
        items = ((None, item) for item in tools)
    else:
        return out
    for key, entry in items:
        if not isinstance(entry, Mapping):
            continue
        definition = entry.get("definition") if isinstance(entry.get("definition"), Mapping) else entry
        name = key if isinstance(key, str) else definition.get("name", entry.get("name"))
        if not isinstance(name, str):
            continue
        digest = entry.get("hash") if isinstance(entry.get("hash"), str) and "definition" in entry else None
        out[name] = (dict(definition), digest or definition_hash(definition))
    return out


def _tools_of(snapshot: Any) -> tuple[dict[str, tuple[dict[str, Any], str]], str | None, bool]:
    if snapshot is None:
        return {}, None, False
    if isinstance(snapshot, Mapping) and "tools" in snapshot and not isinstance(snapshot.get("tools"), str):
        instructions = snapshot.get("instructions")
        has = "instructions" in snapshot
        return _definitions(snapshot["tools"]), instructions if isinstance(instructions, str) else None, has
    return _definitions(snapshot), None, False


def _canonical_pretty(definition: Mapping[str, Any]) -> str:
    """The pinned part of a definition as canonical JSON (sorted keys, NFC), pretty-printed for a line diff."""
    return json.dumps(json.loads(canonical_json(definition_of(definition))), indent=2, sort_keys=True,
                      ensure_ascii=False)


def _leaf_changes(old: Any, new: Any, path: str, out: list[dict[str, Any]]) -> None:
    if len(out) >= MAX_PATHS:
        return
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        for key in sorted(set(old) | set(new)):
            sub = f"{path}.{key}" if path else str(key)
            if key not in old:
                out.append({"path": sub, "kind": "added", "new": _clip(new[key])})
            elif key not in new:
                out.append({"path": sub, "kind": "removed", "old": _clip(old[key])})
            else:
                _leaf_changes(old[key], new[key], sub, out)
        return
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            _leaf_changes(a, b, f"{path}[{i}]", out)
        return
    if canonical_json(old) != canonical_json(new):
        out.append({"path": path, "kind": "changed", "old": _clip(old), "new": _clip(new)})


def _clip(value: Any) -> Any:
    if isinstance(value, str):
        return value if len(value) <= MAX_VALUE_CHARS else value[:MAX_VALUE_CHARS] + "…"
    text = json.dumps(value, ensure_ascii=False, sort_keys=True)
    return value if len(text) <= MAX_VALUE_CHARS else text[:MAX_VALUE_CHARS] + "…"


def _effect(definition: Mapping[str, Any]) -> str:
    ann = definition.get("annotations") if isinstance(definition.get("annotations"), Mapping) else {}
    if ann.get("readOnlyHint") is True:
        return "read"
    return "write" if ann.get("destructiveHint") is False else "destructive"


def _entry(name: str, definition: dict[str, Any], digest: str, server: str) -> dict[str, Any]:
    return {"name": name, "hash": digest, "definition": definition, "canonical": _canonical_pretty(definition),
            "scope": tool_scope(server, definition), "effect": _effect(definition)}


def render_tool_diff(old_snapshot: Any, new_snapshot: Any, *, server: str | None = None) -> dict[str, Any]:
    """What changed between two snapshots, as a JSON-serialisable dict.

    A snapshot is :attr:`kontor.registry.review.ReviewOutcome.snapshot` (``{"tools": {name: {"definition",
    "hash"}}, "instructions": …}``), or just its tools: a mapping name → definition (or → ``{"definition", "hash"}``)
    or a list of definitions. ``None`` is an empty snapshot (a first version). ``server`` is the gateway name the
    scopes are derived under (default: the snapshots' ``gateway_name``, else ``server``).

    Returns ``{"format", "added": [entry], "removed": [entry], "changed": [change], "unchanged": [names],
    "renamed": [{"old", "new"}], "instructions": {...}, "scopes": {"old", "new", "added", "removed"}, "summary"}``;
    an entry has ``name, hash, definition, canonical, scope, effect``; a change has ``name, old_hash, new_hash,
    fields`` (pinned top-level fields that differ), ``changes`` (each differing value by dotted path, at most 50),
    ``unpinned_fields`` (other keys that differ, not covered by the pin), ``old_scope, new_scope, old_effect,
    new_effect`` and ``diff`` (unified diff of the pretty-printed canonical JSON of the pinned fields).
    Tools whose pin hash is equal are unchanged, even when unpinned fields (``_meta``, ``icons``) differ.
    """
    old_tools, old_instr, old_has = _tools_of(old_snapshot)
    new_tools, new_instr, new_has = _tools_of(new_snapshot)
    gateway = server
    for snap in (new_snapshot, old_snapshot):
        if gateway is None and isinstance(snap, Mapping) and isinstance(snap.get("gateway_name"), str):
            gateway = snap["gateway_name"]
    gateway = gateway or "server"

    added = [_entry(n, d, h, gateway) for n, (d, h) in new_tools.items() if n not in old_tools]
    removed = [_entry(n, d, h, gateway) for n, (d, h) in old_tools.items() if n not in new_tools]
    changed: list[dict[str, Any]] = []
    unchanged: list[str] = []
    for name, (new_def, new_hash) in new_tools.items():
        if name not in old_tools:
            continue
        old_def, old_hash = old_tools[name]
        if old_hash == new_hash and definition_hash(old_def) == definition_hash(new_def):
            unchanged.append(name)
            continue
        old_pinned, new_pinned = definition_of(old_def), definition_of(new_def)
        fields = [f for f in DEFINITION_FIELDS if canonical_json(old_pinned[f]) != canonical_json(new_pinned[f])]
        unpinned = sorted(k for k in set(old_def) | set(new_def) if k not in DEFINITION_FIELDS
                          and json.dumps(old_def.get(k), sort_keys=True) != json.dumps(new_def.get(k), sort_keys=True))
        changes: list[dict[str, Any]] = []
        _leaf_changes({f: old_pinned[f] for f in fields}, {f: new_pinned[f] for f in fields}, "", changes)
        lines = difflib.unified_diff(_canonical_pretty(old_def).splitlines(), _canonical_pretty(new_def).splitlines(),
                                     fromfile=f"approved/{name}", tofile=f"submitted/{name}", lineterm="", n=3)
        changed.append({"name": name, "old_hash": old_hash, "new_hash": new_hash, "fields": fields,
                        "changes": changes, "unpinned_fields": unpinned,
                        "old_scope": tool_scope(gateway, old_def), "new_scope": tool_scope(gateway, new_def),
                        "old_effect": _effect(old_def), "new_effect": _effect(new_def), "diff": "\n".join(lines)})

    renamed = []
    for gone in removed:
        for new in added:
            if {**definition_of(gone["definition"]), "name": None} == {**definition_of(new["definition"]),
                                                                        "name": None}:
                renamed.append({"old": gone["name"], "new": new["name"]})
                break

    instr_changed = (old_has or new_has) and (old_instr or None) != (new_instr or None)
    instructions: dict[str, Any] = {"changed": bool(instr_changed), "old": old_instr, "new": new_instr}
    if instr_changed:
        instructions["diff"] = "\n".join(difflib.unified_diff((old_instr or "").splitlines(),
                                                              (new_instr or "").splitlines(),
                                                              fromfile="approved/instructions",
                                                              tofile="submitted/instructions", lineterm=""))
    old_scopes = sorted({tool_scope(gateway, d) for d, _ in old_tools.values()})
    new_scopes = sorted({tool_scope(gateway, d) for d, _ in new_tools.values()})
    return {
        "format": DIFF_FORMAT, "server": gateway,
        "added": added, "removed": removed, "changed": changed, "unchanged": unchanged, "renamed": renamed,
        "instructions": instructions,
        "scopes": {"old": old_scopes, "new": new_scopes, "added": sorted(set(new_scopes) - set(old_scopes)),
                   "removed": sorted(set(old_scopes) - set(new_scopes))},
        "summary": {"added": len(added), "removed": len(removed), "changed": len(changed),
                    "unchanged": len(unchanged), "identical": not (added or removed or changed or instr_changed)},
    }


def _diff_line_class(line: str) -> str:
    if line.startswith(("+++", "---")):
        return "file"
    if line.startswith("@@"):
        return "hunk"
    if line.startswith("+"):
        return "ins"
    if line.startswith("-"):
        return "del"
    return "ctx"


def render_tool_diff_html(diff: Mapping[str, Any], *, standalone: bool = False, title: str | None = None) -> str:
    """The diff as an HTML partial (a ``<section>``), or with ``standalone`` as a whole page with its styles."""
    env = environment()
    context = {"diff": diff, "page_title": title or "Tool definitions: diff"}
    name = "tool_diff_page.html" if standalone else "tool_diff.html"
    return env.get_template(name).render(context)
