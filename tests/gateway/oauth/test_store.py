"""The store: portable schema, codes and refresh tokens, pruning, and the in-memory revocation list
backed by the database. Every test with ``db`` runs on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.schema import CreateTable

from kontor.gateway.db import Base, GatewayDB
from kontor.gateway.oauth.store import (
    CodeRecord,
    IssuedTokens,
    OAuthCodeRow,
    OAuthRevokedJtiRow,
    OAuthSessionRow,
    OAuthStore,
    secret_hash,
)
from tests.gateway.oauth.conftest import MEMBER, REDIRECT, RESOURCE, TENANT, Clock


@pytest.fixture(params=["sqlite", "postgresql"])
def db_engine(request: pytest.FixtureRequest) -> str:
    return str(request.param)

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


async def save_code(store: OAuthStore, db: GatewayDB, clock: Clock, code: str) -> None:
    user = await db.get_user(TENANT, MEMBER)
    assert user is not None
    await store.save_code(code, CodeRecord(
        "", TENANT, "client-1", user.id, user.email, REDIRECT, ("files:read",), RESOURCE, "c" * 43, "S256",
        uuid.uuid4(), clock.now + timedelta(seconds=60)))


def tokens(record: CodeRecord, clock: Clock, jti: str, refresh: str, code_hash: str | None = None) -> IssuedTokens:
    return IssuedTokens(TENANT, record.family_id, "client-1", record.user_id, record.email, record.scope,
                        record.resource, jti, clock.now + timedelta(minutes=5), refresh, clock.now + timedelta(days=1),
                        code_hash=code_hash)


async def test_code_replay_revokes_what_it_issued(db: GatewayDB, clock: Clock) -> None:
    store = OAuthStore(db, sync_interval_s=0)
    await save_code(store, db, clock, "code-1")
    assert await store.consume_code(TENANT, "code-1", "client-2") is None  # another client's
    record = await store.consume_code(TENANT, "code-1", "client-1")
    assert record is not None and record.scope == ("files:read",) and record.expires_at > clock.now
    await store.record_issued(tokens(record, clock, "jti-1", "refresh-1", secret_hash("code-1")))
    assert not await store.is_revoked("jti-1") and await store.find_refresh(TENANT, "refresh-1") is not None
    assert await store.consume_code(TENANT, "code-1", "client-1") is None  # replayed
    assert await OAuthStore(db, sync_interval_s=0).is_revoked("jti-1")  # seen by another replica too
    assert await store.find_refresh(TENANT, "refresh-1") is None
    assert await store.consume_refresh(TENANT, "refresh-1", "client-1") is None


async def test_concurrent_exchanges_of_one_code(db: GatewayDB, clock: Clock) -> None:
    store = OAuthStore(db, sync_interval_s=0)
    await save_code(store, db, clock, "code-2")
    results = await asyncio.gather(*(store.consume_code(TENANT, "code-2", "client-1") for _ in range(2)))
    winners = [r for r in results if r is not None]
    assert len(winners) == 1  # the other one is a replay: it revokes the family ...
    await store.record_issued(tokens(winners[0], clock, "jti-2", "refresh-2", secret_hash("code-2")))
    assert await store.is_revoked("jti-2")  # ... so what the winner issued is revoked at once
    assert await store.find_refresh(TENANT, "refresh-2") is None


async def test_refresh_rotation_and_reuse(db: GatewayDB, clock: Clock) -> None:
    store = OAuthStore(db, sync_interval_s=0)
    await save_code(store, db, clock, "code-3")
    record = await store.consume_code(TENANT, "code-3", "client-1")
    assert record is not None
    await store.record_issued(tokens(record, clock, "jti-3", "refresh-3"))
    assert await store.consume_refresh(TENANT, "refresh-3", "client-2") is None  # another client's
    rotated = await store.consume_refresh(TENANT, "refresh-3", "client-1")
    assert rotated is not None and rotated.family_id == record.family_id and rotated.expires_at > clock.now
    assert not await store.is_revoked("jti-3")
    assert await store.consume_refresh(TENANT, "refresh-3", "client-1") is None  # reused: the family is revoked
    assert await store.is_revoked("jti-3")
    clock.advance(24 * 3600 + 1)
    await store.prune()
    assert await count(db, OAuthRevokedJtiRow) == 0
