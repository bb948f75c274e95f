"""CLI for the gateway database: tenants, users and roles, tool approvals.

``app`` holds three groups (``tenant``, ``user``, ``tools``); they can be mounted one by one
(``tenant_app``, ``user_app``, ``tools_app``) or together. Every command takes ``--db URL``;
without it the database is ``<data root>/gateway/gateway.db`` (SQLite). Errors go to stderr
with exit code 1; secrets are never printed.
"""

from __future__ import annotations

import getpass
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Annotated, TypeVar

import anyio
import typer
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from kontor.gateway.db import GatewayDB, GatewayDBError, Role, ToolPin
from kontor.gateway.naming import NamingError
from kontor.settings import get_settings
from kontor.tenancy import InvalidTenant

__all__ = ["app", "default_db_url", "tenant_app", "tools_app", "user_app"]

T = TypeVar("T")

app = typer.Typer(help="Gateway database: tenants, users, tool approvals.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
tenant_app = typer.Typer(help="Create and list tenants.", no_args_is_help=True)
user_app = typer.Typer(help="Manage a tenant's users and roles.", no_args_is_help=True)
tools_app = typer.Typer(help="Pinned tool definitions: list and approve.", no_args_is_help=True)
app.add_typer(tenant_app, name="tenant")
app.add_typer(user_app, name="user")
app.add_typer(tools_app, name="tools")

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
) -> None:
    """Create a tenant."""
    created = _run(db, lambda g: g.create_tenant(tenant, name, actor=_actor()))
    typer.echo(f"created tenant {created.id} ({created.name})")


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
