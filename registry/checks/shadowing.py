"""Shadowing and typosquatting (review check 6): names that collide with, or look like, names already in use.

A submitted server's tool names are compared with the first-party tools (bare, ``search``, and as the
gateway serves them, ``lakehouse__search``) and with the tools of other catalog entries; its
``server.json`` name is compared with the first-party servers and the other catalog entries. Each
comparison is classified by the first of these that holds:

============  ===================================================================================
kind          the two names are equal …
============  ===================================================================================
exact         as they are
case          after Unicode case folding (``Search`` / ``search``)
separator     after case folding and removing ``_ - . / :`` and spaces (``get-document`` / ``get_document``)
homoglyph     after folding look-alike characters to ASCII (``sеarch`` with Cyrillic е, ``fu11`` → ``full``;
              see :func:`kontor.registry.checks.text.skeleton`)
edit          within a small edit distance of the folded forms (Damerau-Levenshtein via ``rapidfuzz``):
              1 for names of 5-9 characters, 2 for 10 or more; shorter names only match exactly
============  ===================================================================================

The severity depends on the kind and on what was matched (:data:`SEVERITY`): a look-alike of a
first-party tool is high, a homoglyph is always critical (no one types a Cyrillic letter into a
tool name by accident), a near miss of a common catalog name is low. Catalog entries in the
submitter's own namespace (the same publisher, including earlier versions of the same server) are
not compared with the server name, and a catalog entry's tools are skipped when it is the
submitted server itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from rapidfuzz.distance import DamerauLevenshtein

from .findings import Finding, Severity, make_span
from .text import latin_lookalike, skeleton

__all__ = ["RULES", "SEVERITY", "Match", "check_shadowing", "classify", "edit_threshold"]

Kind = Literal["exact", "case", "separator", "homoglyph", "edit"]
Target = Literal["first_party_tool", "catalog_tool", "first_party_server", "catalog_server", "own_tool"]

# (what was matched, kind) → (rule id, severity)
SEVERITY: dict[tuple[Target, Kind], tuple[str, Severity]] = {
    ("first_party_tool", "exact"): ("shadowing.first-party-tool", "high"),
    ("first_party_tool", "case"): ("shadowing.first-party-tool", "high"),
    ("first_party_tool", "separator"): ("shadowing.first-party-tool", "high"),
    ("first_party_tool", "homoglyph"): ("shadowing.homoglyph", "critical"),
    ("first_party_tool", "edit"): ("shadowing.first-party-tool-near", "medium"),
    ("catalog_tool", "exact"): ("shadowing.catalog-tool", "low"),
    ("catalog_tool", "case"): ("shadowing.catalog-tool-lookalike", "medium"),
    ("catalog_tool", "separator"): ("shadowing.catalog-tool-lookalike", "medium"),
    ("catalog_tool", "homoglyph"): ("shadowing.homoglyph", "critical"),
    ("catalog_tool", "edit"): ("shadowing.catalog-tool-near", "low"),
    ("first_party_server", "exact"): ("shadowing.first-party-server", "high"),
    ("first_party_server", "case"): ("shadowing.first-party-server", "high"),
    ("first_party_server", "separator"): ("shadowing.first-party-server", "high"),
    ("first_party_server", "homoglyph"): ("shadowing.homoglyph", "critical"),
    ("first_party_server", "edit"): ("shadowing.first-party-server-near", "medium"),
    ("catalog_server", "case"): ("shadowing.catalog-server-lookalike", "high"),
    ("catalog_server", "separator"): ("shadowing.catalog-server-lookalike", "high"),
    ("catalog_server", "homoglyph"): ("shadowing.homoglyph", "critical"),
    ("catalog_server", "edit"): ("shadowing.catalog-server-near", "high"),
    ("own_tool", "case"): ("shadowing.self-collision", "medium"),
    ("own_tool", "separator"): ("shadowing.self-collision", "medium"),
    ("own_tool", "homoglyph"): ("shadowing.homoglyph", "critical"),
}

RULES: dict[str, tuple[Severity, str]] = {
    "shadowing.first-party-tool": ("high", "a tool named like a first-party tool (exact, case or separators)"),
    "shadowing.first-party-tool-near": ("medium", "a tool name within edit distance of a first-party tool"),
    "shadowing.catalog-tool": ("low", "a tool with the same name as a tool of another catalog entry"),
    "shadowing.catalog-tool-lookalike": ("medium", "a tool named like another catalog tool up to case/separators"),
    "shadowing.catalog-tool-near": ("low", "a tool name within edit distance of another catalog tool"),
    "shadowing.first-party-server": ("high", "a server whose name part is a first-party server's name"),
    "shadowing.first-party-server-near": ("medium", "a server name within edit distance of a first-party server"),
    "shadowing.catalog-server-lookalike": ("high", "a server named like another catalog entry up to case/separators"),
    "shadowing.catalog-server-near": ("high", "a server name within edit distance of another catalog entry"),
    "shadowing.catalog-server-same-name": ("low", "the same name part as a catalog entry in another namespace"),
    "shadowing.self-collision": ("medium", "two tools of the submission that differ only in case or separators"),
    "shadowing.homoglyph": ("critical", "a name that equals another one after folding look-alike characters"),
    "shadowing.confusable-characters": ("medium", "a name with characters that look like ASCII letters"),
}


@dataclass(frozen=True)
class Match:
    """How ``name`` relates to ``reference``: the kind and, for ``edit``, the distance of the folded forms."""

    kind: Kind
    distance: int = 0


def edit_threshold(length: int) -> int:
    """The largest edit distance that still counts as a near miss for a folded name of ``length`` characters."""
    if length >= 10:
        return 2
    if length >= 5:
        return 1
    return 0


def _sep_fold(name: str) -> str:
    return name.casefold().translate(_SEPARATORS)


_SEPARATORS = str.maketrans("", "", "_-./: ")


@dataclass(frozen=True)
class _Ref:
    name: str
    owner: str | None
    casefolded: str
    sepfolded: str
    skeleton: str

    @classmethod
    def of(cls, name: str, owner: str | None = None) -> _Ref:
        return cls(name, owner, name.casefold(), _sep_fold(name), skeleton(name))


def _compare(a: _Ref, b: _Ref) -> Match | None:
    if a.name == b.name:
        return Match("exact")
    if a.casefolded == b.casefolded:
        return Match("case")
    if a.sepfolded == b.sepfolded:
        return Match("separator")
    if not a.skeleton or not b.skeleton:
        return None
    if a.skeleton == b.skeleton:
        return Match("homoglyph")
    limit = edit_threshold(min(len(a.skeleton), len(b.skeleton)))
    if limit and abs(len(a.skeleton) - len(b.skeleton)) <= limit:
        distance = DamerauLevenshtein.distance(a.skeleton, b.skeleton, score_cutoff=limit)
        if distance <= limit:
            return Match("edit", distance)
    return None


def classify(name: str, reference: str) -> Match | None:
    """The closest :class:`Match` kind between two names, or None when they are not alike."""
    return _compare(_Ref.of(name), _Ref.of(reference))


def _tool_name(tool: Any) -> str | None:
    if isinstance(tool, str):
        return tool
    if isinstance(tool, Mapping):
        name = tool.get("name")
    else:
        name = getattr(tool, "name", None)
    return name if isinstance(name, str) else None


def _finding(target: Target, match: Match, *, tool: str | None, field: str, name: str, reference: str,
             owner: str | None) -> Finding | None:
    entry = SEVERITY.get((target, match.kind))
    if entry is None:
        return None
    rule, severity = entry
    what = {
        "first_party_tool": "the first-party tool",
        "catalog_tool": "the catalog tool",
        "first_party_server": "the first-party server",
        "catalog_server": "the catalog entry",
        "own_tool": "the submission's own tool",
    }[target]
    owner_text = f" of {owner}" if owner and target.endswith("tool") else ""
    how = {
        "exact": "is the same name as",
        "case": "differs only in letter case from",
        "separator": "differs only in case or separators from",
        "homoglyph": "looks the same as (look-alike characters)",
        "edit": f"is {match.distance} edit(s) away from",
    }[match.kind]
    evidence: dict[str, Any] = {"kind": match.kind, "target": target, "match": reference,
                                "skeleton": skeleton(name), "match_skeleton": skeleton(reference)}
    if owner:
        evidence["owner"] = owner
    if match.kind == "edit":
        evidence["distance"] = match.distance
    return Finding(rule, severity, tool, field, make_span(name, 0, len(name)),
                   f"{name!r} {how} {what} {reference!r}{owner_text}", evidence)


_ORDER = {"exact": 0, "case": 1, "separator": 2, "homoglyph": 3, "edit": 4}


def _best(name: str, references: Iterable[_Ref]) -> list[tuple[Match, str, str | None]]:
    me = _Ref.of(name)
    out: list[tuple[Match, str, str | None]] = []
    for ref in references:
        match = _compare(me, ref)
        if match is not None:
            out.append((match, ref.name, ref.owner))
    out.sort(key=lambda item: (_ORDER[item[0].kind], item[0].distance, item[1]))
    return out


def _confusable(name: str) -> list[str]:
    return [c for c in dict.fromkeys(name) if not c.isascii() and latin_lookalike(c)]


def check_shadowing(*, tools: Iterable[Any] = (), server_name: str | None = None,
                    first_party_tools: Mapping[str, Iterable[str]] | None = None,
                    catalog_tools: Mapping[str, Iterable[str]] | None = None,
                    catalog_servers: Iterable[str] = (),
                    first_party_servers: Iterable[str] | None = None,
                    qualify_separator: str = "__") -> list[Finding]:
    """Shadowing findings for a submission.

    ``tools``: the submission's tools (names, MCP tool dicts or ``mcp.types.Tool``); ``server_name``: its
    ``server.json`` name. ``first_party_tools``: first-party server name → its tool names (each tool is
    also compared as the gateway serves it, ``<server>__<tool>``); ``catalog_tools``: other catalog entry
    (``server.json`` name) → its tool names; ``catalog_servers``: further catalog entry names;
    ``first_party_servers``: first-party server names, default the keys of ``first_party_tools``.
    For each name only the closest match per target class is reported (the most severe kind first).
    """
    first_party_tools = first_party_tools or {}
    catalog_tools = catalog_tools or {}
    fp_servers = list(first_party_servers if first_party_servers is not None else first_party_tools)
    fp_refs = [_Ref.of(tool, server) for server, names in first_party_tools.items() for tool in names]
    fp_refs += [_Ref.of(f"{server}{qualify_separator}{tool}", server) for server, names in first_party_tools.items()
                for tool in names]
    cat_refs = [_Ref.of(tool, server) for server, names in catalog_tools.items() if server != server_name
                for tool in names]
    findings: list[Finding] = []
    names = [n for n in (_tool_name(t) for t in tools) if n]

    for name in names:
        for target, refs in (("first_party_tool", fp_refs), ("catalog_tool", cat_refs)):
            matches = _best(name, refs)
            if matches:
                match, reference, owner = matches[0]
                f = _finding(target, match, tool=name, field="name", name=name, reference=reference,  # type: ignore[arg-type]
                             owner=owner)
                if f:
                    findings.append(f)
        findings.extend(_confusable_finding(name, tool=name, field="name"))
    for i, name in enumerate(names):
        for other in names[i + 1:]:
            match = classify(name, other)
            if match is not None and match.kind in ("case", "separator", "homoglyph"):
                f = _finding("own_tool", match, tool=name, field="name", name=name, reference=other, owner=None)
                if f:
                    findings.append(f)

    if server_name:
        findings.extend(_server_findings(server_name, fp_servers, catalog_servers, catalog_tools))
    return findings


def _confusable_finding(name: str, *, tool: str | None, field: str) -> list[Finding]:
    chars = _confusable(name)
    if not chars:
        return []
    return [Finding("shadowing.confusable-characters", "medium", tool, field, make_span(name, 0, len(name)),
                    f"{name!r} contains characters that look like ASCII letters: "
                    + ", ".join(f"U+{ord(c):04X} looks like {latin_lookalike(c)!r}" for c in chars),
                    {"characters": [f"U+{ord(c):04X}" for c in chars]})]


def _server_findings(server_name: str, fp_servers: list[str], catalog_servers: Iterable[str],
                     catalog_tools: Mapping[str, Iterable[str]]) -> list[Finding]:
    findings: list[Finding] = []
    part = server_name.rsplit("/", 1)[-1]
    fp_matches = _best(part, [_Ref.of(s) for s in fp_servers])
    if fp_matches:
        match, reference, _ = fp_matches[0]
        f = _finding("first_party_server", match, tool=None, field="server.name", name=server_name,
                     reference=reference, owner=None)
        if f:
            findings.append(f)
    namespace = server_name.split("/", 1)[0].casefold()
    # Entries in the submitter's own namespace belong to the same publisher: never a typosquat of itself.
    others = [s for s in dict.fromkeys([*catalog_servers, *catalog_tools])
              if s != server_name and s.split("/", 1)[0].casefold() != namespace]
    cat_matches = [m for m in _best(server_name, [_Ref.of(s) for s in others]) if m[0].kind != "exact"]
    if cat_matches:
        match, reference, _ = cat_matches[0]
        f = _finding("catalog_server", match, tool=None, field="server.name", name=server_name,
                     reference=reference, owner=None)
        if f:
            findings.append(f)
    elif part:
        same = [s for s in others if s.rsplit("/", 1)[-1].casefold() == part.casefold()]
        if same:
            findings.append(Finding(
                "shadowing.catalog-server-same-name", "low", None, "server.name",
                make_span(server_name, 0, len(server_name)),
                f"{server_name!r} has the same name part as {', '.join(repr(s) for s in same[:5])}",
                {"matches": same[:20]}))
    findings.extend(_confusable_finding(server_name, tool=None, field="server.name"))
    return findings
