"""``kontor token``: print an access token for a user, without the browser flow (development).

The token is signed with the gateway's OAuth keys (``<data root>/gateway/keys/oauth``), so a
gateway running on the same data root accepts it. Its issuer and audience are built from the
gateway's public origin: ``--origin`` if given, else the ``KONTOR_GATEWAY_*`` settings when any of
``KONTOR_GATEWAY_PUBLIC_ORIGIN``/``HOST``/``PORT`` is set, else the origin ``kontor up`` recorded
on this data root, else the default ``http://127.0.0.1:8700``.

Scopes: by default every scope the user's role allows; ``--scopes`` narrows that, and asking
for a scope the role does not allow (or that does not exist in the tenant) is refused rather
than silently dropped. Only the token goes to stdout; errors go to stderr with exit code 1.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Annotated

import anyio
import typer
from pydantic import ValidationError
from sqlalchemy.exc import SQLAlchemyError

from kontor.gateway.bootstrap import read_gateway_origin
from kontor.gateway.config import GatewaySettings, get_gateway_settings
from kontor.gateway.db import GatewayDB, GatewayDBError, InvalidValue, NotFound
from kontor.gateway.oauth import AuthServer
from kontor.gateway.scopes import role_scopes
from kontor.tenancy import InvalidTenant

__all__ = ["app", "token_command"]

app = typer.Typer(help="Development access tokens from the built-in authorization server.",
                  pretty_exceptions_enable=False)

# How the command opens the database (tests swap in one with a cheap password hasher).
db_factory: Callable[[str], GatewayDB] = GatewayDB

#: Environment variables that say where the gateway is; when one is set, the recorded origin is not used.
ORIGIN_ENV = ("KONTOR_GATEWAY_PUBLIC_ORIGIN", "KONTOR_GATEWAY_HOST", "KONTOR_GATEWAY_PORT")


def _split_scopes(scopes: list[str] | None) -> list[str] | None:
    if not scopes:
        return None
    out = [s for value in scopes for s in re.split(r"[,\s]+", value) if s]
    return list(dict.fromkeys(out)) or None


def _settings(origin: str | None) -> GatewaySettings:
    """The gateway settings whose origin the token is for (see the module docstring)."""
    settings = get_gateway_settings()
    if origin is None and not any(os.environ.get(name) for name in ORIGIN_ENV):
        origin = read_gateway_origin(settings.data_dir)
    if not origin:
        return settings
    try:
        return GatewaySettings(**{**settings.model_dump(), "public_origin": origin})
    except ValidationError:
        raise InvalidValue(f"gateway origin {origin!r} is not scheme://host[:port]") from None


async def _check_scopes(database: GatewayDB, tenant: str, email: str, wanted: list[str]) -> None:
    """Refuse (naming them) requested scopes the user's role may not hold in ``tenant``."""
    if await database.get_tenant(tenant) is None:
        raise NotFound(f"tenant {tenant!r} does not exist")
    user = await database.get_user(tenant, email)
    if user is None:
        raise NotFound(f"no user {email!r} in tenant {tenant!r}")
    installations = [(i.server, dict(i.config)) for i in await database.list_enabled(tenant)]
    allowed = role_scopes(user.role.value, installations)
    missing = [scope for scope in wanted if scope not in allowed]
    if missing:
        raise InvalidValue(
            f"user {user.email!r} (role {user.role.value}) in tenant {tenant!r} may not have "
            f"{', '.join(missing)}; allowed: {' '.join(sorted(allowed)) or '(none)'}")


@app.command("token")
def token_command(
    tenant: Annotated[str, typer.Option("--tenant", help="Tenant id")],
    user: Annotated[str, typer.Option("--user", help="The user's e-mail address")],
    scopes: Annotated[list[str] | None, typer.Option(
        "--scopes", help="Scopes, comma or space separated (default: all the user's role allows); "
                         "a scope the role does not allow is an error")] = None,
    db: Annotated[str | None, typer.Option(
        "--db", help="SQLAlchemy async URL (default: SQLite under the data root)")] = None,
    origin: Annotated[str | None, typer.Option(
        "--origin", help="the gateway's public origin, scheme://host:port (default: KONTOR_GATEWAY_* settings, "
                         "else what `kontor up` recorded on this data root)")] = None,
) -> None:
    """Print an access token for USER in TENANT."""
    wanted = _split_scopes(scopes)

    async def main() -> str:
        settings = _settings(origin)
        async with db_factory(db or settings.database_url) as database:
            if wanted is not None:
                await _check_scopes(database, tenant, user, wanted)
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
