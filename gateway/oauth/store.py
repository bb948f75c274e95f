"""Persistence of the built-in authorization server: clients, codes, refresh tokens, revocations, sessions.

The tables live on :data:`kontor.gateway.db.Base`, so :meth:`GatewayDB.init` creates them —
provided this module was imported first (``import kontor.gateway.oauth`` does it). Only
portable types are used, as in :mod:`kontor.gateway.db`, so the same code runs on SQLite and
PostgreSQL.

Secrets are never stored: authorization codes, refresh tokens, browser-session ids and
client secrets are kept as SHA-256 hashes (they are long random strings, so a plain hash is
enough). Codes and refresh tokens carry a *family* id: everything issued from one
authorization belongs to one family, and a replayed code or refresh token revokes the family
(its refresh tokens, and the ``jti`` of every access token issued in it).

Revoked access-token ids are kept in the database and mirrored in memory:
:meth:`OAuthStore.is_revoked` is a dictionary lookup, re-synchronised from the database at
most every ``sync_interval_s`` so revocations made by another replica arrive within seconds.
"""

from __future__ import annotations

import hashlib
import math
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Boolean, ForeignKey, String, delete, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Mapped, mapped_column

from kontor.gateway.db import MAX_EMAIL_LENGTH, Base, GatewayDB, JSONType, UTCDateTime

__all__ = [
    "ClientRecord",
    "CodeRecord",
    "IssuedTokens",
    "OAuthClientRow",
    "OAuthCodeRow",
    "OAuthRefreshTokenRow",
    "OAuthRevokedJtiRow",
    "OAuthSessionRow",
    "OAuthStore",
    "RefreshRecord",
    "SessionRecord",
    "secret_hash",
]

MAX_URL_LENGTH = 2048
#: Used codes are kept this long after they expire, so a late replay still revokes its family.
USED_CODE_RETENTION = timedelta(hours=1)


def secret_hash(value: str) -> str:
    """Hex SHA-256 of a high-entropy secret (code, token, session id, client secret)."""
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


# --- tables -----------------------------------------------------------------------------------


class OAuthClientRow(Base):
    """A client registered through RFC 7591 dynamic registration (metadata-document clients are not stored)."""

    __tablename__ = "oauth_clients"

    tenant_id: Mapped[str] = mapped_column(String(63), ForeignKey("tenants.id", ondelete="CASCADE"),
                                           primary_key=True)
    client_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    client_secret_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    client_name: Mapped[str | None] = mapped_column(String(200), nullable=True)
    redirect_uris: Mapped[list[str]] = mapped_column(JSONType)
    grant_types: Mapped[list[str]] = mapped_column(JSONType)
    response_types: Mapped[list[str]] = mapped_column(JSONType)
    token_endpoint_auth_method: Mapped[str] = mapped_column(String(32))
    scope: Mapped[str | None] = mapped_column(String(4096), nullable=True)
    client_metadata: Mapped[dict[str, Any]] = mapped_column(JSONType, default=lambda: {})
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class OAuthCodeRow(Base):
    __tablename__ = "oauth_codes"

    code_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(63), ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    client_id: Mapped[str] = mapped_column(String(MAX_URL_LENGTH))
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    email: Mapped[str] = mapped_column(String(MAX_EMAIL_LENGTH))
    redirect_uri: Mapped[str] = mapped_column(String(MAX_URL_LENGTH))
    scope: Mapped[list[str]] = mapped_column(JSONType)
    resource: Mapped[str | None] = mapped_column(String(MAX_URL_LENGTH), nullable=True)
    code_challenge: Mapped[str] = mapped_column(String(128))
    code_challenge_method: Mapped[str] = mapped_column(String(8))
    family_id: Mapped[uuid.UUID] = mapped_column(index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    used: Mapped[bool] = mapped_column(Boolean, default=False)
    family_revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    access_jti: Mapped[str | None] = mapped_column(String(64), nullable=True)
    access_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class OAuthRefreshTokenRow(Base):
    __tablename__ = "oauth_refresh_tokens"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    family_id: Mapped[uuid.UUID] = mapped_column(index=True)
    tenant_id: Mapped[str] = mapped_column(String(63), ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    client_id: Mapped[str] = mapped_column(String(MAX_URL_LENGTH))
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    email: Mapped[str] = mapped_column(String(MAX_EMAIL_LENGTH))
    scope: Mapped[list[str]] = mapped_column(JSONType)
    resource: Mapped[str | None] = mapped_column(String(MAX_URL_LENGTH), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    used: Mapped[bool] = mapped_column(Boolean, default=False)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    access_jti: Mapped[str | None] = mapped_column(String(64), nullable=True)
    access_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class OAuthRevokedJtiRow(Base):
    __tablename__ = "oauth_revoked_jti"

    jti: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str | None] = mapped_column(String(63), nullable=True)
    revoked_at: Mapped[datetime] = mapped_column(UTCDateTime())
    #: When the token expires anyway; the row can be pruned after that.
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class OAuthSessionRow(Base):
    """A browser session on a tenant's login/consent pages (anonymous until the user signs in)."""

    __tablename__ = "oauth_sessions"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(63), ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), nullable=True)
    email: Mapped[str | None] = mapped_column(String(MAX_EMAIL_LENGTH), nullable=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


# --- records ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClientRecord:
    client_id: str
    redirect_uris: tuple[str, ...]
    grant_types: tuple[str, ...]
    response_types: tuple[str, ...]
    token_endpoint_auth_method: str
    client_name: str | None = None
    scope: str | None = None
    client_secret_hash: str | None = None
    #: True for a client identified by the URL of its metadata document (not stored).
    metadata_document: bool = False


@dataclass(frozen=True)
class CodeRecord:
    code_hash: str
    tenant: str
    client_id: str
    user_id: uuid.UUID
    email: str
    redirect_uri: str
    scope: tuple[str, ...]
    resource: str | None
    code_challenge: str
    code_challenge_method: str
    family_id: uuid.UUID
    expires_at: datetime


@dataclass(frozen=True)
class RefreshRecord:
    token_hash: str
    tenant: str
    family_id: uuid.UUID
    client_id: str
    user_id: uuid.UUID
    email: str
    scope: tuple[str, ...]
    resource: str | None
    expires_at: datetime


@dataclass(frozen=True)
class IssuedTokens:
    """What one token response issued, for :meth:`OAuthStore.record_issued`."""

    tenant: str
    family_id: uuid.UUID
    client_id: str
    user_id: uuid.UUID
    email: str
    scope: tuple[str, ...]
    resource: str | None
    access_jti: str
    access_expires_at: datetime
    refresh_token: str | None
    refresh_expires_at: datetime | None
    #: Hash of the code the tokens were exchanged for (None for a refresh).
    code_hash: str | None = None


@dataclass(frozen=True)
class SessionRecord:
    id_hash: str
    tenant: str
    user_id: uuid.UUID | None
    email: str | None
    csrf_token: str
    expires_at: datetime


def _client(row: OAuthClientRow) -> ClientRecord:
    return ClientRecord(client_id=row.client_id, redirect_uris=tuple(row.redirect_uris or ()),
                        grant_types=tuple(row.grant_types or ()), response_types=tuple(row.response_types or ()),
                        token_endpoint_auth_method=row.token_endpoint_auth_method, client_name=row.client_name,
                        scope=row.scope, client_secret_hash=row.client_secret_hash)


def _code(row: OAuthCodeRow) -> CodeRecord:
    return CodeRecord(row.code_hash, row.tenant_id, row.client_id, row.user_id, row.email, row.redirect_uri,
                      tuple(row.scope or ()), row.resource, row.code_challenge, row.code_challenge_method,
                      row.family_id, row.expires_at)


def _refresh(row: OAuthRefreshTokenRow) -> RefreshRecord:
    return RefreshRecord(row.token_hash, row.tenant_id, row.family_id, row.client_id, row.user_id, row.email,
                         tuple(row.scope or ()), row.resource, row.expires_at)


def _session(row: OAuthSessionRow) -> SessionRecord:
    return SessionRecord(row.id_hash, row.tenant_id, row.user_id, row.email, row.csrf_token, row.expires_at)


# --- the store --------------------------------------------------------------------------------


class OAuthStore:
    """Async repository of the authorization server's state, on the gateway database's engine."""

    def __init__(self, db: GatewayDB, *, sync_interval_s: float = 5.0,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.db = db
        self.sync_interval_s = sync_interval_s
        self._monotonic = monotonic
        self._sessions = async_sessionmaker(db.engine, expire_on_commit=False)
        self._revoked: dict[str, datetime] = {}
        self._synced_at = -math.inf
        self._syncing = False

    def now(self) -> datetime:
        """The current time from the gateway database's clock (injectable in tests)."""
        now = self.db.clock()
        if now.tzinfo is None:
            raise ValueError("clock must return an aware datetime")
        return now.astimezone(UTC)

    # clients

    async def add_client(self, tenant: str, client: ClientRecord, metadata: dict[str, Any]) -> None:
        async with self._sessions.begin() as session:
            session.add(OAuthClientRow(
                tenant_id=tenant, client_id=client.client_id, client_secret_hash=client.client_secret_hash,
                client_name=client.client_name, redirect_uris=list(client.redirect_uris),
                grant_types=list(client.grant_types), response_types=list(client.response_types),
                token_endpoint_auth_method=client.token_endpoint_auth_method, scope=client.scope,
                client_metadata=metadata, created_at=self.now()))

    async def get_client(self, tenant: str, client_id: str) -> ClientRecord | None:
        if len(client_id) > 64:
            return None
        async with self._sessions() as session:
            row = await session.get(OAuthClientRow, (tenant, client_id))
        return _client(row) if row is not None else None

    # authorization codes

    async def save_code(self, code: str, record: CodeRecord) -> None:
        async with self._sessions.begin() as session:
            session.add(OAuthCodeRow(
                code_hash=secret_hash(code), tenant_id=record.tenant, client_id=record.client_id,
                user_id=record.user_id, email=record.email, redirect_uri=record.redirect_uri,
                scope=list(record.scope), resource=record.resource, code_challenge=record.code_challenge,
                code_challenge_method=record.code_challenge_method, family_id=record.family_id,
                created_at=self.now(), expires_at=record.expires_at, used=False, family_revoked=False))

    async def consume_code(self, tenant: str, code: str, client_id: str) -> CodeRecord | None:
        """Mark the code used and return it; None when unknown, expired, another client's or already used.

        A code presented a second time revokes every token issued from it.
        """
        code_hash = secret_hash(code)
        now = self.now()
        async with self._sessions.begin() as session:
            row = await session.get(OAuthCodeRow, code_hash)
            if row is None or row.tenant_id != tenant or row.client_id != client_id:
                return None
            if row.used:
                await self._revoke_family(session, tenant, row.family_id, now)
                return None
            if row.expires_at <= now:
                return None
            result = await session.execute(
                update(OAuthCodeRow).where(OAuthCodeRow.code_hash == code_hash, OAuthCodeRow.used.is_(False))
                .values(used=True))
            if result.rowcount != 1:  # a concurrent request used it first
                await self._revoke_family(session, tenant, row.family_id, now)
                return None
            return _code(row)

    # refresh tokens and access-token ids

    async def record_issued(self, issued: IssuedTokens) -> None:
        """Store the refresh token (hashed) and the access token's jti of one token response.

        If the family was revoked meanwhile (a replay raced this exchange), what was just
        issued is revoked at once.
        """
        now = self.now()
        async with self._sessions.begin() as session:
            if issued.code_hash is not None:
                await session.execute(update(OAuthCodeRow).where(OAuthCodeRow.code_hash == issued.code_hash)
                                      .values(access_jti=issued.access_jti,
                                              access_expires_at=issued.access_expires_at))
            if issued.refresh_token is not None and issued.refresh_expires_at is not None:
                session.add(OAuthRefreshTokenRow(
                    token_hash=secret_hash(issued.refresh_token), family_id=issued.family_id, tenant_id=issued.tenant,
                    client_id=issued.client_id, user_id=issued.user_id, email=issued.email,
                    scope=list(issued.scope), resource=issued.resource, created_at=now,
                    expires_at=issued.refresh_expires_at, used=False, revoked=False,
                    access_jti=issued.access_jti, access_expires_at=issued.access_expires_at))
                await session.flush()
            revoked = await session.scalar(select(OAuthCodeRow.code_hash).where(
                OAuthCodeRow.family_id == issued.family_id, OAuthCodeRow.family_revoked.is_(True)).limit(1))
            if revoked is None:
                revoked = await session.scalar(select(OAuthRefreshTokenRow.token_hash).where(
                    OAuthRefreshTokenRow.family_id == issued.family_id,
                    OAuthRefreshTokenRow.revoked.is_(True)).limit(1))
            if revoked is not None:
                await self._revoke_family(session, issued.tenant, issued.family_id, now)

    async def consume_refresh(self, tenant: str, token: str, client_id: str) -> RefreshRecord | None:
        """Rotate: mark the refresh token used and return it; None when it cannot be used.

        Presenting a refresh token that was already used revokes its whole family.
        """
        token_hash = secret_hash(token)
        now = self.now()
        async with self._sessions.begin() as session:
            row = await session.get(OAuthRefreshTokenRow, token_hash)
            if row is None or row.tenant_id != tenant or row.client_id != client_id or row.revoked:
                return None
            if row.used:
                await self._revoke_family(session, tenant, row.family_id, now)
                return None
            if row.expires_at <= now:
                return None
            result = await session.execute(
                update(OAuthRefreshTokenRow).where(OAuthRefreshTokenRow.token_hash == token_hash,
                                                   OAuthRefreshTokenRow.used.is_(False))
                .values(used=True))
            if result.rowcount != 1:
                await self._revoke_family(session, tenant, row.family_id, now)
                return None
            return _refresh(row)

    async def find_refresh(self, tenant: str, token: str) -> RefreshRecord | None:
        """A live (unused, unrevoked, unexpired) refresh token, without consuming it."""
        async with self._sessions() as session:
            row = await session.get(OAuthRefreshTokenRow, secret_hash(token))
        if row is None or row.tenant_id != tenant or row.used or row.revoked or row.expires_at <= self.now():
            return None
        return _refresh(row)

    async def revoke_family(self, tenant: str, family_id: uuid.UUID) -> None:
        async with self._sessions.begin() as session:
            await self._revoke_family(session, tenant, family_id, self.now())

    async def _revoke_family(self, session: AsyncSession, tenant: str, family_id: uuid.UUID, now: datetime) -> None:
        await session.execute(update(OAuthRefreshTokenRow).where(OAuthRefreshTokenRow.family_id == family_id)
                              .values(revoked=True))
        await session.execute(update(OAuthCodeRow).where(OAuthCodeRow.family_id == family_id)
                              .values(family_revoked=True))
        issued: list[tuple[str | None, datetime | None]] = []
        issued += (await session.execute(select(OAuthRefreshTokenRow.access_jti,
                                                OAuthRefreshTokenRow.access_expires_at)
                                         .where(OAuthRefreshTokenRow.family_id == family_id))).tuples().all()
        issued += (await session.execute(select(OAuthCodeRow.access_jti, OAuthCodeRow.access_expires_at)
                                         .where(OAuthCodeRow.family_id == family_id))).tuples().all()
        for jti, expires_at in issued:
            if jti is not None and expires_at is not None and expires_at > now:
                await self._revoke_jti(session, tenant, jti, expires_at, now)

    async def revoke_jti(self, tenant: str | None, jti: str, expires_at: datetime) -> None:
        """Record an access token's ``jti`` as revoked until ``expires_at`` (when it dies anyway)."""
        async with self._sessions.begin() as session:
            await self._revoke_jti(session, tenant, jti, expires_at, self.now())

    async def _revoke_jti(self, session: AsyncSession, tenant: str | None, jti: str, expires_at: datetime,
                          now: datetime) -> None:
        if await session.get(OAuthRevokedJtiRow, jti) is None:
            try:
                async with session.begin_nested():  # a concurrent revocation of the same jti is no error
                    session.add(OAuthRevokedJtiRow(jti=jti, tenant_id=tenant, revoked_at=now, expires_at=expires_at))
            except IntegrityError:
                pass
        # Visible here at once; other replicas see it at their next sync. (If the transaction
        # rolled back, the next sync drops it again.)
        self._revoked[jti] = expires_at

    async def is_revoked(self, jti: str) -> bool:
        """Whether the access token with this ``jti`` was revoked (a dictionary lookup, mostly)."""
        if jti in self._revoked:
            return True
        if self._monotonic() - self._synced_at >= self.sync_interval_s and not self._syncing:
            await self.sync_revoked()
            return jti in self._revoked
        return False

    async def sync_revoked(self) -> None:
        """Reload the revoked, not yet expired ``jti`` values from the database."""
        self._syncing = True
        try:
            now = self.now()
            async with self._sessions() as session:
                rows = (await session.execute(select(OAuthRevokedJtiRow.jti, OAuthRevokedJtiRow.expires_at)
                                              .where(OAuthRevokedJtiRow.expires_at > now))).tuples().all()
            self._revoked = dict(rows)
            self._synced_at = self._monotonic()
        finally:
            self._syncing = False

    # browser sessions

    async def create_session(self, tenant: str, ttl: timedelta, *, user_id: uuid.UUID | None = None,
                             email: str | None = None) -> tuple[str, SessionRecord]:
        """A new session; returns its id (for the cookie, never stored) and the record."""
        session_id = secrets.token_urlsafe(32)
        now = self.now()
        row = OAuthSessionRow(id_hash=secret_hash(session_id), tenant_id=tenant, user_id=user_id, email=email,
                              csrf_token=secrets.token_urlsafe(32), created_at=now, expires_at=now + ttl)
        async with self._sessions.begin() as session:
            session.add(row)
        return session_id, _session(row)

    async def get_session(self, tenant: str, session_id: str) -> SessionRecord | None:
        if not session_id or len(session_id) > 128:
            return None
        async with self._sessions() as session:
            row = await session.get(OAuthSessionRow, secret_hash(session_id))
        if row is None or row.tenant_id != tenant or row.expires_at <= self.now():
            return None
        return _session(row)

    async def delete_session(self, session_id: str) -> None:
        async with self._sessions.begin() as session:
            await session.execute(delete(OAuthSessionRow).where(OAuthSessionRow.id_hash == secret_hash(session_id)))

    # housekeeping

    async def prune(self) -> None:
        """Delete what can no longer be used: expired sessions, codes, refresh tokens and revocations."""
        now = self.now()
        async with self._sessions.begin() as session:
            await session.execute(delete(OAuthSessionRow).where(OAuthSessionRow.expires_at <= now))
            await session.execute(delete(OAuthCodeRow).where(OAuthCodeRow.expires_at <= now - USED_CODE_RETENTION))
            await session.execute(delete(OAuthRefreshTokenRow).where(or_(
                OAuthRefreshTokenRow.expires_at <= now,
                # a used or revoked token is kept while its family's access token may live, for reuse detection
                (OAuthRefreshTokenRow.revoked.is_(True)) & (OAuthRefreshTokenRow.access_expires_at <= now))))
            await session.execute(delete(OAuthRevokedJtiRow).where(OAuthRevokedJtiRow.expires_at <= now))
