"""The MCP side of the gateway: one low-level SDK server whose handlers fan out to upstreams.

Every request reaching a handler has passed the HTTP layer (:mod:`kontor.gateway.app`): the
token is verified and the caller's :class:`Principal` sits in the ASGI scope. Handlers look
up the tenant's :class:`Catalog`, check the scope a tool needs, and forward the call over a
reused :class:`UpstreamSession` for that principal (one per tenant, server, user, client and
scope set), with an internal token minted for the server's audience — never the user's
token. While an upstream works, its progress and log notifications are relayed to the caller
and its sampling / elicitation / roots requests are forwarded to the caller and answered back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import anyio
import httpcore
import mcp_types as types
from mcp.server.caching import CACHEABLE_METHODS, CacheHint
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.shared.exceptions import MCPDeprecationWarning, MCPError
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from opentelemetry import propagate, trace

from kontor.gateway.audit import AuditEvent, AuditLog, AuditWriteError
from kontor.gateway.catalog import Catalog, CatalogBuilder, page, public_name
from kontor.gateway.config import GatewaySettings
from kontor.gateway.db import GatewayDB, Installation
from kontor.gateway.naming import NamingError
from kontor.gateway.resource_server import Principal
from kontor.gateway.safehttp import SafeHttpClient, VettedTarget, pinned_pool
from kontor.gateway.scopes import read_scope, write_scope
from kontor.gateway.tokens import TokenMinter
from kontor.gateway.upstream import (
    MessageHandler,
    UpstreamError,
    UpstreamSession,
    UpstreamTimeout,
    UpstreamUnavailable,
)

log = logging.getLogger(__name__)
_tracer = trace.get_tracer("kontor.gateway")

INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
METHOD_NOT_FOUND = -32601
UPSTREAM_UNAVAILABLE = -32002
UPSTREAM_TIMEOUT = -32001
FORBIDDEN = -32003
DISCOVERY_PRINCIPAL = "kontor-gateway"
UPSTREAM_KEEPALIVE_S = 4.0
SESSION_MAX_CONNECTIONS = 64

#: Server-to-client requests an upstream may send while handling a call, and the client capability each needs.
RELAYED_REQUESTS = {"sampling/createMessage": "sampling", "elicitation/create": "elicitation", "roots/list": "roots"}


LIST_CHANGED = {"tools": "notifications/tools/list_changed", "prompts": "notifications/prompts/list_changed",
                "resources": "notifications/resources/list_changed"}

#: Upstream notifications passed on to the caller while its request runs.
RELAYED_NOTIFICATIONS = frozenset({"notifications/progress", "notifications/message"})


def relay_handler(notify: Callable[[str, Any], Awaitable[None]], request: Callable[[str, Any], Awaitable[Any]],
                  refusal: Callable[[str, str], str | None]) -> MessageHandler:
    """The ``on_message`` relay of one upstream request, over whatever channel reaches the caller.

    ``notify(method, params)`` passes a notification on; ``request(method, params)`` asks the caller and
    returns its result (raising :class:`MCPError` for its error); ``refusal(capability, method)`` says
    why the caller cannot take a server request (``None``: it can). A method the gateway does not
    relay, or one the caller cannot take, is answered upstream with an error at once, never left hanging.
    """

    async def relay(message: dict[str, Any]) -> dict[str, Any] | None:
        method = message.get("method")
        params = message.get("params")
        if "id" not in message:
            if method in RELAYED_NOTIFICATIONS:
                await notify(str(method), params)
            return None
        needed = RELAYED_REQUESTS.get(str(method))
        if needed is None:
            return {"error": {"code": METHOD_NOT_FOUND, "message": f"the gateway does not relay {method!r}"}}
        reason = refusal(needed, str(method))
        if reason is not None:
            return {"error": {"code": METHOD_NOT_FOUND, "message": reason}}
        try:
            result = await request(str(method), params)
        except MCPError as exc:
            return {"error": {"code": exc.code, "message": exc.message, "data": exc.data}}
        return {"result": result}

    return relay


#: ``_meta`` key by which a host (our web chat) reports the user's approval decision for a call.
APPROVAL_META = "io.kontor/approval"
APPROVING_DECISIONS = frozenset({"allow_once", "always"})
REFUSING_DECISIONS = frozenset({"denied", "blocked"})


def _approval(params: Mapping[str, Any]) -> tuple[str, str] | None:
    """(decision, reason) a host attached to a call, normalised; None when there is none or it is malformed."""
    meta = params.get("_meta")
    value = meta.get(APPROVAL_META) if isinstance(meta, Mapping) else None
    if not isinstance(value, Mapping):
        return None
    decision = value.get("decision")
    decision = "denied" if decision == "deny" else decision
    if decision not in APPROVING_DECISIONS | REFUSING_DECISIONS:
        return None
    reason = value.get("reason")
    return str(decision), (reason[:200] if isinstance(reason, str) else "")


def _pausing(relay: MessageHandler | None, deadline: anyio.CancelScope) -> MessageHandler | None:
    """``relay``, with the ``deadline`` stopped while server-to-client requests wait for the caller.

    The clock stops when the first such request starts (the deadline goes to infinity) and runs on
    with the time that was left when the last one is answered.
    """
    if relay is None:
        return None
    state = {"waiting": 0, "left": 0.0}

    async def on_message(message: dict[str, Any]) -> Any:
        if "id" not in message:
            return await relay(message)
        if state["waiting"] == 0:
            state["left"] = deadline.deadline - anyio.current_time()
            deadline.deadline = math.inf
        state["waiting"] += 1
        try:
            return await relay(message)
        finally:
            state["waiting"] -= 1
            if state["waiting"] == 0:
                deadline.deadline = anyio.current_time() + max(state["left"], 0.0)

    return on_message


def _withheld(catalog: Catalog | None, name: str, principal: Principal) -> str | None:
    """Why the tenant's catalog withholds the tool publicly called ``name``, if the caller may use its server."""
    for server, held in (catalog.withheld.items() if catalog is not None else ()):
        installation = catalog.servers.get(server)
        if installation is None or not {read_scope(server), write_scope(server)} & principal.scopes:
            continue
        for tool, reason in held:
            try:
                if public_name(installation, tool) == name:
                    return reason
            except NamingError:
                continue
    return None


def principal_of(ctx: ServerRequestContext[Any, Any]) -> Principal:
    request = ctx.request
    principal = getattr(request, "scope", {}).get("kontor.principal") if request is not None else None
    if not isinstance(principal, Principal):  # the HTTP layer always sets it; never serve without
        raise MCPError(FORBIDDEN, "request is not authenticated")
    return principal


class Gateway:
    """Upstream sessions, catalogs, relays and the SDK server handlers."""

    def __init__(self, settings: GatewaySettings, db: GatewayDB, minter: TokenMinter, audit: AuditLog | None,
                 *, http: SafeHttpClient | None = None, max_sessions: int = 4096) -> None:
        self.settings = settings
        self.db = db
        self.minter = minter
        self.audit = audit
        self.http = http or SafeHttpClient(allow_http=settings.dev_mode, allow_private=settings.dev_mode)
        self.max_sessions = max_sessions
        self._targets: dict[str, VettedTarget] = {}
        self._pool_lock = asyncio.Lock()
        self._sessions: OrderedDict[tuple[Any, ...], UpstreamSession] = OrderedDict()
        self._session_locks: dict[tuple[Any, ...], asyncio.Lock] = {}
        self.catalogs = CatalogBuilder(db, self._discovery_session, timeout_s=settings.discovery_timeout_s,
                                       ttl_s=settings.catalog_ttl_s, on_withheld=self._audit_withheld,
                                       on_changed=self._catalog_changed)
        # Downstream sessions per tenant, to pass on list-changed notifications; and resource subscribers.
        self._downstream: dict[str, weakref.WeakSet[Any]] = {}
        self._subscribers: dict[tuple[str, str], weakref.WeakSet[Any]] = {}
        self.server = self._build_server()

    # ----------------------------------------------------------------- lifecycle

    async def close(self) -> None:
        sessions = list(self._sessions.values())
        self._sessions.clear()
        await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)

    # ----------------------------------------------------------------- upstream sessions

    async def _pool(self, installation: Installation) -> httpcore.AsyncConnectionPool:
        """A new connection pool for one upstream session, pinned to the URL's vetted addresses.

        The URL is vetted once (SSRF rules, DNS resolved) and the pool pinned to those addresses.
        One pool per session, not per URL: httpcore's pool scans every connection it holds for each
        request, so one shared pool under 32 concurrent callers spent a third of the gateway's time
        there; a session's pool holds the few connections its own caller uses. Idle connections are
        dropped after 4 s, below the 5 s keep-alive of uvicorn and Node, so a call is never sent on a
        connection the server is closing (a ReadError, and a call that cannot safely be sent again).
        """
        url = installation.upstream_url
        target = self._targets.get(url)
        if target is None:
            async with self._pool_lock:
                target = self._targets.get(url)
                if target is None:
                    target = self._targets[url] = await self.http.vet(url)
        return pinned_pool(target, max_connections=SESSION_MAX_CONNECTIONS, keepalive_expiry=UPSTREAM_KEEPALIVE_S)

    def _token_provider(self, installation: Installation, subject: str, tenant: str, scopes: frozenset[str],
                        client_id: str | None) -> Any:
        audience = installation.upstream_url
        ttl = self.settings.internal_token_ttl_s
        actor = self.settings.internal_issuer

        def token() -> str:
            return self.minter.mint(audience, subject, tenant, scopes, actor=actor, client_id=client_id, ttl_s=ttl)

        return token

    async def session(self, installation: Installation, tenant: str, subject: str, client_id: str | None,
                      scopes: frozenset[str]) -> UpstreamSession:
        server_scopes = frozenset(s for s in scopes if s in (read_scope(installation.server),
                                                            write_scope(installation.server)))
        key = (tenant, installation.server, installation.upstream_url, subject, client_id, server_scopes)
        session = self._sessions.get(key)
        if session is not None and not session.closed:
            self._sessions.move_to_end(key)
            return session
        lock = self._session_locks.setdefault(key, asyncio.Lock())
        async with lock:
            session = self._sessions.get(key)
            if session is not None and not session.closed:
                return session
            pool = await self._pool(installation)
            session = UpstreamSession(
                installation.server, installation.upstream_url, pool,
                self._token_provider(installation, subject, tenant, server_scopes, client_id),
                on_standalone=self._on_standalone, max_message_bytes=self.settings.max_result_bytes,
                connect_timeout_s=self.settings.discovery_timeout_s, owns_pool=True)
            session.tenant = tenant  # type: ignore[attr-defined]
            await session.start()
            self._sessions[key] = session
            while len(self._sessions) > self.max_sessions:
                _, old = self._sessions.popitem(last=False)
                asyncio.get_running_loop().create_task(old.close())
        self._session_locks.pop(key, None)
        return session

    async def _discovery_session(self, installation: Installation) -> UpstreamSession:
        scopes = frozenset({read_scope(installation.server), write_scope(installation.server)})
        return await self.session(installation, installation.tenant_id, DISCOVERY_PRINCIPAL, DISCOVERY_PRINCIPAL,
                                  scopes)

    async def forget_sessions(self, tenant: str, server: str) -> None:
        """Close the sessions to one server (after a fault, so the next call reconnects)."""
        for key in [k for k in self._sessions if k[0] == tenant and k[1] == server]:
            session = self._sessions.pop(key)
            asyncio.get_running_loop().create_task(session.close())

    async def _on_standalone(self, session: UpstreamSession, message: dict[str, Any]) -> None:
        method = message.get("method")
        tenant = getattr(session, "tenant", None)
        if tenant is None:
            return
        if method in ("notifications/tools/list_changed", "notifications/prompts/list_changed",
                      "notifications/resources/list_changed"):
            self.catalogs.invalidate(tenant)
            for downstream in list(self._downstream.get(tenant, ())):
                with contextlib.suppress(Exception):
                    await downstream.send_notification_raw(method)
        elif method == "notifications/resources/updated":
            uri = (message.get("params") or {}).get("uri")
            for downstream in list(self._subscribers.get((tenant, str(uri)), ())):
                with contextlib.suppress(Exception):
                    await downstream.send_notification_raw(method, {"uri": uri})

    async def _catalog_changed(self, tenant: str, kinds: frozenset[str]) -> None:
        """Tell the tenant's connected clients that what they may list changed (install, withheld tool, ...)."""
        methods = [LIST_CHANGED[kind] for kind in sorted(kinds) if kind in LIST_CHANGED]
        for downstream in list(self._downstream.get(tenant, ())):
            for method in methods:
                with contextlib.suppress(Exception):
                    await downstream.send_notification_raw(method)

    # ----------------------------------------------------------------- helpers

    def _remember(self, ctx: ServerRequestContext[Any, Any], tenant: str) -> _Downstream:
        connection = ctx.session._connection  # the per-client connection: its standalone channel outlives a request
        downstream = _Downstream.of(connection)
        self._downstream.setdefault(tenant, weakref.WeakSet()).add(downstream)
        return downstream

    async def _catalog(self, ctx: ServerRequestContext[Any, Any]) -> tuple[Principal, Catalog]:
        principal = principal_of(ctx)
        self._remember(ctx, principal.tenant)
        return principal, await self.catalogs.get(principal.tenant)

    def _relay(self, ctx: ServerRequestContext[Any, Any]) -> MessageHandler:
        """``on_message`` for an upstream request made on behalf of ``ctx``'s request."""
        outbound = ctx.session._request_outbound  # the request-scoped channel (its SSE stream)
        capabilities = ctx.session.client_capabilities

        def refusal(needed: str, method: str) -> str | None:
            if capabilities is None or getattr(capabilities, needed, None) is None:
                return f"the calling client does not support {needed} ({method})"
            if not outbound.can_send_request:
                return f"the calling client cannot receive {method} on this connection"
            return None

        async def request(method: str, params: Any) -> Any:
            return await outbound.send_raw_request(method, params, None)

        return relay_handler(outbound.notify, request, refusal)

    async def _forward(self, ctx: ServerRequestContext[Any, Any], principal: Principal, installation: Installation,
                       method: str, params: dict[str, Any], timeout_s: float | None) -> dict[str, Any]:
        result = await self.forward(principal, installation, method, params, timeout_s, self._relay(ctx))
        return self._complete(ctx, result)

    async def forward(self, principal: Principal, installation: Installation, method: str, params: dict[str, Any],
                      timeout_s: float | None, relay: MessageHandler | None) -> dict[str, Any]:
        """Send one request upstream for ``principal``; upstream faults become :class:`MCPError`.

        ``timeout_s`` bounds the upstream's own time: while a relayed sampling or elicitation request
        waits for the user, the clock stops (the deadline moves by the time the user took).
        """
        try:
            session = await self.session(installation, principal.tenant, principal.subject, principal.client_id,
                                         principal.scopes)
            if timeout_s is None:
                return await session.request(method, params, on_message=relay)
            with anyio.CancelScope(deadline=anyio.current_time() + timeout_s) as deadline:
                result = await session.request(method, params, on_message=_pausing(relay, deadline))
            if deadline.cancelled_caught:
                raise UpstreamTimeout(f"{installation.server} did not answer {method} within {timeout_s:g} s")
            return result
        except UpstreamError as exc:
            raise MCPError(exc.code, exc.message, exc.data) from None
        except UpstreamTimeout as exc:
            raise MCPError(UPSTREAM_TIMEOUT, str(exc)) from None
        except (UpstreamUnavailable, OSError, TimeoutError) as exc:
            await self.forget_sessions(principal.tenant, installation.server)
            raise MCPError(UPSTREAM_UNAVAILABLE, f"server {installation.server!r} is unavailable: {exc}") from None

    @staticmethod
    def _complete(ctx: ServerRequestContext[Any, Any], result: dict[str, Any]) -> dict[str, Any]:
        """A 2026-07-28 result needs ``resultType``; upstream (2025-11-25) results and our lists lack it."""
        if ctx.protocol_version in MODERN_PROTOCOL_VERSIONS and "resultType" not in result:
            result["resultType"] = "complete"
        return result

    @staticmethod
    def _params(ctx: ServerRequestContext[Any, Any]) -> dict[str, Any]:
        return dict(ctx.params or {})

    # ----------------------------------------------------------------- audit

    async def _audit(self, event: AuditEvent) -> None:
        if self.audit is None:
            return
        try:
            await self.audit.append(event)
        except AuditWriteError as exc:  # fail closed: no durable record, no answer
            log.error("audit write failed: %s", exc)
            raise MCPError(INTERNAL_ERROR, "the call could not be recorded in the audit log") from None

    async def _audit_withheld(self, tenant: str, server: str, tool: str, reason: str) -> None:
        if self.audit is not None:
            with contextlib.suppress(AuditWriteError):
                await self.audit.append(AuditEvent(tenant=tenant, decision="denied", kind="tool_withheld",
                                                   tool=f"{server}/{tool}", reason=reason, upstream=server))
        # A registry installation whose live tools drift from the approved snapshot → needs_reapproval (+ event).
        try:
            from kontor.registry.app import record_drift
        except ImportError:  # pragma: no cover - the gateway runs without the registry package too
            return
        try:
            await record_drift(self.db, tenant, server, tool, reason)
        except Exception:  # noqa: BLE001 - the tool is withheld either way; the registry's record is best effort
            log.exception("could not record the drift of %s/%s for tenant %s in the registry", server, tool, tenant)

    # ----------------------------------------------------------------- handlers

    def _build_server(self) -> Server[Any]:
        # Lists depend on the caller's scopes: cacheable only within one authorization context, and
        # only briefly, since pins and installations change under them.
        private = CacheHint(ttl_ms=0, scope="private")
        with warnings.catch_warnings():  # we relay the (deprecated) 2025-era logging for clients that use it
            warnings.simplefilter("ignore", MCPDeprecationWarning)
            return self._new_server(private)

    def _new_server(self, private: CacheHint) -> Server[Any]:
        return Server(
            "kontor-gateway",
            version="1",
            cache_hints={method: private for method in CACHEABLE_METHODS},
            instructions="Kontor: the tools of the servers your tenant has installed, namespaced <server>__<tool>.",
            on_list_tools=self.list_tools,
            on_call_tool=self.call_tool,
            on_list_prompts=self.list_prompts,
            on_get_prompt=self.get_prompt,
            on_list_resources=self.list_resources,
            on_list_resource_templates=self.list_resource_templates,
            on_read_resource=self.read_resource,
            on_subscribe_resource=self.subscribe,
            on_unsubscribe_resource=self.unsubscribe,
            on_completion=self.complete,
            on_set_logging_level=self.set_logging_level,
        )

    def _paged(self, ctx: ServerRequestContext[Any, Any], params: Any, items: list[tuple[str, dict[str, Any]]],
               field: str) -> dict[str, Any]:
        """One page of ``(name, definition)`` pairs (sorted by name) as the ``field`` of a list result."""
        try:
            chunk, cursor = page(items, lambda item: item[0], getattr(params, "cursor", None), self.settings.page_size)
        except ValueError:
            raise MCPError(INVALID_PARAMS, f"invalid cursor for {ctx.method}") from None
        result: dict[str, Any] = {field: [definition for _, definition in chunk]}
        if cursor:
            result["nextCursor"] = cursor
        return self._complete(ctx, result)

    async def list_tools(self, ctx: ServerRequestContext[Any, Any], params: Any) -> dict[str, Any]:
        principal, catalog = await self._catalog(ctx)
        return self._paged(ctx, params, [(t.name, t.definition) for t in catalog.visible_tools(principal.scopes)],
                           "tools")

    async def call_tool(self, ctx: ServerRequestContext[Any, Any], params: Any) -> dict[str, Any]:
        principal = principal_of(ctx)
        self._remember(ctx, principal.tenant)
        return self._complete(ctx, await self.call(principal, self._params(ctx), self._relay(ctx)))

    async def call(self, principal: Principal, raw: dict[str, Any], relay: MessageHandler | None) -> dict[str, Any]:
        """A ``tools/call`` (params ``raw``) for ``principal``: scope check, upstream call, audit record.

        Shared by the SDK handler and the endpoint's lean path (:mod:`kontor.gateway.fastpath`); raises
        :class:`MCPError` for the caller to turn into a JSON-RPC error. The audit record is committed
        before this returns or raises.
        """
        started = time.perf_counter()
        catalog = self.catalogs.cached(principal.tenant)
        name = str(raw.get("name", ""))
        entry = catalog.tools.get(name) if catalog is not None else None
        if entry is None:  # not cached yet, or a new tool: ask the servers again
            catalog = await self.catalogs.get(principal.tenant)
            entry = catalog.tools.get(name)
        arguments = raw.get("arguments")
        audit_base = {"tenant": principal.tenant, "subject": principal.subject, "client_id": principal.client_id,
                      "tool": name[:200]}
        if entry is None or entry.scope not in principal.scopes:
            # Unknown and forbidden tools look the same to the caller; a withheld tool of a server the caller
            # may use is named as such (the catalog is this tenant's own: nothing of another tenant shows).
            held = _withheld(catalog, name, principal) if entry is None else None
            await self._audit(AuditEvent.tool_call(arguments=arguments if isinstance(arguments, dict) else None,
                                                   decision="denied", reason="withheld tool awaiting re-approval"
                                                   if held else "unknown or not permitted tool", **audit_base))
            if held:
                raise MCPError(INVALID_PARAMS, f"tool {name[:100]!r} is withheld: its definition no longer matches "
                                               f"the approved one ({held[:200]}); it awaits re-approval by an admin")
            raise MCPError(INVALID_PARAMS, f"unknown tool: {name[:100]!r}")
        approval = _approval(raw)
        if approval is not None and approval[0] in REFUSING_DECISIONS:
            # The user (or the tenant admin's rule) refused the call in the host: recorded here, never run.
            await self._audit(AuditEvent.tool_call(
                arguments=arguments if isinstance(arguments, dict) else None, decision="denied",
                reason=f"{approval[0]} in the host: {approval[1]}", upstream=entry.server, **audit_base))
            raise MCPError(FORBIDDEN, f"the call of {name[:100]!r} was {approval[0]} by the user; it was not run")
        installation = catalog.servers[entry.server]
        upstream_params = {**raw, "name": entry.upstream_name}
        if approval is not None:  # the host's bookkeeping is the gateway's, not the server's
            upstream_params["_meta"] = {k: v for k, v in (raw.get("_meta") or {}).items() if k != APPROVAL_META}
        timeout = entry.timeout_s or self.settings.tool_call_timeout_s
        attributes = {"kontor.tenant": principal.tenant, "kontor.tool": name, "kontor.server": entry.server}
        server_span = trace.get_current_span()  # the span of this request (continues the client's trace)
        server_span.set_attributes(attributes)
        trace_id = server_span.get_span_context().trace_id
        status = "ok"
        try:
            with _tracer.start_as_current_span(f"upstream tools/call {entry.server}", kind=trace.SpanKind.CLIENT,
                                               attributes=attributes):
                if trace.get_current_span().get_span_context().is_valid:
                    meta = dict(upstream_params.get("_meta") or {})
                    propagate.inject(meta)  # traceparent: the upstream's span becomes our child
                    upstream_params["_meta"] = meta
                result = await self.forward(principal, installation, "tools/call", upstream_params, timeout, relay)
            if result.get("isError"):
                status = "error"
            return result
        except MCPError as exc:
            status = "timeout" if exc.code == UPSTREAM_TIMEOUT else "error"
            raise
        except BaseException:
            status = "cancelled"
            raise
        finally:
            record = AuditEvent.tool_call(
                arguments=arguments if isinstance(arguments, dict) else None, decision="allowed", status=status,
                reason=f"{approval[0]} by the user in the host" if approval is not None else None,
                latency_ms=(time.perf_counter() - started) * 1000, upstream=entry.server,
                trace_id=format(trace_id, "032x") if trace_id else None, **audit_base)
            if status == "cancelled":  # the caller went away or cancelled: still record the call
                with anyio.CancelScope(shield=True):
                    await self._audit(record)
            else:
                await self._audit(record)

    async def list_prompts(self, ctx: ServerRequestContext[Any, Any], params: Any) -> dict[str, Any]:
        principal, catalog = await self._catalog(ctx)
        return self._paged(ctx, params, [(p.name, p.definition) for p in catalog.prompts.values()
                                         if self._readable(principal, p.server)], "prompts")

    async def get_prompt(self, ctx: ServerRequestContext[Any, Any], params: Any) -> dict[str, Any]:
        principal, catalog = await self._catalog(ctx)
        raw = self._params(ctx)
        entry = catalog.prompts.get(str(raw.get("name", "")))
        if entry is None or read_scope(entry.server) not in principal.scopes:
            raise MCPError(INVALID_PARAMS, f"unknown prompt: {str(raw.get('name'))[:100]!r}")
        return await self._forward(ctx, principal, catalog.servers[entry.server], "prompts/get",
                                   {**raw, "name": entry.upstream_name}, self.settings.tool_call_timeout_s)

    def _readable(self, principal: Principal, server: str) -> bool:
        return read_scope(server) in principal.scopes

    async def list_resources(self, ctx: ServerRequestContext[Any, Any], params: Any) -> dict[str, Any]:
        principal, catalog = await self._catalog(ctx)
        return self._paged(ctx, params, sorted((uri, d) for uri, (server, d) in catalog.resources.items()
                                               if self._readable(principal, server)), "resources")

    async def list_resource_templates(self, ctx: ServerRequestContext[Any, Any], params: Any) -> dict[str, Any]:
        principal, catalog = await self._catalog(ctx)
        return self._paged(ctx, params, sorted(((d["uriTemplate"], d) for server, _, d in catalog.templates
                                                if self._readable(principal, server)), key=lambda x: x[0]),
                           "resourceTemplates")

    async def _resource_route(self, ctx: ServerRequestContext[Any, Any]) -> tuple[Principal, Installation,
                                                                                   dict[str, Any]]:
        principal, catalog = await self._catalog(ctx)
        raw = self._params(ctx)
        uri = str(raw.get("uri", ""))
        server = catalog.resource_server(uri)
        if server is None or not self._readable(principal, server):
            raise MCPError(-32002, f"resource not found: {uri[:200]!r}")
        return principal, catalog.servers[server], raw

    async def read_resource(self, ctx: ServerRequestContext[Any, Any], params: Any) -> dict[str, Any]:
        principal, installation, raw = await self._resource_route(ctx)
        return await self._forward(ctx, principal, installation, "resources/read", raw,
                                   self.settings.tool_call_timeout_s)

    async def subscribe(self, ctx: ServerRequestContext[Any, Any], params: Any) -> dict[str, Any]:
        principal, installation, raw = await self._resource_route(ctx)
        result = await self._forward(ctx, principal, installation, "resources/subscribe", raw,
                                     self.settings.discovery_timeout_s)
        downstream = self._remember(ctx, principal.tenant)
        self._subscribers.setdefault((principal.tenant, str(raw["uri"])), weakref.WeakSet()).add(downstream)
        return result

    async def unsubscribe(self, ctx: ServerRequestContext[Any, Any], params: Any) -> dict[str, Any]:
        principal, installation, raw = await self._resource_route(ctx)
        downstream = self._remember(ctx, principal.tenant)
        self._subscribers.get((principal.tenant, str(raw["uri"])), weakref.WeakSet()).discard(downstream)
        return await self._forward(ctx, principal, installation, "resources/unsubscribe", raw,
                                   self.settings.discovery_timeout_s)

    async def set_logging_level(self, ctx: ServerRequestContext[Any, Any], params: Any) -> dict[str, Any]:
        """Pass the level on to every server the caller can read (2025-era logging)."""
        principal, catalog = await self._catalog(ctx)
        raw = self._params(ctx)
        installations = [i for s, i in catalog.servers.items()
                         if self._readable(principal, s) and s not in catalog.errors]
        results = await asyncio.gather(*(self._forward(ctx, principal, i, "logging/setLevel", raw,
                                                       self.settings.discovery_timeout_s) for i in installations),
                                       return_exceptions=True)
        for installation, result in zip(installations, results, strict=True):
            if isinstance(result, BaseException):
                log.info("logging/setLevel not accepted by %s: %s", installation.server, result)
        return self._complete(ctx, {})

    async def complete(self, ctx: ServerRequestContext[Any, Any], params: Any) -> dict[str, Any]:
        principal, catalog = await self._catalog(ctx)
        raw = self._params(ctx)
        ref = raw.get("ref") or {}
        if ref.get("type") == "ref/prompt":
            entry = catalog.prompts.get(str(ref.get("name")))
            if entry is None or not self._readable(principal, entry.server):
                raise MCPError(INVALID_PARAMS, "unknown prompt in completion reference")
            server, upstream_params = entry.server, {**raw, "ref": {**ref, "name": entry.upstream_name}}
        else:
            uri = str(ref.get("uri", ""))
            found = next((s for s, _, d in catalog.templates if d.get("uriTemplate") == uri), None)
            found = found or catalog.resource_server(uri)
            if found is None or not self._readable(principal, found):
                raise MCPError(INVALID_PARAMS, "unknown resource in completion reference")
            server, upstream_params = found, raw
        installation = catalog.servers[server]
        if "completions" not in (await self.session(installation, principal.tenant, principal.subject,
                                                    principal.client_id, principal.scopes)).server_capabilities:
            return self._complete(ctx, {"completion": {"values": [], "hasMore": False}})
        return await self._forward(ctx, principal, installation, "completion/complete", upstream_params,
                                   self.settings.discovery_timeout_s)


class _Downstream:
    """A weakly referenced handle on one downstream client connection's standalone channel."""

    _by_connection: weakref.WeakKeyDictionary[Any, _Downstream] = weakref.WeakKeyDictionary()

    def __init__(self, connection: Any) -> None:
        self._connection = weakref.ref(connection)

    @classmethod
    def of(cls, connection: Any) -> _Downstream:
        handle = cls._by_connection.get(connection)
        if handle is None:
            handle = cls._by_connection[connection] = cls(connection)
        return handle

    async def send_notification_raw(self, method: str, params: Mapping[str, Any] | None = None) -> None:
        connection = self._connection()
        if connection is not None:
            await connection.outbound.notify(method, params)


__all__ = ["Gateway", "principal_of", "types"]
