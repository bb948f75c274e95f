"""The host's MCP client of the gateway, for one user: a thin wrapper of the SDK's ``Client``.

The host has no private access to anything: everything it does for a user goes through the
tenant's gateway endpoint (``<gateway>/t/<tenant>/mcp``) with that user's access token, exactly
as Claude Desktop would. This module adds what the agent loop needs on top of the SDK:

* **The token goes to the gateway only.** The endpoint must lie on the configured gateway
  origin (checked when the session is made), and every HTTP request the transport sends is
  checked again before the ``Authorization`` header is attached (:class:`GatewayAuth`); a
  request to any other origin fails with :class:`GatewayOriginError` and carries no token.
* **Tools, listed whole and cached** (all pages) until the gateway sends
  ``notifications/tools/list_changed``; :class:`ToolInfo` reads the annotations the approval
  policy needs (``readOnlyHint``, ``destructiveHint``).
* **Tool calls** with a per-call timeout (:class:`ToolCallTimeout`) and a progress callback.
  Cancelling the task that awaits :meth:`McpSession.call_tool` (the Stop button, a timeout)
  makes the SDK send ``notifications/cancelled`` for the request; the gateway passes it on to
  the upstream server.
* **Server-to-client requests** (elicitation, sampling) are delegated to handlers the agent
  loop installs for the turn it runs (:meth:`McpSession.handlers`); with none installed they
  are refused with a clear error, never left hanging.
* Resources (list, templates, read) and prompts (list, get), all pages.

Use it as an async context manager, entered and left in the same task (the SDK's transport
runs in task groups)::

    async with McpSession(gateway.resource_uri("acme"), token_source, gateway_origin=GATEWAY) as mcp:
        tools = await mcp.list_tools()
        result = await mcp.call_tool("lakehouse__search", {"query": "Schrauben"}, timeout_s=30)
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias
from urllib.parse import urlsplit

import httpx2
import mcp_types as types
from mcp import Client
from mcp.client.session import ClientRequestContext
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from kontor.host.providers import ToolDefinition

log = logging.getLogger(__name__)

__all__ = [
    "ElicitationHandler",
    "GatewayAuth",
    "GatewayAuthError",
    "GatewayOriginError",
    "McpSession",
    "McpSessionError",
    "ProgressCallback",
    "SamplingHandler",
    "TokenSource",
    "ToolCallTimeout",
    "ToolInfo",
    "origin_of",
]

#: The user's access token: a string, or a (sync or async) callable returning the current one
#: (the web layer refreshes tokens; it is asked before every HTTP request).
TokenSource: TypeAlias = str | Callable[[], str] | Callable[[], Awaitable[str]]
#: ``(progress, total, message)`` of a running tool call.
ProgressCallback: TypeAlias = Callable[[float, float | None, str | None], Awaitable[None]]
ElicitationHandler: TypeAlias = Callable[[types.ElicitRequestParams], Awaitable[types.ElicitResult | types.ErrorData]]
SamplingHandler: TypeAlias = Callable[
    [types.CreateMessageRequestParams], Awaitable[types.CreateMessageResult | types.ErrorData]]

MAX_LIST_PAGES = 100  # a gateway whose cursor never ends cannot hang a listing
NO_HANDLER = -32601  # JSON-RPC "method not found": nobody here can answer this request now
CLIENT_NAME = "kontor-host"


class McpSessionError(Exception):
    """The gateway could not be used: not connected, unreachable, or it broke the protocol."""


class GatewayOriginError(McpSessionError, ValueError):
    """A request (or the configured endpoint) would leave the gateway's origin: refused, no token sent."""


class GatewayAuthError(McpSessionError):
    """The gateway refused the user's access token (HTTP 401): refresh it or log in again."""


class ToolCallTimeout(McpSessionError, TimeoutError):
    """A tool call did not finish within its timeout; it was cancelled (upstream too)."""

    def __init__(self, tool: str, timeout_s: float) -> None:
        super().__init__(f"the tool {tool} did not answer within {timeout_s:g} s and was cancelled")
        self.tool = tool
        self.timeout_s = timeout_s


def origin_of(url: str) -> tuple[str, str, int]:
    """``(scheme, host, port)`` of an http(s) URL, with the default port filled in."""
    try:
        parts = urlsplit(str(url))
        port = parts.port
    except ValueError as exc:
        raise GatewayOriginError(f"not a valid URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise GatewayOriginError(f"the gateway URL must be an http(s) URL with a host, got {_safe(url)!r}")
    if parts.username or parts.password:
        raise GatewayOriginError("the gateway URL must not carry user info")
    return scheme, parts.hostname.lower(), port or (443 if scheme == "https" else 80)


def _safe(url: str) -> str:
    """The URL without user info, query or fragment (for messages)."""
    try:
        parts = urlsplit(str(url))
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        return f"{parts.scheme}://{host}{parts.path}"
    except ValueError:
        return "<invalid url>"


def _fmt(origin: tuple[str, str, int]) -> str:
    return f"{origin[0]}://{origin[1]}:{origin[2]}"


class GatewayAuth(httpx2.Auth):
    """Attaches ``Authorization: Bearer <token>`` to requests to the gateway's origin, and refuses
    (raises :class:`GatewayOriginError`, sending nothing) any request to another origin."""

    def __init__(self, gateway_origin: str, token: TokenSource) -> None:
        self.origin = origin_of(gateway_origin)
        self._token = token
        self.rejected = False  # the gateway answered 401 to the latest request

    async def token(self) -> str:
        source = self._token
        if isinstance(source, str):
            return source
        value = source()
        if inspect.isawaitable(value):
            value = await value
        if not isinstance(value, str) or not value:
            raise McpSessionError("the token source returned no access token")
        return value

    async def async_auth_flow(self, request: httpx2.Request) -> AsyncGenerator[httpx2.Request, httpx2.Response]:
        target = origin_of(str(request.url))
        if target != self.origin:
            raise GatewayOriginError(
                f"refusing to send the user's token to {_fmt(target)}: only the gateway at {_fmt(self.origin)} "
                "may receive it")
        request.headers["Authorization"] = f"Bearer {await self.token()}"
        response = yield request
        self.rejected = response.status_code == 401

    def sync_auth_flow(self, request: httpx2.Request) -> Any:  # pragma: no cover - the host is async only
        raise RuntimeError("GatewayAuth is for async clients only")


@dataclass(frozen=True)
class ToolInfo:
    """A tool as the gateway lists it (public, namespaced name ``<server>__<tool>``)."""

    name: str
    description: str = ""
    title: str | None = None
    input_schema: Mapping[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})
    output_schema: Mapping[str, Any] | None = None
    read_only_hint: bool | None = None
    destructive_hint: bool | None = None
    idempotent_hint: bool | None = None
    open_world_hint: bool | None = None

    @classmethod
    def from_mcp(cls, tool: types.Tool) -> ToolInfo:
        notes = tool.annotations
        return cls(
            name=tool.name, description=tool.description or "",
            title=tool.title or (notes.title if notes is not None else None),
            input_schema=dict(tool.input_schema or {}),
            output_schema=dict(tool.output_schema) if tool.output_schema is not None else None,
            read_only_hint=notes.read_only_hint if notes is not None else None,
            destructive_hint=notes.destructive_hint if notes is not None else None,
            idempotent_hint=notes.idempotent_hint if notes is not None else None,
            open_world_hint=notes.open_world_hint if notes is not None else None,
        )

    @property
    def server(self) -> str:
        """The installation the tool belongs to (the part before ``__``; empty for unprefixed tools)."""
        server, sep, _ = self.name.partition("__")
        return server if sep else ""

    @property
    def read_only(self) -> bool:
        """Declared read-only (``readOnlyHint: true``) and not also declared destructive."""
        return self.read_only_hint is True and self.destructive_hint is not True

    @property
    def destructive(self) -> bool:
        """May destroy data: ``destructiveHint: true``, or a writing tool that does not say otherwise
        (the MCP default of ``destructiveHint`` is true for tools that are not read-only)."""
        return self.destructive_hint is True or (not self.read_only and self.destructive_hint is not False)

    @property
    def display_name(self) -> str:
        return self.title or self.name

    def definition(self) -> ToolDefinition:
        """The tool for the model."""
        return ToolDefinition.from_mcp({"name": self.name, "description": self.description,
                                        "inputSchema": dict(self.input_schema)})


class McpSession:
    """One user's MCP session with the tenant's gateway endpoint (see the module docstring).

    ``endpoint``: the tenant endpoint, e.g. ``https://kontor.example/t/acme/mcp``.
    ``token``: the user's access token, or a callable returning the current one.
    ``gateway_origin``: the configured gateway URL; the endpoint must be on its origin (when
    omitted the endpoint's own origin is the only one the token may go to).
    ``default_timeout_s``: tool-call timeout when :meth:`call_tool` gets none.
    """

    def __init__(self, endpoint: str, token: TokenSource, *, gateway_origin: str | None = None,
                 default_timeout_s: float = 120.0, connect_timeout_s: float = 30.0,
                 client_name: str = CLIENT_NAME, client_version: str = "0.1.0") -> None:
        origin = origin_of(gateway_origin or endpoint)
        if origin_of(endpoint) != origin:
            raise GatewayOriginError(
                f"the MCP endpoint {_safe(endpoint)} is not on the gateway's origin {_fmt(origin)}; the user's "
                "token is only ever sent to the gateway")
        self.endpoint = endpoint
        self.auth = GatewayAuth(_fmt(origin), token)
        self.default_timeout_s = default_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.client_info = types.Implementation(name=client_name, version=client_version)
        self._client: Client | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._tools: dict[str, ToolInfo] | None = None
        self._tools_lock = asyncio.Lock()
        self.tools_version = 0  # bumped by every tools/list_changed
        self.tool_listings = 0  # full listings fetched from the gateway (the cache's misses)
        self._elicitation: list[ElicitationHandler] = []
        self._sampling: list[SamplingHandler] = []
        self._log_listeners: list[Callable[[types.LoggingMessageNotificationParams], Awaitable[None]]] = []
        self._deadlines: set[asyncio.Timeout] = set()  # the timeouts of the calls in flight
        self._paused: dict[asyncio.Timeout, float] = {}  # timeout -> seconds it had left when the user was asked
        self._user_waits = 0

    # -- lifecycle

    async def __aenter__(self) -> McpSession:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> None:
        if self._client is not None:
            return
        stack = contextlib.AsyncExitStack()
        try:
            http = await stack.enter_async_context(httpx2.AsyncClient(
                auth=self.auth, follow_redirects=False,
                timeout=httpx2.Timeout(self.connect_timeout_s, read=300.0)))
            client = Client(streamable_http_client(self.endpoint, http_client=http), mode="legacy", cache=None,
                            client_info=self.client_info, sampling_callback=self._on_sampling,
                            elicitation_callback=self._on_elicitation, logging_callback=self._on_log,
                            message_handler=self._on_message)
            async with asyncio.timeout(self.connect_timeout_s):
                await stack.enter_async_context(client)
        except BaseException as exc:
            with contextlib.suppress(BaseException):
                await stack.aclose()
            if isinstance(exc, GatewayOriginError):
                raise
            origin = _find(exc, GatewayOriginError)
            if origin is not None:
                raise origin from None
            if isinstance(exc, Exception) and self.auth.rejected:
                raise GatewayAuthError(f"the gateway at {_safe(self.endpoint)} rejected the user's access token "
                                       "(HTTP 401); refresh it or log in again") from exc
            if isinstance(exc, Exception):
                raise McpSessionError(f"cannot open an MCP session with the gateway at {_safe(self.endpoint)}: "
                                      f"{_describe(exc)}") from exc
            raise
        self._client, self._stack = client, stack

    async def close(self) -> None:
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            with contextlib.suppress(Exception):
                await stack.aclose()

    @property
    def client(self) -> Client:
        if self._client is None:
            raise McpSessionError("the MCP session is not connected (use `async with McpSession(...)`)")
        return self._client

    @property
    def server_instructions(self) -> str | None:
        return self.client.instructions

    # -- handlers of server-to-client requests

    @contextlib.contextmanager
    def handlers(self, *, elicitation: ElicitationHandler | None = None,
                 sampling: SamplingHandler | None = None) -> Any:
        """Install the handlers of elicitation and sampling requests while the block runs (the agent
        loop does this for the turn it drives; the innermost installed handler answers)."""
        if elicitation is not None:
            self._elicitation.append(elicitation)
        if sampling is not None:
            self._sampling.append(sampling)
        try:
            yield self
        finally:
            if elicitation is not None:
                self._elicitation.remove(elicitation)
            if sampling is not None:
                self._sampling.remove(sampling)

    def add_log_listener(self, listener: Callable[[types.LoggingMessageNotificationParams], Awaitable[None]]) -> None:
        self._log_listeners.append(listener)

    async def _on_elicitation(self, context: ClientRequestContext,
                              params: types.ElicitRequestParams) -> types.ElicitResult | types.ErrorData:
        if not self._elicitation:
            return types.ErrorData(code=NO_HANDLER, message="no conversation of this user is waiting for input "
                                                            "right now; the elicitation request cannot be shown")
        try:
            async with self.waiting_for_user():
                return await self._elicitation[-1](params)
        except Exception as exc:
            log.exception("elicitation handler failed")
            return types.ErrorData(code=types.INTERNAL_ERROR, message=f"the host could not ask the user: {exc}")

    async def _on_sampling(self, context: ClientRequestContext,
                           params: types.CreateMessageRequestParams) -> types.CreateMessageResult | types.ErrorData:
        if not self._sampling:
            return types.ErrorData(code=NO_HANDLER, message="no conversation of this user is active right now; "
                                                            "the sampling request cannot be answered")
        try:
            async with self.waiting_for_user():
                return await self._sampling[-1](params)
        except Exception as exc:
            log.exception("sampling handler failed")
            return types.ErrorData(code=types.INTERNAL_ERROR, message=f"the host could not answer: {exc}")

    @contextlib.asynccontextmanager
    async def waiting_for_user(self) -> AsyncIterator[None]:
        """While the user is asked something (a form, a sampling approval) the timeouts of the calls in
        flight stand still: a tool waiting for the user's answer is not a slow tool."""
        loop = asyncio.get_running_loop()
        if self._user_waits == 0:
            for deadline in self._deadlines:
                when = deadline.when()
                if when is not None:
                    self._paused[deadline] = max(0.0, when - loop.time())
                    deadline.reschedule(None)
        self._user_waits += 1
        try:
            yield
        finally:
            self._user_waits -= 1
            if self._user_waits == 0:
                paused, self._paused = self._paused, {}
                for deadline, left in paused.items():
                    if deadline in self._deadlines:
                        deadline.reschedule(loop.time() + left)

    async def _on_log(self, params: types.LoggingMessageNotificationParams) -> None:
        log.debug("server log (%s): %s", params.level, params.data)
        for listener in list(self._log_listeners):
            with contextlib.suppress(Exception):
                await listener(params)

    async def _on_message(self, message: Any) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            self.invalidate_tools()
        elif isinstance(message, Exception):
            log.warning("MCP transport reported: %s", _describe(message))

    # -- tools

    def invalidate_tools(self) -> None:
        """Forget the cached tool list (on ``notifications/tools/list_changed``)."""
        self._tools = None
        self.tools_version += 1

    async def list_tools(self, *, refresh: bool = False) -> list[ToolInfo]:
        """All tools this user may use, every page, from the cache unless the list changed."""
        async with self._tools_lock:
            if self._tools is None or refresh:
                version = self.tools_version
                tools: dict[str, ToolInfo] = {}
                async for tool in self._pages("tools/list", lambda c: self.client.list_tools(cursor=c),
                                              lambda r: r.tools):
                    tools[tool.name] = ToolInfo.from_mcp(tool)
                self.tool_listings += 1
                if version == self.tools_version:  # a list_changed that arrived meanwhile makes it stale
                    self._tools = tools
                return list(tools.values())
            return list(self._tools.values())

    async def tool(self, name: str) -> ToolInfo | None:
        return next((t for t in await self.list_tools() if t.name == name), None)

    async def call_tool(self, name: str, arguments: Mapping[str, Any] | None = None, *,
                        timeout_s: float | None = None, on_progress: ProgressCallback | None = None,
                        meta: Mapping[str, Any] | None = None) -> types.CallToolResult:
        """Call a tool. Raises :class:`ToolCallTimeout` after ``timeout_s`` (the call is cancelled and
        the gateway told so), ``MCPError`` when the gateway refuses the call (unknown tool, scope), and
        :class:`McpSessionError` when the gateway cannot be reached."""
        timeout = self.default_timeout_s if timeout_s is None else timeout_s
        try:
            async with asyncio.timeout(timeout) as deadline:
                self._deadlines.add(deadline)
                if self._user_waits:  # the user is being asked something right now: start the clock after
                    self._paused[deadline] = timeout
                    deadline.reschedule(None)
                try:
                    return await self.client.call_tool(name, dict(arguments or {}), progress_callback=on_progress,
                                                       meta=dict(meta) if meta else None)  # type: ignore[arg-type]
                finally:
                    self._deadlines.discard(deadline)
                    self._paused.pop(deadline, None)
        except TimeoutError:
            raise ToolCallTimeout(name, timeout) from None
        except MCPError:
            raise
        except GatewayOriginError:
            raise
        except Exception as exc:
            origin = _find(exc, GatewayOriginError)
            if origin is not None:
                raise origin from None
            if self.auth.rejected:
                raise GatewayAuthError(f"the gateway rejected the user's access token during the call of {name} "
                                       "(HTTP 401); refresh it or log in again") from exc
            raise McpSessionError(f"the call of {name} failed: {_describe(exc)}") from exc

    # -- resources and prompts

    async def list_resources(self) -> list[types.Resource]:
        return [r async for r in self._pages("resources/list", lambda c: self.client.list_resources(cursor=c),
                                             lambda r: r.resources)]

    async def list_resource_templates(self) -> list[types.ResourceTemplate]:
        return [t async for t in self._pages("resources/templates/list",
                                             lambda c: self.client.list_resource_templates(cursor=c),
                                             lambda r: r.resource_templates)]

    async def read_resource(self, uri: str) -> types.ReadResourceResult:
        return await self.client.read_resource(uri)

    async def list_prompts(self) -> list[types.Prompt]:
        return [p async for p in self._pages("prompts/list", lambda c: self.client.list_prompts(cursor=c),
                                             lambda r: r.prompts)]

    async def get_prompt(self, name: str, arguments: Mapping[str, str] | None = None) -> types.GetPromptResult:
        return await self.client.get_prompt(name, dict(arguments or {}))

    async def _pages(self, what: str, fetch: Callable[[str | None], Awaitable[Any]],
                     items: Callable[[Any], list[Any]]) -> AsyncIterator[Any]:
        cursor: str | None = None
        for _ in range(MAX_LIST_PAGES):
            page = await fetch(cursor)
            for item in items(page):
                yield item
            cursor = page.next_cursor
            if not cursor:
                return
        log.warning("%s: stopped after %d pages (the cursor never ended)", what, MAX_LIST_PAGES)


def _find(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    """``exc`` or the first exception of ``kind`` inside it (exception groups, causes)."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, kind):
            return current
        if isinstance(current, BaseExceptionGroup):
            todo.extend(current.exceptions)
        for nxt in (current.__cause__, current.__context__):
            if nxt is not None:
                todo.append(nxt)
    return None


def _describe(exc: BaseException) -> str:
    """The innermost meaningful message of ``exc`` (exception groups unwrapped)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return str(exc) or type(exc).__name__
