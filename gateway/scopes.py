"""The scope model: which scopes exist for a tenant, which a role may hold, which a call needs.

* ``<server>:read``  — call the tools of ``<server>`` annotated ``readOnlyHint: true``, and read its
  resources and prompts.
* ``<server>:write`` — call every other tool of ``<server>`` (anything that may change state).
  It does not imply ``:read``; a token that should do both asks for both.
* ``tenant:admin``   — administer the tenant (users, installations, tool approvals).

Roles bound what a user can be granted: a ``member`` may hold the read and write scopes of every
server enabled for the tenant except where the installation restricts writing to admins
(installation config ``{"write_roles": ["admin"]}``); an ``admin`` may hold all of them plus
``tenant:admin``. A token carries the intersection of what the client asked for and what the
role allows.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

ADMIN_SCOPE = "tenant:admin"
READ, WRITE = "read", "write"


def read_scope(server: str) -> str:
    return f"{server}:{READ}"


def write_scope(server: str) -> str:
    return f"{server}:{WRITE}"


def is_read_only(tool: Mapping[str, Any] | Any) -> bool:
    """True when the tool's annotations say ``readOnlyHint: true`` (absent means false, as in MCP)."""
    annotations = tool.get("annotations") if isinstance(tool, Mapping) else getattr(tool, "annotations", None)
    if annotations is None:
        return False
    if isinstance(annotations, Mapping):
        value = annotations.get("readOnlyHint", annotations.get("read_only_hint"))
    else:
        value = getattr(annotations, "read_only_hint", None)
    return value is True


def tool_scope(server: str, tool: Mapping[str, Any] | Any) -> str:
    """The one scope a ``tools/call`` of ``tool`` on ``server`` needs."""
    return read_scope(server) if is_read_only(tool) else write_scope(server)


def supported_scopes(servers: Iterable[str]) -> list[str]:
    """Every scope that exists for a tenant with these enabled servers, sorted."""
    out = {ADMIN_SCOPE}
    for server in servers:
        out.update((read_scope(server), write_scope(server)))
    return sorted(out)


def role_scopes(role: str, installations: Iterable[tuple[str, Mapping[str, Any]]]) -> set[str]:
    """Scopes ``role`` may hold, given ``(server, installation config)`` of the enabled servers."""
    allowed: set[str] = set()
    for server, config in installations:
        allowed.add(read_scope(server))
        write_roles = config.get("write_roles") if isinstance(config, Mapping) else None
        if role == "admin" or not write_roles or role in write_roles:
            allowed.add(write_scope(server))
    if role == "admin":
        allowed.add(ADMIN_SCOPE)
    return allowed


def grant(requested: Iterable[str] | None, allowed: set[str]) -> list[str]:
    """Scopes to put into a token: what was asked for (everything allowed when nothing was) ∩ allowed."""
    wanted = set(requested) if requested else set(allowed)
    return sorted(wanted & allowed)
