"""Sessions with upstream MCP servers over Streamable HTTP, kept open and reused.

The gateway speaks to each upstream server as an MCP client, but not through the SDK's client:
the hot path (a ``tools/call`` relayed for a user) must cost as little as possible, so this is
a small JSON-RPC client over a keep-alive ``httpcore`` pool pinned to the upstream's vetted
addresses (:func:`kontor.gateway.safehttp.pinned_pool`). One :class:`UpstreamSession` is one
``initialize``-d MCP session (protocol 2025-11-25) for one principal; it is opened once and then
used for every call of that principal, concurrently.

Messages an upstream sends while answering (progress, log messages, and server-to-client
requests such as ``sampling/createMessage`` or ``elicitation/create``) arrive on the POST's
SSE stream and are handed to the caller's ``on_message``; the answer to a server request is
POSTed back upstream. Messages on the session's standalone GET stream (list-changed,
resource-updated) go to the session's ``on_standalone`` callback.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import httpcore

log = logging.getLogger(__name__)

PROTOCOL_VERSION = "2025-11-25"
#: Reply to a server-to-client request; ``{"result": ...}`` or ``{"error": {...}}``.
Reply = dict[str, Any]
MessageHandler = Callable[[dict[str, Any]], Awaitable[Reply | None]]
StandaloneHandler = Callable[["UpstreamSession", dict[str, Any]], Awaitable[None]]

METHOD_NOT_FOUND = -32601
INTERNAL_ERROR = -32603
REQUEST_TIMEOUT = -32001


class UpstreamError(Exception):
    """The upstream answered with a JSON-RPC error; relayed to the client as is."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code, self.message, self.data = code, message, data


class UpstreamUnavailable(Exception):
    """The upstream could not be reached or broke the protocol (no JSON-RPC answer)."""


class UpstreamTimeout(UpstreamUnavailable):
    pass


class _SessionGone(Exception):
    """HTTP 404 for our session id: the upstream forgot the session (restart, idle expiry)."""


def _sse_events(buffer: bytearray) -> list[str]:
    """Complete SSE events' ``data`` payloads taken off the front of ``buffer``."""
    out: list[str] = []
    while True:
        text = bytes(buffer)
        cut, sep = -1, 0
        for candidate in (b"\r\n\r\n", b"\n\n", b"\r\r"):
            i = text.find(candidate)
            if i != -1 and (cut == -1 or i < cut):
                cut, sep = i, len(candidate)
        if cut == -1:
            return out
        raw = text[:cut].decode("utf-8", "replace")
        del buffer[: cut + sep]
        data = [line[5:].removeprefix(" ") for line in raw.splitlines() if line.startswith("data:")]
        if data:
            out.append("\n".join(data))


class UpstreamSession:
    """One MCP session with one upstream server for one principal."""

    def __init__(
        self,
        server: str,
        url: str,
        pool: httpcore.AsyncConnectionPool,
        token: Callable[[], str],
        *,
        client_name: str = "kontor-gateway",
        capabilities: dict[str, Any] | None = None,
        on_standalone: StandaloneHandler | None = None,
        max_message_bytes: int = 8 * 1024 * 1024,
        connect_timeout_s: float = 5.0,
        owns_pool: bool = False,
    ) -> None:
        self.server = server
        self.url = url
        self._pool = pool
        self._owns_pool = owns_pool  # close the pool with the session
        self._token = token
        self._client_name = client_name
        # We relay sampling, elicitation and roots for the calling client, so we offer them upstream;
        # a client without the capability gets an error back through the relay, not a hang.
        self._capabilities = capabilities if capabilities is not None else {
            "sampling": {}, "elicitation": {"form": {}, "url": {}}, "roots": {"listChanged": True}}
        self._on_standalone = on_standalone
        self.max_message_bytes = max_message_bytes
        self.connect_timeout_s = connect_timeout_s
        self.session_id: str | None = None
        self.protocol_version = PROTOCOL_VERSION
        self.server_info: dict[str, Any] = {}
        self.server_capabilities: dict[str, Any] = {}
        self.instructions: str | None = None
        self._ids = itertools.count(1)
        self._start_lock = asyncio.Lock()
        self._started = False
        self._listener: asyncio.Task[None] | None = None
        # Relays of the requests in flight, newest last: a server request that arrives on the
        # standalone stream (not tied to a request by the server) goes to the newest caller.
        self._relays: list[MessageHandler] = []
        self.closed = False

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        async with self._start_lock:
            if self._started:
                return
            with anyio.fail_after(self.connect_timeout_s):
                result = await self._request_once("initialize", {
                    "protocolVersion": PROTOCOL_VERSION, "capabilities": self._capabilities,
                    "clientInfo": {"name": self._client_name, "version": "1"}}, None, initialize=True)
            self.protocol_version = str(result.get("protocolVersion", PROTOCOL_VERSION))
            self.server_info = result.get("serverInfo") or {}
            self.server_capabilities = result.get("capabilities") or {}
            self.instructions = result.get("instructions")
            await self._post({"jsonrpc": "2.0", "method": "notifications/initialized"})
            self._started = True
            if self._on_standalone is not None and self.session_id:
                self._listener = asyncio.get_running_loop().create_task(self._listen())

    async def close(self) -> None:
        self.closed = True
        if self._listener is not None:
            self._listener.cancel()
        if self.session_id:
            with contextlib.suppress(Exception), anyio.fail_after(2):
                async with self._pool.stream("DELETE", self.url, headers=self._headers()) as response:
                    await response.aread()
        if self._owns_pool:
            with contextlib.suppress(Exception):
                await self._pool.aclose()

    # ----------------------------------------------------------------- calls

    async def request(self, method: str, params: dict[str, Any] | None = None, *,
                      on_message: MessageHandler | None = None, timeout_s: float | None = None) -> dict[str, Any]:
        """Send one request and return its ``result``; raises UpstreamError / UpstreamUnavailable."""
        if not self._started:
            await self.start()
        try:
            with anyio.fail_after(timeout_s) if timeout_s else contextlib.nullcontext():
                try:
                    return await self._request_once(method, params, on_message)
                except _SessionGone:
                    # The upstream lost our session (it restarted): the request was not processed, so
                    # opening a new session and sending it again is safe.
                    log.info("upstream %s forgot session; reconnecting", self.server)
                    self._started = False
                    self.session_id = None
                    await self.start()
                    return await self._request_once(method, params, on_message)
        except TimeoutError:
            raise UpstreamTimeout(f"{self.server} did not answer {method} within {timeout_s:g} s") from None

    async def notify(self, method: str, params: dict[str, Any] | None = None) -> None:
        if not self._started:
            await self.start()
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            message["params"] = params
        await self._post(message)

    # ----------------------------------------------------------------- internals

    def _headers(self, *, initialize: bool = False) -> list[tuple[bytes, bytes]]:
        headers = [
            (b"accept", b"application/json, text/event-stream"),
            (b"content-type", b"application/json"),
            (b"authorization", b"Bearer " + self._token().encode()),
        ]
        if not initialize:
            headers.append((b"mcp-protocol-version", self.protocol_version.encode()))
        if self.session_id:
            headers.append((b"mcp-session-id", self.session_id.encode()))
        return headers

    async def _post(self, message: dict[str, Any]) -> None:
        body = json.dumps(message, separators=(",", ":")).encode()
        try:
            async with self._pool.stream("POST", self.url, headers=self._headers(), content=body) as response:
                await response.aread()
                if response.status == 404 and self.session_id:
                    raise _SessionGone()
                if response.status >= 400:
                    raise UpstreamUnavailable(f"{self.server} refused a message with HTTP {response.status}")
        except (httpcore.ConnectError, httpcore.NetworkError, httpcore.ProtocolError,
                httpcore.TimeoutException) as exc:
            raise UpstreamUnavailable(f"{self.server} unreachable: {type(exc).__name__}") from None

    async def _request_once(self, method: str, params: dict[str, Any] | None, on_message: MessageHandler | None,
                            *, initialize: bool = False) -> dict[str, Any]:
        request_id = next(self._ids)
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not None:
            message["params"] = params
        body = json.dumps(message, separators=(",", ":")).encode()
        answered = False
        if on_message is not None:
            self._relays.append(on_message)
        try:
            async with self._pool.stream("POST", self.url, headers=self._headers(initialize=initialize),
                                         content=body) as response:
                if initialize:
                    for key, value in response.headers:
                        if key.lower() == b"mcp-session-id":
                            self.session_id = value.decode("ascii", "replace")
                if response.status == 404 and self.session_id and not initialize:
                    await response.aread()
                    raise _SessionGone()
                content_type = next((v for k, v in response.headers if k.lower() == b"content-type"), b"")
                if response.status >= 400 and not content_type.startswith(b"application/json"):
                    await response.aread()
                    raise UpstreamUnavailable(f"{self.server} answered {method} with HTTP {response.status}")
                if content_type.startswith(b"text/event-stream"):
                    result = await self._read_stream(response, request_id, method, on_message)
                else:
                    raw = await self._read_body(response)
                    result = self._answer(json.loads(raw), request_id, method)
                answered = True
                return result
        except UpstreamError:
            answered = True
            raise
        except (httpcore.ConnectError, httpcore.NetworkError, httpcore.ProtocolError,
                httpcore.TimeoutException) as exc:
            raise UpstreamUnavailable(f"{self.server} unreachable during {method}: {type(exc).__name__}") from None
        except json.JSONDecodeError:
            raise UpstreamUnavailable(f"{self.server} sent malformed JSON for {method}") from None
        finally:
            if on_message is not None:
                self._relays.remove(on_message)
            if not answered and not initialize and not self.closed:
                # Cancelled or timed out while the upstream works on it: tell it to stop.
                self._spawn(self._cancel_upstream(request_id))

    async def _read_body(self, response: httpcore.Response) -> bytes:
        chunks, size = [], 0
        async for chunk in response.aiter_stream():
            size += len(chunk)
            if size > self.max_message_bytes:
                raise UpstreamUnavailable(f"{self.server} sent more than {self.max_message_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    def _answer(self, message: Any, request_id: int, method: str) -> dict[str, Any]:
        if isinstance(message, list):  # a batch: find ours
            message = next((m for m in message if isinstance(m, dict) and m.get("id") == request_id), None)
        if not isinstance(message, dict) or message.get("id") != request_id:
            raise UpstreamUnavailable(f"{self.server} answered {method} without a matching response")
        if "error" in message:
            error = message["error"] if isinstance(message["error"], dict) else {}
            raise UpstreamError(int(error.get("code", INTERNAL_ERROR)), str(error.get("message", "error")),
                                error.get("data"))
        result = message.get("result")
        if not isinstance(result, dict):
            raise UpstreamUnavailable(f"{self.server} answered {method} without a result object")
        return result

    async def _read_stream(self, response: httpcore.Response, request_id: int, method: str,
                           on_message: MessageHandler | None) -> dict[str, Any]:
        buffer = bytearray()
        chunks = response.aiter_stream()  # one iterator: httpcore refuses a second one
        async for chunk in chunks:
            buffer += chunk
            if len(buffer) > self.max_message_bytes:
                raise UpstreamUnavailable(f"{self.server} sent an SSE event over {self.max_message_bytes} bytes")
            for data in _sse_events(buffer):
                try:
                    message = json.loads(data)
                except json.JSONDecodeError:
                    log.warning("upstream %s sent a non-JSON SSE event; ignored", self.server)
                    continue
                if not isinstance(message, dict):
                    continue
                if message.get("id") == request_id and ("result" in message or "error" in message):
                    await self._drain(chunks)
                    return self._answer(message, request_id, method)
                await self._dispatch(message, on_message)
        raise UpstreamUnavailable(f"{self.server} closed the stream before answering {method}")

    @staticmethod
    async def _drain(chunks: Any) -> None:
        """Read the stream to its end (the server closes it right after the answer), so the keep-alive
        connection goes back to the pool instead of being dropped half-read."""
        with contextlib.suppress(Exception), anyio.move_on_after(1.0):
            async for _ in chunks:
                pass

    async def _dispatch(self, message: dict[str, Any], on_message: MessageHandler | None) -> None:
        """A notification or server-to-client request that arrived while a request is open."""
        is_request = "method" in message and "id" in message
        reply: Reply | None = None
        if on_message is not None:
            try:
                reply = await on_message(message)
            except Exception as exc:  # the relay failed: the upstream still gets an answer
                log.warning("relay of %s from %s failed: %s", message.get("method"), self.server, exc)
                reply = {"error": {"code": INTERNAL_ERROR, "message": f"relay failed: {type(exc).__name__}"}}
        if is_request:
            if reply is None:
                reply = {"error": {"code": METHOD_NOT_FOUND,
                                   "message": f"the client cannot answer {message.get('method')!r} here"}}
            answer = {"jsonrpc": "2.0", "id": message["id"], **reply}
            self._spawn(self._post_quietly(answer))

    async def _post_quietly(self, message: dict[str, Any]) -> None:
        try:
            await self._post(message)
        except Exception as exc:
            log.warning("could not deliver a message to %s: %s", self.server, exc)

    async def _cancel_upstream(self, request_id: int) -> None:
        with contextlib.suppress(Exception), anyio.fail_after(2):
            await self._post({"jsonrpc": "2.0", "method": "notifications/cancelled",
                              "params": {"requestId": request_id, "reason": "cancelled by the gateway"}})

    _tasks: set[asyncio.Task[Any]] = set()

    def _spawn(self, coro: Awaitable[Any]) -> None:
        try:
            task = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        except RuntimeError:
            return
        UpstreamSession._tasks.add(task)
        task.add_done_callback(UpstreamSession._tasks.discard)

    async def _listen(self) -> None:
        """The standalone GET stream: list-changed and resource-updated notifications."""
        delay = 1.0
        while not self.closed:
            try:
                headers = [h for h in self._headers() if h[0] != b"content-type"]
                headers = [(b"accept", b"text/event-stream") if k == b"accept" else (k, v) for k, v in headers]
                async with self._pool.stream("GET", self.url, headers=headers,
                                             extensions={"timeout": {"read": None}}) as response:
                    if response.status != 200:
                        await response.aread()
                        if response.status in (404, 405):
                            return  # no standalone stream offered, or session gone (next call reconnects)
                        raise UpstreamUnavailable(f"GET stream answered {response.status}")
                    delay = 1.0
                    buffer = bytearray()
                    async for chunk in response.aiter_stream():
                        buffer += chunk
                        if len(buffer) > self.max_message_bytes:
                            buffer.clear()
                        for data in _sse_events(buffer):
                            with contextlib.suppress(json.JSONDecodeError):
                                message = json.loads(data)
                                if isinstance(message, dict) and self._on_standalone is not None:
                                    relay = self._relays[-1] if self._relays else None
                                    if "id" in message and "method" in message:
                                        self._spawn(self._dispatch(message, relay))
                                    elif message.get("method") in ("notifications/message",
                                                                   "notifications/progress") and relay is not None:
                                        # Not tied to a request by the server: the newest caller gets it.
                                        self._spawn(self._dispatch(message, relay))
                                    else:
                                        await self._on_standalone(self, message)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("standalone stream of %s ended: %s", self.server, exc)
            if self.closed:
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)
