"""Alembic migrations of Kontor's database: the gateway's tables, the OAuth tables and the registry's.

One schema, one history. :func:`upgrade` (or :func:`upgrade_async` inside a running event loop)
brings a database at any URL to the newest revision; running it again does nothing. The
environment (``env.py``) takes the metadata from :func:`target_metadata`, which imports every
module that declares tables on :data:`kontor.gateway.db.Base` (the audit log keeps its own
schema and is not part of it).

The first revision *adopts* a database that ``GatewayDB.init`` (``metadata.create_all``) made
before migrations existed: it creates only the tables that are missing, so an existing
``gateway.db`` gains the registry's tables and is stamped at that revision without losing data.

``script_location`` is the package resource ``kontor.registry:migrations``, so the migrations
are found wherever the package is installed (no ``alembic.ini`` needed).
"""

from __future__ import annotations

import logging
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import MetaData
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

__all__ = ["SCRIPT_LOCATION", "alembic_config", "current_revision", "head_revision", "target_metadata", "upgrade",
           "upgrade_async"]

SCRIPT_LOCATION = "kontor.registry:migrations"


def target_metadata() -> MetaData:
    """The gateway's ``Base.metadata`` with every table of the gateway, its OAuth server and the registry."""
    import kontor.gateway.oauth  # noqa: F401 - registers the oauth_* tables
    import kontor.registry.models  # noqa: F401 - registers the registry_* tables
    from kontor.gateway.db import Base

    return Base.metadata


def alembic_config(url: str | None = None) -> Config:
    """An Alembic :class:`Config` for these migrations (``url`` becomes ``sqlalchemy.url``)."""
    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def _prepare(url: str) -> None:
    # Alembic narrates every step at INFO; in a CLI whose root logger is at INFO that chatter would
    # land in the command's output. Migrations report problems by raising, so warnings are enough.
    logging.getLogger("alembic").setLevel(max(logging.WARNING, logging.getLogger("alembic").level))
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        from pathlib import Path

        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)


def upgrade(url: str, revision: str = "head") -> None:
    """``alembic upgrade head`` on ``url`` (an async URL: ``sqlite+aiosqlite://`` or ``postgresql+asyncpg://``).

    Synchronous: it runs its own event loop, so call it from plain code (a CLI, a start script);
    inside a running event loop use :func:`upgrade_async`.
    """
    _prepare(url)
    command.upgrade(alembic_config(url), revision)


def _upgrade_on(connection: Connection, revision: str) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, revision)


async def upgrade_async(url: str, revision: str = "head") -> None:
    """:func:`upgrade` from async code: the migrations run on a connection of an async engine."""
    _prepare(url)
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_upgrade_on, revision)
    finally:
        await engine.dispose()


async def current_revision(url: str) -> str | None:
    """The revision the database at ``url`` is stamped with (None: never migrated)."""
    engine = create_async_engine(url, poolclass=NullPool)

    def read(connection: Connection) -> Any:
        return MigrationContext.configure(connection).get_current_revision()

    try:
        async with engine.connect() as conn:
            return await conn.run_sync(read)
    finally:
        await engine.dispose()
