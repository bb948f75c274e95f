"""The store: portable schema, pruning, and the in-memory revocation list backed by the database."""

from __future__ import annotations

import uuid
from datetime import timedelta

from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.schema import CreateTable

from kontor.gateway.db import Base, GatewayDB
from kontor.gateway.oauth.store import (
    OAuthCodeRow,
    OAuthRevokedJtiRow,
    OAuthSessionRow,
    OAuthStore,
)
from tests.gateway.oauth.conftest import TENANT, Clock

OAUTH_TABLES = {"oauth_clients", "oauth_codes", "oauth_refresh_tokens", "oauth_revoked_jti", "oauth_sessions"}


def test_oauth_tables_are_on_the_gateway_base_and_compile_for_postgresql() -> None:
    tables = [t for t in Base.metadata.sorted_tables if t.name in OAUTH_TABLES]
    assert {t.name for t in tables} == OAUTH_TABLES
    ddl = "\n".join(str(CreateTable(t).compile(dialect=postgresql.dialect())) for t in tables)
    assert "UUID" in ddl and "TIMESTAMP WITH TIME ZONE" in ddl and "JSONB" in ddl


async def count(db: GatewayDB, table: type) -> int:
    async with db.engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(table))).scalar_one())


async def test_revoked_jti_is_remembered_and_pruned_after_expiry(db: GatewayDB, clock: Clock) -> None:
    store = OAuthStore(db, sync_interval_s=0)
    await store.revoke_jti(TENANT, "jti-1", clock.now + timedelta(seconds=60))
    assert await store.is_revoked("jti-1")
    other = OAuthStore(db, sync_interval_s=0)  # another replica: sees it after its sync
    assert await other.is_revoked("jti-1")
    assert not await other.is_revoked("jti-2")
    clock.advance(61)
    await store.prune()
    assert await count(db, OAuthRevokedJtiRow) == 0
    fresh = OAuthStore(db, sync_interval_s=0)
    assert not await fresh.is_revoked("jti-1")


async def test_sessions_expire_and_are_pruned(db: GatewayDB, clock: Clock) -> None:
    store = OAuthStore(db)
    session_id, record = await store.create_session(TENANT, timedelta(minutes=5))
    assert (await store.get_session(TENANT, session_id)) == record
    assert await store.get_session("beta", session_id) is None  # bound to its tenant
    assert await store.get_session(TENANT, "x" * 200) is None
    clock.advance(301)
    assert await store.get_session(TENANT, session_id) is None
    await store.prune()
    assert await count(db, OAuthSessionRow) == 0


async def test_unknown_code_and_family_revocation_without_tokens(db: GatewayDB) -> None:
    store = OAuthStore(db)
    assert await store.consume_code(TENANT, "no-such-code", "client") is None
    await store.revoke_family(TENANT, uuid.uuid4())  # nothing to revoke: no error
    assert await count(db, OAuthCodeRow) == 0
