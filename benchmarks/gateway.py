"""Gateway overhead: one echo MCP server called directly, through a FastMCP proxy and through the Kontor gateway.

What it does, all on 127.0.0.1 and below one temporary data root that is removed at the end:

1. Starts an echo MCP server (the SDK's ``MCPServer`` with one read-only tool ``echo(text)``, served by
   uvicorn over Streamable HTTP) in a subprocess: ``python benchmarks/gateway.py --serve-echo PORT``.
2. Starts a FastMCP proxy in front of it (``fastmcp.server.create_proxy(URL)``, its default behaviour,
   served by ``FastMCP.run(transport="http")``): ``python benchmarks/gateway.py --serve-fastmcp PORT URL``.
   The peer baseline.
3. Creates tenant ``bench`` in a fresh gateway database, enables the echo server there as ``echo``
   (scopes ``echo:read echo:write``), starts ``python -m kontor.gateway serve`` with authorization,
   scope checks and the audit log on (rate limits set far above what the run sends) and mints one
   access token per worker (subject ``bench-user-<i>``), signed like the built-in authorization
   server signs them. The gateway's tool is ``echo__echo`` at ``/t/bench/mcp``.
4. For each client (``raw``, ``sdk``) and concurrency (1, 8, 32), runs ``--calls`` ``tools/call``
   requests against ``direct``, ``fastmcp`` and ``gateway`` back to back (so the three figures of one
   row group share the machine's state). Each concurrent worker is its own client with its own MCP
   session (and, at the gateway, its own user); sessions are opened and ``--warmup`` calls per
   worker are made before the clock starts. Workers then take calls from a shared budget until it
   is spent or ``--max-seconds`` have passed (that limit bounds the slow FastMCP proxy's share of
   the run; the ``calls`` figure says how many calls a configuration's figures rest on).

   * ``raw``: an ``httpx.AsyncClient`` speaking JSON-RPC over HTTP: ``initialize`` and
     ``notifications/initialized`` once, then one POST per ``tools/call``, the answer read as JSON or
     SSE. The floor without client overhead.
   * ``sdk``: the official ``mcp`` client (``mcp.Client`` over ``streamable_http_client`` with an
     ``httpx2.AsyncClient``, ``mode="legacy"``: the initialize handshake, like the raw client).

Figures: latency p50/p95/p99 of the successful calls, calls/s (successful calls over the wall time of
the measured phase) and the ratios to ``direct`` for the same client and concurrency. A call counts
as an error when it raises, times out, answers with an error or ``isError``, or echoes the wrong
text; a session that cannot be opened and failed warm-up calls count too. Errors never stop the run.

Targets (raw client): gateway p50 at concurrency 1 <= 2x direct; gateway calls/s at concurrency 32
>= 0.5x direct; zero errors. They are printed next to the figures, never asserted.

``--soak-seconds S`` (default off) then runs the gateway at concurrency 8 with the raw client for S
seconds and reports the gateway process's RSS (``VmRSS`` of ``/proc/<pid>/status``) at the start,
every minute and at the end.

Run: ``.venv/bin/python benchmarks/gateway.py [--calls 500] [--max-seconds 20] [--warmup 5]
[--concurrency 1,8,32] [--quick] [--json] [--soak-seconds S] [--soak-only] [--audit-synchronous FULL|NORMAL]``.
The default run takes about 5 minutes on a busy 2-core machine; ``--quick`` (20 calls, concurrency
1 and 8, at most 8 s per configuration) about 40 s.
Progress goes to stderr; the figures to stdout (with ``--json``: one JSON object per configuration
per line, keys ``label client concurrency p50_ms p95_ms p99_ms calls_per_s errors`` and a few more).
Everything started here is stopped at the end, also on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
import uuid
from array import array
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from processes import (  # benchmarks/processes.py
    Process,
    free_port,
    run_with_servers,
    start_process,
    wait_healthy,
)

LABELS = ("direct", "fastmcp", "gateway")
CLIENTS = ("raw", "sdk")
CONCURRENCY = (1, 8, 32)
QUICK_CONCURRENCY = (1, 8)
DEFAULT_CALLS = 500
DEFAULT_WARMUP = 5
DEFAULT_MAX_SECONDS = 20.0  # the FastMCP proxy is slow; this bounds its configurations
GLOBAL_WARMUP = 20  # calls per target before the first configuration (lazy imports, catalog, pinning)
QUICK_CALLS = 20
QUICK_WARMUP = 1
QUICK_MAX_SECONDS = 8.0
SOAK_CONCURRENCY = 8
RSS_EVERY_S = 60.0

TENANT = "bench"
SERVER = "echo"  # the gateway's name for the upstream: its tool is echo__echo
PROTOCOL_VERSION = "2025-11-25"
CALL_TIMEOUT_S = 30.0
OPEN_TIMEOUT_S = 60.0
START_TIMEOUT_S = 90.0
RATE_UNLIMITED = "1000000"

TARGET_P50_RATIO = 2.0  # gateway p50 at concurrency 1 <= 2x direct (raw client)
TARGET_THROUGHPUT_RATIO = 0.5  # gateway calls/s at concurrency 32 >= 0.5x direct (raw client)

HERE = Path(__file__).resolve()
REPO = HERE.parents[1]


def log(message: str) -> None:
    print(f"[gateway-bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- the servers (subprocesses)


def serve_echo(port: int) -> None:
    """The echo MCP server: ``echo(text)`` (read-only), Streamable HTTP on 127.0.0.1:PORT/mcp, /health."""
    import mcp_types as types
    import uvicorn
    from mcp.server.mcpserver import MCPServer

    from kontor.serving import add_health_route, transport_security

    server = MCPServer("echo")

    @server.tool(annotations=types.ToolAnnotations(readOnlyHint=True))
    def echo(text: str) -> str:
        """Return the text unchanged."""
        return text

    add_health_route(server)
    app = server.streamable_http_app(transport_security=transport_security("127.0.0.1", port))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def serve_fastmcp(port: int, target: str) -> None:
    """A FastMCP proxy for ``target`` with the library's defaults, on 127.0.0.1:PORT/mcp, plus /health."""
    from fastmcp.server import create_proxy
    from starlette.requests import Request
    from starlette.responses import JSONResponse

    proxy = create_proxy(target, name="fastmcp-proxy")

    @proxy.custom_route("/health", methods=["GET"])
    async def health(_: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    proxy.run(transport="http", host="127.0.0.1", port=port, path="/mcp", show_banner=False, log_level="warning",
              uvicorn_config={"access_log": False})


# ----------------------------------------------------------------------------- processes


def rss_kb(pid: int) -> int | None:
    """Resident set size of a process in kB (``VmRSS`` in /proc/<pid>/status); None when unreadable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def child_env(root: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KONTOR_", "FASTMCP_"))}
    env.update({"KONTOR_DATA_ROOT": str(root), "KONTOR_LOG_LEVEL": "WARNING", "HF_HUB_OFFLINE": "1",
                "FASTMCP_CHECK_FOR_UPDATES": "off", "FASTMCP_SHOW_SERVER_BANNER": "false",
                "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env


# ----------------------------------------------------------------------------- the gateway's tenant and tokens


async def setup_tenant(database_url: str, upstream_url: str) -> None:
    """Tenant ``bench`` with the echo server enabled as ``echo`` (before the gateway starts, as the tests do)."""
    from kontor.gateway.db import GatewayDB

    db = GatewayDB(database_url)
    await db.init()
    try:
        if await db.get_tenant(TENANT) is None:
            await db.create_tenant(TENANT)
        await db.enable_server(TENANT, SERVER, upstream_url, [f"{SERVER}:read", f"{SERVER}:write"])
    finally:
        await db.close()


def mint_token(settings: Any, subject: str, ttl_s: int) -> str:
    """An access token for tenant ``bench`` as the built-in authorization server issues them (same keys)."""
    from joserfc import jwt

    from kontor.gateway.keys import KeyStore

    key = KeyStore(settings.data_dir / "keys" / "oauth").current()
    now = int(time.time())
    claims = {"iss": settings.issuer(TENANT), "sub": subject, "aud": settings.resource_uri(TENANT),
              "exp": now + ttl_s, "iat": now, "nbf": now, "jti": uuid.uuid4().hex, "tenant": TENANT,
              "client_id": "gateway-bench", "scope": f"{SERVER}:read {SERVER}:write", "roles": ["member"],
              "email": f"{subject}@example.com"}
    return jwt.encode({"alg": "ES256", "kid": key.kid, "typ": "at+jwt"}, claims, key.key)


# ----------------------------------------------------------------------------- clients


@dataclass
class Target:
    label: str
    url: str
    tool: str
    tokens: Sequence[str] = ()  # one per worker (gateway); empty: no Authorization header

    def headers(self, worker: int) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[worker]}"} if self.tokens else {}


class CallFailed(Exception):
    pass


def _check_result(result: Any, text: str) -> None:
    if not isinstance(result, dict):
        raise CallFailed("no result object")
    if result.get("isError"):
        raise CallFailed(f"tool error: {str(result.get('content'))[:200]}")
    content = result.get("content") or [{}]
    if not isinstance(content, list) or not isinstance(content[0], dict) or content[0].get("text") != text:
        raise CallFailed(f"unexpected content: {str(content)[:200]}")


def _sse_messages(body: str) -> Iterator[Any]:
    for event in body.replace("\r\n", "\n").replace("\r", "\n").split("\n\n"):
        data = [line[5:].removeprefix(" ") for line in event.split("\n") if line.startswith("data:")]
        if data:
            with contextlib.suppress(ValueError):
                yield json.loads("\n".join(data))


class RawClient:
    """JSON-RPC over HTTP with ``httpx``: initialize once, then one POST per ``tools/call``."""

    def __init__(self, target: Target, worker: int) -> None:
        self.target = target
        self.http = httpx.AsyncClient(timeout=httpx.Timeout(CALL_TIMEOUT_S), headers={
            "accept": "application/json, text/event-stream", "content-type": "application/json",
            **target.headers(worker)})
        self.session_id: str | None = None
        self.ids = 0

    async def _post(self, message: dict[str, Any]) -> httpx.Response:
        headers = {}
        if self.session_id:
            headers["mcp-session-id"] = self.session_id
            headers["mcp-protocol-version"] = PROTOCOL_VERSION
        return await self.http.post(self.target.url, content=json.dumps(message, separators=(",", ":")),
                                    headers=headers)

    async def _request(self, method: str, params: dict[str, Any]) -> tuple[httpx.Response, dict[str, Any]]:
        self.ids += 1
        request_id = self.ids
        response = await self._post({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})
        if response.status_code != 200:
            raise CallFailed(f"HTTP {response.status_code}: {response.text[:200]}")
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            messages = list(_sse_messages(response.text))
        else:
            body = response.json()
            messages = body if isinstance(body, list) else [body]
        answer = next((m for m in messages if isinstance(m, dict) and m.get("id") == request_id), None)
        if answer is None:
            raise CallFailed(f"no answer to {method}")
        if "error" in answer:
            raise CallFailed(f"JSON-RPC error: {str(answer['error'])[:200]}")
        return response, answer.get("result")

    async def open(self) -> None:
        response, result = await self._request("initialize", {
            "protocolVersion": PROTOCOL_VERSION, "capabilities": {},
            "clientInfo": {"name": "gateway-bench-raw", "version": "1"}})
        self.session_id = response.headers.get("mcp-session-id")
        ack = await self._post({"jsonrpc": "2.0", "method": "notifications/initialized"})
        if ack.status_code >= 400:
            raise CallFailed(f"notifications/initialized: HTTP {ack.status_code}")

    async def call(self, text: str) -> None:
        _, result = await self._request("tools/call", {"name": self.target.tool, "arguments": {"text": text}})
        _check_result(result, text)

    async def close(self) -> None:
        try:
            if self.session_id:
                with contextlib.suppress(httpx.HTTPError):
                    await self.http.delete(self.target.url, headers={"mcp-session-id": self.session_id,
                                                                     "mcp-protocol-version": PROTOCOL_VERSION})
        finally:
            await self.http.aclose()


class SdkClient:
    """The official ``mcp`` client (Streamable HTTP over ``httpx2``), opened and closed in one task."""

    def __init__(self, target: Target, worker: int) -> None:
        self.target, self.worker = target, worker
        self.stack = contextlib.AsyncExitStack()
        self.client: Any = None

    async def open(self) -> None:
        import httpx2
        from mcp import Client
        from mcp.client.streamable_http import streamable_http_client

        http = await self.stack.enter_async_context(httpx2.AsyncClient(
            headers=self.target.headers(self.worker), timeout=httpx2.Timeout(CALL_TIMEOUT_S, read=CALL_TIMEOUT_S)))
        client = Client(streamable_http_client(self.target.url, http_client=http), mode="legacy",
                        read_timeout_seconds=CALL_TIMEOUT_S)
        self.client = await self.stack.enter_async_context(client)

    async def call(self, text: str) -> None:
        result = await self.client.call_tool(self.target.tool, {"text": text})
        if result.is_error:
            raise CallFailed("tool error")
        if not result.content or getattr(result.content[0], "text", None) != text:
            raise CallFailed("unexpected content")

    async def close(self) -> None:
        await self.stack.aclose()


CLIENT_TYPES: dict[str, Callable[[Target, int], RawClient | SdkClient]] = {"raw": RawClient, "sdk": SdkClient}


# ----------------------------------------------------------------------------- measurement


@dataclass
class Run:
    """State shared by the workers of one configuration."""

    concurrency: int
    budget: int | None  # calls left to hand out; None: until ``deadline``
    deadline: float | None = None
    latencies: array = field(default_factory=lambda: array("d"))
    errors: int = 0
    first_error: str | None = None
    ready: int = 0
    all_ready: asyncio.Event = field(default_factory=asyncio.Event)
    go: asyncio.Event = field(default_factory=asyncio.Event)
    started: float = 0.0
    ended: float = 0.0

    def error(self, exc: BaseException) -> None:
        self.errors += 1
        if self.first_error is None:
            self.first_error = f"{type(exc).__name__}: {exc}"[:300]

    def take(self) -> bool:
        """Whether a worker may make one more call: budget left and the deadline (if any) not passed."""
        if self.deadline is not None and time.perf_counter() >= self.deadline:
            return False
        if self.budget is None:
            return True
        if self.budget <= 0:
            return False
        self.budget -= 1
        return True


async def _timed(awaitable: Awaitable[None], timeout_s: float) -> None:
    async with asyncio.timeout(timeout_s):
        await awaitable


async def worker(run: Run, target: Target, kind: str, index: int, warmup: int) -> None:
    client: RawClient | SdkClient | None = None
    opened = False
    try:
        try:
            client = CLIENT_TYPES[kind](target, index)
            await _timed(client.open(), OPEN_TIMEOUT_S)
            opened = True
        except Exception as exc:
            run.error(exc)
        for i in range(warmup if opened else 0):
            try:
                await _timed(client.call(f"warm-{index}-{i}"), CALL_TIMEOUT_S)
            except Exception as exc:
                run.error(exc)
        run.ready += 1
        if run.ready == run.concurrency:
            run.all_ready.set()
        await run.go.wait()
        n = 0
        while opened and run.take():
            n += 1
            text = f"w{index}-{n}"
            t0 = time.perf_counter()
            try:
                await _timed(client.call(text), CALL_TIMEOUT_S)
            except Exception as exc:
                run.error(exc)
            else:
                run.latencies.append(time.perf_counter() - t0)
        run.ended = max(run.ended, time.perf_counter())
    finally:
        if client is not None:
            with contextlib.suppress(Exception):
                await _timed(client.close(), 10.0)


async def measure(target: Target, kind: str, concurrency: int, warmup: int, *, calls: int | None = None,
                  seconds: float | None = None, on_start: Callable[[], Awaitable[None]] | None = None) -> Run:
    run = Run(concurrency=concurrency, budget=calls)
    tasks = [asyncio.create_task(worker(run, target, kind, i, warmup)) for i in range(concurrency)]
    try:
        await run.all_ready.wait()
        if on_start is not None:
            await on_start()
        run.started = time.perf_counter()
        if seconds is not None:
            run.deadline = run.started + seconds
        run.go.set()
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return run


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default) of sorted ``values``."""
    if not values:
        return None
    pos = (len(values) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (pos - lo)


def summarise(label: str, kind: str, run: Run) -> dict[str, Any]:
    lat = sorted(run.latencies)
    wall = max(run.ended - run.started, 1e-9)

    def ms(q: float) -> float | None:
        value = percentile(lat, q)
        return None if value is None else round(value * 1000, 3)

    return {"label": label, "client": kind, "concurrency": run.concurrency, "p50_ms": ms(0.50), "p95_ms": ms(0.95),
            "p99_ms": ms(0.99), "calls_per_s": round(len(lat) / wall, 1), "errors": run.errors, "calls": len(lat),
            "wall_s": round(wall, 3)}


# ----------------------------------------------------------------------------- reporting


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else round(a / b, 3)


def add_ratios(rows: list[dict[str, Any]]) -> None:
    direct = {(r["client"], r["concurrency"]): r for r in rows if r["label"] == "direct"}
    for row in rows:
        base = direct.get((row["client"], row["concurrency"]))
        row["p50_vs_direct"] = _ratio(row["p50_ms"], base["p50_ms"]) if base else None
        row["calls_per_s_vs_direct"] = _ratio(row["calls_per_s"], base["calls_per_s"]) if base else None


def _fmt(value: float | None, spec: str = ".2f", suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def table(rows: list[dict[str, Any]]) -> str:
    head = (f"{'label':<8} {'client':<6} {'conc':>4} {'calls':>6} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} "
            f"{'calls/s':>9} {'errors':>6} {'p50/direct':>10} {'calls/s/direct':>14}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['label']:<8} {r['client']:<6} {r['concurrency']:>4} {r['calls']:>6} {_fmt(r['p50_ms']):>8} "
                     f"{_fmt(r['p95_ms']):>8} {_fmt(r['p99_ms']):>8} {_fmt(r['calls_per_s'], '.1f'):>9} "
                     f"{r['errors']:>6} {_fmt(r['p50_vs_direct'], '.2f', 'x'):>10} "
                     f"{_fmt(r['calls_per_s_vs_direct'], '.2f', 'x'):>14}")
    return "\n".join(lines)


def targets(rows: list[dict[str, Any]]) -> list[str]:
    def find(client: str, concurrency: int) -> dict[str, Any] | None:
        return next((r for r in rows if (r["label"], r["client"], r["concurrency"]) == ("gateway", client,
                                                                                       concurrency)), None)

    def verdict(ok: bool | None) -> str:
        return "n/a" if ok is None else ("met" if ok else "NOT met")

    out = ["Targets (raw client; printed, not asserted):"]
    c1 = find("raw", 1)
    r = c1["p50_vs_direct"] if c1 else None
    out.append(f"  gateway p50 at concurrency 1 <= {TARGET_P50_RATIO:g}x direct: {_fmt(r, '.2f', 'x')} "
               f"-> {verdict(None if r is None else r <= TARGET_P50_RATIO)}")
    c32 = find("raw", 32)
    r = c32["calls_per_s_vs_direct"] if c32 else None
    out.append(f"  gateway calls/s at concurrency 32 >= {TARGET_THROUGHPUT_RATIO:g}x direct: {_fmt(r, '.2f', 'x')} "
               f"-> {verdict(None if r is None else r >= TARGET_THROUGHPUT_RATIO)}")
    errors = sum(row["errors"] for row in rows)
    raw_errors = sum(row["errors"] for row in rows if row["client"] == "raw")
    out.append(f"  zero errors: {raw_errors} (raw client), {errors} (all configurations) -> {verdict(errors == 0)}")
    return out


# ----------------------------------------------------------------------------- the run


@dataclass
class Setup:
    targets: dict[str, Target]
    gateway_pid: int


async def bench(setup: Setup, args: argparse.Namespace) -> int:
    rows: list[dict[str, Any]] = []
    cap = args.max_seconds or None
    labels = [label for label in LABELS if label in args.labels]
    clients = [kind for kind in CLIENTS if kind in args.clients]
    for label in labels if args.warmup else ():
        run = await measure(setup.targets[label], "raw", 1, 0, calls=GLOBAL_WARMUP)
        log(f"warm-up of {label}: {GLOBAL_WARMUP} calls, {run.errors} errors"
            + (f" (first: {run.first_error})" if run.first_error else ""))
    if not args.soak_only:
        total = len(clients) * len(args.concurrency) * len(labels)
        for kind in clients:
            for concurrency in args.concurrency:
                for label in labels:
                    log(f"[{len(rows) + 1}/{total}] {label} {kind} concurrency {concurrency}: "
                        f"{args.calls} calls (+{args.warmup} warm-up per worker)")
                    run = await measure(setup.targets[label], kind, concurrency, args.warmup, calls=args.calls,
                                        seconds=cap)
                    row = summarise(label, kind, run)
                    rows.append(row)
                    log(f"    p50 {_fmt(row['p50_ms'])} ms, {row['calls_per_s']} calls/s, {row['errors']} errors"
                        + (f" (first: {run.first_error})" if run.first_error else ""))
        add_ratios(rows)
        if args.json:
            for row in rows:
                print(json.dumps(row), flush=True)
        else:
            limit = f", at most {args.max_seconds:g} s each" if args.max_seconds else ""
            print(f"\nGateway benchmark: echo tool, {args.calls} calls per configuration{limit} "
                  f"({args.warmup} warm-up calls per worker excluded); gateway audit on, "
                  f"synchronous={args.audit_synchronous}")
            print(table(rows))
            print()
            print("\n".join(targets(rows)))
    if args.soak_seconds:
        soak = await run_soak(setup, args)
        if args.json:
            print(json.dumps(soak), flush=True)
        else:
            print(f"\nSoak: gateway, raw client, concurrency {SOAK_CONCURRENCY}, {args.soak_seconds:g} s: "
                  f"{soak['calls']} calls, {soak['calls_per_s']} calls/s, p50 {_fmt(soak['p50_ms'])} ms, "
                  f"p99 {_fmt(soak['p99_ms'])} ms, {soak['errors']} errors")
            for t, kb in soak["rss_kb"]:
                print(f"  gateway RSS at {t:>7.0f} s: {_fmt(None if kb is None else kb / 1024, '.1f')} MiB")
            start, end = soak["rss_start_kb"], soak["rss_end_kb"]
            if start and end:
                print(f"  change: {(end - start) / 1024:+.1f} MiB")
    return 0


async def run_soak(setup: Setup, args: argparse.Namespace) -> dict[str, Any]:
    pid = setup.gateway_pid
    samples: list[tuple[float, int | None]] = []
    t0 = 0.0

    def sample() -> None:
        kb = rss_kb(pid)
        samples.append((round(time.perf_counter() - t0, 1), kb))
        log(f"soak: gateway RSS {'?' if kb is None else f'{kb / 1024:.1f} MiB'} at {samples[-1][0]:.0f} s")

    async def sampler() -> None:
        while True:
            await asyncio.sleep(RSS_EVERY_S)
            sample()

    task: asyncio.Task[None] | None = None

    async def on_start() -> None:
        nonlocal t0, task
        t0 = time.perf_counter()
        sample()
        task = asyncio.create_task(sampler())

    log(f"soak: gateway, raw client, concurrency {SOAK_CONCURRENCY}, {args.soak_seconds:g} s")
    try:
        run = await measure(setup.targets["gateway"], "raw", SOAK_CONCURRENCY, args.warmup,
                            seconds=args.soak_seconds, on_start=on_start)
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    sample()
    row = summarise("gateway", "raw", run)
    row.update({"soak_seconds": args.soak_seconds, "rss_kb": samples, "rss_start_kb": samples[0][1],
                "rss_end_kb": samples[-1][1]})
    return row


def prepare(root: Path, args: argparse.Namespace, processes: list[Process]) -> Setup:
    logs = root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = child_env(root)
    echo_port, proxy_port, gw_port = free_port(), free_port(), free_port()
    echo_url = f"http://127.0.0.1:{echo_port}/mcp"

    # GatewaySettings.data_dir reads the core settings' data root: point this process at the temp root too.
    os.environ["KONTOR_DATA_ROOT"] = str(root)
    from kontor.gateway.config import GatewaySettings
    from kontor.settings import get_settings

    get_settings.cache_clear()
    settings = GatewaySettings(host="127.0.0.1", port=gw_port)
    asyncio.run(setup_tenant(settings.database_url, echo_url))

    log(f"starting the echo server (:{echo_port}), the FastMCP proxy (:{proxy_port}) and the gateway (:{gw_port}, "
        f"audit on, synchronous={args.audit_synchronous})")
    echo = start_process("echo", [sys.executable, str(HERE), "--serve-echo", str(echo_port)], env,
                         f"http://127.0.0.1:{echo_port}/health", logs, processes)
    proxy = None
    if "fastmcp" in args.labels:
        proxy = start_process("fastmcp", [sys.executable, str(HERE), "--serve-fastmcp", str(proxy_port), echo_url],
                              env, f"http://127.0.0.1:{proxy_port}/health", logs, processes)
    gw_env = child_env(root, KONTOR_GATEWAY_PORT=str(gw_port), KONTOR_GATEWAY_HOST="127.0.0.1",
                       KONTOR_GATEWAY_AUDIT="true", KONTOR_GATEWAY_AUDIT_SYNCHRONOUS=args.audit_synchronous,
                       KONTOR_GATEWAY_RATE_TENANT_PER_S=RATE_UNLIMITED, KONTOR_GATEWAY_RATE_TENANT_BURST=RATE_UNLIMITED,
                       KONTOR_GATEWAY_RATE_USER_PER_S=RATE_UNLIMITED, KONTOR_GATEWAY_RATE_USER_BURST=RATE_UNLIMITED)
    gateway = start_process("gateway", [sys.executable, "-m", "kontor.gateway", "serve", "--port", str(gw_port)],
                            gw_env, f"{settings.origin}/health", logs, processes)
    wait_healthy([p for p in (echo, proxy, gateway) if p is not None], timeout_s=START_TIMEOUT_S)
    workers = max([*args.concurrency, SOAK_CONCURRENCY])
    ttl = 4 * 3600 + int(args.soak_seconds or 0)
    tokens = [mint_token(settings, f"bench-user-{i}", ttl) for i in range(workers)]
    return Setup(targets={
        "direct": Target("direct", echo_url, "echo"),
        "fastmcp": Target("fastmcp", f"http://127.0.0.1:{proxy_port}/mcp", "echo"),
        "gateway": Target("gateway", settings.resource_uri(TENANT), f"{SERVER}__echo", tokens),
    }, gateway_pid=gateway.popen.pid)


def _levels(value: str) -> list[int]:
    return [int(x) for x in value.split(",") if x.strip()]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--calls", type=int, default=None,
                        help=f"measured calls per configuration (default {DEFAULT_CALLS}; {QUICK_CALLS} with --quick)")
    parser.add_argument("--max-seconds", type=float, default=None,
                        help=f"stop a configuration's measured phase after this long even if calls are left "
                             f"(default {DEFAULT_MAX_SECONDS:g}; {QUICK_MAX_SECONDS:g} with --quick; 0: no limit)")
    parser.add_argument("--warmup", type=int, default=None,
                        help=f"warm-up calls per worker, not measured (default {DEFAULT_WARMUP}; "
                             f"{QUICK_WARMUP} with --quick)")
    parser.add_argument("--concurrency", type=_levels, default=None,
                        help="comma-separated concurrency levels (default 1,8,32; 1,8 with --quick)")
    parser.add_argument("--labels", type=lambda v: v.split(","), default=list(LABELS),
                        help="comma-separated targets to measure (default direct,fastmcp,gateway; ratios need direct)")
    parser.add_argument("--clients", type=lambda v: v.split(","), default=list(CLIENTS),
                        help="comma-separated clients (default raw,sdk)")
    parser.add_argument("--quick", action="store_true", help="a small smoke run (about a minute)")
    parser.add_argument("--json", action="store_true", help="one JSON object per configuration per line on stdout")
    parser.add_argument("--soak-seconds", type=float, default=0.0,
                        help="then run the gateway at concurrency 8 (raw client) this long, reporting its RSS")
    parser.add_argument("--soak-only", action="store_true", help="with --soak-seconds: skip the configurations")
    parser.add_argument("--audit-synchronous", choices=("FULL", "NORMAL"), default="NORMAL",
                        help="the gateway's KONTOR_GATEWAY_AUDIT_SYNCHRONOUS (default NORMAL, the gateway's default)")
    parser.add_argument("--serve-echo", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--serve-fastmcp", nargs=2, metavar=("PORT", "URL"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.calls is None:
        args.calls = QUICK_CALLS if args.quick else DEFAULT_CALLS
    if args.warmup is None:
        args.warmup = QUICK_WARMUP if args.quick else DEFAULT_WARMUP
    if args.max_seconds is None:
        args.max_seconds = QUICK_MAX_SECONDS if args.quick else DEFAULT_MAX_SECONDS
    if args.concurrency is None:
        args.concurrency = list(QUICK_CONCURRENCY if args.quick else CONCURRENCY)
    if args.calls < 1 or args.warmup < 0 or args.max_seconds < 0 or not args.concurrency \
            or min(args.concurrency) < 1:
        parser.error("--calls and the concurrency levels must be positive, --warmup and --max-seconds not negative")
    if not set(args.labels) <= set(LABELS) or not set(args.clients) <= set(CLIENTS):
        parser.error(f"--labels takes {','.join(LABELS)}; --clients takes {','.join(CLIENTS)}")
    if args.soak_only and not args.soak_seconds:
        parser.error("--soak-only needs --soak-seconds")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_echo is not None:
        serve_echo(args.serve_echo)
        return 0
    if args.serve_fastmcp is not None:
        serve_fastmcp(int(args.serve_fastmcp[0]), args.serve_fastmcp[1])
        return 0

    def run(root: Path, processes: list[Process]) -> int:
        setup = prepare(root, args, processes)
        return asyncio.run(bench(setup, args))

    return run_with_servers("kontor-gateway-bench-", run, log)


if __name__ == "__main__":
    sys.exit(main())
