"""Local fake model servers: a tiny HTTP/1.1 server on 127.0.0.1 that records each request and
answers with scripted replies, plus builders for the real Anthropic and OpenAI SSE formats.

The server is raw asyncio on purpose: a test controls exactly which bytes go out in which
write (a multibyte character cut between two writes, a stream that never ends, a connection
dropped mid-body) and sees when the client closes the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections import deque
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""  # sent whole, with Content-Length, when there are no chunks
    chunks: list[bytes] | None = None  # sent with Transfer-Encoding: chunked, one write per piece
    cut_at: list[int] | None = None  # re-cut the joined chunks at these byte offsets
    delay: float = 0.0  # pause between pieces
    hang: bool = False  # after the pieces, keep the response open until the client goes away
    abort: bool = False  # after the pieces, drop the connection without finishing the body
    stall_before_headers: float = 0.0


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


class FakeServer:
    """``async with FakeServer() as server``: ``server.url``, ``server.script(Reply(...), ...)``,
    ``server.requests`` (what arrived), ``server.disconnected`` (the client closed a response
    that was still streaming)."""

    def __init__(self) -> None:
        self.replies: deque[Reply] = deque()
        self.requests: list[Request] = []
        self.disconnected = asyncio.Event()
        self.pieces_sent = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    def script(self, *replies: Reply) -> None:
        self.replies.extend(replies)

    async def __aenter__(self) -> FakeServer:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        await self._server.wait_closed()

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.get_running_loop().create_task(self._handle(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    name, value = line.split(":", 1)
                    headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            self.requests.append(Request(method, path, headers, body))
            reply = self.replies.popleft() if self.replies else Reply(status=500, body=b'{"error": "unscripted"}')
            await self._send(reply, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            self.disconnected.set()
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _send(self, reply: Reply, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if reply.stall_before_headers:
            await asyncio.sleep(reply.stall_before_headers)
        streamed = reply.chunks is not None
        headers = {"connection": "close", **{k.lower(): v for k, v in reply.headers.items()}}
        if streamed:
            headers["transfer-encoding"] = "chunked"
        else:
            headers["content-length"] = str(len(reply.body))
        head = f"HTTP/1.1 {reply.status} X\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        writer.write(head.encode("latin-1"))
        if not streamed:
            writer.write(reply.body)
            await writer.drain()
            return
        pieces = list(reply.chunks or [])
        if reply.cut_at:
            joined = b"".join(pieces)
            bounds = [0, *sorted(set(reply.cut_at)), len(joined)]
            pieces = [joined[a:b] for a, b in zip(bounds, bounds[1:], strict=False) if b > a]
        for piece in pieces:
            writer.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            await writer.drain()
            self.pieces_sent += 1
            await asyncio.sleep(reply.delay)
        if reply.abort:
            writer.transport.abort()
            return
        if reply.hang:
            while await reader.read(1024):  # until the client closes the connection
                pass
            self.disconnected.set()
            return
        writer.write(b"0\r\n\r\n")
        await writer.drain()


def free_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def json_reply(status: int, body: Any, headers: dict[str, str] | None = None) -> Reply:
    return Reply(status=status, body=json.dumps(body).encode(),
                 headers={"content-type": "application/json", **(headers or {})})


def sse_reply(chunks: list[bytes], **kwargs: Any) -> Reply:
    return Reply(chunks=chunks, headers={"content-type": "text/event-stream", "cache-control": "no-cache"}, **kwargs)


def mid_character_cuts(body: bytes, every: int = 64) -> list[int]:
    """Byte offsets that cut ``body`` right after the first byte of every multibyte UTF-8
    character (so a write ends inside the character), plus one cut each ``every`` bytes."""
    inside = [i for i in range(1, len(body)) if 0x80 <= body[i] < 0xC0 and body[i - 1] >= 0xC0]
    return sorted({*inside, *range(every, len(body), every)})


def fragments(text: str, size: int) -> list[str]:
    """``text`` cut into pieces of ``size`` characters."""
    return [text[i:i + size] for i in range(0, len(text), size)]


# --------------------------------------------------------------------------------------------
# Anthropic Messages API stream


def anthropic_event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


def anthropic_turn(
    *,
    texts: list[str] = (),  # type: ignore[assignment]
    tools: list[tuple[str, str, list[str]]] = (),  # type: ignore[assignment]  (id, name, partial_json fragments)
    stop_reason: str | None = "end_turn",
    input_tokens: int = 25,
    output_tokens: int = 42,
    model: str = "claude-test",
    ping: bool = True,
    stop: bool = True,
) -> list[bytes]:
    """The SSE events of one assistant turn: a text block of ``texts`` deltas (if any), then one
    ``tool_use`` block per tool, ``message_delta`` with ``stop_reason`` and ``message_stop``."""
    out = [anthropic_event("message_start", {
        "type": "message_start",
        "message": {"id": "msg_01", "type": "message", "role": "assistant", "content": [], "model": model,
                    "stop_reason": None, "stop_sequence": None,
                    "usage": {"input_tokens": input_tokens, "output_tokens": 1}},
    })]
    index = 0
    if texts:
        out.append(anthropic_event("content_block_start", {
            "type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}}))
        if ping:
            out.append(anthropic_event("ping", {"type": "ping"}))
        for text in texts:
            out.append(anthropic_event("content_block_delta", {
                "type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": text}}))
        out.append(anthropic_event("content_block_stop", {"type": "content_block_stop", "index": index}))
        index += 1
    for call_id, name, parts in tools:
        out.append(anthropic_event("content_block_start", {
            "type": "content_block_start", "index": index,
            "content_block": {"type": "tool_use", "id": call_id, "name": name, "input": {}}}))
        for part in ["", *parts]:  # the API opens with an empty fragment
            out.append(anthropic_event("content_block_delta", {
                "type": "content_block_delta", "index": index,
                "delta": {"type": "input_json_delta", "partial_json": part}}))
        out.append(anthropic_event("content_block_stop", {"type": "content_block_stop", "index": index}))
        index += 1
    if stop_reason is not None:
        out.append(anthropic_event("message_delta", {
            "type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": None},
            "usage": {"output_tokens": output_tokens}}))
    if stop:
        out.append(anthropic_event("message_stop", {"type": "message_stop"}))
    return out


def anthropic_error_body(kind: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}}


# --------------------------------------------------------------------------------------------
# OpenAI chat.completion.chunk stream


def openai_chunk(delta: dict[str, Any] | None = None, finish_reason: str | None = None, *,
                 usage: dict[str, int] | None = None, model: str = "m", extra: dict[str, Any] | None = None) -> bytes:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None,
                                         "finish_reason": finish_reason, **(extra or {})}]
    data: dict[str, Any] = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1700000000,
                            "model": model, "choices": choices}
    if usage is not None:
        data["usage"] = usage
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


def openai_data(data: Any) -> bytes:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


OPENAI_DONE = b"data: [DONE]\n\n"


def tool_delta(index: int, *, call_id: str | None = None, name: str | None = None,
               arguments: str | None = None) -> dict[str, Any]:
    call: dict[str, Any] = {"index": index}
    if call_id is not None:
        call["id"] = call_id
        call["type"] = "function"
    function = {}
    if name is not None:
        function["name"] = name
    if arguments is not None:
        function["arguments"] = arguments
    if function:
        call["function"] = function
    return {"tool_calls": [call]}


def openai_turn(
    *,
    texts: list[str] = (),  # type: ignore[assignment]
    tools: list[tuple[str, str, list[str]]] = (),  # type: ignore[assignment]
    finish_reason: str | None = "stop",
    usage: dict[str, int] | None = None,
    done: bool = True,
) -> list[bytes]:
    """A vLLM-style stream: role chunk, text deltas, each tool call (id+name, then fragments),
    the finish chunk, the usage chunk (no choices) and ``[DONE]``."""
    out = [openai_chunk({"role": "assistant", "content": ""})]
    out += [openai_chunk({"content": text}) for text in texts]
    for index, (call_id, name, parts) in enumerate(tools):
        out.append(openai_chunk(tool_delta(index, call_id=call_id, name=name, arguments="")))
        out += [openai_chunk(tool_delta(index, arguments=part)) for part in parts]
    if finish_reason is not None:
        out.append(openai_chunk({}, finish_reason))
    if usage is not None:
        out.append(openai_chunk(None, usage=usage))
    if done:
        out.append(OPENAI_DONE)
    return out
