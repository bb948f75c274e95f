"""The scope model: which scopes exist for a tenant, which a role may hold, which a call needs.

* ``<server>:read``  — call the tools of ``<server>`` annotated ``readOnlyHint: true``, and read its
  resources and prompts.
* ``<server>:write`` — call every other tool of ``<server>`` (anything that may change state).
  It does not imply ``:read``; a token that should do both asks for both.
* ``<server>:<name>`` — a *custom* scope: a tool that declares ``"io.kontor/scope": "<name>"`` in its
  definition's ``_meta`` needs exactly this scope instead of read or write (``<name>``: 1-63
  letters, digits and ``-``, not ``read`` or ``write``). An invalid declaration fails closed: the
  tool needs ``<server>:write``. The first-party lakehouse's ``interactions`` tools (record a
  question and answer, feedback, list and delete one's own records) use ``lakehouse:interactions``.
* ``tenant:admin``   — administer the tenant (users, installations, tool approvals).

Roles bound what a user can be granted: a ``member`` may hold the read and write scopes of every
server enabled for the tenant except where the installation restricts writing to admins
(installation config ``{"write_roles": ["admin"]}``); an ``admin`` may hold all of them plus
``tenant:admin``. A token carries the intersection of what the client asked for and what the
role allows.

Custom scopes follow the write rule: whoever may write to a server may hold its custom scopes, so
by default every member may (recording and deleting one's own interactions is a normal user
right), and an installation that restricts writing to admins restricts its custom scopes too (a
server cannot widen who may call a tool by moving it from ``write`` to a custom scope). Which
custom scopes an installation has is known before any discovery, because the authorization server
grants scopes without asking the servers: the installation config ``{"custom_scopes": [...]}``
when present (``[]`` switches them off, e.g. a tenant that does not want interactions recorded),
otherwise :data:`FIRST_PARTY_CUSTOM_SCOPES` for the first-party servers. A tool whose custom scope
the installation does not have stays hidden from everyone.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

ADMIN_SCOPE = "tenant:admin"
READ, WRITE = "read", "write"
#: the ``_meta`` key of a tool definition that names its custom scope
SCOPE_META = "io.kontor/scope"
#: installation config key: the custom scope names the installation offers (overrides the default)
CUSTOM_SCOPES_CONFIG = "custom_scopes"
#: custom scopes the first-party servers' tools declare (kept in step with the servers by a test)
FIRST_PARTY_CUSTOM_SCOPES: dict[str, tuple[str, ...]] = {"lakehouse": ("interactions",)}
_CUSTOM_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,62})")


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


def is_custom_name(name: Any) -> bool:
    """Whether ``name`` can be a custom scope name (letters, digits, ``-``; not ``read``/``write``)."""
    return isinstance(name, str) and _CUSTOM_NAME.fullmatch(name) is not None and name not in (READ, WRITE)


def _meta_of(tool: Mapping[str, Any] | Any) -> Any:
    if isinstance(tool, Mapping):
        return tool.get("_meta")
    return getattr(tool, "meta", None)


def declared_scope(tool: Mapping[str, Any] | Any) -> str | None:
    """The custom scope name ``tool`` declares in ``_meta`` (``""`` for an invalid declaration; None: none)."""
    meta = _meta_of(tool)
    if not isinstance(meta, Mapping) or SCOPE_META not in meta:
        return None
    name = meta[SCOPE_META]
    return name if is_custom_name(name) else ""


def tool_scope(server: str, tool: Mapping[str, Any] | Any) -> str:
    """The one scope a ``tools/call`` of ``tool`` on ``server`` needs.

    ``<server>:<name>`` when the tool declares a valid custom scope, ``<server>:write`` when its
    declaration is invalid (fail closed), otherwise read or write by its ``readOnlyHint``.
    """
    declared = declared_scope(tool)
    if declared:
        return f"{server}:{declared}"
    if declared == "":
        return write_scope(server)
    return read_scope(server) if is_read_only(tool) else write_scope(server)


def custom_scopes(server: str, config: Mapping[str, Any] | None = None) -> list[str]:
    """The custom scopes (``<server>:<name>``) an installation of ``server`` with ``config`` offers."""
    configured = config.get(CUSTOM_SCOPES_CONFIG) if isinstance(config, Mapping) else None
    names = configured if isinstance(configured, list | tuple) else FIRST_PARTY_CUSTOM_SCOPES.get(server, ())
    return sorted({f"{server}:{name}" for name in names if is_custom_name(name)})


def supported_scopes(servers: Iterable[str | tuple[str, Mapping[str, Any]]]) -> list[str]:
    """Every scope that exists for a tenant with these enabled servers (names, or ``(server, config)``), sorted."""
    out = {ADMIN_SCOPE}
    for item in servers:
        server, config = (item, None) if isinstance(item, str) else item
        out.update((read_scope(server), write_scope(server), *custom_scopes(server, config)))
    return sorted(out)


def role_scopes(role: str, installations: Iterable[tuple[str, Mapping[str, Any]]]) -> set[str]:
    """Scopes ``role`` may hold, given ``(server, installation config)`` of the enabled servers."""
    allowed: set[str] = set()
    for server, config in installations:
        allowed.add(read_scope(server))
        write_roles = config.get("write_roles") if isinstance(config, Mapping) else None
        if role == "admin" or not write_roles or role in write_roles:
            allowed.add(write_scope(server))
            allowed.update(custom_scopes(server, config))
    if role == "admin":
        allowed.add(ADMIN_SCOPE)
    return allowed


def grant(requested: Iterable[str] | None, allowed: set[str]) -> list[str]:
    """Scopes to put into a token: what was asked for (everything allowed when nothing was) ∩ allowed."""
    wanted = set(requested) if requested else set(allowed)
    return sorted(wanted & allowed)
