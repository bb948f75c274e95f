"""A loopback reverse proxy that adds ``Authorization: Bearer <token>`` to every request.

The conformance CLI (0.1.12) cannot send extra HTTP headers: its MCP client transport is built as
``new StreamableHTTPClientTransport(new URL(url))`` with no ``requestInit``, its SSE scenarios use bare
``fetch`` with fixed headers, the DNS-rebinding scenario uses ``undici.request`` with fixed headers, and
no option or environment variable feeds any of them. To run it against a server that requires a bearer
token (the Kontor gateway), point it at this proxy instead::

    with auth_proxy("http://127.0.0.1:8700/mcp", token) as url:   # url: http://127.0.0.1:<free port>/mcp
        run_scenarios(url)

What it forwards:
* every request header unchanged, except hop-by-hop headers, ``Host`` (rewritten to the target's host
  and port) and ``Authorization`` (replaced by the bearer token);
* ``Origin`` unchanged, except an ``Origin`` naming the proxy itself (``http://127.0.0.1:<proxy port>``),
  which becomes the target's origin - so "same origin as the URL I was given" stays same-origin behind the
  proxy, while a foreign ``Origin`` (the DNS-rebinding scenario's ``http://evil.example.com``) reaches the
  target as is. The rebinding scenario's forged ``Host`` is necessarily replaced; the target still sees
  the forged ``Origin`` and must reject it on that;
* responses (status, headers, body) unchanged and unbuffered, so SSE streams flow event by event; when
  the client disconnects, the upstream response is closed too.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx
import uvicorn

HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te",
                        b"trailer", b"transfer-encoding", b"upgrade"})


class AuthProxy:
    """ASGI app forwarding ``http`` requests to ``target_base`` (scheme://host:port) with a bearer token."""

    def __init__(self, target_base: str, token: str) -> None:
        parts = urlsplit(target_base)
        self.target_base = f"{parts.scheme}://{parts.netloc}"
        self.target_netloc = parts.netloc.encode("latin-1")
        self.target_origin = self.target_base.encode("latin-1")
        self.authorization = f"Bearer {token}".encode("latin-1")
        self.self_origins: set[bytes] = set()  # filled in once the proxy's port is known
        self.requests = 0
        self._client: httpx.AsyncClient | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            await self._forward(scope, receive, send)

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self._client = httpx.AsyncClient(timeout=httpx.Timeout(30.0, read=None), follow_redirects=False)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._client is not None:
                    await self._client.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _headers(self, raw: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        headers: list[tuple[bytes, bytes]] = [(b"host", self.target_netloc), (b"authorization", self.authorization)]
        for name, value in raw:
            lower = name.lower()
            if lower in HOP_BY_HOP or lower in (b"host", b"authorization"):
                continue
            if lower == b"origin" and value.lower() in self.self_origins:
                value = self.target_origin
            headers.append((name, value))
        return headers

    async def _forward(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert self._client is not None, "lifespan not started"
        self.requests += 1
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        path = scope.get("raw_path") or scope["path"].encode()
        url = self.target_base + path.decode("latin-1")
        if scope.get("query_string"):
            url += "?" + scope["query_string"].decode("latin-1")
        request = self._client.build_request(scope["method"], url, headers=self._headers(scope["headers"]),
                                             content=bytes(body))
        try:
            response = await self._client.send(request, stream=True)
        except httpx.HTTPError as exc:
            await _plain(send, 502, f"auth proxy: upstream unreachable: {exc!r}")
            return
        try:
            async with anyio.create_task_group() as tg:

                async def watch_disconnect() -> None:
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    tg.cancel_scope.cancel()

                tg.start_soon(watch_disconnect)
                await send({"type": "http.response.start", "status": response.status_code,
                            "headers": [(k, v) for k, v in response.headers.raw if k.lower() not in HOP_BY_HOP]})
                async for chunk in response.aiter_raw():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                tg.cancel_scope.cancel()
        except httpx.HTTPError:
            pass  # upstream dropped mid-stream (e.g. a server closing an SSE stream): end ours too
        finally:
            await response.aclose()


async def _plain(send: Any, status: int, text: str) -> None:
    body = text.encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


@contextlib.contextmanager
def auth_proxy(target_url: str, token: str, *, host: str = "127.0.0.1") -> Iterator[str]:
    """Run an ``AuthProxy`` for ``target_url`` on a free loopback port in a background thread.

    Yields the proxy URL with the target's path (``http://127.0.0.1:<port>/mcp`` for ``.../mcp``).
    """
    target = urlsplit(target_url)
    app = AuthProxy(f"{target.scheme}://{target.netloc}", token)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    port = sock.getsockname()[1]
    app.self_origins = {f"{scheme}://{name}:{port}".encode() for scheme in ("http", "https")
                        for name in (host, "localhost", "127.0.0.1", "[::1]")}
    # No Server/Date headers of the proxy's own: the target's pass through unchanged.
    config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=2,
                            server_header=False, date_header=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="auth-proxy", daemon=True)
    thread.start()
    try:
        deadline = 100
        while not server.started and thread.is_alive() and deadline:
            threading.Event().wait(0.05)
            deadline -= 1
        if not server.started:
            raise RuntimeError("auth proxy did not start")
        path = target.path or "/"
        yield f"http://{host}:{port}{path}" + (f"?{target.query}" if target.query else "")
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
