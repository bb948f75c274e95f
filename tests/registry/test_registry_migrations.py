"""The Alembic migrations: they make exactly the schema of ``metadata.create_all``, on SQLite and PostgreSQL.

Compared by SQLAlchemy inspection (tables, columns with type/nullability/defaults, primary keys,
foreign keys, indexes, unique and check constraints) and by Alembic's own autogenerate comparison,
which must find nothing to do. Upgrading again is a no-op, and a database that ``GatewayDB.init``
made before migrations existed is adopted without losing its rows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from kontor.gateway.db import GatewayDB
from kontor.registry.migrations import (
    alembic_config,
    current_revision,
    head_revision,
    target_metadata,
    upgrade,
    upgrade_async,
)
from kontor.registry.models import registry_tables

VERSION_TABLE = "alembic_version"


@pytest.fixture(params=["sqlite", "postgresql"])
def two_urls(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """Two empty databases of the same engine."""
    if request.param == "sqlite":
        (tmp_path / "migrated").mkdir()
        (tmp_path / "created").mkdir()
        yield (f"sqlite+aiosqlite:///{tmp_path / 'migrated' / 'kontor.db'}",
               f"sqlite+aiosqlite:///{tmp_path / 'created' / 'kontor.db'}")
        return
    cluster = request.getfixturevalue("pg_cluster")
    with cluster.database() as first, cluster.database() as second:
        yield first, second


def _schema(connection: Connection) -> dict[str, Any]:
    inspector = inspect(connection)
    out: dict[str, Any] = {}
    for table in sorted(set(inspector.get_table_names()) - {VERSION_TABLE}):
        columns = [(c["name"], str(c["type"]), c["nullable"], str(c.get("default")), bool(c.get("autoincrement")))
                   for c in inspector.get_columns(table)]
        pk = inspector.get_pk_constraint(table)
        fks = sorted((fk["name"], tuple(fk["constrained_columns"]), fk["referred_table"],
                      tuple(fk["referred_columns"]), tuple(sorted((fk.get("options") or {}).items())))
                     for fk in inspector.get_foreign_keys(table))
        indexes = sorted((ix["name"], tuple(ix["column_names"]), bool(ix["unique"]))
                         for ix in inspector.get_indexes(table))
        uniques = sorted((uq["name"], tuple(uq["column_names"])) for uq in inspector.get_unique_constraints(table))
        checks = sorted((ck["name"], " ".join(ck["sqltext"].split())) for ck in inspector.get_check_constraints(table))
        out[table] = {"columns": columns, "pk": (pk["name"], tuple(pk["constrained_columns"])), "fks": fks,
                      "indexes": indexes, "uniques": uniques, "checks": checks}
    return out


async def _inspect(url: str, fn: Callable[[Connection], Any]) -> Any:
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(fn)
    finally:
        await engine.dispose()


def _pending(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return compare_metadata(context, target_metadata())


async def test_migrations_make_the_same_schema_as_create_all(two_urls: tuple[str, str]) -> None:
    migrated_url, created_url = two_urls
    await upgrade_async(migrated_url)
    db = GatewayDB(created_url)
    target_metadata()
    await db.init()
    await db.close()
    migrated = await _inspect(migrated_url, _schema)
    created = await _inspect(created_url, _schema)
    assert set(migrated) == set(target_metadata().tables)
    assert {"tenants", "users", "installations", "tool_pins", "events", "oauth_clients"} <= set(migrated)
    assert set(registry_tables()) <= set(migrated)
    assert "audit" not in " ".join(migrated)  # the audit log keeps its own schema
    for table in sorted(created):
        assert migrated[table] == created[table], table
    assert migrated == created
    # Alembic's own comparison of the migrated database with the models: nothing to do
    assert await _inspect(migrated_url, _pending) == []
    assert await current_revision(migrated_url) == head_revision()


async def test_upgrade_is_idempotent(two_urls: tuple[str, str]) -> None:
    url, _ = two_urls
    await upgrade_async(url)
    before = await _inspect(url, _schema)
    await upgrade_async(url)
    await upgrade_async(url)
    assert await _inspect(url, _schema) == before
    assert await current_revision(url) == head_revision()
    versions = await _inspect(url, lambda c: c.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).all())
    assert [tuple(v) for v in versions] == [(head_revision(),)]


async def test_a_database_made_by_create_all_before_migrations_is_adopted(two_urls: tuple[str, str]) -> None:
    url, _ = two_urls
    gateway_only = [t for t in target_metadata().sorted_tables if not t.name.startswith("registry_")]

    def create_old(connection: Connection) -> None:
        target_metadata().create_all(connection, tables=gateway_only)

    engine = create_async_engine(url, poolclass=NullPool)
    async with engine.begin() as conn:
        await conn.run_sync(create_old)
    await engine.dispose()
    db = GatewayDB(url)
    await db.create_tenant("acme", "ACME GmbH")
    await db.close()
    assert await current_revision(url) is None
    await upgrade_async(url)
    assert await current_revision(url) == head_revision()
    tables = await _inspect(url, lambda c: set(inspect(c).get_table_names()))
    assert set(registry_tables()) <= tables
    db = GatewayDB(url)
    assert (await db.get_tenant("acme")).name == "ACME GmbH"  # type: ignore[union-attr]
    await db.close()
    assert await _inspect(url, _pending) == []


def test_synchronous_upgrade_and_the_packaged_script_location(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'data' / 'gateway' / 'gateway.db'}"
    upgrade(url)  # creates the folder, like GatewayDB.init
    upgrade(url)
    assert (tmp_path / "data" / "gateway" / "gateway.db").is_file()
    script = ScriptDirectory.from_config(alembic_config())
    assert Path(script.dir).resolve() == (Path(__file__).parents[2] / "registry" / "migrations").resolve()
    assert [r.revision for r in script.walk_revisions()] == ["0001_initial"] == [head_revision()]
