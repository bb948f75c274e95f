"""Host overhead: one two-step chat turn through the host's agent loop + gateway + lakehouse, against the
same turn made directly (the fake model and the lakehouse's ``search`` called straight), in the same run.

What it does, all on 127.0.0.1 and below one temporary data root that is removed at the end:

1. Ingests a small corpus for tenant ``bench`` (in a subprocess, with the pipeline's ``IngestService``):
   by default three public-domain German statute excerpts from ``../shared/data`` (BGB §§ 305-310,
   621-622 from ``law/statutes_2021``; SolZG 1995 and EStG §§ 10d, 35 from ``ctax/statutes_2021``;
   amtliche Werke, § 5 UrhG, see the folders' ``SOURCES.md``), or three short built-in German texts
   when that folder is not there (a clean clone), or ``--corpus DIR``.
2. Starts, as subprocesses: a fake OpenAI-compatible model (``python benchmarks/host.py --serve-provider
   PORT ...``, Starlette + uvicorn) that streams at a fixed rate; the real lakehouse server
   (``kontor serve lakehouse --http``) behind the gateway (it verifies the gateway's internal tokens);
   and the real gateway (``python -m kontor.gateway serve``, audit on, rate limits far above the run)
   with the lakehouse enabled for the tenant.
3. Runs ``--turns`` turns of each path, interleaved (each path goes first equally often), after ``--warmup``
   turns of each:

   * ``direct`` (the baseline): the ``openai`` SDK streams the model's first step (a ``search`` tool call),
     the official ``mcp`` client calls ``search`` on the lakehouse directly with an internal token the
     gateway's keys signed (one MCP session for the whole run), and the SDK streams the answer.
   * ``host``: the host's :class:`~kontor.host.agent.Agent` with its OpenAI provider adapter and a user's
     :class:`~kontor.host.mcp_session.McpSession` with the gateway (one session for the whole run, as the
     web chat keeps one per user): the model's ``lakehouse__search`` call goes through the gateway.
   * ``gateway`` (a diagnostic, not the baseline): the ``direct`` client, but calling ``lakehouse__search``
     through the gateway with the user's token. ``gateway - direct`` is what the gateway hop costs,
     ``host - gateway`` what the host's loop and provider adapter cost.

   The fake model answers the first request of a turn with one tool call (the request's tool whose name
   ends in ``search``, the user's question as ``query``) and the second (after the tool result) with
   ``--answer-tokens`` words, ``--tokens-per-chunk`` per chunk every ``--interval-ms``, the first chunk of
   each step after ``--first-token-ms``. Both paths send the same tools (the lakehouse's five read-only
   ones) and check the answer text; a turn that raises, times out, gets a tool error or a wrong answer
   counts as an error.

Figures per path: time to first token (question to the first answer text delta, including the tool
step) and total turn time, p50 and p95 over the turns, and the search call's own time; the ratios
host / direct. Target: host <= 1.2x direct (TTFT and total, p50): printed, never asserted.

Run: ``.venv/bin/python benchmarks/host.py [--turns 40] [--warmup 3] [--answer-tokens 64]
[--tokens-per-chunk 4] [--interval-ms 20] [--first-token-ms 30] [--corpus DIR] [--quick] [--json]``.
``--quick``: 5 turns after 1 warm-up turn each. Progress goes to stderr; the figures to stdout (with
``--json``: one JSON object, keys ``direct gateway host ratio overhead target_ratio meets_target errors
turns warmup provider corpus load_avg cpus``). Everything started here is stopped at the end, also on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from processes import (  # benchmarks/processes.py
    Process,
    free_port,
    run_with_servers,
    start_process,
    wait_healthy,
)

TENANT = "bench"
MODEL = "bench-model"
QUESTIONS = (
    "Welche Kündigungsfristen gelten für Arbeitsverhältnisse?",
    "Wann ist eine Bestimmung in Allgemeinen Geschäftsbedingungen unwirksam?",
    "Wie hoch ist der Solidaritätszuschlag?",
    "Wie wird ein Verlustrücktrag berücksichtigt?",
)
DEFAULT_TURNS, DEFAULT_WARMUP = 40, 3
QUICK_TURNS, QUICK_WARMUP = 5, 1
TARGET_RATIO = 1.2
TURN_TIMEOUT_S = 60.0
START_TIMEOUT_S = 180.0
RATE_UNLIMITED = "1000000"
MAX_TOOL_RESULT_CHARS = 16_000  # what the host's agent sends the model of a tool result, at most

HERE = Path(__file__).resolve()
REPO = HERE.parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
DEFAULT_CORPUS = (SHARED_DATA / "law" / "statutes_2021" / "bgb_excerpt_agb_kuendigung.md",
                  SHARED_DATA / "ctax" / "statutes_2021" / "solzg_1995.md",
                  SHARED_DATA / "ctax" / "statutes_2021" / "estg_excerpt_10d_35.md")
BUILTIN_CORPUS = {
    "kuendigung.md": "# Kündigungsfristen\n\nDas Arbeitsverhältnis eines Arbeitnehmers kann mit einer Frist von "
                     "vier Wochen zum Fünfzehnten oder zum Ende eines Kalendermonats gekündigt werden. Die Frist "
                     "verlängert sich mit der Dauer des Arbeitsverhältnisses.\n",
    "agb.md": "# Allgemeine Geschäftsbedingungen\n\nBestimmungen in Allgemeinen Geschäftsbedingungen sind "
              "unwirksam, wenn sie den Vertragspartner entgegen den Geboten von Treu und Glauben unangemessen "
              "benachteiligen.\n",
    "solz.md": "# Solidaritätszuschlag\n\nDer Solidaritätszuschlag beträgt 5,5 Prozent der Bemessungsgrundlage. "
               "Verluste können nach § 10d EStG zurückgetragen werden.\n",
}


def log(message: str) -> None:
    print(f"[host-bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- the fake model (subprocess)


@dataclass(frozen=True)
class Rate:
    tokens_per_chunk: int = 4
    interval_ms: float = 20.0
    first_token_ms: float = 30.0
    answer_tokens: int = 64

    @property
    def answer_chunks(self) -> list[str]:
        words = [f"w{i} " for i in range(self.answer_tokens)]
        words[0] = "[1] "
        n = self.tokens_per_chunk
        return ["".join(words[i:i + n]) for i in range(0, len(words), n)]

    @property
    def answer(self) -> str:
        return "".join(self.answer_chunks)

    def as_dict(self) -> dict[str, Any]:
        chunks = len(self.answer_chunks)
        return {"tokens_per_chunk": self.tokens_per_chunk, "interval_ms": self.interval_ms,
                "first_token_ms": self.first_token_ms, "answer_tokens": self.answer_tokens,
                # the model's own share of a turn: the tool step (3 chunks) and the answer stream
                "model_time_ms": round(2 * self.first_token_ms + (2 + chunks - 1) * self.interval_ms, 1)}


def _chunk(delta: dict[str, Any] | None, finish: str | None = None, usage: dict[str, int] | None = None) -> bytes:
    data: dict[str, Any] = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": int(time.time()),
                            "model": MODEL,
                            "choices": [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]}
    if usage is not None:
        data["usage"] = usage
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def serve_provider(port: int, rate: Rate) -> None:
    """A streaming OpenAI-compatible ``/v1/chat/completions`` at a fixed rate, plus ``/health``."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    interval, first = rate.interval_ms / 1000, rate.first_token_ms / 1000

    async def completions(request: Request) -> Response:
        body = await request.json()
        messages = body.get("messages") or []
        if not body.get("stream"):
            return JSONResponse({"error": {"message": "this fake model only streams"}}, status_code=400)
        usage = {"prompt_tokens": 100, "completion_tokens": rate.answer_tokens,
                 "total_tokens": 100 + rate.answer_tokens}
        with_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        async def tool_step(name: str, query: str) -> Any:
            await asyncio.sleep(first)
            call = {"index": 0, "id": f"call_{uuid.uuid4().hex[:12]}", "type": "function",
                    "function": {"name": name, "arguments": ""}}
            yield _chunk({"role": "assistant", "content": None, "tool_calls": [call]})
            for part in ('{"query": ', json.dumps(query, ensure_ascii=False) + ', "k": 5}'):
                await asyncio.sleep(interval)
                yield _chunk({"tool_calls": [{"index": 0, "function": {"arguments": part}}]})
            yield _chunk({}, "tool_calls")
            if with_usage:
                yield _chunk(None, usage={**usage, "completion_tokens": 12})
            yield b"data: [DONE]\n\n"

        async def answer_step() -> Any:
            await asyncio.sleep(first)
            yield _chunk({"role": "assistant", "content": ""})
            for i, piece in enumerate(rate.answer_chunks):
                if i:
                    await asyncio.sleep(interval)
                yield _chunk({"content": piece})
            yield _chunk({}, "stop")
            if with_usage:
                yield _chunk(None, usage=usage)
            yield b"data: [DONE]\n\n"

        if messages and messages[-1].get("role") == "tool":
            stream = answer_step()
        else:
            names = [t.get("function", {}).get("name", "") for t in body.get("tools") or []]
            name = next((n for n in names if n.endswith("search")), None)
            question = next((_text(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), "")
            if name is None:
                return JSONResponse({"error": {"message": "no search tool offered"}}, status_code=400)
            stream = tool_step(name, question)
        return StreamingResponse(stream, media_type="text/event-stream", headers={"cache-control": "no-cache"})

    async def health(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    app = Starlette(routes=[Route("/v1/chat/completions", completions, methods=["POST"]), Route("/health", health)])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


# ----------------------------------------------------------------------------- ingestion (subprocess)


def ingest_corpus(data_root: Path, folder: Path) -> None:
    """Ingest ``folder`` for tenant ``bench``; prints one JSON line ``{"documents", "chunks", "state"}``."""
    from kontor.servers.ingest.parsepool import ParserPool
    from kontor.servers.ingest.pipeline import IngestService, expand_paths
    from kontor.settings import Limits, Settings

    async def run() -> dict[str, Any]:
        settings = Settings(data_root=data_root, tenant=TENANT)
        limits = Limits()
        with ParserPool(limits, workers=1) as pool:
            service = IngestService(settings, limits, TENANT, pool=pool)
            try:
                specs, _ = expand_paths([folder])
                report = await service.run(await service.job_for_paths(specs, "host-bench"))
                stats = service.store.stats()
                return {"documents": stats["tables"]["documents"]["rows"], "chunks": stats["tables"]["chunks"]["rows"],
                        "state": report.state}
            finally:
                await service.close()

    print(json.dumps(asyncio.run(run())), flush=True)


# ----------------------------------------------------------------------------- processes


def child_env(root: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KONTOR_")}
    env.update({"KONTOR_DATA_ROOT": str(root), "KONTOR_LOG_LEVEL": "WARNING", "HF_HUB_OFFLINE": "1",
                "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env


# ----------------------------------------------------------------------------- setup


@dataclass
class Setup:
    provider_url: str  # .../v1
    lakehouse_url: str
    lakehouse_token: Any  # () -> str: a current internal token (they live at most 15 minutes)
    gateway_url: str
    gateway_origin: str
    user_token: str
    corpus: dict[str, Any]
    rate: Rate


def _corpus_folder(root: Path, given: Path | None) -> tuple[Path, str]:
    folder = root / "corpus"
    folder.mkdir()
    if given is not None:
        for path in sorted(p for p in given.iterdir() if p.is_file()):
            shutil.copy(path, folder / path.name)
        return folder, str(given)
    if all(p.is_file() for p in DEFAULT_CORPUS):
        for path in DEFAULT_CORPUS:
            shutil.copy(path, folder / path.name)
        return folder, "../shared/data: " + ", ".join(p.name for p in DEFAULT_CORPUS)
    for name, text in BUILTIN_CORPUS.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder, "built-in (../shared/data not found)"


async def _setup_tenant(database_url: str, lakehouse_url: str) -> None:
    from kontor.gateway.db import GatewayDB

    db = GatewayDB(database_url)
    await db.init()
    try:
        if await db.get_tenant(TENANT) is None:
            await db.create_tenant(TENANT)
        await db.enable_server(TENANT, "lakehouse", lakehouse_url, ["lakehouse:read", "lakehouse:write"])
    finally:
        await db.close()


def prepare(root: Path, args: argparse.Namespace, processes: list[Process]) -> Setup:
    logs = root / "logs"
    logs.mkdir(parents=True)
    data = root / "data"
    folder, source = _corpus_folder(root, args.corpus)
    log(f"ingesting the corpus ({source}) for tenant {TENANT!r}")
    started = time.perf_counter()
    out = subprocess.run([sys.executable, str(HERE), "--ingest", str(data), str(folder)], env=child_env(data),
                         cwd=REPO, capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        raise RuntimeError(f"ingestion failed:\n{out.stderr[-3000:]}")
    corpus = {**json.loads(out.stdout.strip().splitlines()[-1]), "source": source}
    log(f"ingested {corpus['documents']} documents, {corpus['chunks']} chunks in {time.perf_counter() - started:.1f} s")
    if corpus["state"] != "completed" and not corpus["chunks"]:
        raise RuntimeError(f"ingestion did not complete: {corpus}")

    os.environ["KONTOR_DATA_ROOT"] = str(data)  # GatewaySettings.data_dir reads the core settings' data root
    from kontor.gateway.config import GatewaySettings
    from kontor.settings import get_settings

    get_settings.cache_clear()
    provider_port, lake_port, gw_port = free_port(), free_port(), free_port()
    settings = GatewaySettings(host="127.0.0.1", port=gw_port)
    lakehouse_url = f"http://127.0.0.1:{lake_port}/mcp"
    asyncio.run(_setup_tenant(settings.database_url, lakehouse_url))
    rate: Rate = args.rate
    log(f"starting the fake model (:{provider_port}), the lakehouse (:{lake_port}) and the gateway (:{gw_port})")
    provider = start_process("provider", [
        sys.executable, str(HERE), "--serve-provider", str(provider_port), "--tokens-per-chunk",
        str(rate.tokens_per_chunk), "--interval-ms", str(rate.interval_ms), "--first-token-ms",
        str(rate.first_token_ms), "--answer-tokens", str(rate.answer_tokens)],
        child_env(data), f"http://127.0.0.1:{provider_port}/health", logs, processes)
    lakehouse = start_process("lakehouse", [sys.executable, "-m", "kontor.cli", "serve", "lakehouse", "--http",
                                            f"127.0.0.1:{lake_port}"],
                              child_env(data, KONTOR_AUTH_JWKS_URL=settings.internal_jwks_url,
                                        KONTOR_AUTH_ISSUER=settings.internal_issuer,
                                        KONTOR_AUTH_AUDIENCE=lakehouse_url),
                              f"http://127.0.0.1:{lake_port}/health", logs, processes)
    gw_env = child_env(data, KONTOR_GATEWAY_PORT=str(gw_port), KONTOR_GATEWAY_HOST="127.0.0.1",
                       KONTOR_GATEWAY_AUDIT="true", KONTOR_GATEWAY_RATE_TENANT_PER_S=RATE_UNLIMITED,
                       KONTOR_GATEWAY_RATE_TENANT_BURST=RATE_UNLIMITED, KONTOR_GATEWAY_RATE_USER_PER_S=RATE_UNLIMITED,
                       KONTOR_GATEWAY_RATE_USER_BURST=RATE_UNLIMITED)
    gateway = start_process("gateway", [sys.executable, "-m", "kontor.gateway", "serve", "--port", str(gw_port)],
                            gw_env, f"{settings.origin}/health", logs, processes)
    wait_healthy([provider, lakehouse, gateway], timeout_s=START_TIMEOUT_S)
    return Setup(provider_url=f"http://127.0.0.1:{provider_port}/v1", lakehouse_url=lakehouse_url,
                 lakehouse_token=_internal_token(settings, lakehouse_url), gateway_url=settings.resource_uri(TENANT),
                 gateway_origin=settings.origin, user_token=_user_token(settings), corpus=corpus, rate=rate)


def _internal_token(settings: Any, audience: str) -> Any:
    """What the gateway sends the lakehouse: internal tokens signed with the gateway's internal keys, minted
    (and cached, renewed before they expire) exactly as the gateway does; returns ``() -> token``."""
    from kontor.gateway.keys import KeyStore
    from kontor.gateway.tokens import TokenMinter

    minter = TokenMinter(KeyStore(settings.data_dir / "keys" / "internal"), settings.internal_issuer)

    def token() -> str:
        return minter.mint(audience, "bench-user", TENANT, ["lakehouse:read"], actor=settings.internal_issuer,
                           client_id="host-bench", ttl_s=settings.internal_token_ttl_s)

    token()  # fails here, before the run, if the keys cannot sign
    return token


def _user_token(settings: Any) -> str:
    """A user's access token as the built-in authorization server issues them (same keys)."""
    from joserfc import jwt

    from kontor.gateway.keys import KeyStore

    key = KeyStore(settings.data_dir / "keys" / "oauth").current()
    now = int(time.time())
    claims = {"iss": settings.issuer(TENANT), "sub": "bench-user", "aud": settings.resource_uri(TENANT),
              "exp": now + 4 * 3600, "iat": now, "nbf": now, "jti": uuid.uuid4().hex, "tenant": TENANT,
              "client_id": "host-bench", "scope": "lakehouse:read", "roles": ["member"],
              "email": "bench-user@example.com"}
    return jwt.encode({"alg": "ES256", "kid": key.kid, "typ": "at+jwt"}, claims, key.key)


# ----------------------------------------------------------------------------- the two paths


class TurnFailed(Exception):
    pass


@dataclass
class Sample:
    ttft_s: float
    total_s: float
    search_s: float


@dataclass
class Figures:
    """The figures of one path."""

    name: str
    samples: list[Sample] = field(default_factory=list)
    errors: int = 0
    first_error: str | None = None

    def error(self, exc: BaseException) -> None:
        self.errors += 1
        if self.first_error is None:
            self.first_error = f"{type(exc).__name__}: {exc}"[:400]


class Direct:
    """The baseline: the ``openai`` SDK to the fake model, the ``mcp`` client straight to the lakehouse.

    With ``via_gateway`` the same client calls the tool through the gateway with the user's token instead
    (the diagnostic path ``gateway``: what the gateway hop costs without the host's loop)."""

    def __init__(self, setup: Setup, *, via_gateway: bool = False) -> None:
        self.setup = setup
        self.via_gateway = via_gateway
        self.stack = contextlib.AsyncExitStack()
        self.tools: list[dict[str, Any]] = []

    async def open(self) -> None:
        import httpx2
        from mcp import Client
        from mcp.client.streamable_http import streamable_http_client
        from openai import AsyncOpenAI

        self.openai = AsyncOpenAI(base_url=self.setup.provider_url, api_key="bench", max_retries=0,
                                  timeout=TURN_TIMEOUT_S)
        self.stack.push_async_callback(self.openai.close)
        user_token = self.setup.user_token
        token = (lambda: user_token) if self.via_gateway else self.setup.lakehouse_token
        url = self.setup.gateway_url if self.via_gateway else self.setup.lakehouse_url

        class Bearer(httpx2.Auth):
            def auth_flow(self, request: Any) -> Any:
                request.headers["Authorization"] = f"Bearer {token()}"
                yield request

        http = await self.stack.enter_async_context(httpx2.AsyncClient(
            auth=Bearer(), timeout=httpx2.Timeout(TURN_TIMEOUT_S, read=TURN_TIMEOUT_S)))
        self.mcp = await self.stack.enter_async_context(
            Client(streamable_http_client(url, http_client=http)))
        listed = await self.mcp.list_tools()
        self.tools = [{"type": "function", "function": {"name": t.name, "description": t.description or "",
                                                        "parameters": dict(t.input_schema)}} for t in listed.tools]

    async def close(self) -> None:
        await self.stack.aclose()

    async def turn(self, question: str) -> Sample:
        from kontor.host.agent import DEFAULT_SYSTEM_PROMPT

        t0 = time.perf_counter()
        messages: list[dict[str, Any]] = [{"role": "system", "content": DEFAULT_SYSTEM_PROMPT},
                                          {"role": "user", "content": question}]
        stream = await self.openai.chat.completions.create(model=MODEL, messages=messages, tools=self.tools,
                                                           stream=True, stream_options={"include_usage": True})
        call_id, name, arguments = "", "", []
        async for chunk in stream:
            for choice in chunk.choices:
                for delta in choice.delta.tool_calls or ():
                    call_id = delta.id or call_id
                    if delta.function is not None:
                        name = delta.function.name or name
                        arguments.append(delta.function.arguments or "")
        if not name:
            raise TurnFailed("the model asked for no tool")
        s0 = time.perf_counter()
        result = await self.mcp.call_tool(name, json.loads("".join(arguments)))
        search = time.perf_counter() - s0
        if result.is_error or not (result.structured_content or {}).get("results"):
            raise TurnFailed(f"search failed or found nothing: {str(result.content)[:200]}")
        content = "\n".join(getattr(c, "text", "") for c in result.content)[:MAX_TOOL_RESULT_CHARS]
        messages += [{"role": "assistant", "content": None, "tool_calls": [
                         {"id": call_id, "type": "function", "function": {"name": name,
                                                                          "arguments": "".join(arguments)}}]},
                     {"role": "tool", "tool_call_id": call_id, "content": content}]
        stream = await self.openai.chat.completions.create(model=MODEL, messages=messages, tools=self.tools,
                                                           stream=True, stream_options={"include_usage": True})
        ttft: float | None = None
        parts: list[str] = []
        async for chunk in stream:
            for choice in chunk.choices:
                if choice.delta.content:
                    if ttft is None:
                        ttft = time.perf_counter() - t0
                    parts.append(choice.delta.content)
        total = time.perf_counter() - t0
        if ttft is None or "".join(parts) != self.setup.rate.answer:
            raise TurnFailed("wrong answer text")
        return Sample(ttft, total, search)


class Hosted:
    """The host: :class:`Agent` + OpenAI provider adapter + the user's MCP session with the gateway."""

    def __init__(self, setup: Setup) -> None:
        self.setup = setup
        self.stack = contextlib.AsyncExitStack()

    async def open(self) -> None:
        from kontor.host.approvals import ApprovalPolicy, InMemoryApprovalStore
        from kontor.host.mcp_session import McpSession
        from kontor.host.providers.openai_provider import OpenAIProvider

        self.session = await self.stack.enter_async_context(McpSession(
            self.setup.gateway_url, self.setup.user_token, gateway_origin=self.setup.gateway_origin,
            default_timeout_s=TURN_TIMEOUT_S))
        self.provider = OpenAIProvider(model=MODEL, base_url=self.setup.provider_url, api_key="bench",
                                       read_timeout_s=TURN_TIMEOUT_S)
        self.stack.push_async_callback(self.provider.aclose)
        self.policy = ApprovalPolicy(InMemoryApprovalStore(), TENANT, "bench-user")
        tools = await self.session.list_tools()
        if "lakehouse__search" not in {t.name for t in tools}:
            raise TurnFailed(f"the gateway lists no lakehouse__search (tools: {sorted(t.name for t in tools)})")

    async def close(self) -> None:
        await self.stack.aclose()

    async def turn(self, question: str) -> Sample:
        from kontor.host.agent import Agent, AnswerComplete, Error, TextDelta, ToolCallFinished, ToolCallStarted

        agent = Agent(self.provider, self.session, self.policy, _NoUser())
        t0 = time.perf_counter()
        ttft: float | None = None
        started = search = 0.0
        done: AnswerComplete | None = None
        async for event in agent.run([], question):
            if isinstance(event, TextDelta) and ttft is None and event.text.strip():
                ttft = time.perf_counter() - t0
            elif isinstance(event, ToolCallStarted):
                started = time.perf_counter()
            elif isinstance(event, ToolCallFinished):
                search = time.perf_counter() - started
                if event.status != "ok":
                    raise TurnFailed(f"{event.tool}: {event.status} {event.error}")
            elif isinstance(event, Error):
                raise TurnFailed(event.message)
            elif isinstance(event, AnswerComplete):
                done = event
        total = time.perf_counter() - t0
        if done is None or ttft is None or done.text != self.setup.rate.answer or done.stop_reason != "end_turn":
            raise TurnFailed(f"wrong answer: {None if done is None else (done.stop_reason, done.text[:80])}")
        return Sample(ttft, total, search)


class _NoUser:
    """Nobody to ask: the turn's only tool is read-only, so nothing should ever be asked."""

    async def ask_approval(self, *args: Any, **kwargs: Any) -> str:
        return "deny"

    async def elicit(self, *args: Any, **kwargs: Any) -> Any:
        from kontor.host.agent import ElicitationAnswer

        return ElicitationAnswer("cancel")

    async def approve_sampling(self, *args: Any, **kwargs: Any) -> bool:
        return False


# ----------------------------------------------------------------------------- measurement and report


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default) of sorted ``values``."""
    if not values:
        return None
    values = sorted(values)
    pos = (len(values) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (pos - lo)


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 2)


def summarise(path: Figures) -> dict[str, Any]:
    ttft = [s.ttft_s for s in path.samples]
    total = [s.total_s for s in path.samples]
    search = [s.search_s for s in path.samples]
    return {"turns": len(path.samples), "errors": path.errors, "first_error": path.first_error,
            "ttft_p50_ms": _ms(percentile(ttft, 0.5)), "ttft_p95_ms": _ms(percentile(ttft, 0.95)),
            "total_p50_ms": _ms(percentile(total, 0.5)), "total_p95_ms": _ms(percentile(total, 0.95)),
            "search_p50_ms": _ms(percentile(search, 0.5))}


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else round(a / b, 3)


async def _timed_turn(runner: Direct | Hosted, path: Figures, question: str, record: bool) -> None:
    try:
        async with asyncio.timeout(TURN_TIMEOUT_S):
            sample = await runner.turn(question)
    except Exception as exc:
        path.error(exc)
        return
    if record:
        path.samples.append(sample)


PATHS = ("direct", "gateway", "host")


async def bench(setup: Setup, args: argparse.Namespace) -> dict[str, Any]:
    candidates: dict[str, Direct | Hosted] = {"direct": Direct(setup), "gateway": Direct(setup, via_gateway=True),
                                              "host": Hosted(setup)}
    paths = {name: Figures(name) for name in PATHS}
    runners: dict[str, Direct | Hosted] = {}
    try:
        for name, runner in candidates.items():
            try:
                await runner.open()
                runners[name] = runner
            except Exception as exc:
                paths[name].error(exc)
                log(f"{name}: could not open: {exc}")
        log(f"warm-up: {args.warmup} turns per path")
        for i in range(args.warmup):
            for name, runner in runners.items():
                await _timed_turn(runner, paths[name], QUESTIONS[i % len(QUESTIONS)], record=False)
        log(f"measuring {args.turns} turns per path, interleaved")
        for i in range(args.turns):
            order = PATHS[i % len(PATHS):] + PATHS[:i % len(PATHS)]  # each path goes first equally often
            for name in order:
                if name in runners:
                    await _timed_turn(runners[name], paths[name], QUESTIONS[i % len(QUESTIONS)], record=True)
                else:
                    paths[name].errors += 1
            if (i + 1) % 10 == 0 or i + 1 == args.turns:
                log(f"  {i + 1}/{args.turns} turns; errors: "
                    + ", ".join(f"{name} {paths[name].errors}" for name in PATHS))
    finally:
        for runner in reversed(list(runners.values())):  # the SDK's task groups nest: close the last first
            with contextlib.suppress(Exception):
                await runner.close()
    rows = {name: summarise(path) for name, path in paths.items()}
    keys = ("ttft_p50", "ttft_p95", "total_p50", "total_p95")
    ratio = {key: _ratio(rows["host"][f"{key}_ms"], rows["direct"][f"{key}_ms"]) for key in keys}
    errors = sum(p.errors for p in paths.values())
    meets = None if ratio["ttft_p50"] is None or ratio["total_p50"] is None else (
        ratio["ttft_p50"] <= TARGET_RATIO and ratio["total_p50"] <= TARGET_RATIO and errors == 0)
    # Where the difference comes from: the gateway hop (gateway - direct) and the host's loop (host - gateway).
    split = {f"{part}_{key}_ms": _diff(rows[a][f"{key}_ms"], rows[b][f"{key}_ms"])
             for part, a, b in (("gateway_hop", "gateway", "direct"), ("host_loop", "host", "gateway"))
             for key in ("ttft_p50", "total_p50")}
    return {**rows, "ratio": ratio, "overhead": split, "target_ratio": TARGET_RATIO, "meets_target": meets,
            "errors": errors, "turns": args.turns, "warmup": args.warmup, "provider": setup.rate.as_dict(),
            "corpus": setup.corpus, "load_avg": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count()}


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 2)


def _fmt(value: float | None, spec: str = ".1f", suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def report(result: dict[str, Any]) -> str:
    p = result["provider"]
    lines = [f"Host benchmark: {result['turns']} two-step turns per path (after {result['warmup']} warm-up turns), "
             f"interleaved; fake model: {p['answer_tokens']} answer tokens, {p['tokens_per_chunk']} per chunk every "
             f"{p['interval_ms']:g} ms, first chunk of a step after {p['first_token_ms']:g} ms (the model's own "
             f"share of a turn: about {p['model_time_ms']:g} ms); corpus: {result['corpus']['documents']} documents, "
             f"{result['corpus']['chunks']} chunks ({result['corpus']['source']})", ""]
    head = f"{'path':<7} {'turns':>5} {'TTFT p50':>9} {'TTFT p95':>9} {'total p50':>10} {'total p95':>10} " \
           f"{'search p50':>11} {'errors':>6}"
    lines += [head, "-" * len(head)]
    for name in PATHS:
        r = result[name]
        lines.append(f"{name:<7} {r['turns']:>5} {_fmt(r['ttft_p50_ms']):>9} {_fmt(r['ttft_p95_ms']):>9} "
                     f"{_fmt(r['total_p50_ms']):>10} {_fmt(r['total_p95_ms']):>10} {_fmt(r['search_p50_ms']):>11} "
                     f"{r['errors']:>6}")
    ratio = {k: _fmt(v, ".3f", "x") for k, v in result["ratio"].items()}
    verdict = "n/a" if result["meets_target"] is None else ("met" if result["meets_target"] else "NOT met")
    lines += ["(milliseconds)", "",
              f"host / direct: TTFT p50 {ratio['ttft_p50']}, p95 {ratio['ttft_p95']}; "
              f"total p50 {ratio['total_p50']}, p95 {ratio['total_p95']}",
              f"Target (printed, not asserted): host <= {result['target_ratio']:g}x direct for TTFT and total (p50), "
              f"zero errors -> {verdict}",
              "Where the difference comes from (p50, ms): gateway hop (gateway - direct): TTFT "
              f"{_fmt(result['overhead']['gateway_hop_ttft_p50_ms'])}, total "
              f"{_fmt(result['overhead']['gateway_hop_total_p50_ms'])}; host loop and adapter (host - gateway): "
              f"TTFT {_fmt(result['overhead']['host_loop_ttft_p50_ms'])}, total "
              f"{_fmt(result['overhead']['host_loop_total_p50_ms'])}",
              f"Load average during the run: {result['load_avg']} on {result['cpus']} CPUs"]
    for name in PATHS:
        if result[name]["first_error"]:
            lines.append(f"first error ({name}): {result[name]['first_error']}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--turns", type=int, default=None,
                        help=f"measured turns per path (default {DEFAULT_TURNS}; {QUICK_TURNS} with --quick)")
    parser.add_argument("--warmup", type=int, default=None,
                        help=f"warm-up turns per path (default {DEFAULT_WARMUP}; {QUICK_WARMUP} with --quick)")
    parser.add_argument("--answer-tokens", type=int, default=64, help="words of the model's answer (default 64)")
    parser.add_argument("--tokens-per-chunk", type=int, default=4, help="words per streamed chunk (default 4)")
    parser.add_argument("--interval-ms", type=float, default=20.0, help="pause between chunks (default 20)")
    parser.add_argument("--first-token-ms", type=float, default=30.0,
                        help="pause before a step's first chunk (default 30)")
    parser.add_argument("--corpus", type=Path, default=None, help="a folder of documents to ingest instead")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_TURNS} turns after {QUICK_WARMUP} warm-up")
    parser.add_argument("--json", action="store_true", help="one JSON object with all figures on stdout")
    parser.add_argument("--serve-provider", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--ingest", nargs=2, type=Path, metavar=("DATA_ROOT", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.turns is None:
        args.turns = QUICK_TURNS if args.quick else DEFAULT_TURNS
    if args.warmup is None:
        args.warmup = QUICK_WARMUP if args.quick else DEFAULT_WARMUP
    if args.turns < 1 or args.warmup < 0 or args.answer_tokens < 1 or args.tokens_per_chunk < 1 \
            or args.interval_ms < 0 or args.first_token_ms < 0:
        parser.error("--turns, --answer-tokens and --tokens-per-chunk must be positive, the others not negative")
    if args.corpus is not None and not args.corpus.is_dir():
        parser.error(f"--corpus {args.corpus} is not a folder")
    args.rate = Rate(args.tokens_per_chunk, args.interval_ms, args.first_token_ms, args.answer_tokens)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_provider is not None:
        serve_provider(args.serve_provider, args.rate)
        return 0
    if args.ingest is not None:
        ingest_corpus(*args.ingest)
        return 0

    def run(root: Path, processes: list[Process]) -> int:
        setup = prepare(root, args, processes)
        result = asyncio.run(bench(setup, args))
        print(json.dumps(result) if args.json else report(result), flush=True)
        return 0

    return run_with_servers("kontor-host-bench-", run, log)


if __name__ == "__main__":
    sys.exit(main())
