"""The ``kontor`` command line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
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
    """Run one first-party MCP server over stdio (default) or Streamable HTTP."""
    from kontor.serving import serve as run_server

    settings, limits = get_settings(), get_limits()
    configure_logging(settings.log_level)
    set_default_tenant(_tenant(settings, tenant))
    if server == ServerName.ingest:
        from kontor.servers.ingest.server import build_server as build_ingest

        mcp_server = build_ingest(settings, limits)
    else:
        from kontor.servers.lakehouse.server import build_server as build_lakehouse

        mcp_server = build_lakehouse(settings)
    run_server(mcp_server, http)


@app.command()
def up(
    host: Annotated[str, typer.Option(help="bind address")] = "127.0.0.1",
    tenant: TenantOpt = None,
) -> None:
    """Start every first-party server over Streamable HTTP and print how to connect."""
    settings = get_settings()
    tenant_id = _tenant(settings, tenant)
    procs: dict[str, subprocess.Popen] = {}
    env = {**os.environ, "KONTOR_TENANT": tenant_id}

    def start(name: str) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "kontor.cli", "serve", name, "--http", f"{host}:{DEFAULT_PORTS[name]}"],
            env=env,
        )

    for name in FIRST_PARTY:
        procs[name] = start(name)
    _wait_healthy(host, procs)
    out.print(f"[bold green]Kontor is up[/] for tenant [bold]{tenant_id}[/] (data in {settings.data_root})")
    for name in FIRST_PARTY:
        out.print(f"  {name:10s} http://{host}:{DEFAULT_PORTS[name]}/mcp")
    out.print("Connect any MCP client to those URLs (Streamable HTTP), or use stdio in Claude Desktop: "
              "see `kontor client-config`. Ctrl-C stops everything.")
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    backoff = {name: 1.0 for name in FIRST_PARTY}
    try:
        while not stopping:
            time.sleep(0.5)
            for name, proc in list(procs.items()):
                if proc.poll() is not None and not stopping:
                    console.print(f"[yellow]{name} exited with {proc.returncode}; restarting in {backoff[name]:.0f} s")
                    time.sleep(backoff[name])
                    backoff[name] = min(backoff[name] * 2, 30.0)
                    procs[name] = start(name)
    except KeyboardInterrupt:
        pass
    finally:
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def _wait_healthy(host: str, procs: dict[str, subprocess.Popen], timeout: float = 180.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    pending = set(procs)
    while pending and time.monotonic() < deadline:
        for name in list(pending):
            if procs[name].poll() is not None:
                console.print(f"[red]{name} failed to start (exit {procs[name].returncode})")
                pending.discard(name)
                continue
            try:
                if httpx.get(f"http://{host}:{DEFAULT_PORTS[name]}/health", timeout=1.0).status_code == 200:
                    pending.discard(name)
            except httpx.HTTPError:
                pass
        time.sleep(0.3)


@app.command("client-config")
def client_config(tenant: TenantOpt = None) -> None:
    """Print a Claude Desktop ``claude_desktop_config.json`` running each server over stdio."""
    settings = get_settings()
    tenant_id = _tenant(settings, tenant)
    exe = str(Path(sys.executable).parent / "kontor")
    env = {"KONTOR_TENANT": tenant_id, "KONTOR_DATA_ROOT": str(settings.data_root)}
    config = {"mcpServers": {
        f"kontor-{name}": {"command": exe, "args": ["serve", name], "env": env} for name in FIRST_PARTY
    }}
    out.print_json(json.dumps(config))


def _mount_gateway_commands() -> None:
    from kontor.gateway import cli as gateway_cli

    app.add_typer(gateway_cli.tenant_app, name="tenant", help="tenants of the gateway")
    app.add_typer(gateway_cli.user_app, name="user", help="users of a tenant")
    app.add_typer(gateway_cli.tools_app, name="tools", help="pinned tool definitions")


_mount_gateway_commands()

if __name__ == "__main__":
    app()
