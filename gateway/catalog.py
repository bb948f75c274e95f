"""What a tenant's endpoint offers: the tools, prompts, resources and templates of its servers.

Discovery asks every enabled server of a tenant in parallel, each under its own timeout, so a
slow or dead server only loses its own entries (the reason is logged and kept in
``Catalog.errors``). Tool definitions are checked against their pins
(:meth:`GatewayDB.check_tools`); a server's tools are pinned as they are at its first discovery
after being enabled. Names are namespaced (``<server>__<tool>``) and sorted, so ``tools/list``
is deterministic and can be paged with a keyset cursor.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kontor.gateway import naming
from kontor.gateway.db import GatewayDB, Installation
from kontor.gateway.pinning import canonical_json
from kontor.gateway.scopes import read_scope, tool_scope
from kontor.gateway.upstream import UpstreamError, UpstreamSession, UpstreamUnavailable

log = logging.getLogger(__name__)

MAX_LIST_PAGES = 50  # upstream pages followed per list, so a looping cursor cannot hang discovery


@dataclass(frozen=True)
class ToolEntry:
    name: str  # public (namespaced)
    server: str
    upstream_name: str
    scope: str
    definition: dict[str, Any]  # as served to clients (public name)
    timeout_s: float | None = None


@dataclass(frozen=True)
class PromptEntry:
    name: str
    server: str
    upstream_name: str
    definition: dict[str, Any]


@dataclass
class Catalog:
    tenant: str
    tools: dict[str, ToolEntry] = field(default_factory=dict)
    prompts: dict[str, PromptEntry] = field(default_factory=dict)
    resources: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)  # uri -> (server, def)
    templates: list[tuple[str, re.Pattern[str], dict[str, Any]]] = field(default_factory=list)
    servers: dict[str, Installation] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    withheld: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    fetched_at: float = field(default_factory=time.monotonic)

    def visible_tools(self, scopes: frozenset[str]) -> list[ToolEntry]:
        return [t for t in self.tools.values() if t.scope in scopes]

    def resource_server(self, uri: str) -> str | None:
        hit = self.resources.get(uri)
        if hit is not None:
            return hit[0]
        for server, pattern, _ in self.templates:
            if pattern.fullmatch(uri):
                return server
        return None


def public_name(installation: Installation, name: str) -> str:
    """``<server>__<name>``, or ``name`` itself for an installation configured ``{"prefix": false}``.

    An unprefixed server (e.g. one a tenant wants to appear exactly as it does standalone) may not
    offer names containing ``__``: every prefixed name contains it, so unprefixed names can never
    shadow a prefixed one; clashes between unprefixed servers are refused at discovery.
    """
    if installation.config.get("prefix", True) is not False:
        return naming.namespaced(installation.server, name)
    if naming.SEPARATOR in name or not naming.NAME_PATTERN.fullmatch(name):
        raise naming.NamingError(f"unprefixed server {installation.server!r} offers {name!r}: names of unprefixed "
                                 f"servers may not contain '__' and must match {naming.NAME_PATTERN.pattern}")
    return name


def template_pattern(template: str) -> re.Pattern[str]:
    """A regex for an RFC 6570 URI template: ``{x}`` matches one path segment, ``{+x}``/``{/x*}`` more."""
    out, pos = [], 0
    for match in re.finditer(r"\{([+#./;?&]?)([^}]*)\}", template):
        out.append(re.escape(template[pos:match.start()]))
        operator = match.group(1)
        out.append(".*" if operator in ("+", "#", "/") or match.group(2).endswith("*") else "[^/?#]*"
                   if operator in ("", ".", ";") else ".*")
        pos = match.end()
    out.append(re.escape(template[pos:]))
    return re.compile("".join(out))


def encode_cursor(after: str) -> str:
    return base64.urlsafe_b64encode(json.dumps({"after": after}).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    """The name after which a page starts; ValueError for a cursor we did not issue."""
    if not isinstance(cursor, str) or len(cursor) > 512:
        raise ValueError("invalid cursor")
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise ValueError("invalid cursor") from None
    if not isinstance(data, dict) or not isinstance(data.get("after"), str):
        raise ValueError("invalid cursor")
    return data["after"]


def page(items: list[Any], name_of: Callable[[Any], str], cursor: str | None,
         size: int) -> tuple[list[Any], str | None]:
    """One page of ``items`` (sorted by name) after ``cursor``, and the next cursor if there is more."""
    start = 0
    if cursor:
        after = decode_cursor(cursor)
        start = next((i for i, item in enumerate(items) if name_of(item) > after), len(items))
    chunk = items[start:start + size]
    more = start + size < len(items)
    return chunk, (encode_cursor(name_of(chunk[-1])) if more and chunk else None)


async def list_all(session: UpstreamSession, method: str, key: str, timeout_s: float) -> list[dict[str, Any]]:
    """Every item of a paginated upstream list."""
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    for _ in range(MAX_LIST_PAGES):
        result = await session.request(method, {"cursor": cursor} if cursor else None, timeout_s=timeout_s)
        items.extend(i for i in result.get(key) or [] if isinstance(i, dict))
        cursor = result.get("nextCursor")
        if not cursor:
            break
    return items


SessionFor = Callable[[Installation], Awaitable[UpstreamSession]]


class CatalogBuilder:
    """Builds and caches each tenant's :class:`Catalog`."""

    def __init__(self, db: GatewayDB, session_for: SessionFor, *, timeout_s: float, ttl_s: float,
                 on_withheld: Callable[[str, str, str, str], Awaitable[None]] | None = None,
                 on_changed: Callable[[str, frozenset[str]], Awaitable[None]] | None = None) -> None:
        self.db = db
        #: Called with (tenant, kinds) when a rebuilt catalog lists other tools/prompts/resources than
        #: the last one (an installation, a withheld or re-approved tool, a server gone or back).
        self.on_changed = on_changed
        self._fingerprints: dict[str, dict[str, int]] = {}
        self.session_for = session_for
        self.timeout_s = timeout_s
        self.ttl_s = ttl_s
        self.on_withheld = on_withheld
        self._cache: dict[str, Catalog] = {}
        self._building: dict[str, asyncio.Task[Catalog]] = {}
        self._reported: set[tuple[str, str, str, str]] = set()
        self._notifying: set[asyncio.Task[None]] = set()

    def invalidate(self, tenant: str | None = None) -> None:
        if tenant is None:
            self._cache.clear()
        else:
            self._cache.pop(tenant, None)

    def cached(self, tenant: str) -> Catalog | None:
        return self._cache.get(tenant)

    async def get(self, tenant: str) -> Catalog:
        catalog = self._cache.get(tenant)
        if catalog is not None and time.monotonic() - catalog.fetched_at < self.ttl_s:
            return catalog
        task = self._building.get(tenant)
        if task is None:  # single flight: concurrent callers share one discovery
            task = asyncio.get_running_loop().create_task(self._build(tenant))
            self._building[tenant] = task
            task.add_done_callback(lambda _t: self._building.pop(tenant, None))
        return await asyncio.shield(task)

    async def _build(self, tenant: str) -> Catalog:
        installations = sorted(await self.db.list_enabled(tenant), key=lambda i: i.server)
        catalog = Catalog(tenant=tenant, servers={i.server: i for i in installations})
        results = await asyncio.gather(*(self._discover(i) for i in installations), return_exceptions=True)
        for installation, result in zip(installations, results, strict=True):
            server = installation.server
            if isinstance(result, BaseException):
                reason = f"{type(result).__name__}: {result}" if str(result) else type(result).__name__
                if isinstance(result, TimeoutError):
                    reason = f"no answer within {self.timeout_s:g} s"
                catalog.errors[server] = reason
                log.warning("discovery of %s for tenant %s failed: %s (its tools are left out)", server, tenant, reason)
                continue
            tools, prompts, resources, templates = result
            await self._add_tools(catalog, installation, tools)
            for prompt in prompts:
                try:
                    name = public_name(installation, str(prompt.get("name")))
                except naming.NamingError as exc:
                    log.warning("prompt left out: %s", exc)
                    continue
                if name in catalog.prompts:
                    log.warning("prompt %s of %s collides with another server's; left out", name, server)
                    continue
                catalog.prompts[name] = PromptEntry(name, server, str(prompt["name"]), {**prompt, "name": name})
            for resource in resources:
                uri = resource.get("uri")
                if isinstance(uri, str) and uri not in catalog.resources:
                    catalog.resources[uri] = (server, resource)
                elif isinstance(uri, str):
                    log.warning("resource %s of %s shadows one of %s; left out", uri, server, catalog.resources[uri][0])
            for template in templates:
                text = template.get("uriTemplate")
                if isinstance(text, str):
                    catalog.templates.append((server, template_pattern(text), template))
        catalog.tools = dict(sorted(catalog.tools.items()))
        catalog.prompts = dict(sorted(catalog.prompts.items()))
        catalog.fetched_at = time.monotonic()
        self._cache[tenant] = catalog
        self._notice_changes(tenant, catalog)
        return catalog

    def _notice_changes(self, tenant: str, catalog: Catalog) -> None:
        fingerprint = {
            "tools": hash(tuple((name, canonical_json(t.definition)) for name, t in catalog.tools.items())),
            "prompts": hash(tuple((name, canonical_json(p.definition)) for name, p in catalog.prompts.items())),
            "resources": hash((tuple(sorted(catalog.resources)),
                               tuple(sorted(str(d.get("uriTemplate")) for _, _, d in catalog.templates)))),
        }
        previous = self._fingerprints.get(tenant)
        self._fingerprints[tenant] = fingerprint
        if previous is None or self.on_changed is None:
            return
        kinds = frozenset(kind for kind, value in fingerprint.items() if previous.get(kind) != value)
        if kinds:
            task = asyncio.get_running_loop().create_task(self.on_changed(tenant, kinds))
            self._notifying.add(task)
            task.add_done_callback(self._notifying.discard)

    async def _discover(self, installation: Installation) -> tuple[list[dict[str, Any]], ...]:
        async with asyncio.timeout(self.timeout_s):
            session = await self.session_for(installation)
            caps = session.server_capabilities
            lists: list[Awaitable[list[dict[str, Any]]]] = [
                list_all(session, "tools/list", "tools", self.timeout_s) if "tools" in caps else _empty(),
                list_all(session, "prompts/list", "prompts", self.timeout_s) if "prompts" in caps else _empty(),
                list_all(session, "resources/list", "resources", self.timeout_s) if "resources" in caps else _empty(),
                list_all(session, "resources/templates/list", "resourceTemplates", self.timeout_s)
                if "resources" in caps else _empty(),
            ]
            try:
                return tuple(await asyncio.gather(*lists))
            except UpstreamError as exc:
                raise UpstreamUnavailable(f"list failed: {exc.message}") from None

    async def _add_tools(self, catalog: Catalog, installation: Installation, tools: list[dict[str, Any]]) -> None:
        server, tenant = installation.server, catalog.tenant
        if not await self.db.list_pins(tenant, server):
            # First discovery after enabling: what the server offers now is what gets approved.
            await self.db.pin_tools(tenant, server, tools, actor="gateway (first discovery)")
        check = await self.db.check_tools(tenant, server, tools)
        approved = set(check.approved)
        if check.withheld:
            catalog.withheld[server] = check.withheld
            for tool, reason in check.withheld:
                key = (tenant, server, tool, reason)
                if key not in self._reported:
                    self._reported.add(key)
                    log.warning("tool %s of %s withheld for tenant %s: %s", tool, server, tenant, reason)
                    if self.on_withheld is not None:
                        await self.on_withheld(tenant, server, tool, reason)
        timeouts: Mapping[str, Any] = installation.config.get("tool_timeouts") or {}
        default_timeout = installation.config.get("call_timeout_s")
        for tool in tools:
            upstream_name = tool.get("name")
            if upstream_name not in approved:
                continue
            try:
                name = public_name(installation, str(upstream_name))
            except naming.NamingError as exc:
                log.warning("tool left out: %s", exc)
                continue
            if name in catalog.tools:
                log.warning("tool %s of %s collides with another tool of that name; left out", name, server)
                continue
            timeout = timeouts.get(upstream_name, default_timeout)
            catalog.tools[name] = ToolEntry(
                name=name, server=server, upstream_name=str(upstream_name), scope=tool_scope(server, tool),
                definition={**tool, "name": name},
                timeout_s=float(timeout) if isinstance(timeout, int | float) and timeout > 0 else None)


async def _empty() -> list[dict[str, Any]]:
    return []


def read_scopes(servers: Iterable[str]) -> set[str]:
    return {read_scope(s) for s in servers}
