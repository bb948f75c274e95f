"""The one SSRF-safe outbound HTTP helper.

Every fetch the gateway or the registry makes on someone else's behalf (OAuth metadata
documents, client ID metadata documents, upstream server URLs under review) goes through
:class:`SafeHttpClient`. The rules, each enforced on the first request and again on every
redirect hop:

* ``https`` only, unless ``allow_http`` (dev mode);
* no userinfo (``user:pass@``), no control characters, whitespace or backslashes, a strictly
  shaped host name, and IPv4 literals only in canonical dotted-quad form (``2130706433``,
  ``0177.0.0.1`` and ``127.1`` are what C resolvers read as 127.0.0.1, so they are refused);
* the host is resolved once and refused if *any* address is private, loopback, link-local,
  multicast, reserved, unspecified, CGNAT, a cloud metadata address, or an IPv4-mapped,
  IPv4-compatible, NAT64 or 6to4 form of one of those — unless ``allow_private`` (dev/tests);
* the connection goes to the vetted address itself (a network backend pinned to it), while
  the URL, ``Host`` header, TLS SNI and certificate check keep the name; a DNS answer that
  changes between check and connect (DNS rebinding) therefore cannot move the target;
* redirects are followed by hand, at most ``max_redirects``; credentials are dropped when a
  redirect leaves the origin;
* the body is streamed and cut off past ``max_bytes``; ``timeout_s`` bounds the whole fetch
  (resolution, every hop, the body). Compressed bodies are not requested and not accepted,
  so ``max_bytes`` bounds what the caller gets.

Environment proxies are never used. Each hop uses a fresh single-connection pool: the helper
is for occasional fetches (results are cached by the callers), not for the hot path.
"""

from __future__ import annotations

import inspect
import ipaddress
import json
import re
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

import anyio
import httpcore
import httpx

__all__ = [
    "AddressPolicy",
    "FetchFailed",
    "Resolver",
    "SafeHttpClient",
    "SafeResponse",
    "StaticResolver",
    "UnsafeUrl",
    "VettedTarget",
    "address_refusal",
    "pinned_pool",
    "system_resolver",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
#: ``async (host, port) -> addresses`` (a plain function returning a list is accepted too).
Resolver = Callable[[str, int], Awaitable[Sequence[str]] | Sequence[str]]
#: Extra rule applied to every (host, address) pair after the built-in ones; returns a refusal reason or None.
AddressPolicy = Callable[[str, IPAddress], str | None]


class UnsafeUrl(Exception):
    """The URL (or a redirect) breaks one of the rules; ``reason`` names the rule."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class FetchFailed(Exception):
    """The URL was acceptable but the fetch failed (DNS, connect, TLS, timeout, size, protocol)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class SafeResponse:
    status: int
    headers: httpx.Headers
    content: bytes
    url: str  # the final URL, after redirects

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def text(self) -> str:
        charset = "utf-8"
        match = re.search(r"charset=([\w-]+)", self.headers.get("content-type", ""), re.I)
        if match:
            charset = match.group(1)
        try:
            return self.content.decode(charset, errors="replace")
        except LookupError:
            return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return json.loads(self.content)


@dataclass(frozen=True)
class VettedTarget:
    """A URL that passed every rule, with the addresses a connection may use."""

    url: str
    scheme: str
    host: str  # normalised: lower case, IDNA (punycode), no trailing dot, IPv6 without brackets
    port: int
    target: bytes  # path and query, as sent on the request line
    addresses: tuple[IPAddress, ...]

    @property
    def origin(self) -> tuple[str, str, int]:
        return (self.scheme, self.host, self.port)


# --------------------------------------------------------------------------- address rules

_METADATA: dict[IPAddress, str] = {
    ipaddress.ip_address("169.254.169.254"): "AWS/GCP/Azure/OpenStack",
    ipaddress.ip_address("169.254.170.2"): "AWS ECS task",
    ipaddress.ip_address("fd00:ec2::254"): "AWS IPv6",
    ipaddress.ip_address("100.100.100.200"): "Alibaba Cloud",
    ipaddress.ip_address("192.0.0.192"): "Oracle Cloud",
    ipaddress.ip_address("168.63.129.16"): "Azure wireserver",
}

_V4_RULES: list[tuple[ipaddress.IPv4Network, str]] = [
    (ipaddress.IPv4Network(net), what)
    for net, what in [
        ("0.0.0.0/8", "an unspecified ('this network') address"),
        ("127.0.0.0/8", "a loopback address"),
        ("169.254.0.0/16", "a link-local address"),
        ("10.0.0.0/8", "a private address"),
        ("172.16.0.0/12", "a private address"),
        ("192.168.0.0/16", "a private address"),
        ("100.64.0.0/10", "a CGNAT (100.64.0.0/10) address"),
        ("224.0.0.0/4", "a multicast address"),
        ("240.0.0.0/4", "a reserved address"),  # includes 255.255.255.255
        ("192.0.0.0/24", "a reserved (IETF protocol assignment) address"),
        ("192.0.2.0/24", "a reserved (documentation) address"),
        ("198.51.100.0/24", "a reserved (documentation) address"),
        ("203.0.113.0/24", "a reserved (documentation) address"),
        ("198.18.0.0/15", "a reserved (benchmarking) address"),
        ("192.88.99.0/24", "a reserved (6to4 relay) address"),
    ]
]

_V6_RULES: list[tuple[ipaddress.IPv6Network, str]] = [
    (ipaddress.IPv6Network(net), what)
    for net, what in [
        ("::/128", "an unspecified address"),
        ("::1/128", "a loopback address"),
        ("fe80::/10", "a link-local address"),
        ("fc00::/7", "a private (unique local) address"),
        ("fec0::/10", "a private (site-local) address"),
        ("ff00::/8", "a multicast address"),
        ("64:ff9b:1::/48", "a private (local-use NAT64) address"),
        ("100::/64", "a reserved (discard) address"),
        ("2001::/23", "a reserved (IETF protocol assignment, incl. Teredo) address"),
        ("2001:db8::/32", "a reserved (documentation) address"),
        ("::/8", "a reserved address"),  # after the embedded-IPv4 forms have been unpacked
    ]
]

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_V4_COMPATIBLE = ipaddress.IPv6Network("::/96")


def _embedded_ipv4(address: ipaddress.IPv6Address) -> tuple[str, ipaddress.IPv4Address] | None:
    """The IPv4 address an IPv6 address stands for (mapped, NAT64, 6to4, IPv4-compatible), if any."""
    if address.ipv4_mapped is not None:
        return "an IPv4-mapped", address.ipv4_mapped
    if address in _NAT64:
        return "a NAT64", ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour is not None:
        return "a 6to4", address.sixtofour
    if address in _V4_COMPATIBLE and int(address) > 1:
        return "an IPv4-compatible", ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def address_refusal(address: IPAddress | str) -> str | None:
    """Why ``address`` must not be connected to (e.g. ``"a private address 10.0.0.5"``), or None if it is public."""
    ip = ipaddress.ip_address(address) if isinstance(address, str) else address
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id:
        return f"an IPv6 address with a zone identifier {ip}"
    if ip in _METADATA:
        return f"a cloud metadata address ({_METADATA[ip]}) {ip}"
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            form, v4 = embedded
            inner = address_refusal(v4)
            return None if inner is None else f"{form} form ({ip}) of {inner}"
        for net6, what in _V6_RULES:
            if ip in net6:
                return f"{what} {ip}"
    else:
        for net4, what in _V4_RULES:
            if ip in net4:
                return f"{what} {ip}"
    if not ip.is_global:  # whatever else the standard library knows to be non-global
        return f"a non-global address {ip}"
    return None


# --------------------------------------------------------------------------- resolvers


async def system_resolver(host: str, port: int) -> list[str]:
    """``getaddrinfo`` in a worker thread (abandoned, not awaited, when the fetch times out)."""
    infos = await anyio.to_thread.run_sync(
        lambda: socket.getaddrinfo(host, port, type=socket.SOCK_STREAM), abandon_on_cancel=True
    )
    return [str(info[4][0]) for info in infos]


class StaticResolver:
    """A resolver from a fixed table (tests, or pinning known names). Unknown names fail to resolve."""

    def __init__(self, table: Mapping[str, str | Sequence[str]]) -> None:
        self.table = {k.lower(): ([v] if isinstance(v, str) else list(v)) for k, v in table.items()}
        self.calls: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append(host)
        try:
            return self.table[host]
        except KeyError:
            raise socket.gaierror(socket.EAI_NONAME, f"unknown host {host}") from None


# --------------------------------------------------------------------------- URL rules

_LABEL = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$")
_NUMERIC_LABEL = re.compile(r"^(?:0x[0-9a-f]*|[0-9]+)$")
_BAD_CHARS = re.compile(r"[\x00-\x20\x7f\\]")
_LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback")
_METADATA_NAMES = ("metadata.google.internal", "metadata.goog", "instance-data.ec2.internal")
_HOP_HEADERS = {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "upgrade", "te"}
_CREDENTIAL_HEADERS = {"authorization", "cookie", "proxy-authorization"}
_REDIRECTS = {301, 302, 303, 307, 308}
MAX_URL_CHARS = 8192


def _legacy_ipv4(host: str) -> str:
    try:
        return socket.inet_ntoa(socket.inet_aton(host))
    except OSError:
        return "no valid address"


@dataclass(frozen=True)
class _ParsedUrl:
    url: str
    scheme: str
    host: str
    port: int
    target: bytes
    literal: IPAddress | None


class SafeHttpClient:
    """SSRF-safe fetches: see the module docstring for the rules.

    ``resolver`` replaces DNS (tests); ``policy`` adds a rule per (host, address) that applies
    even with ``allow_private``; ``ssl_context`` replaces the certifi-based default.
    """

    def __init__(
        self,
        allow_http: bool = False,
        allow_private: bool = False,
        max_bytes: int = 1_000_000,
        timeout_s: float = 5.0,
        max_redirects: int = 3,
        resolver: Resolver | None = None,
        *,
        policy: AddressPolicy | None = None,
        ssl_context: ssl.SSLContext | None = None,
        user_agent: str = "kontor-safehttp/1",
    ) -> None:
        if max_bytes < 0 or timeout_s <= 0 or max_redirects < 0:
            raise ValueError("max_bytes and max_redirects must be >= 0 and timeout_s > 0")
        self.allow_http = allow_http
        self.allow_private = allow_private
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.max_redirects = max_redirects
        self.resolver: Resolver = resolver or system_resolver
        self.policy = policy
        self.user_agent = user_agent
        self._ssl_context = ssl_context

    # ----------------------------------------------------------------- public API

    async def get(self, url: str, headers: Mapping[str, str] | None = None) -> SafeResponse:
        return await self.request("GET", url, headers=headers)

    async def post(
        self,
        url: str,
        headers: Mapping[str, str] | None = None,
        *,
        content: bytes | None = None,
        json: Any = None,
        data: Mapping[str, str] | None = None,
    ) -> SafeResponse:
        """POST raw ``content``, a ``json`` document or form ``data`` (exactly one of them, or none)."""
        given = [x is not None for x in (content, json, data)]
        if sum(given) > 1:
            raise ValueError("pass only one of content, json, data")
        extra: dict[str, str] = {}
        body = b""
        if content is not None:
            body = content
        elif json is not None:
            body = _json_dumps(json)
            extra["content-type"] = "application/json"
        elif data is not None:
            body = urlencode(data).encode()
            extra["content-type"] = "application/x-www-form-urlencoded"
        merged = {**extra, **dict(headers or {})}
        return await self.request("POST", url, headers=merged, content=body)

    async def request(
        self, method: str, url: str, *, headers: Mapping[str, str] | None = None, content: bytes = b""
    ) -> SafeResponse:
        """Fetch ``url``, following redirects under the rules. Raises UnsafeUrl or FetchFailed."""
        try:
            with anyio.fail_after(self.timeout_s):
                return await self._fetch(method.upper(), url, dict(headers or {}), content)
        except TimeoutError:
            raise FetchFailed(f"timed out after {self.timeout_s:g} s (total time limit for {url!r})") from None

    async def vet(self, url: str) -> VettedTarget:
        """Check ``url`` and resolve its host without connecting (the registry's endpoint-safety check)."""
        try:
            with anyio.fail_after(self.timeout_s):
                return await self._vet(url)
        except TimeoutError:
            raise FetchFailed(f"timed out after {self.timeout_s:g} s resolving {url!r}") from None

    # ----------------------------------------------------------------- checks

    def _parse(self, url: str) -> _ParsedUrl:
        if not isinstance(url, str) or not url:
            raise UnsafeUrl("URL must be a non-empty string")
        if len(url) > MAX_URL_CHARS:
            raise UnsafeUrl(f"URL longer than {MAX_URL_CHARS} characters")
        if _BAD_CHARS.search(url):
            raise UnsafeUrl("URL contains whitespace, control characters or a backslash")
        split = urlsplit(url)
        scheme = split.scheme.lower()
        if scheme == "http":
            if not self.allow_http:
                raise UnsafeUrl("http:// refused: https only (allow_http is for dev mode)")
        elif scheme != "https":
            shown = f"{scheme}://" if scheme else "(none)"
            raise UnsafeUrl(f"scheme {shown} refused: only https (and http in dev mode)")
        if "@" in split.netloc:
            raise UnsafeUrl("URL contains userinfo (user@host): refused")
        if split.hostname and not split.netloc.startswith("["):
            self._host_literal(split.hostname)  # numeric forms first: httpx rejects some with a vaguer message
        try:
            parsed = httpx.URL(url)
        except httpx.InvalidURL as exc:
            raise UnsafeUrl(f"invalid URL: {exc}") from None
        if parsed.userinfo:
            raise UnsafeUrl("URL contains userinfo (user@host): refused")
        host = parsed.raw_host.decode("ascii").lower()
        port = parsed.port or (443 if scheme == "https" else 80)
        if not 1 <= port <= 65535:
            raise UnsafeUrl(f"port {port} out of range")
        literal = self._host_literal(host)
        if literal is not None:
            host = str(literal)
        else:
            host = host.removesuffix(".")
            self._check_name(host)
        target = parsed.raw_path or b"/"
        return _ParsedUrl(str(parsed.copy_with(fragment=None)), scheme, host, port, target, literal)

    @staticmethod
    def _host_literal(host: str) -> IPAddress | None:
        if not host:
            raise UnsafeUrl("URL has no host")
        if ":" in host:  # IPv6 literal (httpx strips the brackets)
            if "%" in host:
                raise UnsafeUrl(f"IPv6 zone identifier in host {host!r} refused")
            try:
                return ipaddress.IPv6Address(host)
            except ValueError:
                raise UnsafeUrl(f"invalid IPv6 literal {host!r}") from None
        labels = host.removesuffix(".").split(".")
        if _NUMERIC_LABEL.match(labels[-1]):
            # Ends in a number: an IPv4 literal in some reader's eyes. Only canonical dotted-quad is accepted.
            try:
                if len(labels) == 4:
                    return ipaddress.IPv4Address(".".join(labels))
            except ValueError:
                pass
            raise UnsafeUrl(
                f"non-canonical IPv4 literal {host!r} refused (C resolvers read it as {_legacy_ipv4(host)})"
            )
        return None

    def _check_name(self, host: str) -> None:
        if len(host) > 253 or not all(_LABEL.match(label) for label in host.split(".")):
            raise UnsafeUrl(f"invalid host name {host!r}")
        if self.allow_private:
            return
        if host in _LOOPBACK_NAMES or host.endswith(".localhost"):
            raise UnsafeUrl(f"host {host!r} is a loopback name")
        if host in _METADATA_NAMES:
            raise UnsafeUrl(f"host {host!r} is a cloud metadata name")

    def _check_addresses(self, host: str, addresses: Iterable[IPAddress], *, literal: bool) -> None:
        for ip in addresses:
            if not self.allow_private:
                why = address_refusal(ip)
                if why is not None:
                    raise UnsafeUrl(f"URL host is {why}" if literal else f"{host} resolves to {why}")
            if self.policy is not None:
                why = self.policy(host, ip)
                if why is not None:
                    raise UnsafeUrl(f"{host} ({ip}) refused by policy: {why}")

    async def _resolve(self, host: str, port: int) -> tuple[IPAddress, ...]:
        try:
            answer = self.resolver(host, port)
            if inspect.isawaitable(answer):
                answer = await answer
        except OSError as exc:
            raise FetchFailed(f"cannot resolve {host}: {exc}") from None
        addresses: list[IPAddress] = []
        for raw in answer:
            try:
                ip = ipaddress.ip_address(raw)
            except ValueError:
                raise FetchFailed(f"resolver returned an invalid address {raw!r} for {host}") from None
            if ip not in addresses:
                addresses.append(ip)
        if not addresses:
            raise FetchFailed(f"cannot resolve {host}: no addresses")
        return tuple(addresses)

    async def _vet(self, url: str) -> VettedTarget:
        parsed = self._parse(url)
        if parsed.literal is not None:
            addresses: tuple[IPAddress, ...] = (parsed.literal,)
        else:
            addresses = await self._resolve(parsed.host, parsed.port)
        self._check_addresses(parsed.host, addresses, literal=parsed.literal is not None)
        return VettedTarget(parsed.url, parsed.scheme, parsed.host, parsed.port, parsed.target, addresses)

    # ----------------------------------------------------------------- fetching

    async def _fetch(self, method: str, url: str, headers: dict[str, str], content: bytes) -> SafeResponse:
        headers = {k.lower(): v for k, v in headers.items() if k.lower() not in _HOP_HEADERS}
        first = await self._vet(url)
        target = first
        redirects = 0
        while True:
            status, resp_headers, body = await self._one_hop(method, target, headers, content)
            location = resp_headers.get("location")
            if status not in _REDIRECTS or not location:
                return SafeResponse(status, resp_headers, body, target.url)
            if redirects >= self.max_redirects:
                raise FetchFailed(f"too many redirects (more than {self.max_redirects}) starting at {url!r}")
            redirects += 1
            try:
                next_url = str(httpx.URL(target.url).join(location))
            except (httpx.InvalidURL, ValueError) as exc:
                raise UnsafeUrl(f"redirect {redirects} has an invalid Location {location!r}: {exc}") from None
            try:
                next_target = await self._vet(next_url)
            except UnsafeUrl as exc:
                raise UnsafeUrl(f"redirect {redirects} to {next_url} refused: {exc.reason}") from None
            if next_target.origin != target.origin:
                headers = {k: v for k, v in headers.items() if k not in _CREDENTIAL_HEADERS}
            if status == 303 or (status in (301, 302) and method == "POST"):
                method, content = ("GET" if method != "HEAD" else "HEAD"), b""
                headers.pop("content-type", None)
            target = next_target

    def _ssl(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            import certifi

            self._ssl_context = ssl.create_default_context(cafile=certifi.where())
        return self._ssl_context

    async def _one_hop(
        self, method: str, target: VettedTarget, headers: dict[str, str], content: bytes
    ) -> tuple[int, httpx.Headers, bytes]:
        host_header = f"[{target.host}]" if ":" in target.host else target.host
        if target.port != (443 if target.scheme == "https" else 80):
            host_header += f":{target.port}"
        request_headers = [
            ("host", host_header),
            ("user-agent", self.user_agent),
            ("accept-encoding", "identity"),
            ("connection", "close"),
        ]
        request_headers += [(k, v) for k, v in headers.items() if k not in ("user-agent", "accept-encoding")]
        if content or method in ("POST", "PUT", "PATCH"):
            request_headers.append(("content-length", str(len(content))))
        url = httpcore.URL(scheme=target.scheme.encode(), host=target.host.encode(), port=target.port,
                           target=target.target)
        backend = _PinnedBackend(target.host, target.port, target.addresses)
        pool = httpcore.AsyncConnectionPool(
            ssl_context=self._ssl() if target.scheme == "https" else None,
            network_backend=backend, max_connections=1, keepalive_expiry=0.0,
        )
        # A per-operation timeout as well, so a stuck socket fails even without the total deadline.
        per_op = self.timeout_s
        extensions = {"timeout": {"connect": per_op, "read": per_op, "write": per_op, "pool": per_op}}
        started = time.monotonic()
        try:
            async with pool:
                async with pool.stream(method, url, headers=request_headers, content=content,
                                       extensions=extensions) as response:
                    resp_headers = httpx.Headers(response.headers)
                    encoding = resp_headers.get("content-encoding", "identity").strip().lower()
                    if encoding not in ("", "identity"):
                        raise FetchFailed(f"response from {target.url} uses content-encoding {encoding!r}; "
                                          "only identity is accepted")
                    declared = resp_headers.get("content-length")
                    if declared and declared.isdigit() and int(declared) > self.max_bytes:
                        raise FetchFailed(f"response from {target.url} declares {declared} bytes, "
                                          f"more than max_bytes {self.max_bytes}")
                    chunks: list[bytes] = []
                    size = 0
                    async for chunk in response.aiter_stream():
                        size += len(chunk)
                        if size > self.max_bytes:
                            raise FetchFailed(f"response from {target.url} exceeds max_bytes {self.max_bytes}")
                        chunks.append(chunk)
                    return response.status, resp_headers, b"".join(chunks)
        except httpcore.TimeoutException as exc:
            raise FetchFailed(f"timed out after {time.monotonic() - started:.1f} s at {target.url}: "
                              f"{type(exc).__name__}") from None
        except httpcore.ConnectError as exc:
            raise FetchFailed(f"cannot connect to {target.host} ({', '.join(map(str, target.addresses))}) "
                              f"port {target.port}: {exc or type(exc).__name__}") from None
        except (httpcore.ProtocolError, httpcore.NetworkError) as exc:
            raise FetchFailed(f"HTTP error from {target.url}: {exc or type(exc).__name__}") from None


class _PinnedBackend(httpcore.AsyncNetworkBackend):
    """Connects only to the vetted addresses of one (host, port); any other connect is refused."""

    def __init__(self, host: str, port: int, addresses: Sequence[IPAddress]) -> None:
        self._host, self._port, self._addresses = host, port, tuple(addresses)
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's backend interface
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        if host.lower().removesuffix(".") != self._host or port != self._port:
            raise httpcore.ConnectError(f"connection to unvetted {host}:{port} refused")
        last: Exception | None = None
        for ip in self._addresses:  # every one was vetted; try them in resolver order
            try:
                return await self._inner.connect_tcp(str(ip), port, timeout=timeout, local_address=local_address,
                                                     socket_options=socket_options)
            except httpcore.ConnectError as exc:
                last = exc
        raise httpcore.ConnectError(str(last) if last else "no address")

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's backend interface
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are not allowed")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def _json_dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def pinned_pool(target: VettedTarget, *, max_connections: int = 64, keepalive_expiry: float = 30.0,
                ssl_context: ssl.SSLContext | None = None) -> httpcore.AsyncConnectionPool:
    """A keep-alive connection pool that can only reach ``target``'s vetted addresses.

    For the gateway's hot path to an upstream server: the URL was vetted once (when the
    upstream session was opened) and every later connection goes to those addresses, so a DNS
    answer that changes afterwards cannot redirect calls.
    """
    if target.scheme == "https" and ssl_context is None:
        import certifi

        ssl_context = ssl.create_default_context(cafile=certifi.where())
    return httpcore.AsyncConnectionPool(
        ssl_context=ssl_context if target.scheme == "https" else None,
        network_backend=_PinnedBackend(target.host, target.port, target.addresses),
        max_connections=max_connections, keepalive_expiry=keepalive_expiry,
    )
