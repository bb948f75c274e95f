"""The ``kontor`` command line."""

from __future__ import annotations

import json
import os
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from kontor.logs import configure_logging
from kontor.settings import Settings, get_limits, get_settings
from kontor.tenancy import InvalidTenant, set_default_tenant, validate_tenant

app = typer.Typer(help="Kontor: a tenant-aware mesh of MCP servers.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
console = Console(stderr=True)
out = Console()

TenantOpt = Annotated[str | None, typer.Option("--tenant", "-t", help="tenant id (default: KONTOR_TENANT)")]
FIRST_PARTY = ("ingest", "lakehouse")
DEFAULT_PORTS = {"lakehouse": 8711, "ingest": 8712}


class Mode(StrEnum):
    hybrid = "hybrid"
    vector = "vector"
    keyword = "keyword"


class ServerName(StrEnum):
    ingest = "ingest"
    lakehouse = "lakehouse"


def _tenant(settings: Settings, tenant: str | None) -> str:
    try:
        return validate_tenant(tenant or settings.tenant)
    except InvalidTenant as exc:
        raise typer.BadParameter(str(exc), param_hint="--tenant") from exc


@app.command()
def ingest(
    paths: Annotated[list[Path], typer.Argument(help="files or folders (recursive)")],
    tenant: TenantOpt = None,
) -> None:
    """Ingest files and folders into the tenant's lakehouse."""
    import anyio
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from kontor.servers.ingest.parsepool import ParserPool
    from kontor.servers.ingest.pipeline import IngestService, expand_paths

    settings, limits = get_settings(), get_limits()
    configure_logging("WARNING")
    tenant_id = _tenant(settings, tenant)
    specs, problems = expand_paths(paths)
    for path, why in problems:
        console.print(f"[yellow]skipped[/] {path}: {why}")
    if not specs:
        console.print("[red]nothing to ingest[/]")
        raise typer.Exit(1)

    async def main() -> dict:
        with ParserPool(limits) as pool:
            service = IngestService(settings, limits, tenant_id, pool=pool)
            try:
                job_id = await service.job_for_paths(specs, "cli")
                with Progress(TextColumn("[bold]ingest"), BarColumn(), MofNCompleteColumn(),
                              TimeElapsedColumn(), TextColumn("{task.description}"), console=console) as bar:
                    task = bar.add_task("loading model", total=len(specs))

                    async def progress(done: int, total: int, message: str) -> None:
                        bar.update(task, completed=done, total=total, description=message)

                    report = await service.run(job_id, progress)
                return report.as_dict()
            finally:
                await service.close()

    report = anyio.run(main)
    _print_report(report, problems)
    if report["counts"]["failed"] and not report["counts"]["ok"] and not report["counts"]["skipped"]:
        raise typer.Exit(1)


def _print_report(report: dict, problems: list[tuple[str, str]]) -> None:
    counts = report["counts"]
    table = Table(title=f"ingest job {report['job_id']} — {report['state']}")
    for col in ("files ok", "skipped", "failed", "documents", "chunks"):
        table.add_column(col, justify="right")
    table.add_row(str(counts["ok"]), str(counts["skipped"] + len(problems)), str(counts["failed"]),
                  str(report["documents"]), str(report["chunks"]))
    out.print(table)
    if report["failures"] or problems:
        failed = Table(title="failed / skipped with reasons", show_lines=False)
        failed.add_column("file")
        failed.add_column("outcome")
        failed.add_column("reason")
        for f in report["failures"]:
            failed.add_row(f["source"], f"failed ({f['code']})", f["reason"] or "")
        for path, why in problems:
            failed.add_row(path, "skipped", why)
        out.print(failed)


@app.command()
def search(
    query: Annotated[str, typer.Argument(help="what to look for")],
    tenant: TenantOpt = None,
    k: Annotated[int, typer.Option("--k", "-k", min=1, max=100)] = 10,
    mode: Annotated[Mode, typer.Option(case_sensitive=False)] = Mode.hybrid,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Search the tenant's documents; prints ranked results with their source citation."""
    from kontor.paths import TenantPaths
    from kontor.servers.lakehouse.embeddings import get_embedder
    from kontor.servers.lakehouse.store import LakehouseStore

    settings = get_settings()
    configure_logging("WARNING")
    tenant_id = _tenant(settings, tenant)
    embedder = get_embedder(settings.embedding_model, settings.embedding_device, settings.embedding_batch_size)
    store = LakehouseStore(TenantPaths(settings.data_root, tenant_id), embedder.spec)
    vector = embedder.encode_one(query) if mode != Mode.keyword else None
    hits = store.search(query, vector, k=k, mode=mode.value)
    if as_json:
        out.print_json(json.dumps([
            {"rank": i + 1, "score": h.score, "text": h.text, "citation": h.citation(), "matched": h.matched}
            for i, h in enumerate(hits)
        ], ensure_ascii=False))
        return
    if not hits:
        out.print("no results")
        return
    for i, h in enumerate(hits, 1):
        where = ", ".join(x for x in (
            f"p. {h.page}" if h.page else "", f"sheet {h.sheet}" if h.sheet else "", h.section or "") if x)
        out.print(f"[bold]{i}. {h.title}[/] [dim]({h.source}{' — ' + where if where else ''}; "
                  f"chars {h.char_start}-{h.char_end}; score {h.score:.4f})[/]")
        snippet = " ".join(h.text.split())
        out.print(f"   {snippet[:300]}{'…' if len(snippet) > 300 else ''}", highlight=False)


@app.command()
def serve(
    server: Annotated[ServerName, typer.Argument(help="which server")],
    http: Annotated[str | None, typer.Option("--http", help="serve Streamable HTTP on HOST:PORT")] = None,
    tenant: TenantOpt = None,
) -> None:
    """Run one first-party MCP server over stdio (default) or Streamable HTTP.

    Standalone it serves KONTOR_TENANT (or --tenant) and, over HTTP, binds loopback only. With
    KONTOR_AUTH_JWKS_URL set it runs behind the gateway: HTTP only, every request needs the
    gateway's internal token, and the tenant comes only from that token.
    """
    from kontor.auth import AuthConfigError
    from kontor.serving import UnsafeBind, is_loopback, parse_host_port
    from kontor.serving import serve as run_server

    settings, limits = get_settings(), get_limits()
    configure_logging(settings.log_level)
    if http is not None and not settings.behind_gateway and not is_loopback(parse_host_port(http)[0]):
        raise typer.BadParameter(
            f"refusing to serve on {http}: without token verification a server only listens on loopback "
            "(127.0.0.1, ::1, localhost); run it behind the gateway (KONTOR_AUTH_JWKS_URL, KONTOR_AUTH_ISSUER, "
            "KONTOR_AUTH_AUDIENCE) to bind elsewhere", param_hint="--http")
    if settings.behind_gateway:
        if http is None:
            raise typer.BadParameter("KONTOR_AUTH_JWKS_URL is set (behind the gateway): the gateway's tokens travel "
                                     "over HTTP only, so serve with --http HOST:PORT", param_hint="--http")
        if tenant is not None:
            raise typer.BadParameter("behind the gateway the tenant comes from each request's token; "
                                     "drop --tenant", param_hint="--tenant")
        if not settings.auth_audience:  # default audience: this server's own URL
            host, port = parse_host_port(http)
            host = f"[{host}]" if ":" in host else host
            settings = settings.model_copy(update={"auth_audience": f"http://{host}:{port}/mcp"})
    else:
        set_default_tenant(_tenant(settings, tenant))
    try:
        if server == ServerName.ingest:
            from kontor.servers.ingest.server import build_server as build_ingest

            mcp_server = build_ingest(settings, limits)
        else:
            from kontor.servers.lakehouse.server import build_server as build_lakehouse

            mcp_server = build_lakehouse(settings)
        run_server(mcp_server, http)
    except UnsafeBind as exc:
        raise typer.BadParameter(str(exc), param_hint="--http") from None
    except AuthConfigError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None


def _gateway_endpoint(tenant: str, host: str | None = None, port: int | None = None) -> str:
    from kontor.gateway.config import GatewaySettings

    overrides: dict[str, object] = {}
    if host is not None:
        overrides["host"] = host
    if port is not None:
        overrides["port"] = port
    return GatewaySettings(**overrides).resource_uri(tenant)


def claude_desktop_config(tenant: str, endpoint: str, data_root: Path, *, stdio: bool = True) -> dict:
    """``claude_desktop_config.json``: the gateway through mcp-remote, and each server over stdio."""
    servers: dict[str, dict] = {"kontor": {"command": "npx", "args": ["-y", "mcp-remote", endpoint]}}
    if stdio:
        exe = str(Path(sys.executable).parent / "kontor")
        env = {"KONTOR_TENANT": tenant, "KONTOR_DATA_ROOT": str(data_root)}
        for name in FIRST_PARTY:
            servers[f"kontor-{name}"] = {"command": exe, "args": ["serve", name], "env": env}
    return {"mcpServers": servers}


def _server_ports(values: list[str], *, gateway_port: int) -> dict[str, int]:
    """First-party server name -> port: the defaults, overridden by ``--server-port NAME=PORT`` values."""
    ports = {name: DEFAULT_PORTS[name] for name in FIRST_PARTY}
    for value in values:
        name, sep, number = value.partition("=")
        name = name.strip()
        if not sep or name not in ports:
            raise typer.BadParameter(f"{value!r}: expected NAME=PORT with NAME one of {', '.join(ports)}",
                                     param_hint="--server-port")
        try:
            ports[name] = int(number)
        except ValueError:
            raise typer.BadParameter(f"{value!r}: the port must be a number", param_hint="--server-port") from None
        if not 1 <= ports[name] <= 65535:
            raise typer.BadParameter(f"{value!r}: the port must be 1-65535", param_hint="--server-port")
    taken = [gateway_port, *ports.values()]
    if len(set(taken)) != len(taken):
        raise typer.BadParameter(f"ports must differ: gateway {gateway_port}, "
                                 + ", ".join(f"{n} {p}" for n, p in ports.items()), param_hint="--server-port")
    return ports


@app.command()
def up(
    host: Annotated[str, typer.Option(help="address the gateway binds")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port of the gateway", min=1, max=65535)] = 8700,
    reset_dev_login: Annotated[bool, typer.Option(
        "--reset-dev-login", help="give the dev admin a new random password")] = False,
    server_port: Annotated[list[str] | None, typer.Option(
        "--server-port", metavar="NAME=PORT",
        help="loopback port of a first-party server (repeatable; default lakehouse=8711, ingest=8712)")] = None,
) -> None:
    """Run the whole mesh: the gateway and every first-party server, supervised; prints how to connect."""
    import importlib.util

    from kontor.gateway.bootstrap import DEMO_TENANT, first_party_urls, run_bootstrap, write_gateway_origin
    from kontor.gateway.config import GatewaySettings
    from kontor.gateway.supervisor import Supervisor, mesh_specs

    ports = _server_ports(server_port or [], gateway_port=port)
    settings = get_settings()
    configure_logging(settings.log_level)
    if importlib.util.find_spec("kontor.gateway.__main__") is None:
        console.print("[red]error:[/] the gateway (python -m kontor.gateway) is not installed")
        raise typer.Exit(1)
    env = {**os.environ, "KONTOR_DATA_ROOT": str(settings.data_root),
           "KONTOR_GATEWAY_HOST": host, "KONTOR_GATEWAY_PORT": str(port)}
    gateway = GatewaySettings(host=host, port=port)
    result = run_bootstrap(gateway, servers=first_party_urls(ports=ports), reset_dev_password=reset_dev_login)
    write_gateway_origin(gateway.data_dir, gateway.origin)  # `kontor token` mints for this gateway
    supervisor = Supervisor(mesh_specs(host=host, port=port, servers=ports, issuer=gateway.internal_issuer, env=env))
    supervisor.install_signal_handlers()
    try:
        supervisor.start()
        health = supervisor.wait_healthy()
        if supervisor.stopping:
            return
        for name, ok in health.items():
            if not ok:
                console.print(f"[yellow]warning:[/] {name} is not healthy yet; the supervisor keeps trying")
        endpoint = gateway.resource_uri(DEMO_TENANT)
        out.print(f"[bold green]Kontor is up[/] (data in {settings.data_root})")
        out.print(f"  MCP endpoint   {endpoint}", highlight=False)
        if os.environ.get("KONTOR_GATEWAY_CHAT", "true").strip().lower() not in ("0", "false", "no", "off"):
            out.print(f"  web chat       {gateway.origin}/chat/ (workspace {DEMO_TENANT})", highlight=False)
        login = result.login
        if login is not None and login.password:
            out.print(f"  dev login      tenant {login.tenant}, {login.email} / {login.password}", highlight=False)
            out.print(f"                 (stored in {login.file})", highlight=False)
        elif login is not None:
            out.print(f"  dev login      {login.email}: password unknown ({login.file} is missing); "
                      "run `kontor up --reset-dev-login`", highlight=False)
        for name, url in first_party_urls(ports=ports).items():
            out.print(f"  {name:14s} {url} (gateway tokens only)", highlight=False)
        out.print("Claude Desktop (claude_desktop_config.json):")
        out.print_json(json.dumps(claude_desktop_config(DEMO_TENANT, endpoint, settings.data_root, stdio=False)))
        out.print("Ctrl-C stops everything.")
        supervisor.run()
    finally:
        supervisor.stop()


@app.command("client-config")
def client_config(
    tenant: TenantOpt = None,
    host: Annotated[str | None, typer.Option(help="gateway host (default: KONTOR_GATEWAY_HOST)")] = None,
    port: Annotated[int | None, typer.Option(help="gateway port (default: KONTOR_GATEWAY_PORT)")] = None,
) -> None:
    """Print a Claude Desktop ``claude_desktop_config.json``: the gateway (mcp-remote) and each server over stdio."""
    settings = get_settings()
    tenant_id = _tenant(settings, tenant)
    config = claude_desktop_config(tenant_id, _gateway_endpoint(tenant_id, host, port), settings.data_root)
    out.print_json(json.dumps(config))


def _mount_gateway_commands() -> None:
    from kontor.gateway import cli as gateway_cli

    app.add_typer(gateway_cli.tenant_app, name="tenant", help="tenants of the gateway")
    app.add_typer(gateway_cli.user_app, name="user", help="users of a tenant")
    app.add_typer(gateway_cli.server_app, name="server", help="MCP servers enabled for a tenant")
    app.add_typer(gateway_cli.tools_app, name="tools", help="pinned tool definitions")
    app.add_typer(gateway_cli.audit_app, name="audit", help="the audit log of tool calls")
    from kontor.gateway.oauth.cli import token_command

    app.command("token", help="a dev access token from the built-in authorization server")(token_command)
    from kontor.registry.cli import app as registry_app

    app.add_typer(registry_app, name="registry", help="publish, review and install MCP servers (the registry)")


_mount_gateway_commands()

if __name__ == "__main__":
    app()
