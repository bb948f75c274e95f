"""The gateway's lean path for ``tools/call`` on an established session: its hot path.

Why it exists: the SDK's Streamable HTTP transport spends, per request, a pydantic validation of
the message, several memory streams, a task group and an sse-starlette response with tasks of its
own. For the request that dominates real traffic — a ``tools/call`` on an open session — that
machinery costs about as much as the upstream server's whole answer (see
``benchmarks/gateway.py``), so the endpoint serves such a call itself.

What takes this path: a POST of one JSON-RPC ``tools/call`` request carrying the
``Mcp-Session-Id`` of a 2025-era session that the SDK's session manager opened for the same tenant
and credential and still holds, with ``Accept`` for both JSON and SSE, a JSON content type and
no 2026-07-28 protocol header. Everything else — initialize, lists, notifications, batches, GET
streams, DELETE, the stateless 2026-07-28 era, and any request this path cannot vouch for — goes
to the SDK, which also writes the error responses for malformed requests.

What it does: the same handler core as the SDK path (:meth:`Gateway.call`: scope check, upstream
call over the reused session, audit record committed before the answer) inside the same
OpenTelemetry server span the SDK would open. The answer is one JSON object when the upstream
answers with nothing in between within :data:`FIRST_EVENT_WAIT_S`; otherwise an SSE stream with
the relayed progress and log notifications, the upstream's sampling / elicitation / roots requests
(their ids are issued here and the client's POSTed answers come back through :meth:`take`),
keep-alive comments while a long call runs, and finally the result. ``notifications/cancelled``
for a call served here, or the client going away, cancels it, and with it the upstream request.
While a call runs the session's idle timer is held, as the SDK's transport does for its requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import secrets
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import anyio
from mcp.server.streamable_http import check_accept_headers
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.shared.exceptions import MCPError
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, StatusCode
from starlette.requests import Request
from starlette.types import Message, Receive, Scope, Send

from kontor.gateway.proxy import INTERNAL_ERROR, Gateway, relay_handler
from kontor.gateway.resource_server import Principal

log = logging.getLogger(__name__)
_tracer = trace.get_tracer("mcp-python-sdk")  # the SDK's server spans carry this name; ours stand in for them

#: How long the answer may be held back as one JSON object before an SSE stream is opened instead.
FIRST_EVENT_WAIT_S = 1.0
#: Comment lines on an open SSE stream while a long call runs, so proxies do not cut it.
KEEPALIVE_S = 15.0
MAX_SESSIONS = 20_000
INVALID_REQUEST = -32600
SESSION_HEADER = b"mcp-session-id"
PROTOCOL_HEADER = b"mcp-protocol-version"
_RELAY_PREFIX = "kontor-relay-"


@dataclass(frozen=True)
class SessionInfo:
    """What the gateway saw when a client opened a session: its tenant, credential and capabilities."""

    tenant: str
    owner: tuple[str, str, str]  # (client id, issuer, subject) of the opening credential
    capabilities: Mapping[str, Any]


def owner_of(principal: Principal) -> tuple[str, str, str]:
    return (principal.client_id, principal.issuer, principal.subject)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


def _id_key(request_id: Any) -> str:
    return f"{type(request_id).__name__}:{request_id}"


def _error(request_id: Any, code: int, message: str, data: Any = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return {"jsonrpc": "2.0", "id": request_id, "error": error}


def _sse(message: Mapping[str, Any]) -> bytes:
    return b"event: message\r\ndata: " + json.dumps(message, separators=(",", ":")).encode() + b"\r\n\r\n"


class FastPath:
    """Serves eligible ``tools/call`` requests (see the module docstring); keeps what they need."""

    def __init__(self, gateway: Gateway, manager: StreamableHTTPSessionManager) -> None:
        self.gateway = gateway
        self.manager = manager
        self._sessions: OrderedDict[str, SessionInfo] = OrderedDict()
        self._calls: dict[tuple[str, str], asyncio.Task[Any]] = {}
        self._replies: dict[str, tuple[str, tuple[str, str, str], asyncio.Future[dict[str, Any]]]] = {}

    # ----------------------------------------------------------------- sessions

    def opened(self, session_id: str, info: SessionInfo) -> None:
        """Record a session the SDK just opened (bounded: the oldest is forgotten, and then uses the SDK path)."""
        self._sessions.pop(session_id, None)
        self._sessions[session_id] = info
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)

    def closed(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)

    def _transport(self, session_id: str) -> Any:
        transport = self.manager._server_instances.get(session_id)
        if transport is None or transport.is_terminated:
            self._sessions.pop(session_id, None)
            return None
        return transport

    def eligible(self, scope: Scope, message: Any, principal: Principal) -> tuple[SessionInfo, Any] | None:
        """The session and its SDK transport when this request may take the lean path, else None."""
        if not isinstance(message, dict) or message.get("method") != "tools/call" or message.get("jsonrpc") != "2.0":
            return None
        request_id = message.get("id")
        if isinstance(request_id, bool) or not isinstance(request_id, (str, int)):
            return None
        params = message.get("params")
        if not isinstance(params, dict) or not isinstance(params.get("name"), str) \
                or not isinstance(params.get("arguments", {}), dict) or not isinstance(params.get("_meta", {}), dict):
            return None  # the SDK answers malformed params the way it always does
        session_id = _header(scope, SESSION_HEADER)
        info = self._sessions.get(session_id) if session_id else None
        if info is None or info.tenant != principal.tenant or info.owner != owner_of(principal):
            return None
        version = _header(scope, PROTOCOL_HEADER)
        if version is not None and version not in HANDSHAKE_PROTOCOL_VERSIONS:
            return None
        content_type = (_header(scope, b"content-type") or "").split(";")[0].strip().lower()
        if content_type != "application/json":
            return None
        has_json, has_sse = check_accept_headers(Request(scope))  # the SDK's own rule (wildcards included)
        if not (has_json and has_sse):
            return None
        assert session_id is not None
        transport = self._transport(session_id)
        if transport is None:
            return None
        return info, transport

    # ----------------------------------------------------------------- client messages for calls served here

    def take(self, scope: Scope, message: Any, principal: Principal) -> bool:
        """Consume a POSTed answer to a relayed request, or a cancellation of a call served here."""
        if not isinstance(message, dict):
            return False
        session_id = _header(scope, SESSION_HEADER)
        if session_id is None:
            return False
        if "method" not in message:
            request_id = message.get("id")
            if not isinstance(request_id, str) or not request_id.startswith(_RELAY_PREFIX):
                return False
            waiting = self._replies.get(request_id)
            if waiting is None or waiting[0] != session_id or waiting[1] != owner_of(principal):
                return False
            future = waiting[2]
            if not future.done():
                if isinstance(message.get("error"), dict):
                    future.set_result({"error": message["error"]})
                else:
                    future.set_result({"result": message.get("result")})
            return True
        if message.get("method") == "notifications/cancelled" and "id" not in message:
            params = message.get("params")
            request_id = params.get("requestId") if isinstance(params, dict) else None
            info = self._sessions.get(session_id)
            task = self._calls.get((session_id, _id_key(request_id)))
            if task is None or info is None or info.owner != owner_of(principal):
                return False
            task.cancel()
            return True
        return False

    # ----------------------------------------------------------------- serving one call

    async def serve(self, scope: Scope, receive: Receive, send: Send, message: dict[str, Any],
                    principal: Principal, info: SessionInfo, transport: Any) -> None:
        session_id = _header(scope, SESSION_HEADER) or ""
        request_id = message["id"]
        key = (session_id, _id_key(request_id))
        if key in self._calls:
            await self._send_json(send, session_id,
                                  _error(request_id, INVALID_REQUEST, "a request with this id is already running"))
            return
        events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        relay = relay_handler(self._notifier(events), self._requester(events, session_id, principal),
                              self._refusal(info))
        task = asyncio.get_running_loop().create_task(self._run(principal, message["params"], relay, request_id))
        self._calls[key] = task
        watcher = asyncio.get_running_loop().create_task(self._watch_disconnect(receive, task))
        with _held(transport):
            try:
                await self._respond(send, session_id, task, events)
            finally:
                watcher.cancel()
                if not task.done():
                    task.cancel()
                with contextlib.suppress(BaseException):
                    await task  # the audit record is written even when the call is cancelled
                self._calls.pop(key, None)

    async def _run(self, principal: Principal, params: dict[str, Any], relay: Any, request_id: Any) -> dict[str, Any]:
        name = params["name"]
        meta = params.get("_meta")
        context = None
        if meta:
            with contextlib.suppress(ValueError, TypeError):
                extracted = propagate.extract(meta)
                if trace.get_current_span(extracted).get_span_context().is_valid:
                    context = extracted
        attributes = {"mcp.method.name": "tools/call", "jsonrpc.request.id": str(request_id),
                      "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": name}
        with _tracer.start_as_current_span(f"tools/call {name}", kind=SpanKind.SERVER, attributes=attributes,
                                           context=context, record_exception=False,
                                           set_status_on_exception=False) as span:
            try:
                result = await self.gateway.call(principal, params, relay)
            except MCPError as exc:
                span.set_attributes({"error.type": str(exc.code), "rpc.response.status_code": str(exc.code)})
                span.set_status(StatusCode.ERROR, exc.message)
                return _error(request_id, exc.code, exc.message, exc.data)
            except Exception as exc:  # a bug of ours: log it, answer without details
                log.exception("tools/call %s failed", name)
                span.set_attribute("error.type", type(exc).__qualname__)
                span.set_status(StatusCode.ERROR, str(exc))
                return _error(request_id, INTERNAL_ERROR, "internal error")
            if result.get("isError") is True:
                span.set_attribute("error.type", "tool_error")
                span.set_status(StatusCode.ERROR)
            return {"jsonrpc": "2.0", "id": request_id, "result": result}

    @staticmethod
    def _notifier(events: asyncio.Queue[dict[str, Any]]) -> Any:
        async def notify(method: str, params: Any) -> None:
            message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
            if params is not None:
                message["params"] = params
            events.put_nowait(message)

        return notify

    def _requester(self, events: asyncio.Queue[dict[str, Any]], session_id: str, principal: Principal) -> Any:
        async def request(method: str, params: Any) -> Any:
            relay_id = _RELAY_PREFIX + secrets.token_urlsafe(12)
            future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
            self._replies[relay_id] = (session_id, owner_of(principal), future)
            try:
                message: dict[str, Any] = {"jsonrpc": "2.0", "id": relay_id, "method": method}
                if params is not None:
                    message["params"] = params
                events.put_nowait(message)
                reply = await future  # bounded by the call's timeout, which cancels this wait
            finally:
                self._replies.pop(relay_id, None)
            if "error" in reply:
                error = reply["error"]
                raise MCPError(int(error.get("code", INTERNAL_ERROR)), str(error.get("message", "")),
                               error.get("data"))
            return reply["result"]

        return request

    @staticmethod
    def _refusal(info: SessionInfo) -> Any:
        def refusal(needed: str, method: str) -> str | None:
            if info.capabilities.get(needed) is None:
                return f"the calling client does not support {needed} ({method})"
            return None

        return refusal

    @staticmethod
    async def _watch_disconnect(receive: Receive, task: asyncio.Task[Any]) -> None:
        """The request body is already read: the next ASGI message is the client going away."""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                task.cancel()
                return

    async def _respond(self, send: Send, session_id: str, task: asyncio.Task[dict[str, Any]],
                       events: asyncio.Queue[dict[str, Any]]) -> None:
        """One JSON object if the answer comes first and soon; otherwise an SSE stream."""
        getter: asyncio.Task[dict[str, Any]] | None = asyncio.ensure_future(events.get())
        try:
            done, _ = await asyncio.wait({task, getter}, timeout=FIRST_EVENT_WAIT_S,
                                         return_when=asyncio.FIRST_COMPLETED)
            if task in done and getter not in done:
                final = self._final(task)
                if final is not None:
                    await self._send_json(send, session_id, final)
                    return
            await send({"type": "http.response.start", "status": 200, "headers": [
                (b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache, no-transform"),
                (b"connection", b"keep-alive"), (SESSION_HEADER, session_id.encode("latin-1"))]})
            while True:
                if getter is not None and getter.done():
                    await self._body(send, _sse(getter.result()))
                    getter = None
                if task.done():
                    while not events.empty():
                        await self._body(send, _sse(events.get_nowait()))
                    final = self._final(task)
                    if final is not None:
                        await self._body(send, _sse(final))
                    break
                if getter is None:
                    getter = asyncio.ensure_future(events.get())
                done, _ = await asyncio.wait({task, getter}, timeout=KEEPALIVE_S,
                                             return_when=asyncio.FIRST_COMPLETED)
                if not done:
                    await self._body(send, b": keep-alive\r\n\r\n")
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            if getter is not None:
                getter.cancel()

    @staticmethod
    def _final(task: asyncio.Task[dict[str, Any]]) -> dict[str, Any] | None:
        """The call's JSON-RPC answer; None when it was cancelled (a cancelled request gets no answer)."""
        if task.cancelled():
            return None
        return task.result()

    @staticmethod
    async def _body(send: Send, chunk: bytes) -> None:
        await send({"type": "http.response.body", "body": chunk, "more_body": True})

    @staticmethod
    async def _send_json(send: Send, session_id: str, message: Mapping[str, Any]) -> None:
        body = json.dumps(message, separators=(",", ":")).encode()
        start: Message = {"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (SESSION_HEADER, session_id.encode("latin-1"))]}
        await send(start)
        await send({"type": "http.response.body", "body": body, "more_body": False})


@contextlib.contextmanager
def _held(transport: Any) -> Any:
    """Hold the session's idle timer while a call runs, as the SDK transport's ``handle_request`` does."""
    idle_scope = getattr(transport, "idle_scope", None)
    timeout = getattr(transport, "_idle_timeout", None)
    if idle_scope is None or timeout is None or not hasattr(transport, "_requests_in_flight"):
        yield
        return
    transport._requests_in_flight += 1
    idle_scope.deadline = math.inf
    try:
        yield
    finally:
        transport._requests_in_flight -= 1
        if not transport._requests_in_flight:
            idle_scope.deadline = anyio.current_time() + timeout
