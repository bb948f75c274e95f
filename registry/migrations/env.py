"""Alembic environment: async engines (aiosqlite, asyncpg), the gateway's metadata plus the registry's."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from kontor.registry.migrations import target_metadata

config = context.config
metadata = target_metadata()


def _configure(**kwargs: object) -> None:
    context.configure(target_metadata=metadata, compare_type=True, **kwargs)  # type: ignore[arg-type]


def run_offline() -> None:
    """``alembic upgrade --sql``: the SQL script, without a database."""
    _configure(url=config.get_main_option("sqlalchemy.url"), literal_binds=True,
               dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def _run(connection: Connection) -> None:
    _configure(connection=connection, render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


async def _run_async(url: str) -> None:
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            await conn.run_sync(_run)
            await conn.commit()
    finally:
        await engine.dispose()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:  # upgrade_async: a connection of the caller's async engine
        _run(connection)
        return
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no sqlalchemy.url: use kontor.registry.migrations.upgrade(url)")
    asyncio.run(_run_async(url))


if context.is_offline_mode():
    run_offline()
else:
    run_online()
