"""Running a first-party MCP server over stdio or Streamable HTTP, the same way for all."""

from __future__ import annotations

import ipaddress
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from starlette.requests import Request
from starlette.responses import JSONResponse


def parse_host_port(value: str, default_port: int = 8710) -> tuple[str, int]:
    """``HOST:PORT``, ``:PORT``, ``PORT`` or ``HOST`` -> (host, port). IPv6 as ``[::1]:8710``."""
    host, port = "127.0.0.1", default_port
    value = value.strip()
    if value.startswith("["):
        end = value.index("]")
        host, rest = value[1:end], value[end + 1 :]
        if rest.startswith(":"):
            port = int(rest[1:])
    elif value.isdigit():
        port = int(value)
    elif ":" in value:
        h, p = value.rsplit(":", 1)
        host, port = h or host, int(p)
    elif value:
        host = value
    if not 0 < port < 65536:
        raise ValueError(f"port {port} out of range")
    return host, port


def transport_security(host: str, port: int) -> TransportSecuritySettings:
    """DNS-rebinding protection: only this server's own host names are accepted."""
    names = {host, "127.0.0.1", "localhost", "[::1]"} if is_loopback(host) else {host}
    hosts = [f"{h}:{port}" for h in names] + list(names)
    origins = [f"http://{h}:{port}" for h in names] + [f"https://{h}:{port}" for h in names]
    return TransportSecuritySettings(enable_dns_rebinding_protection=True, allowed_hosts=hosts,
                                     allowed_origins=origins)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def add_health_route(server: MCPServer, details: Any = None) -> None:
    @server.custom_route("/health", methods=["GET"])
    async def health(_: Request) -> JSONResponse:
        body = {"status": "ok", "server": server.name}
        if callable(details):
            body.update(details())
        return JSONResponse(body)


class UnsafeBind(ValueError):
    """Refused: Streamable HTTP without token verification on an address other machines can reach."""


def check_bind(server: MCPServer, host: str) -> None:
    """A server without token verification (standalone) may only listen on loopback."""
    if server.settings.auth is None and not is_loopback(host):
        raise UnsafeBind(f"refusing to serve {server.name!r} on {host}: without token verification a server "
                         "only listens on loopback (127.0.0.1, ::1, localhost); run it behind the gateway "
                         "(KONTOR_AUTH_JWKS_URL, KONTOR_AUTH_ISSUER, KONTOR_AUTH_AUDIENCE) to bind elsewhere")


def serve(server: MCPServer, http: str | None = None) -> None:
    """Serve over stdio (``http`` is None) or Streamable HTTP on ``HOST:PORT``.

    Over HTTP a server without token verification binds loopback only (:func:`check_bind`).
    """
    if http is None:
        server.run("stdio")
        return
    host, port = parse_host_port(http)
    check_bind(server, host)
    add_health_route(server)
    server.run("streamable-http", host=host, port=port, transport_security=transport_security(host, port))
