"""``kontor token``: print an access token for a user, without the browser flow (development).

The token is signed with the gateway's OAuth keys (``<data root>/gateway/keys/oauth``), so a
gateway running on the same data root accepts it. Scopes are cut down to what the user's role
allows. Only the token goes to stdout; errors go to stderr with exit code 1.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated

import anyio
import typer
from sqlalchemy.exc import SQLAlchemyError

from kontor.gateway.config import get_gateway_settings
from kontor.gateway.db import GatewayDB, GatewayDBError
from kontor.gateway.oauth import AuthServer
from kontor.tenancy import InvalidTenant

__all__ = ["app", "token_command"]

app = typer.Typer(help="Development access tokens from the built-in authorization server.",
                  pretty_exceptions_enable=False)

# How the command opens the database (tests swap in one with a cheap password hasher).
db_factory: Callable[[str], GatewayDB] = GatewayDB


def _split_scopes(scopes: list[str] | None) -> list[str] | None:
    if not scopes:
        return None
    out = [s for value in scopes for s in re.split(r"[,\s]+", value) if s]
    return out or None


@app.command("token")
def token_command(
    tenant: Annotated[str, typer.Option("--tenant", help="Tenant id")],
    user: Annotated[str, typer.Option("--user", help="The user's e-mail address")],
    scopes: Annotated[list[str] | None, typer.Option(
        "--scopes", help="Scopes, comma or space separated (default: all the user's role allows)")] = None,
    db: Annotated[str | None, typer.Option(
        "--db", help="SQLAlchemy async URL (default: SQLite under the data root)")] = None,
) -> None:
    """Print an access token for USER in TENANT."""
    settings = get_gateway_settings()
    wanted = _split_scopes(scopes)

    async def main() -> str:
        async with db_factory(db or settings.database_url) as database:
            return await AuthServer(settings, database).issue_access_token(tenant, user, wanted)

    try:
        token = anyio.run(main)
    except (GatewayDBError, InvalidTenant) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=1) from None
    except (SQLAlchemyError, ImportError, OSError) as exc:
        typer.echo(f"error: database: {type(exc).__name__}", err=True)
        raise typer.Exit(code=1) from None
    typer.echo(token)
