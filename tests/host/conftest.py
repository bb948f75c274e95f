"""Fixtures for the host tests: a fake model server per test, providers aimed at it; and for the
agent-loop tests a recording TCP proxy (what the gateway sends an upstream server), a scripted
user, and a helper that opens a user's MCP session with the gateway."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from kontor.host.agent import ElicitationAnswer, SamplingRequest
from kontor.host.mcp_session import McpSession, ToolInfo
from tests.host.fakes import FakeServer


@pytest.fixture
async def server() -> AsyncIterator[FakeServer]:
    async with FakeServer() as fake:
        yield fake


class RecordingProxy:
    """A loopback TCP proxy in a thread, recording every byte sent towards the target.

    It sits between the gateway and an upstream server (registered under the proxy's URL), so a
    test can see exactly which requests and notifications reached the upstream. The ``Host``
    header is rewritten to the target's port (the fixture upstream checks it: DNS-rebinding
    protection).
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._sent = bytearray()
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="recording-proxy")
        self._server: asyncio.Server | None = None

    @property
    def sent(self) -> bytes:
        with self._lock:
            return bytes(self._sent)

    def url(self, path: str = "/mcp") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> RecordingProxy:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the recording proxy did not start")
        return self

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            for task in [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]:
                task.cancel()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def messages(self) -> list[Any]:
        """The JSON-RPC messages POSTed towards the target so far (bodies with a Content-Length)."""
        data, out, at = self.sent, [], 0
        while (end := data.find(b"\r\n\r\n", at)) != -1:
            head = data[at:end].decode("latin-1").lower().split("\r\n")
            length = next((int(line.split(":", 1)[1]) for line in head if line.startswith("content-length:")), 0)
            body, at = data[end + 4:end + 4 + length], end + 4 + length
            if head[0].startswith("post ") and body:
                with contextlib.suppress(ValueError):
                    out.append(json.loads(body))
        return out

    def cancelled(self, method: str, match: Callable[[dict[str, Any]], bool], timeout: float = 5.0) -> bool:
        """Whether the target got ``notifications/cancelled`` for the ``method`` request matching ``match``."""
        deadline = time.monotonic() + timeout
        while True:
            messages = self.messages()
            ids = {m.get("id") for m in messages if isinstance(m, dict) and m.get("method") == method
                   and match(m.get("params") or {})}
            cancelled = {(m.get("params") or {}).get("requestId") for m in messages
                         if isinstance(m, dict) and m.get("method") == "notifications/cancelled"}
            if ids & cancelled or time.monotonic() > deadline:
                return bool(ids & cancelled)
            time.sleep(0.02)

    def wait_for(self, needle: bytes, *, count: int = 1, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.sent.count(needle) >= count:
                return True
            time.sleep(0.02)
        return self.sent.count(needle) >= count

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def start() -> None:
            self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
            self.port = self._server.sockets[0].getsockname()[1]

        self._loop.run_until_complete(start())
        self._ready.set()
        self._loop.run_forever()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        old = f"127.0.0.1:{self.port}".encode()
        new = f"127.0.0.1:{self.target_port}".encode()

        async def upstream_bound() -> None:
            held = b""
            while data := await reader.read(65536):
                data = (held + data).replace(old, new)
                held = b""
                for size in range(min(len(old) - 1, len(data)), 0, -1):  # hold a cut-off prefix of `old`
                    if old.startswith(data[-size:]):
                        data, held = data[:-size], data[-size:]
                        break
                with self._lock:
                    self._sent += data
                up_writer.write(data)
                await up_writer.drain()
            if held:
                up_writer.write(held)
            up_writer.write_eof()

        async def client_bound() -> None:
            while data := await up_reader.read(65536):
                writer.write(data)
                await writer.drain()
            writer.write_eof()

        try:
            await asyncio.gather(upstream_bound(), client_bound())
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            for w in (writer, up_writer):
                with contextlib.suppress(Exception):
                    w.close()


@dataclass
class ScriptedUser:
    """A :class:`~kontor.host.agent.UserInteraction` that answers from a script and records what it saw."""

    approvals: list[str] = field(default_factory=list)  # answers to ask_approval, in order
    form: ElicitationAnswer = field(default_factory=lambda: ElicitationAnswer.accept({"ok": True}))
    allow_sampling: bool = True
    asked: list[tuple[str, dict[str, Any], str]] = field(default_factory=list)
    forms: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    sampling: list[SamplingRequest] = field(default_factory=list)

    async def ask_approval(self, tool: ToolInfo, arguments: Mapping[str, Any], *, call_id: str,
                           reason: str) -> str:
        self.asked.append((tool.name, dict(arguments), call_id))
        return self.approvals.pop(0) if self.approvals else "deny"

    async def elicit(self, message: str, schema: Mapping[str, Any]) -> ElicitationAnswer:
        self.forms.append((message, dict(schema)))
        return self.form

    async def approve_sampling(self, request: SamplingRequest) -> bool:
        self.sampling.append(request)
        return self.allow_sampling


@contextlib.asynccontextmanager
async def user_session(gateway: Any, tenant: str, scopes: list[str], **kwargs: Any) -> AsyncIterator[McpSession]:
    """An MCP session of a user of ``tenant`` with the gateway of a ``tests.gateway.mesh.Mesh``."""
    token = gateway.token(tenant, scopes=scopes)
    async with McpSession(gateway.url(tenant), token, gateway_origin=gateway.origin, **kwargs) as session:
        yield session
