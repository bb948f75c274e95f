"""Review check 4: the live snapshot of a server's tools, prompts and resources.

The server is connected to as an MCP client (the ``mcp`` SDK's :class:`mcp.Client`, in the
``initialize`` handshake mode):

* a **remote** URL over Streamable HTTP through :func:`safe_streamable_http`: the URL is vetted
  by the gateway's SSRF-safe client (https only, public addresses only), every connection is
  pinned to the vetted addresses (a DNS answer that changes later cannot move it), redirects stay
  on the endpoint's origin (the SDK's rule) and every response is capped in size. Tests inject
  another ``transport_factory`` or a permissive :class:`SafeHttpClient` to reach loopback;
* a **stdio command** (a package's server) through :class:`kontor.registry.sandbox.SandboxedStdio`:
  no network, its own user, time, memory, file and output limits, a fresh directory and a
  minimal environment. Without an isolation mechanism it is not run at all (unless the policy
  explicitly allows it).

It calls ``initialize``, ``tools/list`` (every page), and — when the server advertises them —
``prompts/list``, ``resources/list`` and ``resources/templates/list``. Every tool's full
definition is recorded as the server sent it (the raw JSON, not the SDK's parsed model, so
unknown fields are kept) together with its hash from :func:`kontor.gateway.pinning.definition_hash`,
and the server's instructions with :func:`~kontor.gateway.pinning.instructions_hash`: the same
functions the gateway pins with, so an approved snapshot and the gateway's pins agree.

Finding rules (severity): ``snapshot.timeout`` (high), ``snapshot.memory-limit`` (high),
``snapshot.cpu-limit`` (high), ``snapshot.file-size-limit`` (high), ``snapshot.output-limit``
(high), ``snapshot.crashed`` (high), ``snapshot.exited`` (high), ``snapshot.launch-failed``
(high), ``snapshot.sandbox-unavailable`` (high), ``snapshot.unsafe-url`` (high; critical for a
metadata address), ``snapshot.unreachable`` (high), ``snapshot.protocol-error`` (high),
``snapshot.duplicate-tool`` (high), ``snapshot.too-many-tools`` (high), ``snapshot.list-failed``
(medium), ``snapshot.pagination`` (medium), ``snapshot.not-attempted`` (medium),
``snapshot.not-isolated`` (medium: run without isolation because the policy allowed it),
``snapshot.no-tools`` (info).
"""

from __future__ import annotations

import inspect
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

import anyio
import httpcore2
import httpx2
import mcp_types as types
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp.shared.message import SessionMessage

from kontor.gateway.pinning import definition_hash, instructions_hash
from kontor.gateway.safehttp import FetchFailed, SafeHttpClient, UnsafeUrl, VettedTarget
from kontor.registry.checks.findings import CheckResult, Finding, finding
from kontor.registry.endpoints import expand_url_template
from kontor.registry.sandbox import SandboxedStdio, SandboxPolicy, SandboxUnavailable, detect_isolation

__all__ = [
    "CHECK_ID",
    "MAX_PAGES",
    "MAX_TOOLS",
    "TransportFactory",
    "check_snapshot",
    "safe_streamable_http",
    "snapshot_remote",
    "snapshot_stdio",
    "snapshot_transport",
    "tool_hashes",
]

CHECK_ID = "snapshot"
MAX_PAGES = 100
MAX_TOOLS = 2000
MiB = 1024 * 1024
Transport = AbstractAsyncContextManager[Any]
#: ``(url, headers) -> transport`` (or an awaitable of one) for remote snapshots.
TransportFactory = Callable[[str, Mapping[str, str]], Transport | Awaitable[Transport]]

_MEMORY_SIGNS = ("MemoryError", "Cannot allocate memory", "out of memory", "bad_alloc", "heap out of memory",
                 "failed to reserve", "Failed to reserve")


def _ms(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 1)


# --------------------------------------------------------------------------- raw message tap


class _Tap:
    """Wraps a transport and keeps each response's raw ``result`` by request method.

    The SDK parses results into models that drop unknown fields; pins must be computed over
    what the server sent, exactly as the gateway (a raw JSON-RPC client) sees it.
    """

    def __init__(self, inner: Transport) -> None:
        self.inner = inner
        self.methods: dict[Any, str] = {}
        self.results: dict[str, list[dict[str, Any]]] = {}

    async def __aenter__(self) -> tuple[Any, Any]:
        read, write = await self.inner.__aenter__()
        return _TapRead(read, self), _TapWrite(write, self)

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        return await self.inner.__aexit__(*exc_info)

    def take(self, method: str) -> dict[str, Any]:
        results = self.results.get(method) or []
        return results.pop(0) if results else {}


class _TapRead:
    def __init__(self, inner: Any, tap: _Tap) -> None:
        self._inner, self._tap = inner, tap

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def receive(self) -> Any:
        item = await self._inner.receive()
        if isinstance(item, SessionMessage) and isinstance(item.message, types.JSONRPCResponse):
            method = self._tap.methods.pop(item.message.id, None)
            if method is not None:
                self._tap.results.setdefault(method, []).append(item.message.result)
        return item

    def __aiter__(self) -> _TapRead:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def __aenter__(self) -> _TapRead:
        await self._inner.__aenter__()
        return self

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        return await self._inner.__aexit__(*exc_info)


class _TapWrite:
    def __init__(self, inner: Any, tap: _Tap) -> None:
        self._inner, self._tap = inner, tap

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def send(self, item: Any, /) -> None:
        if isinstance(item, SessionMessage) and isinstance(item.message, types.JSONRPCRequest):
            self._tap.methods[item.message.id] = item.message.method
        await self._inner.send(item)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def __aenter__(self) -> _TapWrite:
        await self._inner.__aenter__()
        return self

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        return await self._inner.__aexit__(*exc_info)


# --------------------------------------------------------------------------- SSRF-safe Streamable HTTP


class _PinnedBackend(httpcore2.AsyncNetworkBackend):
    """Connects only to the vetted addresses of one (host, port); anything else is refused."""

    def __init__(self, target: VettedTarget) -> None:
        self._target = target
        self._inner = httpcore2.AnyIOBackend()

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,  # noqa: ASYNC109
                          local_address: str | None = None, socket_options: Any = None) -> Any:
        if host.lower().removesuffix(".") != self._target.host or port != self._target.port:
            raise httpcore2.ConnectError(f"connection to unvetted {host}:{port} refused")
        last: Exception | None = None
        for ip in self._target.addresses:
            try:
                return await self._inner.connect_tcp(str(ip), port, timeout=timeout, local_address=local_address,
                                                     socket_options=socket_options)
            except httpcore2.ConnectError as exc:
                last = exc
        raise httpcore2.ConnectError(str(last) if last else "no address")

    async def connect_unix_socket(self, path: str, timeout: float | None = None,  # noqa: ASYNC109
                                  socket_options: Any = None) -> Any:
        raise httpcore2.ConnectError("unix sockets are not allowed")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class _CappedStream(httpx2.AsyncByteStream):
    def __init__(self, inner: Any, limit: int, url: str) -> None:
        self._inner, self._limit, self._url = inner, limit, url

    async def __aiter__(self) -> Any:
        size = 0
        async for chunk in self._inner:
            size += len(chunk)
            if size > self._limit:
                raise httpx2.ReadError(f"response from {self._url} exceeds {self._limit} bytes")
            yield chunk

    async def aclose(self) -> None:
        if hasattr(self._inner, "aclose"):
            await self._inner.aclose()


class _PinnedTransport(httpx2.AsyncBaseTransport):
    """An httpx2 transport over a connection pool pinned to a vetted target, with a per-response size cap."""

    def __init__(self, target: VettedTarget, ssl_context: ssl.SSLContext | None, max_response_bytes: int) -> None:
        if target.scheme == "https" and ssl_context is None:
            import certifi

            ssl_context = ssl.create_default_context(cafile=certifi.where())
        self._pool = httpcore2.AsyncConnectionPool(
            ssl_context=ssl_context if target.scheme == "https" else None,
            network_backend=_PinnedBackend(target), max_connections=8, keepalive_expiry=5.0)
        self._max = max_response_bytes

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        core_request = httpcore2.Request(
            method=request.method,
            url=httpcore2.URL(scheme=request.url.raw_scheme, host=request.url.raw_host, port=request.url.port,
                              target=request.url.raw_path),
            headers=request.headers.raw, content=request.stream, extensions=request.extensions)
        try:
            response = await self._pool.handle_async_request(core_request)
        except httpcore2.TimeoutException as exc:
            raise httpx2.TimeoutException(str(exc) or type(exc).__name__, request=request) from None
        except httpcore2.ConnectError as exc:
            raise httpx2.ConnectError(str(exc) or type(exc).__name__, request=request) from None
        except (httpcore2.ProtocolError, httpcore2.NetworkError) as exc:
            raise httpx2.NetworkError(str(exc) or type(exc).__name__, request=request) from None
        declared = dict((k.lower(), v) for k, v in response.headers).get(b"content-length")
        if declared and declared.isdigit() and int(declared) > self._max:
            await response.aclose()
            raise httpx2.ReadError(f"response declares {int(declared)} bytes, more than {self._max}", request=request)
        return httpx2.Response(status_code=response.status, headers=response.headers,
                               stream=_CappedStream(response.stream, self._max, str(request.url)),
                               extensions=response.extensions)

    async def aclose(self) -> None:
        await self._pool.aclose()


class _RemoteTransport:
    """``streamable_http_client`` over a pinned httpx2 client; closes the client afterwards."""

    def __init__(self, url: str, target: VettedTarget, http: httpx2.AsyncClient) -> None:
        self.url, self.target, self._http = url, target, http
        self._inner = streamable_http_client(url, http_client=http)

    def evidence(self) -> dict[str, Any]:
        return {"host": self.target.host, "port": self.target.port,
                "addresses": [str(a) for a in self.target.addresses]}

    async def __aenter__(self) -> Any:
        return await self._inner.__aenter__()

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        try:
            return await self._inner.__aexit__(*exc_info)
        finally:
            await self._http.aclose()


async def safe_streamable_http(url: str, headers: Mapping[str, str] | None = None, *,
                               client: SafeHttpClient | None = None, ssl_context: ssl.SSLContext | None = None,
                               max_response_bytes: int = 8 * MiB, timeout_s: float = 30.0) -> _RemoteTransport:
    """A Streamable HTTP transport to ``url`` under the SSRF rules (raises UnsafeUrl / FetchFailed)."""
    client = client or SafeHttpClient(timeout_s=timeout_s)
    target = await client.vet(url)
    http = httpx2.AsyncClient(transport=_PinnedTransport(target, ssl_context, max_response_bytes),
                              headers=dict(headers or {}), timeout=httpx2.Timeout(timeout_s),
                              trust_env=False, follow_redirects=False)
    return _RemoteTransport(url, target, http)


# --------------------------------------------------------------------------- the session


async def _pages(fetch: Callable[[str | None], Awaitable[Any]], tap: _Tap, method: str, key: str,
                 findings: list[Finding], pages: dict[str, int]) -> list[Any]:
    items: list[Any] = []
    cursor: str | None = None
    seen: set[str] = set()
    for page in range(1, MAX_PAGES + 1):
        await fetch(cursor)
        raw = tap.take(method)
        batch = raw.get(key)
        items.extend(batch if isinstance(batch, list) else [])
        pages[method] = page
        cursor = raw.get("nextCursor")
        if not cursor:
            return items
        if not isinstance(cursor, str) or cursor in seen:
            findings.append(finding("snapshot.pagination", "medium",
                                    f"{method} returned a cursor it had already returned; listing stopped"))
            return items
        seen.add(cursor)
    findings.append(finding("snapshot.pagination", "medium", f"{method} has more than {MAX_PAGES} pages; "
                            "the rest was not listed"))
    return items


async def _optional_list(name: str, capability: str, caps: Mapping[str, Any], fetch: Callable[[str | None], Any],
                         tap: _Tap, key: str, findings: list[Finding], pages: dict[str, int],
                         evidence: dict[str, Any], phase: list[str]) -> None:
    if capability not in caps:
        evidence[key] = None  # not advertised
        return
    phase[0] = name
    try:
        evidence[key] = await _pages(fetch, tap, name, key, findings, pages)
    except MCPError as exc:
        evidence[key] = None
        findings.append(finding("snapshot.list-failed", "medium",
                                f"{name} failed although the {capability} capability is advertised: "
                                f"error {exc.code}: {exc.message[:300]}"))


async def snapshot_transport(transport: Transport, *, target: dict[str, Any], timeout_s: float,
                             on_failure: Callable[[str, BaseException | None], list[Finding]] | None = None
                             ) -> tuple[dict[str, Any], list[Finding]]:
    """Run the listing over ``transport`` within ``timeout_s``; the evidence and findings (no CheckResult)."""
    started = time.monotonic()
    tap = _Tap(transport)
    findings: list[Finding] = []
    evidence: dict[str, Any] = {"target": target}
    pages: dict[str, int] = {}
    phase = ["connect"]
    timings: dict[str, float] = {}
    client = Client(tap, mode="legacy", cache=None, read_timeout_seconds=timeout_s,
                    client_info=types.Implementation(name="kontor-registry-review", version="1"))
    failure: BaseException | None = None
    timed_out = False
    try:
        with anyio.fail_after(timeout_s):
            phase[0] = "initialize"
            async with client:
                init = tap.take("initialize")
                timings["initialize_ms"] = _ms(started)
                caps = init.get("capabilities") if isinstance(init.get("capabilities"), dict) else {}
                instructions = init.get("instructions") if isinstance(init.get("instructions"), str) else None
                evidence.update({
                    "protocolVersion": init.get("protocolVersion"), "serverInfo": init.get("serverInfo"),
                    "capabilities": caps, "instructions": instructions,
                    "instructions_hash": instructions_hash(instructions)})
                phase[0] = "tools/list"
                listed = time.monotonic()
                try:
                    raw_tools = await _pages(lambda c: client.list_tools(cursor=c), tap, "tools/list", "tools",
                                             findings, pages)
                except MCPError as exc:
                    if "tools" in caps or exc.code != types.METHOD_NOT_FOUND:
                        raise
                    raw_tools = []
                timings["tools_ms"] = _ms(listed)
                evidence["tools"] = _tool_entries(raw_tools, findings)
                evidence["tool_hashes"] = {t["name"]: t["hash"] for t in evidence["tools"]}
                await _optional_list("prompts/list", "prompts", caps, lambda c: client.list_prompts(cursor=c),
                                     tap, "prompts", findings, pages, evidence, phase)
                await _optional_list("resources/list", "resources", caps,
                                     lambda c: client.list_resources(cursor=c),
                                     tap, "resources", findings, pages, evidence, phase)
                await _optional_list("resources/templates/list", "resources", caps,
                                     lambda c: client.list_resource_templates(cursor=c),
                                     tap, "resourceTemplates", findings, pages, evidence, phase)
                phase[0] = "close"
    except TimeoutError:
        timed_out = True
    except MCPError as exc:
        failure = exc
    except Exception as exc:  # a broken transport, a malformed answer, a dead process
        failure = _unwrap(exc)
    evidence["pages"] = pages
    timings["total_ms"] = _ms(started)
    evidence["timings"] = timings
    if timed_out:
        evidence["failed_at"] = phase[0]
        findings.append(finding("snapshot.timeout", "high",
                                f"no answer to {phase[0]} within the wall-clock limit of {timeout_s:g} s; "
                                "the server was stopped"))
    elif failure is not None and phase[0] != "close":
        evidence["failed_at"] = phase[0]
        evidence["error"] = f"{type(failure).__name__}: {str(failure)[:500]}"
        extra = on_failure(phase[0], failure) if on_failure is not None else []
        findings.extend(extra or [finding("snapshot.protocol-error", "high",
                                          f"{phase[0]} failed: {type(failure).__name__}: {str(failure)[:300]}")])
    elif "tools" in evidence and not evidence["tools"]:
        findings.append(finding("snapshot.no-tools", "info", "the server lists no tools"))
    return evidence, findings


def _unwrap(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _tool_entries(raw_tools: Sequence[Any], findings: list[Finding]) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    names: set[str] = set()
    for tool in raw_tools[:MAX_TOOLS]:
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
            findings.append(finding("snapshot.protocol-error", "high", "tools/list returned a tool without a name"))
            continue
        name = tool["name"]
        if name in names:
            findings.append(finding("snapshot.duplicate-tool", "high", f"tool {name!r} is listed more than once",
                                    tool=name, field="name"))
            continue
        names.add(name)
        entries.append({"name": name, "hash": definition_hash(tool), "definition": tool})
    if len(raw_tools) > MAX_TOOLS:
        findings.append(finding("snapshot.too-many-tools", "high",
                                f"the server lists {len(raw_tools)} tools; only the first {MAX_TOOLS} were recorded"))
    return entries


def tool_hashes(result: CheckResult) -> dict[str, str]:
    """``{tool name: definition hash}`` from a snapshot result (empty when the snapshot failed)."""
    return dict(result.evidence.get("tool_hashes") or {})


# --------------------------------------------------------------------------- stdio in the sandbox


def _sandbox_failure(sandbox: SandboxedStdio) -> Callable[[str, BaseException | None], list[Finding]]:
    def classify(phase: str, exc: BaseException | None) -> list[Finding]:
        info = sandbox.exit
        tail = info.stderr_tail.strip()
        last = tail.splitlines()[-1][:300] if tail else "(no stderr)"
        memory_mib = sandbox.policy.memory_bytes // MiB
        if info.overflow:
            return [finding("snapshot.output-limit", "high", f"server stopped during {phase}: {info.overflow}")]
        if not info.exited_on_its_own:
            return []
        if "kontor-sandbox:" in tail and info.returncode in (125, 126, 127):
            return [finding("snapshot.launch-failed", "high", f"the sandbox could not start the server: {last}")]
        if any(sign in tail for sign in _MEMORY_SIGNS):
            return [finding("snapshot.memory-limit", "high",
                            f"server exceeded the memory limit ({memory_mib} MiB address space, RLIMIT_AS) "
                            f"during {phase} and exited ({_exit_text(info.returncode)}): {last}")]
        signal_name = info.signal_name
        if signal_name == "SIGXCPU":
            return [finding("snapshot.cpu-limit", "high",
                            f"server exceeded the CPU limit of {sandbox.policy.cpu_s} s during {phase}")]
        if signal_name == "SIGXFSZ":
            return [finding("snapshot.file-size-limit", "high",
                            f"server wrote a file larger than {sandbox.policy.file_size_bytes} bytes during {phase}")]
        if signal_name is not None:
            possibly_memory = signal_name in ("SIGKILL", "SIGSEGV", "SIGABRT", "SIGBUS")
            hint = f" (possibly memory: the limit is {memory_mib} MiB)" if possibly_memory else ""
            return [finding("snapshot.crashed", "high", f"server was killed by {signal_name} during {phase}{hint}: "
                            f"{last}")]
        return [finding("snapshot.exited", "high",
                        f"server exited ({_exit_text(info.returncode)}) during {phase} before answering: {last}")]

    return classify


def _exit_text(returncode: int | None) -> str:
    return "still running" if returncode is None else f"exit code {returncode}"


async def snapshot_stdio(command: Sequence[str], *, env: Mapping[str, str] | None = None,
                         policy: SandboxPolicy | None = None) -> CheckResult:
    """Snapshot a stdio server started with ``command`` in the sandbox (see :mod:`kontor.registry.sandbox`)."""
    policy = policy or SandboxPolicy()
    isolation = detect_isolation()
    sandbox = SandboxedStdio(list(command), env=env, policy=policy, isolation=isolation)
    target = {"kind": "stdio", "command": list(command)}
    if not isolation.available and not policy.allow_unisolated:
        evidence = {"target": target, "sandbox": sandbox.evidence()}
        return CheckResult.of(CHECK_ID, evidence, [finding(
            "snapshot.sandbox-unavailable", "high",
            f"not run: no isolation mechanism is available here ({isolation.detail}); "
            "the package's server would have had network access")])
    try:
        evidence, findings = await snapshot_transport(sandbox, target=target, timeout_s=policy.wall_clock_s,
                                                      on_failure=_sandbox_failure(sandbox))
    except SandboxUnavailable as exc:  # pragma: no cover - detect_isolation() said otherwise a moment ago
        evidence, findings = {"target": target}, [finding("snapshot.sandbox-unavailable", "high", str(exc))]
    evidence["sandbox"] = sandbox.evidence()
    if not isolation.available:
        findings.append(finding("snapshot.not-isolated", "medium",
                                "the server ran WITHOUT network isolation (allowed by the sandbox policy)"))
    return CheckResult.of(CHECK_ID, evidence, findings)


# --------------------------------------------------------------------------- remote


async def snapshot_remote(url: str, *, headers: Mapping[str, str] | None = None,
                          client: SafeHttpClient | None = None, transport_factory: TransportFactory | None = None,
                          timeout_s: float = 30.0) -> CheckResult:
    """Snapshot a Streamable HTTP server. Default transport: :func:`safe_streamable_http` with ``client``."""
    started = time.monotonic()
    target: dict[str, Any] = {"kind": "remote", "url": url}
    headers = dict(headers or {})
    try:
        if transport_factory is None:
            transport: Any = await safe_streamable_http(url, headers, client=client, timeout_s=timeout_s)
        else:
            transport = transport_factory(url, headers)
            if inspect.isawaitable(transport):
                transport = await transport
    except UnsafeUrl as exc:
        severity = "critical" if "metadata" in exc.reason else "high"
        return CheckResult.of(CHECK_ID, {"target": target, "refused": exc.reason,
                                         "timings": {"total_ms": _ms(started)}},
                              [finding("snapshot.unsafe-url", severity, f"{url}: {exc.reason}")])
    except FetchFailed as exc:
        return CheckResult.of(CHECK_ID, {"target": target, "error": exc.reason, "timings": {"total_ms": _ms(started)}},
                              [finding("snapshot.unreachable", "high", f"{url}: {exc.reason}")])
    if hasattr(transport, "evidence"):
        target["vetted"] = transport.evidence()

    def unreachable(phase: str, exc: BaseException | None) -> list[Finding]:
        if phase == "initialize" and isinstance(exc, httpx2.TransportError | OSError):
            return [finding("snapshot.unreachable", "high", f"{url}: {type(exc).__name__}: {str(exc)[:300]}")]
        return []

    evidence, findings = await snapshot_transport(transport, target=target, timeout_s=timeout_s,
                                                  on_failure=unreachable)
    return CheckResult.of(CHECK_ID, evidence, findings)


# --------------------------------------------------------------------------- from server.json


async def check_snapshot(server: Mapping[str, Any], *, client: SafeHttpClient | None = None,
                         transport_factory: TransportFactory | None = None,
                         package_command: Callable[[Mapping[str, Any]], Sequence[str] | None] | None = None,
                         package_env: Mapping[str, str] | None = None, headers: Mapping[str, str] | None = None,
                         policy: SandboxPolicy | None = None, timeout_s: float = 30.0) -> CheckResult:
    """Snapshot the server a ``server.json`` describes: its first Streamable HTTP remote, else a package.

    ``package_command(package)`` returns the command that runs an already installed package
    (installing needs the network, so it happens before and outside the sandbox), or None.
    """
    for index, remote in enumerate(server.get("remotes") or []):
        if isinstance(remote, Mapping) and remote.get("type") == "streamable-http" and isinstance(remote.get("url"),
                                                                                                  str):
            url, missing = expand_url_template(remote["url"], remote.get("variables"))
            if not missing:
                result = await snapshot_remote(url, headers=headers, client=client,
                                               transport_factory=transport_factory, timeout_s=timeout_s)
                result.evidence["source"] = f"$.remotes[{index}]"
                return result
    if package_command is not None:
        for index, package in enumerate(server.get("packages") or []):
            command = package_command(package) if isinstance(package, Mapping) else None
            if command:
                result = await snapshot_stdio(command, env=package_env, policy=policy)
                result.evidence["source"] = f"$.packages[{index}]"
                return result
    return CheckResult.of(CHECK_ID, {"target": None}, [finding(
        "snapshot.not-attempted", "medium",
        "no Streamable HTTP remote with a concrete URL and no runnable package: the tools could not be listed")])
