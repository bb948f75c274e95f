"""Annotation policy (review check 7): every tool has a title and says whether it only reads or may destroy.

Policy, per tool:

* a title — the ``title`` field or ``annotations.title`` (``annotations.missing-title``, low);
* ``readOnlyHint`` or ``destructiveHint`` given, as booleans (``annotations.missing-hints``, medium;
  ``annotations.invalid-hint``, medium, for a hint that is present but not ``true``/``false``);
* no contradiction: ``readOnlyHint: true`` with ``destructiveHint: true`` (``annotations.contradictory-hints``,
  high — the gateway would grant the tool with the *read* scope although it says it destroys);
* a read-only tool whose name starts with a writing verb (``delete_…``, ``send_…``, ``loesche_…``) is
  flagged for the reviewer (``annotations.read-only-name-mismatch``, medium).

The scope each tool needs follows from the annotations exactly as the gateway computes it
(:func:`kontor.gateway.scopes.tool_scope`): ``<server>:read`` for ``readOnlyHint: true``, otherwise
``<server>:write``. :func:`tool_policies` lists them, with the effect (read / write / destructive)
a reviewer and a tenant admin see. By MCP's defaults a tool that is not read-only and says nothing
about ``destructiveHint`` may be destructive; the effect says so.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from kontor.gateway.scopes import tool_scope

from .findings import Finding, Severity, make_span

__all__ = ["RULES", "WRITE_VERBS", "ToolPolicy", "check_annotations", "required_scopes", "tool_policies",
           "tool_policy"]

RULES: dict[str, tuple[Severity, str]] = {
    "annotations.missing-title": ("low", "the tool has no title (title or annotations.title)"),
    "annotations.missing-hints": ("medium", "the tool gives neither readOnlyHint nor destructiveHint"),
    "annotations.invalid-hint": ("medium", "a hint that is not a boolean"),
    "annotations.contradictory-hints": ("high", "readOnlyHint and destructiveHint both true"),
    "annotations.read-only-name-mismatch": ("medium", "a read-only tool whose name says it writes"),
}

HINTS = ("readOnlyHint", "destructiveHint", "idempotentHint", "openWorldHint")
# First words of tool names that announce a change of state (English and German, ASCII spellings too).
WRITE_VERBS = frozenset({
    "add", "append", "apply", "approve", "archive", "assign", "ban", "block", "cancel", "charge", "close",
    "commit", "create", "delete", "deploy", "destroy", "disable", "drop", "edit", "enable", "erase", "exec",
    "execute", "grant", "insert", "install", "invite", "kill", "merge", "modify", "move", "patch", "pay", "post",
    "publish", "purge", "push", "put", "remove", "rename", "replace", "reset", "restart", "revoke", "rm", "run",
    "save", "send", "set", "shutdown", "start", "stop", "submit", "terminate", "transfer", "truncate", "uninstall",
    "unlink", "update", "upload", "upsert", "wipe", "write",
    "aendere", "ändere", "anlegen", "entferne", "erstelle", "loesche", "lösche", "schreibe", "sende", "speichere",
    "storniere", "überweise", "ueberweise", "verschicke",
})

Effect = Literal["read", "write", "destructive"]


@dataclass(frozen=True)
class ToolPolicy:
    """What the annotations say about one tool, and the scope the gateway will require for it."""

    tool: str
    title: str | None
    read_only: bool | None
    destructive: bool | None
    idempotent: bool | None
    open_world: bool | None
    scope: str
    effect: Effect

    def to_dict(self) -> dict[str, Any]:
        return {"tool": self.tool, "title": self.title, "readOnlyHint": self.read_only,
                "destructiveHint": self.destructive, "idempotentHint": self.idempotent,
                "openWorldHint": self.open_world, "scope": self.scope, "effect": self.effect}


def _as_dict(tool: Any) -> dict[str, Any]:
    if isinstance(tool, Mapping):
        return dict(tool)
    if hasattr(tool, "model_dump"):
        return tool.model_dump(by_alias=True, mode="json", exclude_none=True)
    raise TypeError(f"expected a tool mapping or model, got {type(tool).__name__}")


def _annotations(tool: Mapping[str, Any]) -> Mapping[str, Any]:
    ann = tool.get("annotations")
    return ann if isinstance(ann, Mapping) else {}


def _bool(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


def _title(tool: Mapping[str, Any]) -> str | None:
    for value in (tool.get("title"), _annotations(tool).get("title")):
        if isinstance(value, str) and value.strip():
            return value
    return None


def tool_policy(server: str, tool: Any) -> ToolPolicy:
    """The :class:`ToolPolicy` of one tool of ``server`` (the gateway's short server name, e.g. ``lakehouse``)."""
    t = _as_dict(tool)
    ann = _annotations(t)
    read_only, destructive = _bool(ann.get("readOnlyHint")), _bool(ann.get("destructiveHint"))
    scope = tool_scope(server, {"annotations": dict(ann)})
    effect: Effect
    if read_only is True:
        effect = "read"
    elif destructive is False:
        effect = "write"
    else:
        effect = "destructive"  # MCP: destructiveHint defaults to true for tools that are not read-only
    return ToolPolicy(str(t.get("name", "")), _title(t), read_only, destructive, _bool(ann.get("idempotentHint")),
                      _bool(ann.get("openWorldHint")), scope, effect)


def tool_policies(server: str, tools: Iterable[Any]) -> list[ToolPolicy]:
    return [tool_policy(server, tool) for tool in tools]


def required_scopes(server: str, tools: Iterable[Any]) -> dict[str, str]:
    """Tool name → the one scope a call of it needs."""
    return {p.tool: p.scope for p in tool_policies(server, tools)}


def _first_word(name: str) -> str:
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name)
    return re.split(r"[_\-.\s/:]+", spaced.strip("_-. "), maxsplit=1)[0].casefold()


def _adder(findings: list[Finding], tool: str, scope: str) -> Any:
    def add(rule: str, field: str, message: str, span_text: str | None = None, **evidence: Any) -> None:
        span = make_span(span_text, 0, len(span_text)) if span_text else None
        findings.append(Finding(rule, RULES[rule][0], tool, field, span, message, {"scope": scope, **evidence}))

    return add


def check_annotations(server: str, tools: Iterable[Any]) -> list[Finding]:
    """Findings of the annotation policy for every tool (see the module docstring)."""
    findings: list[Finding] = []
    for tool in tools:
        t = _as_dict(tool)
        name = str(t.get("name", ""))
        ann = _annotations(t)
        policy = tool_policy(server, t)
        add = _adder(findings, name, policy.scope)
        if policy.title is None:
            add("annotations.missing-title", "title", "the tool has no title; give 'title' or 'annotations.title'")
        for hint in HINTS:
            if hint in ann and not isinstance(ann[hint], bool):
                add("annotations.invalid-hint", f"annotations.{hint}",
                    f"{hint} must be true or false, not {ann[hint]!r}", value=repr(ann[hint]))
        if policy.read_only is None and policy.destructive is None:
            add("annotations.missing-hints", "annotations",
                f"give readOnlyHint or destructiveHint; until then the tool needs {policy.scope} and counts "
                "as possibly destructive")
        if policy.read_only is True and policy.destructive is True:
            add("annotations.contradictory-hints", "annotations",
                f"readOnlyHint and destructiveHint are both true; the gateway would allow it with {policy.scope}")
        if policy.read_only is True and _first_word(name) in WRITE_VERBS:
            add("annotations.read-only-name-mismatch", "name",
                f"declared read-only, but its name starts with {_first_word(name)!r}", name,
                verb=_first_word(name))
    return findings
