"""Namespacing of upstream tool (and prompt/resource-template) names: ``<server>__<tool>``.

The gateway aggregates many servers behind one endpoint, so every upstream name gets its
server's name as a prefix. The rules, and why:

* **Separator ``__``.** Server names may not contain an underscore at all (``^[a-z][a-z0-9-]{0,23}$``),
  so the first ``__`` in a namespaced name always ends the server part: :func:`split` is
  unambiguous even when the tool name itself contains ``__``.
* **At most 48 characters, ``^[A-Za-z0-9_-]{1,48}$``.** Many MCP clients (Claude Desktop, Claude
  Code, the OpenAI and Anthropic tool-use APIs behind agent hosts) accept tool names of at most
  64 characters from that character set, and most of them add their own prefix for the
  connector, e.g. ``mcp__kontor__`` (13 characters). A budget of 48 leaves 16 characters for
  such a prefix, so a name we serve still fits after the client has prefixed it.
* **Never silently shortened or rewritten.** A name that does not fit (too long, or with
  characters outside the set such as ``.`` or ``/``, which MCP itself allows) is refused with an
  error naming the tool; truncating could make two tools collide or make a tool look like
  another one.
* **Collisions are refused**, never resolved: :func:`check_collisions` reports every clash,
  including names that differ only in letter case (clients and models do not reliably keep
  case apart, so a case variant is a shadowing vector).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = [
    "MAX_NAME_LENGTH",
    "SEPARATOR",
    "NameCollision",
    "NamingError",
    "check_collisions",
    "namespace_tools",
    "namespaced",
    "split",
    "validate_server_name",
]

SEPARATOR = "__"
MAX_NAME_LENGTH = 48  # 64 (common client limit) - 16 for a client's own prefix such as "mcp__kontor__"
_SERVER = re.compile(r"[a-z][a-z0-9-]{0,23}")  # used with fullmatch: "$" would accept a trailing "\n"
_NAME = re.compile(rf"[A-Za-z0-9_-]{{1,{MAX_NAME_LENGTH}}}")
NAME_PATTERN = _NAME  # public: the shape every served name has


class NamingError(ValueError):
    """A server or tool name that cannot be served (invalid characters, too long, malformed)."""


class NameCollision(NamingError):
    """Enabling a server would make two served names clash; ``collisions`` lists every clash."""

    def __init__(self, collisions: list[str]) -> None:
        self.collisions = collisions
        super().__init__("name collision: " + "; ".join(collisions))


def validate_server_name(server: str) -> str:
    """Return ``server`` if it is a valid server name: ``^[a-z][a-z0-9-]{0,23}$`` and no ``__``."""
    if not isinstance(server, str) or SEPARATOR in server or not _SERVER.fullmatch(server):
        raise NamingError(
            f"invalid server name {server!r}: use 1-24 lowercase letters, digits and hyphens, starting with a letter"
        )
    return server


def namespaced(server: str, tool: str) -> str:
    """``f"{server}__{tool}"``, refused with :class:`NamingError` if the result breaks the rules above."""
    validate_server_name(server)
    if not isinstance(tool, str) or not tool:
        raise NamingError(f"server {server!r} offers a tool with an empty or non-string name: {tool!r}")
    name = f"{server}{SEPARATOR}{tool}"
    if len(name) > MAX_NAME_LENGTH:
        raise NamingError(
            f"tool {tool!r} of server {server!r}: namespaced name {name!r} has {len(name)} characters, "
            f"more than the {MAX_NAME_LENGTH} allowed (clients add their own prefix within a 64-character limit)"
        )
    if not _NAME.fullmatch(name):
        raise NamingError(
            f"tool {tool!r} of server {server!r}: namespaced name {name!r} may only contain "
            "letters A-Z a-z, digits, '_' and '-'"
        )
    return name


def split(name: str) -> tuple[str, str]:
    """Inverse of :func:`namespaced`: ``"lakehouse__search"`` → ``("lakehouse", "search")``."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise NamingError(f"{name!r} is not a namespaced tool name")
    server, sep, tool = name.partition(SEPARATOR)
    if not sep or not tool:
        raise NamingError(f"{name!r} is not a namespaced tool name (expected '<server>__<tool>')")
    validate_server_name(server)
    return server, tool


def _tool_name(tool: Any) -> str:
    if isinstance(tool, str):
        return tool
    if isinstance(tool, Mapping):
        return tool.get("name")  # type: ignore[return-value]
    return getattr(tool, "name", None)  # type: ignore[return-value]


def namespace_tools(server: str, tools: Iterable[Any]) -> dict[str, str]:
    """Map each namespaced name to its upstream tool name; all invalid names are reported at once.

    ``tools`` holds tool names, tool dicts (``{"name": ...}``) or objects with a ``name``.
    Raises :class:`NamingError` listing every tool that cannot be served.
    """
    validate_server_name(server)
    result: dict[str, str] = {}
    problems: list[str] = []
    for tool in tools:
        try:
            result[namespaced(server, _tool_name(tool))] = _tool_name(tool)
        except NamingError as exc:
            problems.append(str(exc))
    if problems:
        raise NamingError("; ".join(problems))
    return result


def check_collisions(existing: Mapping[str, Any], new_server: str, tools: Iterable[Any]) -> list[str]:
    """Every clash between the names ``new_server`` would add and the names already served.

    ``existing`` maps each served name to its owner (a server name, an installation, ...;
    used only in the messages). A clash is an exact match, a match ignoring letter case, or a
    duplicate (also ignoring case) within ``tools``. Names that cannot be served at all raise
    :class:`NamingError` (see :func:`namespace_tools`). Returns one message per clash, each
    naming the new name and the one it clashes with; an empty list means no collision.
    """
    validate_server_name(new_server)
    names = [_tool_name(t) for t in tools]
    namespace_tools(new_server, names)  # raises for every unservable name
    folded: dict[str, list[str]] = {}
    for name in existing:
        folded.setdefault(name.casefold(), []).append(name)
    collisions: list[str] = []
    seen: dict[str, str] = {}
    for tool in names:
        name = namespaced(new_server, tool)
        key = name.casefold()
        if key in seen:
            collisions.append(f"{name!r} duplicates {seen[key]!r} within server {new_server!r}")
            continue
        seen[key] = name
        for other in folded.get(key, []):
            how = "collides with" if other == name else "differs only in letter case from"
            collisions.append(f"{name!r} {how} {other!r} (served by {existing[other]})")
    return collisions
