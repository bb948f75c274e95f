"""CLI for the gateway: tenants, users and roles, server installations, tool approvals, audit.

``app`` holds five groups (``tenant``, ``user``, ``server``, ``tools``, ``audit``); they can be
mounted one by one (``tenant_app``, ``user_app``, ``server_app``, ``tools_app``, ``audit_app``) or
together. Every database command takes ``--db URL``; without it the database is
``<data root>/gateway/gateway.db`` (SQLite). ``audit verify`` reads ``<data root>/gateway/audit/audit.db``
unless given ``--path``. Errors go to stderr with exit code 1; secrets are never printed.
"""

from __future__ import annotations

import getpass
import json
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Annotated, TypeVar

import anyio
import typer
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from kontor.gateway.audit import AuditIntegrityError, AuditLog, VerifyResult
from kontor.gateway.db import GatewayDB, GatewayDBError, Installation, Role, Tenant, ToolPin
from kontor.gateway.naming import NamingError
from kontor.gateway.scopes import read_scope, write_scope
from kontor.settings import get_settings
from kontor.tenancy import InvalidTenant

__all__ = ["app", "audit_app", "default_audit_path", "default_db_url", "server_app", "tenant_app", "tools_app",
           "user_app"]

T = TypeVar("T")

app = typer.Typer(help="Gateway: tenants, users, servers, tool approvals, audit.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
tenant_app = typer.Typer(help="Create and list tenants.", no_args_is_help=True)
user_app = typer.Typer(help="Manage a tenant's users and roles.", no_args_is_help=True)
server_app = typer.Typer(help="Enable, disable and list a tenant's MCP servers.", no_args_is_help=True)
tools_app = typer.Typer(help="Pinned tool definitions: list and approve.", no_args_is_help=True)
audit_app = typer.Typer(help="The audit log of tool calls.", no_args_is_help=True)
app.add_typer(tenant_app, name="tenant")
app.add_typer(user_app, name="user")
app.add_typer(server_app, name="server")
app.add_typer(tools_app, name="tools")
app.add_typer(audit_app, name="audit")

# How commands open the database; tests swap in a cheap argon2 profile here.
db_factory: Callable[[str], GatewayDB] = GatewayDB

DbOpt = Annotated[str | None, typer.Option("--db", help="SQLAlchemy async URL (default: SQLite under the data root)")]


def default_db_url() -> str:
    """``sqlite+aiosqlite:///<data root>/gateway/gateway.db``; creates the folder."""
    folder = Path(get_settings().data_root) / "gateway"
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite+aiosqlite:///{folder / 'gateway.db'}"


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code=1)


def _run(db_url: str | None, action: Callable[[GatewayDB], Awaitable[T]]) -> T:
    """Open the database, run ``action`` on it, close it; known errors become exit code 1."""

    async def main() -> T:
        async with db_factory(db_url or default_db_url()) as db:
            return await action(db)

    try:
        return anyio.run(main)
    except (GatewayDBError, InvalidTenant, NamingError) as exc:
        raise _fail(str(exc)) from None
    except (SQLAlchemyError, ImportError, OSError) as exc:  # bad URL, missing driver, unreachable server
        raise _fail(f"database {_safe_url(db_url)}: {type(exc).__name__}: {exc}") from None


def _safe_url(db_url: str | None) -> str:
    """The URL for messages, with any password masked."""
    if db_url is None:
        return "(default)"
    try:
        return make_url(db_url).render_as_string(hide_password=True)
    except ArgumentError:
        return "(unparsable URL)"


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows, strict=False)]
    for line in (header, *rows):
        typer.echo("  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())


# tenants


@tenant_app.command("create")
def tenant_create(
    tenant: Annotated[str, typer.Argument(help="tenant id: lowercase letters, digits, inner hyphens")],
    name: Annotated[str | None, typer.Option("--name", help="display name (default: the id)")] = None,
    db: DbOpt = None,
    first_party: Annotated[bool, typer.Option(
        "--first-party/--no-first-party",
        help="install the approved first-party servers (lakehouse, ingest) for the tenant")] = True,
) -> None:
    """Create a tenant; the first-party servers are installed for it unless --no-first-party."""

    async def create(g: GatewayDB) -> tuple[Tenant, list[str]]:
        created = await g.create_tenant(tenant, name, actor=_actor())
        if not first_party:
            return created, []
        from kontor.gateway.bootstrap import install_first_party_for

        return created, await install_first_party_for(g, tenant)

    if first_party:  # the registry's tables and the first-party catalog live in the same database
        from kontor.registry.migrations import upgrade_async

        url = db or default_db_url()
        try:
            anyio.run(upgrade_async, url)
        except (SQLAlchemyError, OSError) as exc:
            raise _fail(f"database {_safe_url(db)}: {type(exc).__name__}: {exc}") from None
    created, installed = _run(db, create)
    typer.echo(f"created tenant {created.id} ({created.name})"
               + (f"; installed {', '.join(installed)}" if installed else ""))


@tenant_app.command("list")
def tenant_list(db: DbOpt = None) -> None:
    """List tenants."""
    tenants = _run(db, lambda g: g.list_tenants())
    if not tenants:
        typer.echo("no tenants")
        return
    _table(("TENANT", "NAME", "CREATED"),
           [(t.id, t.name, t.created_at.isoformat(timespec="seconds")) for t in tenants])


# users


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        line = sys.stdin.readline()
        return line.removesuffix("\n").removesuffix("\r")
    return typer.prompt("Password", hide_input=True, confirmation_prompt=True)


@user_app.command("add")
def user_add(
    tenant: Annotated[str, typer.Argument(help="tenant id")],
    email: Annotated[str, typer.Argument(help="the user's e-mail address (stored lowercase)")],
    role: Annotated[Role, typer.Option("--role", help="admin or member")] = Role.member,
    password_stdin: Annotated[bool, typer.Option("--password-stdin", help="read the password from stdin")] = False,
    db: DbOpt = None,
) -> None:
    """Add a user; asks for the password twice (hidden) unless --password-stdin."""
    password = _read_password(password_stdin)
    user = _run(db, lambda g: g.add_user(tenant, email, password, role, actor=_actor()))
    typer.echo(f"added {user.email} to tenant {user.tenant_id} as {user.role.value}")


@user_app.command("role")
def user_role(
    tenant: Annotated[str, typer.Argument(help="tenant id")],
    email: Annotated[str, typer.Argument(help="the user's e-mail address")],
    role: Annotated[Role, typer.Argument(help="admin or member")],
    db: DbOpt = None,
) -> None:
    """Change a user's role."""
    user = _run(db, lambda g: g.set_role(tenant, email, role, actor=_actor()))
    typer.echo(f"{user.email} in tenant {user.tenant_id} is now {user.role.value}")


# tools


def _pin_row(pin: ToolPin) -> tuple[str, ...]:
    shown = pin.live_hash if pin.state == "withheld" and pin.live_hash else pin.definition_hash
    return (pin.server, pin.tool, pin.state.value, (shown or "-")[:16], pin.approved_by or "-", pin.reason or "")


@tools_app.command("list")
def tools_list(
    tenant: Annotated[str, typer.Argument(help="tenant id")],
    server: Annotated[str | None, typer.Option("--server", help="only this server")] = None,
    db: DbOpt = None,
) -> None:
    """List pinned tools with their state; a withheld tool shows the hash of its live definition."""
    pins = _run(db, lambda g: g.list_pins(tenant, server))
    if not pins:
        typer.echo(f"no pinned tools for tenant {tenant}")
        return
    _table(("SERVER", "TOOL", "STATE", "HASH", "APPROVED BY", "REASON"), [_pin_row(p) for p in pins])


@tools_app.command("approve")
def tools_approve(
    tenant: Annotated[str, typer.Argument(help="tenant id")],
    server: Annotated[str, typer.Argument(help="server name")],
    tool: Annotated[str, typer.Argument(help="tool name (as the server names it)")],
    expected_hash: Annotated[str | None, typer.Option(
        "--hash", help="approve only if the live definition still has this hash (or its shown prefix)")] = None,
    db: DbOpt = None,
) -> None:
    """Approve the live definition of a withheld tool."""

    async def approve(g: GatewayDB) -> ToolPin:
        full = expected_hash
        if expected_hash is not None and len(expected_hash) < 64:  # a prefix as printed by `tools list`
            pins = [p for p in await g.list_pins(tenant, server) if p.tool == tool]
            live = pins[0].live_hash if pins else None
            if live is not None and live.startswith(expected_hash.lower()):
                full = live
        return await g.approve_tool(tenant, server, tool, _actor(), expected_hash=full)

    pin = _run(db, approve)
    typer.echo(f"approved {pin.server}/{pin.tool} (hash {pin.definition_hash}) for tenant {pin.tenant_id}")


# servers


def _installation_row(inst: Installation) -> tuple[str, ...]:
    return (inst.server, inst.state.value, inst.upstream_url, " ".join(inst.granted_scopes) or "-",
            inst.version or "-", json.dumps(inst.config, sort_keys=True) if inst.config else "-")


def _parse_config(config: str | None) -> dict | None:
    if config is None:
        return None
    try:
        value = json.loads(config)
    except ValueError as exc:
        raise _fail(f"--config is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise _fail("--config must be a JSON object, e.g. '{\"write_roles\": [\"admin\"]}'")
    return value


@server_app.command("enable")
def server_enable(
    tenant: Annotated[str, typer.Argument(help="tenant id")],
    name: Annotated[str, typer.Argument(help="server name (the prefix of its tools, e.g. lakehouse)")],
    url: Annotated[str, typer.Argument(help="the server's Streamable HTTP URL, e.g. http://127.0.0.1:8711/mcp")],
    scope: Annotated[list[str] | None, typer.Option(
        "--scope", help="scope granted for this installation (repeatable; default NAME:read and NAME:write)")] = None,
    config: Annotated[str | None, typer.Option(
        "--config", help='installation config as a JSON object, e.g. \'{"write_roles": ["admin"]}\'')] = None,
    version: Annotated[str | None, typer.Option("--version", help="installed version (informational)")] = None,
    db: DbOpt = None,
) -> None:
    """Enable a server for a tenant (or update its URL, scopes and config). Tools are pinned at first discovery."""
    scopes = scope or [read_scope(name), write_scope(name)]
    parsed = _parse_config(config)
    inst = _run(db, lambda g: g.enable_server(tenant, name, url, scopes, config=parsed, version=version,
                                              actor=_actor()))
    typer.echo(f"enabled {inst.server} for tenant {inst.tenant_id} at {inst.upstream_url} "
               f"(scopes: {' '.join(inst.granted_scopes) or 'none'})")


@server_app.command("disable")
def server_disable(
    tenant: Annotated[str, typer.Argument(help="tenant id")],
    name: Annotated[str, typer.Argument(help="server name")],
    db: DbOpt = None,
) -> None:
    """Disable a tenant's server: its tools disappear from the tenant's endpoint."""
    inst = _run(db, lambda g: g.disable_server(tenant, name, actor=_actor()))
    typer.echo(f"disabled {inst.server} for tenant {inst.tenant_id}")


@server_app.command("list")
def server_list(
    tenant: Annotated[str, typer.Argument(help="tenant id")],
    db: DbOpt = None,
) -> None:
    """List the servers enabled for a tenant."""
    installs = _run(db, lambda g: g.list_enabled(tenant))
    if not installs:
        typer.echo(f"no servers enabled for tenant {tenant}")
        return
    _table(("SERVER", "STATE", "URL", "SCOPES", "VERSION", "CONFIG"), [_installation_row(i) for i in installs])


# audit

AUDIT_DIR = "audit"
AUDIT_DB = "audit.db"


def default_audit_path() -> Path:
    """``<data root>/gateway/audit/audit.db``: where the gateway keeps its audit log."""
    return Path(get_settings().data_root) / "gateway" / AUDIT_DIR / AUDIT_DB


class _ReadOnlyAudit(AuditLog):
    """An :class:`AuditLog` that never moves the head anchor: verifying must not write (the gateway may be
    running and owns the anchor)."""

    async def _write_anchor_if_moved(self) -> None:
        return None


@audit_app.command("verify")
def audit_verify(
    path: Annotated[Path | None, typer.Option(
        "--path", help="audit database file or its folder (default: <data root>/gateway/audit/audit.db)")] = None,
) -> None:
    """Check the audit log's hash chain and head anchor; exit code 1 when it is broken."""
    file = path or default_audit_path()
    if file.is_dir():
        file = file / AUDIT_DB
    audit = _ReadOnlyAudit(file)
    if not file.exists():
        if audit.anchor_path is not None and audit.anchor_path.exists():
            raise _fail(f"audit log {file} is missing but its anchor {audit.anchor_path} exists: "
                        "the log was deleted")
        typer.echo(f"no audit log at {file} (nothing recorded yet)")
        return

    async def main() -> VerifyResult:
        await audit.init(check_anchor=False)  # verify() reports anchor problems with the details
        try:
            return await audit.verify()
        finally:
            await audit.close()

    try:
        result = anyio.run(main)
    except AuditIntegrityError as exc:
        raise _fail(f"audit log {file} is BROKEN: {exc}") from None
    except (SQLAlchemyError, OSError) as exc:
        raise _fail(f"audit log {file}: {type(exc).__name__}: {exc}") from None
    if not result.ok:
        raise _fail(f"audit log {file} is BROKEN at record {result.first_bad_seq}: {result.reason} "
                    f"({result.checked} records verified before it)")
    anchor = (f"head anchor at seq {result.anchor_seq} matches" if result.anchor_seq is not None
              else "no head anchor, so a cut-off tail cannot be detected")
    typer.echo(f"audit log {file} is intact: {result.checked} records, chain ok, {anchor}")
