"""Tool approval: which tool calls need the user's consent, and what the user and admin decided.

The rules, in order:

1. A tenant admin's rule for the tool wins: ``blocked`` (never runs; the model is told so) or
   ``always_ask`` (the user is asked every time, even for a read-only tool, and an "always
   allow" answer counts only for that call).
2. A user's remembered "always allow this tool" lets it run without asking.
3. A read-only tool (``readOnlyHint: true`` and not ``destructiveHint: true``) runs.
4. Every other tool (no ``readOnlyHint``, or ``destructiveHint: true``) needs approval.

Admin rules are keyed by public tool name (``ingest__ingest_upload``) or by a whole server
(``ingest__*``); the exact name wins. Decisions are stored through :class:`ApprovalStore`, an
interface the web layer backs with its database; :class:`InMemoryApprovalStore` serves tests and
the embedded default until then.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Literal, Protocol, TypeAlias, runtime_checkable

from kontor.host.mcp_session import ToolInfo

__all__ = [
    "AdminRule",
    "ApprovalDecision",
    "ApprovalPolicy",
    "ApprovalStore",
    "InMemoryApprovalStore",
    "Verdict",
]

#: The user's answer to an approval request.
ApprovalDecision: TypeAlias = Literal["allow_once", "always", "deny"]
#: A tenant admin's setting for a tool (``None``/absent: the default rules).
AdminRule: TypeAlias = Literal["always_ask", "blocked"]


@runtime_checkable
class ApprovalStore(Protocol):
    """Where approval decisions persist. All methods are async (the web layer uses SQLAlchemy)."""

    async def get_user_decision(self, tenant: str, user: str, tool: str) -> Literal["always"] | None:
        """The user's remembered decision for this tool (only "always" is remembered)."""
        ...

    async def set_user_decision(self, tenant: str, user: str, tool: str, decision: Literal["always"] | None) -> None:
        """Remember "always" for this tool, or forget it (``None``)."""
        ...

    async def list_user_decisions(self, tenant: str, user: str) -> dict[str, Literal["always"]]:
        """Every remembered decision of the user (the settings panel lists and revokes them)."""
        ...

    async def get_admin_rule(self, tenant: str, key: str) -> AdminRule | None:
        """The admin's rule for a tool name or a ``<server>__*`` key."""
        ...

    async def set_admin_rule(self, tenant: str, key: str, rule: AdminRule | None) -> None:
        """Set (or with ``None`` clear) the admin's rule for a tool name or ``<server>__*``."""
        ...

    async def list_admin_rules(self, tenant: str) -> dict[str, AdminRule]:
        ...


class InMemoryApprovalStore:
    """:class:`ApprovalStore` in a dict (per process; lost on restart)."""

    def __init__(self) -> None:
        self._user: dict[tuple[str, str, str], Literal["always"]] = {}
        self._admin: dict[tuple[str, str], AdminRule] = {}
        self._lock = asyncio.Lock()

    async def get_user_decision(self, tenant: str, user: str, tool: str) -> Literal["always"] | None:
        return self._user.get((tenant, user, tool))

    async def set_user_decision(self, tenant: str, user: str, tool: str, decision: Literal["always"] | None) -> None:
        if decision not in (None, "always"):
            raise ValueError(f"only 'always' is remembered, not {decision!r}")
        async with self._lock:
            if decision is None:
                self._user.pop((tenant, user, tool), None)
            else:
                self._user[(tenant, user, tool)] = decision

    async def list_user_decisions(self, tenant: str, user: str) -> dict[str, Literal["always"]]:
        return {tool: d for (t, u, tool), d in self._user.items() if t == tenant and u == user}

    async def get_admin_rule(self, tenant: str, key: str) -> AdminRule | None:
        return self._admin.get((tenant, key))

    async def set_admin_rule(self, tenant: str, key: str, rule: AdminRule | None) -> None:
        if rule not in (None, "always_ask", "blocked"):
            raise ValueError(f"unknown admin rule {rule!r} (always_ask, blocked or None)")
        async with self._lock:
            if rule is None:
                self._admin.pop((tenant, key), None)
            else:
                self._admin[(tenant, key)] = rule

    async def list_admin_rules(self, tenant: str) -> dict[str, AdminRule]:
        return {key: rule for (t, key), rule in self._admin.items() if t == tenant}


@dataclass(frozen=True)
class Verdict:
    """What to do with one call: ``allow`` (run it), ``ask`` (the user decides) or ``blocked``.

    ``reason`` says why, in words for the user; ``remember`` is false when an "always" answer
    must not be stored (the admin set the tool to always-ask).
    """

    action: Literal["allow", "ask", "blocked"]
    reason: str
    remember: bool = True


class ApprovalPolicy:
    """The approval rules for one user of one tenant, over an :class:`ApprovalStore`."""

    def __init__(self, store: ApprovalStore, tenant: str, user: str) -> None:
        self.store = store
        self.tenant = tenant
        self.user = user

    async def admin_rule(self, tool: str) -> AdminRule | None:
        rule = await self.store.get_admin_rule(self.tenant, tool)
        if rule is None:
            server, sep, _ = tool.partition("__")
            if sep:
                rule = await self.store.get_admin_rule(self.tenant, f"{server}__*")
        return rule

    async def blocked(self, tools: list[str]) -> set[str]:
        """Which of ``tools`` the admin blocked (one store query for the whole tool list)."""
        rules = await self.store.list_admin_rules(self.tenant)

        def rule(name: str) -> AdminRule | None:
            server, sep, _ = name.partition("__")
            return rules.get(name) or (rules.get(f"{server}__*") if sep else None)

        return {name for name in tools if rule(name) == "blocked"}

    async def check(self, tool: ToolInfo) -> Verdict:
        rule = await self.admin_rule(tool.name)
        if rule == "blocked":
            return Verdict("blocked", f"your administrator has blocked the tool {tool.name}")
        if rule == "always_ask":
            return Verdict("ask", f"your administrator requires approval for every call of {tool.name}",
                           remember=False)
        if await self.store.get_user_decision(self.tenant, self.user, tool.name) == "always":
            return Verdict("allow", "you chose to always allow this tool")
        if tool.read_only:
            return Verdict("allow", "the tool only reads")
        if tool.destructive_hint is True:
            return Verdict("ask", f"{tool.name} may change or delete data")
        return Verdict("ask", f"{tool.name} may change data")

    async def record(self, tool: ToolInfo, decision: ApprovalDecision, verdict: Verdict | None = None) -> None:
        """Remember the user's answer where it is to be remembered ("always", unless the admin forbids)."""
        if decision == "always" and (verdict is None or verdict.remember):
            await self.store.set_user_decision(self.tenant, self.user, tool.name, "always")

    async def forget(self, tool: str) -> None:
        await self.store.set_user_decision(self.tenant, self.user, tool, None)

    async def remembered(self) -> dict[str, Literal["always"]]:
        return await self.store.list_user_decisions(self.tenant, self.user)
