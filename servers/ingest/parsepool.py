"""Parsing in separate worker processes, with a time and memory limit per file.

Format libraries run on untrusted bytes. Each worker is a separate Python process
(``python -m kontor.servers.ingest.parsepool``, importing only the handlers) with an
address-space limit; a file that takes longer than ``Limits.per_file_seconds`` gets its
worker killed and replaced, so one hostile file can neither hang nor exhaust the server.
A worker parses a whole file tree (an e-mail with attachments, a ZIP of ZIPs) and
returns it flattened, without the raw bytes of the children.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from kontor.servers.ingest.model import Block, IngestError, ParsedDocument, Product
from kontor.settings import Limits

log = logging.getLogger(__name__)


@dataclass
class ParsedNode:
    """One document of a parsed tree. ``path`` is the chain of names from the top file."""

    path: list[str]
    sha256: str
    size: int
    parsed: ParsedDocument | None = None
    error_code: str | None = None
    error: str | None = None
    children: list[int] = field(default_factory=list)  # indexes into the flattened list


@dataclass
class ParseResult:
    nodes: list[ParsedNode]
    error_code: str | None = None  # set when the top file failed as a whole
    error: str | None = None


def parse_tree(data: bytes, name: str, limits: Limits) -> list[ParsedNode]:
    """Parse ``data`` and, recursively, its attachments/members (breadth first)."""
    from kontor.servers.ingest.handlers import parse

    nodes: list[ParsedNode] = []
    queue: list[tuple[int | None, list[str], bytes, int]] = [(None, [name], data, 0)]
    while queue:
        parent, path, blob, depth = queue.pop(0)
        node = ParsedNode(path=path, sha256=hashlib.sha256(blob).hexdigest(), size=len(blob))
        index = len(nodes)
        nodes.append(node)
        if parent is not None:
            nodes[parent].children.append(index)
        try:
            if len(blob) > limits.max_file_bytes:
                raise IngestError(f"file is {len(blob)} bytes, over the limit of {limits.max_file_bytes}")
            parsed = parse(blob, path[-1], limits, depth=depth)
        except IngestError as exc:
            node.error_code, node.error = exc.code, exc.reason
            continue
        except MemoryError:
            node.error_code, node.error = "limit_exceeded", "parser ran out of its memory limit"
            continue
        except Exception as exc:  # a handler bug must not take the batch down
            log.exception("handler crashed on %s", "/".join(path))
            node.error_code, node.error = "handler_error", f"could not parse: {type(exc).__name__}: {exc}"
            continue
        children, parsed.children = parsed.children, []
        node.parsed = parsed
        for child in children:
            queue.append((index, [*path, child.name], child.data, depth + 1))
    return nodes


def _node_to_json(node: ParsedNode) -> dict[str, Any]:
    return dataclasses.asdict(node)


def _node_from_json(data: dict[str, Any]) -> ParsedNode:
    parsed = data.pop("parsed")
    node = ParsedNode(**data)
    if parsed is not None:
        parsed["blocks"] = [Block(**b) for b in parsed["blocks"]]
        parsed["products"] = [Product(**p) for p in parsed["products"]]
        parsed["children"] = []
        node.parsed = ParsedDocument(**parsed)
    return node


def _write_frame(stream: BinaryIO, payload: bytes) -> None:
    stream.write(struct.pack(">Q", len(payload)))
    stream.write(payload)
    stream.flush()


def _read_frame(stream: BinaryIO) -> bytes:
    header = stream.read(8)
    if len(header) < 8:
        raise EOFError("parser process closed its pipe")
    (size,) = struct.unpack(">Q", header)
    data = stream.read(size)
    if len(data) < size:
        raise EOFError("parser process closed its pipe")
    return data


def worker_main() -> None:
    """Entry point of a parser process (``python -m kontor.servers.ingest.parsepool``).

    Requests arrive on stdin as frames (a JSON header, then the file's bytes); answers go out
    as JSON frames on a private copy of stdout. fd 1 itself is pointed at stderr so that
    nothing a parser library prints can reach the protocol. JSON rather than pickle: a
    parser process works on hostile input, so what it sends back must not be able to run
    code in the server.
    """
    protocol_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    memory_mb = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    if memory_mb:
        try:
            import resource

            cap = memory_mb * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
        except (ImportError, ValueError, OSError):  # pragma: no cover - platform without rlimits
            pass
    stdin = sys.stdin.buffer
    while True:
        try:
            header = json.loads(_read_frame(stdin))
            data = _read_frame(stdin)
        except EOFError:
            return
        try:
            limits = Limits(**header["limits"])
            nodes = parse_tree(data, header["name"], limits)
            answer: dict[str, Any] = {"status": "ok", "nodes": [_node_to_json(n) for n in nodes]}
        except MemoryError:
            answer = {"status": "error", "code": "limit_exceeded", "reason": "parser ran out of its memory limit"}
        except Exception as exc:  # pragma: no cover - defensive
            answer = {"status": "error", "code": "handler_error", "reason": f"{type(exc).__name__}: {exc}"}
        del data
        try:
            payload = json.dumps(answer, ensure_ascii=False, default=str).encode("utf-8")
        except MemoryError:
            payload = b'{"status": "error", "code": "limit_exceeded", "reason": "result too large for memory"}'
        _write_frame(protocol_out, payload)


class _Worker:
    def __init__(self, memory_mb: int) -> None:
        self._memory_mb = memory_mb
        self._start()

    def _start(self) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kontor.servers.ingest.parsepool", str(self._memory_mb)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None, env=env, close_fds=True,
        )

    def restart(self) -> None:
        self.kill()
        self._start()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(5)
        finally:
            for stream in (self.proc.stdin, self.proc.stdout):
                if stream is not None:
                    stream.close()

    def parse(self, data: bytes, name: str, limits: Limits, timeout: float) -> ParseResult:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        header = json.dumps({"name": name, "limits": limits.model_dump()}).encode("utf-8")
        answer: list[bytes] = []
        failure: list[BaseException] = []

        def read() -> None:
            try:
                answer.append(_read_frame(self.proc.stdout))  # type: ignore[arg-type]
            except BaseException as exc:
                failure.append(exc)

        try:
            _write_frame(self.proc.stdin, header)
            _write_frame(self.proc.stdin, data)
        except (BrokenPipeError, OSError):
            self.restart()
            return ParseResult([], "handler_error", "the parser process died (memory limit or crash)")
        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(timeout)
        if reader.is_alive():
            self.restart()
            reader.join(5)
            return ParseResult([], "limit_exceeded", f"parsing took longer than {timeout:g} s")
        if failure or not answer:
            self.restart()
            return ParseResult([], "handler_error", "the parser process died (memory limit or crash)")
        message = json.loads(answer[0])
        if message["status"] == "ok":
            return ParseResult([_node_from_json(n) for n in message["nodes"]])
        return ParseResult([], message["code"], message["reason"])


class ParserPool:
    """A fixed set of parser processes; ``parse`` is thread-safe and blocks for one file."""

    def __init__(self, limits: Limits, workers: int | None = None) -> None:
        self.limits = limits
        n = max(1, workers or limits.parser_workers)
        self._idle: list[_Worker] = [_Worker(limits.parser_memory_mb) for _ in range(n)]
        self._cond = threading.Condition()
        self._closed = False
        self.size = n

    def parse(self, data: bytes, name: str) -> ParseResult:
        with self._cond:
            while not self._idle:
                if self._closed:
                    raise RuntimeError("parser pool is closed")
                self._cond.wait()
            worker = self._idle.pop()
        started = time.monotonic()
        try:
            return worker.parse(data, name, self.limits, self.limits.per_file_seconds)
        finally:
            log.debug("parsed %s in %.2fs", name, time.monotonic() - started)
            with self._cond:
                self._idle.append(worker)
                self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            workers, self._idle = self._idle, []
        for worker in workers:
            worker.kill()

    def __enter__(self) -> ParserPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


if __name__ == "__main__":
    worker_main()
