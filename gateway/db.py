"""The gateway's database: tenants, users, roles, server installations, tool pins, events.

SQLAlchemy 2 (async). The URL decides the engine: ``sqlite+aiosqlite:///<data_root>/gateway/gateway.db``
by default, ``postgresql+asyncpg://…`` at scale. Only portable types are used (``String``,
``Uuid``, ``JSON`` (JSONB on PostgreSQL), timezone-aware UTC timestamps through
:class:`UTCDateTime`), no dialect-specific SQL, and constraints carry deterministic names so
the registry's Alembic migrations can take these tables over.

The repository (:class:`GatewayDB`) returns frozen dataclasses, never ORM rows, so nothing
lazy-loads after its session is gone and a password hash never leaves this module.

Passwords: argon2id through argon2-cffi's :class:`~argon2.PasswordHasher` (memory-hard; the
default is the library's recommended profile, RFC 9106 "low memory": t=3, m=64 MiB, p=4).
Passwords are NFKC-normalised before hashing (NIST SP 800-63B), so the same password typed on
another keyboard/OS still matches. Hashing runs in worker threads, at most
``hash_concurrency`` at a time, so logins neither block the event loop nor let a burst of
requests allocate unbounded memory. :meth:`GatewayDB.authenticate` verifies a dummy hash when
the tenant or user does not exist and reports every failure with the same exception message,
so neither the answer nor its timing tells which e-mail addresses exist.
"""

from __future__ import annotations

import re
import secrets
import unicodedata
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import anyio.to_thread
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Integer,
    MetaData,
    String,
    TypeDecorator,
    UniqueConstraint,
    Uuid,
    event,
    func,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from kontor.gateway.naming import SEPARATOR, NameCollision, check_collisions, validate_server_name
from kontor.gateway.pinning import DEFINITION_FIELDS, canonical_json, definition_hash, definition_of
from kontor.tenancy import InvalidTenant, validate_tenant

__all__ = [
    "AccountLocked",
    "AlreadyExists",
    "AuthenticationFailed",
    "Base",
    "Conflict",
    "Event",
    "EventRow",
    "GatewayDB",
    "GatewayDBError",
    "Installation",
    "InstallationRow",
    "InstallationState",
    "InvalidValue",
    "NotFound",
    "PinCheck",
    "PinState",
    "Role",
    "SERVED_STATES",
    "Tenant",
    "TenantRow",
    "ToolPin",
    "ToolPinRow",
    "User",
    "UserRow",
    "WeakPassword",
    "contains_nul",
    "normalise_email",
]

MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 1024  # argon2 accepts more; a cap keeps a single request from being expensive
MAX_EMAIL_LENGTH = 320
MAX_TOOL_NAME_LENGTH = 128  # ToolPinRow.tool
MAX_VERSION_LENGTH = 64  # InstallationRow.version
NEW_TOOL_REASON = "not approved (new tool)"


# --- errors -----------------------------------------------------------------------------------


class GatewayDBError(Exception):
    """Base class of the repository's errors; the message is safe to show to the caller."""


class NotFound(GatewayDBError, LookupError):
    pass


class AlreadyExists(GatewayDBError):
    pass


class Conflict(GatewayDBError):
    """The stored state is not what the operation expects (e.g. the definition to approve changed)."""


class InvalidValue(GatewayDBError, ValueError):
    pass


class WeakPassword(InvalidValue):
    pass


class AuthenticationFailed(GatewayDBError):
    """Login refused. The message is the same for every cause, so it reveals nothing; show it as is."""

    MESSAGE = "invalid e-mail or password, or the account is locked or disabled"

    def __init__(self) -> None:
        super().__init__(self.MESSAGE)


class AccountLocked(AuthenticationFailed):
    """Login refused because the account is locked; ``locked_until`` is for logs, not for the user."""

    def __init__(self, locked_until: datetime) -> None:
        super().__init__()
        self.locked_until = locked_until


# --- enums ------------------------------------------------------------------------------------


class Role(StrEnum):
    admin = "admin"
    member = "member"


class InstallationState(StrEnum):
    requested = "requested"
    enabled = "enabled"
    disabled = "disabled"
    uninstalled = "uninstalled"
    needs_reapproval = "needs_reapproval"


#: Installation states the gateway serves (:meth:`GatewayDB.list_enabled`).
SERVED_STATES = (InstallationState.enabled, InstallationState.needs_reapproval)


class PinState(StrEnum):
    approved = "approved"
    withheld = "withheld"


def _in(column: str, enum: type[StrEnum]) -> str:
    return f"{column} IN ({', '.join(repr(m.value) for m in enum)})"


# --- types and models -------------------------------------------------------------------------


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every engine (SQLite keeps no zone: stored naive in UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: pass an aware datetime (UTC)")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


JSONType = JSON().with_variant(JSONB(), "postgresql")

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class TenantRow(Base):
    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(63), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # Issuer URLs accepted for this tenant's tokens (external OIDC); empty: only the built-in server.
    allowed_issuers: Mapped[list[str]] = mapped_column(JSONType, default=lambda: [])
    settings: Mapped[dict[str, Any]] = mapped_column(JSONType, default=lambda: {})


class UserRow(Base):
    __tablename__ = "users"
    __table_args__ = (
        UniqueConstraint("tenant_id", "email"),
        CheckConstraint(_in("role", Role), name="role"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid(), primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[str] = mapped_column(String(63), ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    email: Mapped[str] = mapped_column(String(MAX_EMAIL_LENGTH))
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16))
    failed_logins: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)


class InstallationRow(Base):
    __tablename__ = "installations"
    __table_args__ = (
        UniqueConstraint("tenant_id", "server"),
        CheckConstraint(_in("state", InstallationState), name="state"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid(), primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[str] = mapped_column(String(63), ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    server: Mapped[str] = mapped_column(String(64))
    version: Mapped[str | None] = mapped_column(String(MAX_VERSION_LENGTH), nullable=True)
    state: Mapped[str] = mapped_column(String(24))
    granted_scopes: Mapped[list[str]] = mapped_column(JSONType, default=lambda: [])
    config: Mapped[dict[str, Any]] = mapped_column(JSONType, default=lambda: {})
    upstream_url: Mapped[str] = mapped_column(String(2048))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ToolPinRow(Base):
    """One tool of one server for one tenant.

    ``definition``/``definition_hash`` are what an admin approved (None: never approved, a new
    tool). ``live_definition``/``live_hash`` hold the differing definition last seen upstream
    while the tool is withheld; :meth:`GatewayDB.approve_tool` promotes it.
    """

    __tablename__ = "tool_pins"
    __table_args__ = (
        UniqueConstraint("tenant_id", "server", "tool"),
        CheckConstraint(_in("state", PinState), name="state"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid(), primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[str] = mapped_column(String(63), ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    server: Mapped[str] = mapped_column(String(64))
    tool: Mapped[str] = mapped_column(String(MAX_TOOL_NAME_LENGTH))
    definition_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    definition: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    approved_by: Mapped[str | None] = mapped_column(String(MAX_EMAIL_LENGTH), nullable=True)
    approved_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    state: Mapped[str] = mapped_column(String(16))
    live_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    live_definition: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    reason: Mapped[str | None] = mapped_column(String(500), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class EventRow(Base):
    """Lifecycle events. ``tenant_id`` is deliberately no foreign key: events outlive tenants and
    record attempts against tenants that do not exist."""

    __tablename__ = "events"

    # BIGINT identity on PostgreSQL; INTEGER on SQLite, where only that type is the autoincrementing rowid.
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"), primary_key=True,
                                    autoincrement=True)
    time: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    tenant_id: Mapped[str | None] = mapped_column(String(63), nullable=True, index=True)
    actor: Mapped[str | None] = mapped_column(String(MAX_EMAIL_LENGTH), nullable=True)
    kind: Mapped[str] = mapped_column(String(64), index=True)
    subject: Mapped[str | None] = mapped_column(String(500), nullable=True)
    detail: Mapped[dict[str, Any]] = mapped_column(JSONType, default=lambda: {})


# --- records returned by the repository -------------------------------------------------------


@dataclass(frozen=True)
class Tenant:
    id: str
    name: str
    created_at: datetime
    allowed_issuers: list[str]
    settings: dict[str, Any]


@dataclass(frozen=True)
class User:
    id: uuid.UUID
    tenant_id: str
    email: str
    role: Role
    failed_logins: int
    locked_until: datetime | None
    created_at: datetime
    disabled: bool


@dataclass(frozen=True)
class Installation:
    id: uuid.UUID
    tenant_id: str
    server: str
    version: str | None
    state: InstallationState
    granted_scopes: list[str]
    config: dict[str, Any]
    upstream_url: str
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class ToolPin:
    tenant_id: str
    server: str
    tool: str
    state: PinState
    definition_hash: str | None
    definition: dict[str, Any] | None
    approved_by: str | None
    approved_at: datetime | None
    live_hash: str | None
    live_definition: dict[str, Any] | None
    reason: str | None
    updated_at: datetime


@dataclass(frozen=True)
class Event:
    id: int
    time: datetime
    tenant_id: str | None
    actor: str | None
    kind: str
    subject: str | None
    detail: dict[str, Any]


@dataclass(frozen=True)
class PinCheck:
    """Result of :meth:`GatewayDB.check_tools`: names to serve, and (name, reason) pairs to withhold."""

    approved: list[str]
    withheld: list[tuple[str, str]]


def _tenant(row: TenantRow) -> Tenant:
    return Tenant(row.id, row.name, row.created_at, list(row.allowed_issuers or []), dict(row.settings or {}))


def _user(row: UserRow) -> User:
    return User(row.id, row.tenant_id, row.email, Role(row.role), row.failed_logins, row.locked_until,
                row.created_at, row.disabled)


def _installation(row: InstallationRow) -> Installation:
    return Installation(row.id, row.tenant_id, row.server, row.version, InstallationState(row.state),
                        list(row.granted_scopes or []), dict(row.config or {}), row.upstream_url,
                        row.created_at, row.updated_at)


def _pin(row: ToolPinRow) -> ToolPin:
    return ToolPin(row.tenant_id, row.server, row.tool, PinState(row.state), row.definition_hash, row.definition,
                   row.approved_by, row.approved_at, row.live_hash, row.live_definition, row.reason, row.updated_at)


def _event(row: EventRow) -> Event:
    return Event(row.id, row.time, row.tenant_id, row.actor, row.kind, row.subject, dict(row.detail or {}))


# --- validation helpers -----------------------------------------------------------------------


def normalise_email(email: str) -> str:
    """Trimmed, NFC-normalised, lowercased e-mail address; :class:`InvalidValue` if it is not one."""
    if not isinstance(email, str):
        raise InvalidValue("e-mail address must be a string")
    value = unicodedata.normalize("NFC", email).strip().lower()
    local, at, domain = value.partition("@")
    if (not at or not local or not domain or "@" in domain or len(value) > MAX_EMAIL_LENGTH
            or any(ch.isspace() or not ch.isprintable() for ch in value)):
        raise InvalidValue(f"invalid e-mail address {email!r}")
    return value


def contains_nul(value: Any) -> bool:
    """Whether ``value`` (a string, or a JSON-like structure of dicts and lists) holds a U+0000 character
    anywhere, keys included. PostgreSQL can store it neither in text columns nor in JSONB (SQLite can):
    such values are refused or withheld up front, so both engines behave alike."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, Mapping):
        return any(contains_nul(k) or contains_nul(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(contains_nul(v) for v in value)
    return False


def _unstorable(definition: Mapping[str, Any]) -> str | None:
    """Why a tool definition cannot be pinned on every engine (a reason to withhold it), or None."""
    name = definition.get("name")
    if isinstance(name, str) and len(name) > MAX_TOOL_NAME_LENGTH:
        return f"tool name longer than {MAX_TOOL_NAME_LENGTH} characters"
    if contains_nul(definition):
        return "definition contains NUL characters"
    return None


def _normalise_password(password: str) -> str:
    if not isinstance(password, str):
        raise InvalidValue("password must be a string")
    return unicodedata.normalize("NFKC", password)


def _check_password(password: str, min_length: int) -> str:
    password = _normalise_password(password)
    if len(password) < min_length:
        raise WeakPassword(f"password too short: use at least {min_length} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise WeakPassword(f"password too long: use at most {MAX_PASSWORD_LENGTH} characters")
    if password.strip() == "" or len(set(password)) < 3:
        raise WeakPassword("password too weak: use more than two distinct characters")
    return password


def _role(role: str | Role) -> Role:
    try:
        return Role(role)
    except ValueError:
        raise InvalidValue(f"invalid role {role!r}: use one of {', '.join(r.value for r in Role)}") from None


_SCOPE = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]{1,128}")  # RFC 6749 scope-token, bounded (fullmatch)


def _scopes(scopes: Iterable[str]) -> list[str]:
    if isinstance(scopes, str):
        raise InvalidValue("scopes must be a list of strings, not one string")
    result = set()
    for scope in scopes:
        if not isinstance(scope, str) or not _SCOPE.fullmatch(scope):
            raise InvalidValue(f"invalid scope {scope!r}")
        result.add(scope)
    return sorted(result)


def _upstream_url(url: str) -> str:
    """http(s) or http+unix URL with a host and without credentials (secrets never go in a URL)."""
    try:
        parts = urlsplit(url)
    except (TypeError, ValueError):
        raise InvalidValue(f"invalid upstream URL {url!r}") from None
    if parts.scheme not in ("http", "https", "http+unix") or not parts.netloc or len(url) > 2048:
        raise InvalidValue(f"invalid upstream URL {url!r}: use http://, https:// or http+unix:// with a host")
    if parts.username is not None or parts.password is not None:
        raise InvalidValue("upstream URL must not contain credentials")
    return url


def _valid_tenant(tenant: str) -> str:
    """:func:`validate_tenant`, also refusing a trailing newline (which a ``$``-anchored pattern lets through)."""
    validate_tenant(tenant)
    if tenant.endswith("\n"):
        raise InvalidTenant(f"invalid tenant id {tenant!r}: use 1-63 lowercase letters, digits and inner hyphens")
    return tenant


def _utcnow() -> datetime:
    return datetime.now(UTC)


# --- the repository ---------------------------------------------------------------------------


class GatewayDB:
    """Async repository over the gateway's tables.

    ``hasher``: the argon2 :class:`PasswordHasher` (default: argon2-cffi's recommended profile;
    tests pass a cheap one). ``clock`` returns the current aware UTC time (injectable for tests).
    After ``max_failed_logins`` consecutive failures an account is locked for ``lockout``.
    """

    def __init__(
        self,
        url: str,
        *,
        hasher: PasswordHasher | None = None,
        clock: Callable[[], datetime] = _utcnow,
        max_failed_logins: int = 5,
        lockout: timedelta = timedelta(minutes=15),
        min_password_length: int = MIN_PASSWORD_LENGTH,
        hash_concurrency: int = 4,
        echo: bool = False,
    ) -> None:
        if max_failed_logins < 1:
            raise ValueError("max_failed_logins must be at least 1")
        self.url = url
        self.hasher = hasher if hasher is not None else PasswordHasher()
        self.clock = clock
        self.max_failed_logins = max_failed_logins
        self.lockout = lockout
        self.min_password_length = min_password_length
        self._hash_concurrency = hash_concurrency
        self._limiter: anyio.CapacityLimiter | None = None
        self._dummy_hash: str | None = None
        self.engine: AsyncEngine = create_async_engine(url, echo=echo)
        if self.engine.dialect.name == "sqlite":
            self._sqlite_setup()
        self._sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    def _sqlite_setup(self) -> None:
        database = make_url(self.url).database
        self._sqlite_file = Path(database) if database and database != ":memory:" else None

        @event.listens_for(self.engine.sync_engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")  # SQLite ignores foreign keys unless asked
            if self._sqlite_file is not None:
                cursor.execute("PRAGMA journal_mode=WAL")  # the CLI may write while the gateway reads
            cursor.execute("PRAGMA busy_timeout=10000")
            cursor.close()

    # lifecycle

    async def init(self) -> None:
        """Create missing tables (idempotent); for a SQLite file also its folder."""
        if self.engine.dialect.name == "sqlite" and self._sqlite_file is not None:
            self._sqlite_file.parent.mkdir(parents=True, exist_ok=True)
        async with self.engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)

    async def close(self) -> None:
        await self.engine.dispose()

    async def __aenter__(self) -> GatewayDB:
        await self.init()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _now(self) -> datetime:
        now = self.clock()
        if now.tzinfo is None:
            raise ValueError("clock must return an aware datetime")
        return now.astimezone(UTC)

    # password hashing (in threads, bounded)

    async def _in_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self._hash_concurrency)
        return await anyio.to_thread.run_sync(fn, *args, limiter=self._limiter)

    async def _hash(self, password: str) -> str:
        return await self._in_thread(self.hasher.hash, password)

    def _verify_sync(self, password_hash: str, password: str) -> bool:
        try:
            return bool(self.hasher.verify(password_hash, password))
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    async def _verify(self, password_hash: str, password: str) -> bool:
        return await self._in_thread(self._verify_sync, password_hash, password)

    async def _dummy(self) -> str:
        """A hash of a random secret with the current parameters, verified for unknown users.

        Made on the first login rather than in :meth:`init`, so CLI commands don't pay for it.
        """
        if self._dummy_hash is None:
            self._dummy_hash = await self._hash(secrets.token_urlsafe(32))
        return self._dummy_hash

    # events

    def _add_event(self, session: AsyncSession, kind: str, tenant: str | None, subject: str | None = None,
                   detail: Mapping[str, Any] | None = None, actor: str | None = None) -> None:
        session.add(EventRow(time=self._now(), tenant_id=tenant, actor=actor, kind=kind,
                             subject=subject[:500] if subject else subject, detail=dict(detail or {})))

    async def list_events(self, tenant: str | None = None, *, kind: str | None = None,
                          limit: int = 100) -> list[Event]:
        """The most recent ``limit`` events (oldest first), optionally of one tenant and/or kind."""
        query = select(EventRow).order_by(EventRow.id.desc()).limit(limit)
        if tenant is not None:
            query = query.where(EventRow.tenant_id == tenant)
        if kind is not None:
            query = query.where(EventRow.kind == kind)
        async with self._sessions() as session:
            rows = (await session.scalars(query)).all()
        return [_event(r) for r in reversed(rows)]

    # tenants

    async def _tenant_row(self, session: AsyncSession, tenant: str) -> TenantRow:
        row = await session.get(TenantRow, _valid_tenant(tenant))
        if row is None:
            raise NotFound(f"tenant {tenant!r} does not exist")
        return row

    async def create_tenant(self, tenant_id: str, name: str | None = None, *,
                            allowed_issuers: Sequence[str] = (), settings: Mapping[str, Any] | None = None,
                            actor: str | None = None) -> Tenant:
        """Create a tenant; the id must be a valid slug (see :func:`kontor.tenancy.validate_tenant`)."""
        _valid_tenant(tenant_id)
        name = (name or tenant_id).strip()
        if not name or len(name) > 200 or "\x00" in name:
            raise InvalidValue("tenant name must have 1-200 characters, none of them NUL")
        if isinstance(allowed_issuers, str) or any(not isinstance(i, str) for i in allowed_issuers):
            raise InvalidValue("allowed_issuers must be a list of issuer URLs")
        if contains_nul(list(allowed_issuers)) or contains_nul(dict(settings or {})):
            raise InvalidValue("allowed_issuers and settings must not contain NUL characters")
        try:
            async with self._sessions.begin() as session:
                if await session.get(TenantRow, tenant_id) is not None:
                    raise AlreadyExists(f"tenant {tenant_id!r} already exists")
                row = TenantRow(id=tenant_id, name=name, created_at=self._now(),
                                allowed_issuers=list(allowed_issuers), settings=dict(settings or {}))
                session.add(row)
                self._add_event(session, "tenant_created", tenant_id, tenant_id, {"name": name}, actor)
        except IntegrityError:
            raise AlreadyExists(f"tenant {tenant_id!r} already exists") from None
        return _tenant(row)

    async def get_tenant(self, tenant_id: str) -> Tenant | None:
        async with self._sessions() as session:
            row = await session.get(TenantRow, _valid_tenant(tenant_id))
        return _tenant(row) if row is not None else None

    async def list_tenants(self) -> list[Tenant]:
        async with self._sessions() as session:
            rows = (await session.scalars(select(TenantRow).order_by(TenantRow.id))).all()
        return [_tenant(r) for r in rows]

    # users

    async def _user_row(self, session: AsyncSession, tenant: str, email: str) -> UserRow:
        await self._tenant_row(session, tenant)
        email = normalise_email(email)
        row = await session.scalar(select(UserRow).where(UserRow.tenant_id == tenant, UserRow.email == email))
        if row is None:
            raise NotFound(f"no user {email!r} in tenant {tenant!r}")
        return row

    async def add_user(self, tenant: str, email: str, password: str, role: str | Role = Role.member, *,
                       actor: str | None = None) -> User:
        """Add a user. Refuses a password shorter than ``min_password_length`` and a duplicate e-mail."""
        email = normalise_email(email)
        role = _role(role)
        password = _check_password(password, self.min_password_length)
        async with self._sessions() as session:  # fail fast before the (slow) hash
            await self._tenant_row(session, tenant)
            if await session.scalar(select(UserRow.id).where(UserRow.tenant_id == tenant, UserRow.email == email)):
                raise AlreadyExists(f"user {email!r} already exists in tenant {tenant!r}")
        password_hash = await self._hash(password)
        try:
            async with self._sessions.begin() as session:
                row = UserRow(tenant_id=tenant, email=email, password_hash=password_hash, role=role.value,
                              failed_logins=0, created_at=self._now(), disabled=False)
                session.add(row)
                await session.flush()
                self._add_event(session, "user_added", tenant, email, {"role": role.value}, actor)
        except IntegrityError:
            raise AlreadyExists(f"user {email!r} already exists in tenant {tenant!r}") from None
        return _user(row)

    async def get_user(self, tenant: str, email: str) -> User | None:
        async with self._sessions() as session:
            try:
                return _user(await self._user_row(session, tenant, email))
            except NotFound:
                return None

    async def list_users(self, tenant: str) -> list[User]:
        async with self._sessions() as session:
            await self._tenant_row(session, tenant)
            rows = (await session.scalars(
                select(UserRow).where(UserRow.tenant_id == tenant).order_by(UserRow.email))).all()
        return [_user(r) for r in rows]

    async def set_password(self, tenant: str, email: str, password: str, *, actor: str | None = None) -> None:
        """Replace the password; also clears failed logins and any lock (an admin reset unlocks)."""
        password = _check_password(password, self.min_password_length)
        async with self._sessions() as session:
            await self._user_row(session, tenant, email)
        password_hash = await self._hash(password)
        async with self._sessions.begin() as session:
            row = await self._user_row(session, tenant, email)
            row.password_hash = password_hash
            row.failed_logins = 0
            row.locked_until = None
            self._add_event(session, "password_changed", tenant, row.email, {}, actor)

    async def set_role(self, tenant: str, email: str, role: str | Role, *, actor: str | None = None) -> User:
        """Change a user's role. The last enabled admin of a tenant cannot be demoted."""
        role = _role(role)
        async with self._sessions.begin() as session:
            row = await self._user_row(session, tenant, email)
            previous = row.role
            if previous == Role.admin and role != Role.admin and not row.disabled:
                admins = await session.scalar(select(func.count()).select_from(UserRow).where(
                    UserRow.tenant_id == tenant, UserRow.role == Role.admin.value, UserRow.disabled.is_(False)))
                if (admins or 0) <= 1:
                    raise Conflict(f"{row.email!r} is the last admin of tenant {tenant!r}; make another admin first")
            row.role = role.value
            self._add_event(session, "role_changed", tenant, row.email, {"from": previous, "to": role.value}, actor)
            return _user(row)

    async def set_disabled(self, tenant: str, email: str, disabled: bool, *, actor: str | None = None) -> User:
        async with self._sessions.begin() as session:
            row = await self._user_row(session, tenant, email)
            row.disabled = disabled
            self._add_event(session, "user_disabled" if disabled else "user_enabled", tenant, row.email, {}, actor)
            return _user(row)

    async def authenticate(self, tenant: str, email: str, password: str, *,
                           context: Mapping[str, Any] | None = None) -> User:
        """Check a login. Returns the user, or raises :class:`AuthenticationFailed` (same message for all causes).

        Every attempt verifies an argon2 hash — the user's, or a dummy one when the tenant or
        user does not exist — so the time taken does not reveal which accounts exist. Failures
        and successes are events (``context``, e.g. the client address, goes into their detail).
        ``max_failed_logins`` consecutive failures lock the account for ``lockout``; a login
        while locked fails even with the right password. A hash made with older argon2
        parameters is replaced on success.
        """
        dummy = await self._dummy()
        try:
            tenant_ok: str | None = _valid_tenant(tenant)
            email = normalise_email(email)
        except (ValueError, GatewayDBError):
            tenant_ok = None
        # The attempted address goes into the event even when invalid, minus NULs (which PostgreSQL refuses).
        email_subject = email.replace("\x00", "?") if isinstance(email, str) else None
        password = _normalise_password(password) if isinstance(password, str) else ""
        row: UserRow | None = None
        if tenant_ok is not None:
            async with self._sessions() as session:
                row = await session.scalar(select(UserRow).where(UserRow.tenant_id == tenant,
                                                                 UserRow.email == email))
        ok = await self._verify(row.password_hash if row is not None else dummy, password)
        now = self._now()
        detail = dict(context or {})
        if row is None:
            async with self._sessions.begin() as session:
                self._add_event(session, "login_failed", tenant_ok, email_subject, {**detail, "reason": "unknown user"})
            raise AuthenticationFailed()
        if row.disabled:
            async with self._sessions.begin() as session:
                self._add_event(session, "login_failed", tenant, row.email, {**detail, "reason": "disabled"})
            raise AuthenticationFailed()
        if row.locked_until is not None and row.locked_until > now:
            async with self._sessions.begin() as session:
                self._add_event(session, "login_failed", tenant, row.email,
                                {**detail, "reason": "locked", "locked_until": row.locked_until.isoformat()})
            raise AccountLocked(row.locked_until)
        if not ok:
            async with self._sessions.begin() as session:
                # Atomic increment: concurrent failures (several replicas) all count.
                failures = (await session.execute(
                    update(UserRow).where(UserRow.id == row.id)
                    .values(failed_logins=UserRow.failed_logins + 1)
                    .returning(UserRow.failed_logins))).scalar_one()
                self._add_event(session, "login_failed", tenant, row.email,
                                {**detail, "reason": "wrong password", "failed_logins": failures})
                if failures >= self.max_failed_logins:
                    until = now + self.lockout
                    await session.execute(update(UserRow).where(UserRow.id == row.id)
                                          .values(failed_logins=0, locked_until=until))
                    self._add_event(session, "account_locked", tenant, row.email,
                                    {"failed_logins": failures, "locked_until": until.isoformat()})
            raise AuthenticationFailed()
        new_hash = await self._hash(password) if self.hasher.check_needs_rehash(row.password_hash) else None
        async with self._sessions.begin() as session:
            fresh = await session.get(UserRow, row.id)
            if fresh is None:  # deleted between the two steps
                raise AuthenticationFailed()
            fresh.failed_logins = 0
            fresh.locked_until = None
            if new_hash is not None:
                fresh.password_hash = new_hash
                self._add_event(session, "password_rehashed", tenant, fresh.email, {})
            self._add_event(session, "login_succeeded", tenant, fresh.email, detail)
            return _user(fresh)

    # installations

    async def _installation_row(self, session: AsyncSession, tenant: str, server: str) -> InstallationRow | None:
        return await session.scalar(select(InstallationRow).where(
            InstallationRow.tenant_id == tenant, InstallationRow.server == server))

    async def enable_server(self, tenant: str, server: str, upstream_url: str, scopes: Iterable[str], *,
                            version: str | None = None, config: Mapping[str, Any] | None = None,
                            tools: Sequence[Mapping[str, Any]] | None = None, actor: str | None = None) -> Installation:
        """Enable ``server`` for ``tenant`` (creating or updating its installation).

        With ``tools`` (the server's live ``tools/list``), every tool name is checked against
        the naming rules and against the names of the tenant's other enabled servers; any
        invalid name raises :class:`~kontor.gateway.naming.NamingError` and any collision
        :class:`~kontor.gateway.naming.NameCollision`, and nothing is stored. Otherwise the
        tools are pinned in the same transaction (see :meth:`pin_tools`).
        """
        validate_server_name(server)
        upstream_url = _upstream_url(upstream_url)
        granted = _scopes(scopes)
        if version is not None and (not isinstance(version, str) or len(version) > MAX_VERSION_LENGTH
                                    or "\x00" in version):
            raise InvalidValue(f"version must be a string of at most {MAX_VERSION_LENGTH} characters")
        if config is not None and contains_nul(dict(config)):
            raise InvalidValue("config must not contain NUL characters")
        async with self._sessions.begin() as session:
            await self._tenant_row(session, tenant)
            if tools is not None:
                existing = await session.execute(
                    select(ToolPinRow.server, ToolPinRow.tool)
                    .join(InstallationRow, (InstallationRow.tenant_id == ToolPinRow.tenant_id)
                          & (InstallationRow.server == ToolPinRow.server))
                    .where(ToolPinRow.tenant_id == tenant, ToolPinRow.server != server,
                           InstallationRow.state.in_([InstallationState.enabled.value,
                                                      InstallationState.needs_reapproval.value])))
                served = {f"{s}{SEPARATOR}{t}": f"server {s!r}" for s, t in existing.all()}
                collisions = check_collisions(served, server, tools)
                if collisions:
                    raise NameCollision(collisions)
            now = self._now()
            row = await self._installation_row(session, tenant, server)
            previous = row.state if row is not None else None
            if row is None:
                row = InstallationRow(tenant_id=tenant, server=server, created_at=now, config={})
                session.add(row)
            row.state = InstallationState.enabled.value
            row.upstream_url = upstream_url
            row.granted_scopes = granted
            row.version = version if version is not None else row.version
            if config is not None:
                row.config = dict(config)
            row.updated_at = now
            self._add_event(session, "server_enabled", tenant, server,
                            {"upstream_url": upstream_url, "scopes": granted, "version": row.version,
                             "previous_state": previous}, actor)
            if tools is not None:
                await self._pin(session, tenant, server, tools, actor)
            await session.flush()
            return _installation(row)

    async def disable_server(self, tenant: str, server: str, *, actor: str | None = None) -> Installation:
        async with self._sessions.begin() as session:
            await self._tenant_row(session, tenant)
            row = await self._installation_row(session, tenant, server)
            if row is None:
                raise NotFound(f"server {server!r} is not installed for tenant {tenant!r}")
            previous = row.state
            row.state = InstallationState.disabled.value
            row.updated_at = self._now()
            self._add_event(session, "server_disabled", tenant, server, {"previous_state": previous}, actor)
            return _installation(row)

    async def get_installation(self, tenant: str, server: str) -> Installation | None:
        async with self._sessions() as session:
            await self._tenant_row(session, tenant)
            row = await self._installation_row(session, tenant, server)
        return _installation(row) if row is not None else None

    async def list_enabled(self, tenant: str) -> list[Installation]:
        """The tenant's served installations (:data:`SERVED_STATES`), ordered by server name.

        An installation in ``needs_reapproval`` is still served: its drifted tools are withheld by
        their pins (:meth:`check_tools`), the rest of its tools stay available.
        """
        async with self._sessions() as session:
            await self._tenant_row(session, tenant)
            rows = (await session.scalars(select(InstallationRow).where(
                InstallationRow.tenant_id == tenant,
                InstallationRow.state.in_([s.value for s in SERVED_STATES]),
            ).order_by(InstallationRow.server))).all()
        return [_installation(r) for r in rows]

    # tool pins

    async def _pins(self, session: AsyncSession, tenant: str, server: str) -> dict[str, ToolPinRow]:
        rows = (await session.scalars(select(ToolPinRow).where(
            ToolPinRow.tenant_id == tenant, ToolPinRow.server == server))).all()
        return {r.tool: r for r in rows}

    async def _pin(self, session: AsyncSession, tenant: str, server: str, tools: Sequence[Any],
                   actor: str | None) -> list[ToolPinRow]:
        definitions = [definition_of(t) for t in tools]
        names = [d["name"] for d in definitions]
        if any(not isinstance(n, str) or not n for n in names):
            raise InvalidValue(f"every tool of server {server!r} needs a non-empty string name")
        if len(set(names)) != len(names):
            raise InvalidValue(f"server {server!r} lists a tool name twice")
        # Not pinned (check_tools withholds them, with the reason), rather than failing on PostgreSQL.
        definitions = [d for d in definitions if _unstorable(d) is None]
        pins = await self._pins(session, tenant, server)
        now = self._now()
        rows = []
        for definition in definitions:
            row = pins.get(definition["name"])
            if row is None:
                row = ToolPinRow(tenant_id=tenant, server=server, tool=definition["name"])
                session.add(row)
            row.definition = definition
            row.definition_hash = definition_hash(definition)
            row.approved_by = actor
            row.approved_at = now
            row.state = PinState.approved.value
            row.live_hash = row.live_definition = row.reason = None
            row.updated_at = now
            rows.append(row)
        self._add_event(session, "tools_pinned", tenant, server,
                        {"tools": {r.tool: r.definition_hash for r in rows}}, actor)
        return rows

    async def pin_tools(self, tenant: str, server: str, tools: Sequence[Mapping[str, Any]],
                        actor: str | None) -> list[ToolPin]:
        """Approve ``tools`` (full definitions) as they are now: store each definition and its hash.

        Pins of tools not in the list are kept (a tool that comes back unchanged stays approved).
        A tool the database cannot hold (name over 128 characters, a NUL character anywhere) is not
        pinned; :meth:`check_tools` withholds it.
        """
        validate_server_name(server)
        async with self._sessions.begin() as session:
            await self._tenant_row(session, tenant)
            rows = await self._pin(session, tenant, server, tools, actor)
            return [_pin(r) for r in rows]

    async def list_pins(self, tenant: str, server: str | None = None) -> list[ToolPin]:
        query = select(ToolPinRow).where(ToolPinRow.tenant_id == tenant)
        if server is not None:
            query = query.where(ToolPinRow.server == server)
        async with self._sessions() as session:
            await self._tenant_row(session, tenant)
            rows = (await session.scalars(query.order_by(ToolPinRow.server, ToolPinRow.tool))).all()
        return [_pin(r) for r in rows]

    async def check_tools(self, tenant: str, server: str, live_tools: Sequence[Mapping[str, Any]]) -> PinCheck:
        """Compare a live ``tools/list`` with the pins: which tools to serve, which to withhold and why.

        A tool whose definition hash differs from its pin is withheld with a reason naming the
        fields that changed (e.g. ``"description changed"``); a tool without a pin (new or
        renamed) is withheld as ``"not approved (new tool)"``. Withheld tools get pin state
        ``withheld`` and keep the live definition for :meth:`approve_tool`. An event is written
        when a tool becomes withheld or its withheld definition changes again — not on every
        check, so calling this on each discovery does not flood the event log. A withheld tool
        whose live definition is back to the approved one is served again. A tool the database
        cannot hold (name over 128 characters, a NUL character anywhere) is withheld with that
        reason and no pin row.
        """
        validate_server_name(server)
        definitions = sorted((definition_of(t) for t in live_tools), key=lambda d: str(d["name"]))
        approved: list[str] = []
        withheld: list[tuple[str, str]] = []
        async with self._sessions.begin() as session:
            await self._tenant_row(session, tenant)
            pins = await self._pins(session, tenant, server)
            counts: dict[str, int] = {}
            for d in definitions:
                counts[str(d["name"])] = counts.get(str(d["name"]), 0) + 1
            now = self._now()
            for definition in definitions:
                name = definition["name"]
                if not isinstance(name, str) or not name:
                    withheld.append((str(name), "tool without a valid name"))
                    continue
                if counts[name] > 1:
                    if (name, "tool name listed more than once") not in withheld:
                        withheld.append((name, "tool name listed more than once"))
                    continue
                unstorable = _unstorable(definition)
                if unstorable is not None:  # withheld without a pin row: the database could not hold it
                    withheld.append((name, unstorable))
                    continue
                live_hash = definition_hash(definition)
                row = pins.get(name)
                if row is not None and row.definition_hash == live_hash:
                    approved.append(name)
                    if row.state != PinState.approved.value:
                        row.state = PinState.approved.value
                        row.live_hash = row.live_definition = row.reason = None
                        row.updated_at = now
                        self._add_event(session, "tool_restored", tenant, f"{server}/{name}", {"hash": live_hash})
                    continue
                if row is None or row.definition_hash is None or row.definition is None:
                    reason = NEW_TOOL_REASON
                else:
                    changed = [f for f in DEFINITION_FIELDS
                               if canonical_json(row.definition.get(f)) != canonical_json(definition.get(f))]
                    reason = f"{', '.join(changed) or 'definition'} changed"
                withheld.append((name, reason))
                if row is None:
                    row = ToolPinRow(tenant_id=tenant, server=server, tool=name)
                    session.add(row)
                elif row.state == PinState.withheld.value and row.live_hash == live_hash:
                    continue  # already withheld for this very definition
                row.state = PinState.withheld.value
                row.live_definition = definition
                row.live_hash = live_hash
                row.reason = reason
                row.updated_at = now
                self._add_event(session, "tool_withheld", tenant, f"{server}/{name}",
                                {"reason": reason, "approved_hash": row.definition_hash, "live_hash": live_hash})
        return PinCheck(approved=approved, withheld=withheld)

    async def approve_tool(self, tenant: str, server: str, tool: str, actor: str | None, *,
                           expected_hash: str | None = None) -> ToolPin:
        """Re-pin the live definition recorded for a withheld tool by :meth:`check_tools`.

        ``expected_hash``: the live hash the approver reviewed; if the recorded live definition
        has changed since, :class:`Conflict` is raised instead of approving something unseen.
        Approving an already approved tool with nothing pending returns it unchanged.
        """
        validate_server_name(server)
        async with self._sessions.begin() as session:
            await self._tenant_row(session, tenant)
            row = await session.scalar(select(ToolPinRow).where(
                ToolPinRow.tenant_id == tenant, ToolPinRow.server == server, ToolPinRow.tool == tool))
            if row is None:
                raise NotFound(f"no tool {tool!r} of server {server!r} seen for tenant {tenant!r}")
            if row.live_definition is None or row.live_hash is None:
                if row.state == PinState.approved.value:
                    if expected_hash is not None and expected_hash != row.definition_hash:
                        raise Conflict(f"tool {tool!r} is approved with hash {row.definition_hash}, "
                                       f"not {expected_hash}")
                    return _pin(row)
                raise NotFound(f"no live definition recorded for tool {tool!r} of server {server!r}")
            if expected_hash is not None and expected_hash != row.live_hash:
                raise Conflict(f"the live definition of {tool!r} changed: its hash is now {row.live_hash}, "
                               f"not {expected_hash}; review it again")
            now = self._now()
            previous = row.definition_hash
            row.definition = row.live_definition
            row.definition_hash = row.live_hash
            row.approved_by = actor
            row.approved_at = now
            row.state = PinState.approved.value
            row.live_hash = row.live_definition = row.reason = None
            row.updated_at = now
            self._add_event(session, "tool_approved", tenant, f"{server}/{tool}",
                            {"hash": row.definition_hash, "previous_hash": previous}, actor)
            return _pin(row)
