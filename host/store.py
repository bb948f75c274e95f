"""The web chat's own database: users, login sessions, OAuth tokens, conversations, messages,
tool calls, approvals, feedback and per-user settings.

SQLAlchemy 2 (async), the same engine choice as the gateway: SQLite at
``<data_root>/host/host.db`` by default (:func:`default_url`), PostgreSQL
(``postgresql+asyncpg://…``) at scale. Only portable types and SQL are used.

Everything a user owns is reached through an :class:`Owner` — ``(tenant, user id)`` — and every
query filters by it: a conversation id of another user (or another tenant) is simply not found
(:class:`NotFound`), the same answer as for an id that never existed.

The user's OAuth tokens live here and nowhere else (never in cookies or pages): access and
refresh tokens are encrypted at rest with AES-256-GCM (:class:`TokenBox`, a key file of mode
0600 under ``<data_root>/keys/host``), bound by the AEAD's associated data to the session and
field they belong to, so a ciphertext copied into another row does not decrypt. Session ids are
stored only as SHA-256 hashes: a copy of the database does not let anybody take over a session.

:class:`DbApprovalStore` is the :class:`~kontor.host.approvals.ApprovalStore` of the agent loop
over these tables: users' remembered "always allow" decisions and tenant admins' rules.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    Uuid,
    delete,
    event,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from kontor.gateway.db import JSONType, UTCDateTime
from kontor.host.approvals import AdminRule
from kontor.sealing import SealedBox, Undecryptable

__all__ = [
    "Conversation",
    "DbApprovalStore",
    "Feedback",
    "HostStore",
    "HostUser",
    "LoginState",
    "NotFound",
    "Owner",
    "StoredMessage",
    "StoredToolCall",
    "TokenBox",
    "TokenRecord",
    "TokenSet",
    "TokensUnavailable",
    "WebSession",
    "default_url",
]

MAX_TITLE = 200
MAX_COMMENT = 4000
MAX_TOOL_NAME = 200
MAX_PREVIEW = 4000
MAX_SEARCH = 200
SESSION_ID_BYTES = 32


class NotFound(LookupError):
    """No such object for this owner (also: it exists but belongs to somebody else)."""


class TokensUnavailable(Exception):
    """The stored tokens cannot be decrypted (the key changed): the user has to sign in again."""


def default_url(data_root: Path) -> str:
    """``sqlite+aiosqlite:///<data_root>/host/host.db``."""
    return f"sqlite+aiosqlite:///{Path(data_root) / 'host' / 'host.db'}"


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _hash(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def _clean(value: Any) -> Any:
    """``value`` without NUL characters (PostgreSQL stores them neither in text nor in JSONB)."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, Mapping):
        return {_clean(str(k)): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def _cut(value: str | None, limit: int) -> str | None:
    if value is None:
        return None
    value = _clean(value)
    return value if len(value) <= limit else value[: limit - 1] + "…"


# --- encryption of tokens at rest --------------------------------------------------------------


class TokenBox(SealedBox):
    """The host's sealing of OAuth tokens at rest (:class:`kontor.sealing.SealedBox`)."""

    def decrypt(self, token: str, context: str) -> str:
        try:
            return super().decrypt(token, context)
        except Undecryptable:
            raise TokensUnavailable("stored tokens cannot be decrypted with the configured key") from None


# --- types and models ----------------------------------------------------------------------------


BigId = BigInteger().with_variant(Integer(), "sqlite")  # SQLite autoincrements INTEGER primary keys only

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UserRow(Base):
    __tablename__ = "host_users"
    __table_args__ = (UniqueConstraint("tenant", "subject"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid(), primary_key=True, default=uuid.uuid4)
    tenant: Mapped[str] = mapped_column(String(63), index=True)
    subject: Mapped[str] = mapped_column(String(255))
    email: Mapped[str | None] = mapped_column(String(320), nullable=True)
    settings: Mapped[dict[str, Any]] = mapped_column(JSONType, default=lambda: {})
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_login_at: Mapped[datetime] = mapped_column(UTCDateTime())


class LoginStateRow(Base):
    """A started sign-in: the OAuth ``state`` (hashed), the PKCE verifier (encrypted), and the hash of
    the browser-binding cookie the callback must come with."""

    __tablename__ = "host_login_states"

    state_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    browser_hash: Mapped[str] = mapped_column(String(64))
    tenant: Mapped[str] = mapped_column(String(63))
    code_verifier: Mapped[str] = mapped_column(Text)  # encrypted
    return_to: Mapped[str] = mapped_column(String(2048))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class SessionRow(Base):
    """A signed-in browser: the cookie's hash, its CSRF token, and the user's tokens (encrypted)."""

    __tablename__ = "host_sessions"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[uuid.UUID] = mapped_column(Uuid(), ForeignKey("host_users.id", ondelete="CASCADE"), index=True)
    tenant: Mapped[str] = mapped_column(String(63))
    csrf_token: Mapped[str] = mapped_column(String(128))
    access_token: Mapped[str] = mapped_column(Text)  # encrypted
    refresh_token: Mapped[str | None] = mapped_column(Text, nullable=True)  # encrypted
    token_expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    scope: Mapped[str] = mapped_column(Text, default="")
    issuer: Mapped[str] = mapped_column(String(2048))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ConversationRow(Base):
    __tablename__ = "host_conversations"

    id: Mapped[uuid.UUID] = mapped_column(Uuid(), primary_key=True, default=uuid.uuid4)
    tenant: Mapped[str] = mapped_column(String(63))
    user_id: Mapped[uuid.UUID] = mapped_column(Uuid(), ForeignKey("host_users.id", ondelete="CASCADE"), index=True)
    title: Mapped[str] = mapped_column(String(MAX_TITLE), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class MessageRow(Base):
    """One message as shown (``text``), with what the model saw (``data``: the provider messages
    of the turn, for the next turn's history)."""

    __tablename__ = "host_messages"
    __table_args__ = (CheckConstraint("role IN ('user', 'assistant')", name="role"),)

    seq: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    id: Mapped[uuid.UUID] = mapped_column(Uuid(), unique=True, default=uuid.uuid4)
    conversation_id: Mapped[uuid.UUID] = mapped_column(
        Uuid(), ForeignKey("host_conversations.id", ondelete="CASCADE"), index=True)
    role: Mapped[str] = mapped_column(String(16))
    text: Mapped[str] = mapped_column(Text, default="")
    data: Mapped[list[Any]] = mapped_column(JSONType, default=lambda: [])
    citations: Mapped[list[Any]] = mapped_column(JSONType, default=lambda: [])
    partial: Mapped[bool] = mapped_column(Boolean, default=False)
    stop_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)
    mode: Mapped[str | None] = mapped_column(String(16), nullable=True)
    notice: Mapped[str | None] = mapped_column(Text, nullable=True)
    usage: Mapped[dict[str, Any]] = mapped_column(JSONType, default=lambda: {})
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ToolCallRow(Base):
    __tablename__ = "host_tool_calls"
    __table_args__ = (UniqueConstraint("message_id", "call_id"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid(), primary_key=True, default=uuid.uuid4)
    message_id: Mapped[uuid.UUID] = mapped_column(Uuid(), ForeignKey("host_messages.id", ondelete="CASCADE"),
                                                  index=True)
    call_id: Mapped[str] = mapped_column(String(200))
    tool: Mapped[str] = mapped_column(String(MAX_TOOL_NAME))
    arguments: Mapped[dict[str, Any]] = mapped_column(JSONType, default=lambda: {})
    status: Mapped[str] = mapped_column(String(16))
    duration_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    preview: Mapped[str] = mapped_column(Text, default="")
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    approval: Mapped[str | None] = mapped_column(String(16), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class FeedbackRow(Base):
    __tablename__ = "host_feedback"
    __table_args__ = (UniqueConstraint("message_id", "user_id"), CheckConstraint("rating IN (-1, 1)", name="rating"))

    id: Mapped[uuid.UUID] = mapped_column(Uuid(), primary_key=True, default=uuid.uuid4)
    message_id: Mapped[uuid.UUID] = mapped_column(Uuid(), ForeignKey("host_messages.id", ondelete="CASCADE"),
                                                  index=True)
    user_id: Mapped[uuid.UUID] = mapped_column(Uuid(), ForeignKey("host_users.id", ondelete="CASCADE"))
    tenant: Mapped[str] = mapped_column(String(63))
    rating: Mapped[int] = mapped_column(Integer)
    comment: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class UserApprovalRow(Base):
    __tablename__ = "host_user_approvals"

    tenant: Mapped[str] = mapped_column(String(63), primary_key=True)
    user: Mapped[str] = mapped_column(String(255), primary_key=True)
    tool: Mapped[str] = mapped_column(String(MAX_TOOL_NAME), primary_key=True)
    decision: Mapped[str] = mapped_column(String(16))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class AdminRuleRow(Base):
    __tablename__ = "host_admin_rules"
    __table_args__ = (CheckConstraint("rule IN ('always_ask', 'blocked')", name="rule"),)

    tenant: Mapped[str] = mapped_column(String(63), primary_key=True)
    key: Mapped[str] = mapped_column(String(MAX_TOOL_NAME), primary_key=True)
    rule: Mapped[str] = mapped_column(String(16))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


# --- what the repository returns ---------------------------------------------------------------


@dataclass(frozen=True)
class Owner:
    """Whose data: every query of the repository filters by both."""

    tenant: str
    user_id: uuid.UUID


@dataclass(frozen=True)
class HostUser:
    id: uuid.UUID
    tenant: str
    subject: str
    email: str | None
    settings: dict[str, Any]
    created_at: datetime
    last_login_at: datetime

    @property
    def owner(self) -> Owner:
        return Owner(self.tenant, self.id)


@dataclass(frozen=True)
class TokenSet:
    """Tokens from the authorization server's token endpoint."""

    access_token: str
    expires_at: datetime
    refresh_token: str | None = None
    scope: str = ""

    def __repr__(self) -> str:  # never the tokens themselves
        return f"TokenSet(expires_at={self.expires_at.isoformat()}, scope={self.scope!r}, " \
               f"refresh={'yes' if self.refresh_token else 'no'})"


@dataclass(frozen=True)
class TokenRecord:
    """A session's decrypted tokens (in memory only, for the request that needs them)."""

    tokens: TokenSet
    issuer: str
    tenant: str

    def __repr__(self) -> str:
        return f"TokenRecord(issuer={self.issuer!r}, {self.tokens!r})"


@dataclass(frozen=True)
class LoginState:
    tenant: str
    code_verifier: str
    return_to: str
    expires_at: datetime

    def __repr__(self) -> str:
        return f"LoginState(tenant={self.tenant!r}, return_to={self.return_to!r})"


@dataclass(frozen=True)
class WebSession:
    user: HostUser
    csrf_token: str
    expires_at: datetime
    token_expires_at: datetime
    scope: str

    @property
    def owner(self) -> Owner:
        return self.user.owner

    def __repr__(self) -> str:
        return f"WebSession(user={self.user.subject!r}, tenant={self.user.tenant!r})"


@dataclass(frozen=True)
class Conversation:
    id: uuid.UUID
    title: str
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class StoredToolCall:
    id: uuid.UUID
    call_id: str
    tool: str
    arguments: dict[str, Any]
    status: str
    duration_s: float | None
    preview: str
    error: str | None
    approval: str | None
    created_at: datetime


@dataclass(frozen=True)
class Feedback:
    message_id: uuid.UUID
    rating: int
    comment: str
    updated_at: datetime


@dataclass(frozen=True)
class StoredMessage:
    id: uuid.UUID
    conversation_id: uuid.UUID
    role: str
    text: str
    data: list[Any]
    citations: list[Any]
    partial: bool
    stop_reason: str | None
    mode: str | None
    notice: str | None
    usage: dict[str, Any]
    created_at: datetime
    tool_calls: list[StoredToolCall] = field(default_factory=list)
    feedback: Feedback | None = None


def _user(row: UserRow) -> HostUser:
    return HostUser(row.id, row.tenant, row.subject, row.email, dict(row.settings or {}), row.created_at,
                    row.last_login_at)


def _conversation(row: ConversationRow) -> Conversation:
    return Conversation(row.id, row.title, row.created_at, row.updated_at)


def _tool_call(row: ToolCallRow) -> StoredToolCall:
    return StoredToolCall(row.id, row.call_id, row.tool, dict(row.arguments or {}), row.status, row.duration_s,
                          row.preview, row.error, row.approval, row.created_at)


def _feedback(row: FeedbackRow) -> Feedback:
    return Feedback(row.message_id, row.rating, row.comment, row.updated_at)


def _message(row: MessageRow, calls: Sequence[ToolCallRow] = (), feedback: FeedbackRow | None = None
             ) -> StoredMessage:
    return StoredMessage(row.id, row.conversation_id, row.role, row.text, list(row.data or []),
                         list(row.citations or []), row.partial, row.stop_reason, row.mode, row.notice,
                         dict(row.usage or {}), row.created_at, [_tool_call(c) for c in calls],
                         _feedback(feedback) if feedback is not None else None)


def _like(query: str) -> str:
    escaped = query.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _uuid(value: uuid.UUID | str) -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise NotFound("not found") from None


# --- the repository ----------------------------------------------------------------------------


class HostStore:
    """Async repository of the web chat (see the module docstring).

    ``url``: SQLAlchemy async URL. ``key_path``: the token key file (created when missing), or
    ``box`` directly. ``clock``: the current aware UTC time (tests move it).
    """

    def __init__(self, url: str, *, key_path: Path | None = None, box: TokenBox | None = None,
                 clock: Any = _utcnow, echo: bool = False) -> None:
        if box is None:
            if key_path is None:
                raise ValueError("give the token key file (key_path) or a TokenBox")
            box = TokenBox.from_file(key_path)
        self.box = box
        self.url = url
        self.clock = clock
        self.engine: AsyncEngine = create_async_engine(url, echo=echo)
        self._sqlite_file: Path | None = None
        if self.engine.dialect.name == "sqlite":
            database = make_url(url).database
            self._sqlite_file = Path(database) if database and database != ":memory:" else None

            @event.listens_for(self.engine.sync_engine, "connect")
            def _pragmas(dbapi_connection: Any, _record: Any) -> None:
                cursor = dbapi_connection.cursor()
                cursor.execute("PRAGMA foreign_keys=ON")
                if self._sqlite_file is not None:
                    cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA busy_timeout=10000")
                cursor.close()

        self._sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        self.approvals = DbApprovalStore(self)

    # lifecycle

    async def init(self) -> None:
        """Create missing tables (idempotent); for a SQLite file also its folder."""
        if self._sqlite_file is not None:
            self._sqlite_file.parent.mkdir(parents=True, exist_ok=True)
        async with self.engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)

    async def close(self) -> None:
        await self.engine.dispose()

    async def __aenter__(self) -> HostStore:
        await self.init()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def now(self) -> datetime:
        return self.clock().astimezone(UTC)

    # users

    async def upsert_user(self, tenant: str, subject: str, email: str | None) -> HostUser:
        """The user with this (tenant, subject), created on first sign-in; e-mail and last login updated."""
        now = self.now()
        for _ in range(2):
            try:
                async with self._sessions.begin() as session:
                    row = await session.scalar(select(UserRow).where(UserRow.tenant == tenant,
                                                                     UserRow.subject == subject))
                    if row is None:
                        row = UserRow(tenant=tenant, subject=_cut(subject, 255), email=_cut(email, 320),
                                      settings={}, created_at=now, last_login_at=now)
                        session.add(row)
                    else:
                        row.email = _cut(email, 320)
                        row.last_login_at = now
                return _user(row)
            except IntegrityError:  # created concurrently: the second round finds it
                continue
        raise RuntimeError("could not create the user")

    async def get_user(self, owner: Owner) -> HostUser:
        async with self._sessions() as session:
            row = await session.scalar(select(UserRow).where(UserRow.id == owner.user_id,
                                                             UserRow.tenant == owner.tenant))
        if row is None:
            raise NotFound("no such user")
        return _user(row)

    async def get_user_settings(self, owner: Owner) -> dict[str, Any]:
        return (await self.get_user(owner)).settings

    async def update_user_settings(self, owner: Owner, values: Mapping[str, Any]) -> dict[str, Any]:
        """Merge ``values`` into the user's settings (a value None removes the key)."""
        async with self._sessions.begin() as session:
            row = await session.scalar(select(UserRow).where(UserRow.id == owner.user_id,
                                                             UserRow.tenant == owner.tenant))
            if row is None:
                raise NotFound("no such user")
            merged = dict(row.settings or {})
            for key, value in values.items():
                if value is None:
                    merged.pop(key, None)
                else:
                    merged[key] = _clean(value)
            row.settings = merged
        return merged

    # sign-in state

    async def create_login_state(self, tenant: str, code_verifier: str, return_to: str, browser_binding: str,
                                 ttl: timedelta = timedelta(minutes=10)) -> str:
        """Remember a started sign-in; returns the OAuth ``state`` (random; stored hashed)."""
        state = secrets.token_urlsafe(32)
        now = self.now()
        state_hash = _hash(state)
        async with self._sessions.begin() as session:
            session.add(LoginStateRow(
                state_hash=state_hash, browser_hash=_hash(browser_binding), tenant=tenant,
                code_verifier=self.box.encrypt(code_verifier, f"login:{state_hash}"), return_to=return_to[:2048],
                created_at=now, expires_at=now + ttl))
        return state

    async def take_login_state(self, state: str, browser_binding: str) -> LoginState | None:
        """The sign-in ``state`` belongs to, once (it is deleted); None when unknown, expired, or started
        in another browser."""
        if not state or len(state) > 512:
            return None
        state_hash = _hash(state)
        async with self._sessions.begin() as session:
            row = await session.get(LoginStateRow, state_hash)
            if row is None:
                return None
            await session.delete(row)
        if row.expires_at <= self.now() or not secrets.compare_digest(row.browser_hash, _hash(browser_binding)):
            return None
        verifier = self.box.decrypt(row.code_verifier, f"login:{state_hash}")
        return LoginState(row.tenant, verifier, row.return_to, row.expires_at)

    # sessions and tokens

    async def create_session(self, user: HostUser, tokens: TokenSet, issuer: str,
                             ttl: timedelta = timedelta(hours=12)) -> str:
        """A signed-in session for ``user`` holding ``tokens``; returns the cookie value (random)."""
        session_id = secrets.token_urlsafe(SESSION_ID_BYTES)
        id_hash = _hash(session_id)
        now = self.now()
        async with self._sessions.begin() as session:
            session.add(SessionRow(
                id_hash=id_hash, user_id=user.id, tenant=user.tenant, csrf_token=secrets.token_urlsafe(32),
                access_token=self.box.encrypt(tokens.access_token, f"access:{id_hash}"),
                refresh_token=(self.box.encrypt(tokens.refresh_token, f"refresh:{id_hash}")
                               if tokens.refresh_token else None),
                token_expires_at=tokens.expires_at, scope=tokens.scope or "", issuer=issuer, created_at=now,
                expires_at=now + ttl, last_seen_at=now))
        return session_id

    async def get_session(self, session_id: str | None) -> WebSession | None:
        """The live session of this cookie value; None when unknown or expired."""
        if not session_id or len(session_id) > 256:
            return None
        async with self._sessions() as session:
            found = (await session.execute(
                select(SessionRow, UserRow).join(UserRow, UserRow.id == SessionRow.user_id)
                .where(SessionRow.id_hash == _hash(session_id)))).first()
        if found is None:
            return None
        row, user = found
        if row.expires_at <= self.now():
            return None
        return WebSession(_user(user), row.csrf_token, row.expires_at, row.token_expires_at, row.scope)

    async def get_tokens(self, session_id: str) -> TokenRecord | None:
        id_hash = _hash(session_id)
        async with self._sessions() as session:
            row = await session.get(SessionRow, id_hash)
        if row is None or row.expires_at <= self.now():
            return None
        return self._tokens(row)

    def _tokens(self, row: SessionRow) -> TokenRecord:
        id_hash = row.id_hash
        refresh = self.box.decrypt(row.refresh_token, f"refresh:{id_hash}") if row.refresh_token else None
        return TokenRecord(TokenSet(self.box.decrypt(row.access_token, f"access:{id_hash}"), row.token_expires_at,
                                    refresh, row.scope), row.issuer, row.tenant)

    async def update_tokens(self, session_id: str, tokens: TokenSet) -> None:
        """Store refreshed tokens (a missing new refresh token keeps the old one)."""
        id_hash = _hash(session_id)
        values: dict[str, Any] = {
            "access_token": self.box.encrypt(tokens.access_token, f"access:{id_hash}"),
            "token_expires_at": tokens.expires_at, "last_seen_at": self.now()}
        if tokens.refresh_token:
            values["refresh_token"] = self.box.encrypt(tokens.refresh_token, f"refresh:{id_hash}")
        if tokens.scope:
            values["scope"] = tokens.scope
        async with self._sessions.begin() as session:
            await session.execute(update(SessionRow).where(SessionRow.id_hash == id_hash).values(**values))

    async def delete_session(self, session_id: str) -> TokenRecord | None:
        """End a session; returns its tokens (to revoke them), or None when there was none."""
        id_hash = _hash(session_id)
        async with self._sessions.begin() as session:
            row = await session.get(SessionRow, id_hash)
            if row is None:
                return None
            await session.delete(row)
        try:
            return self._tokens(row)
        except TokensUnavailable:
            return None

    async def prune(self) -> int:
        """Delete expired sessions and sign-in states; returns how many rows went."""
        now = self.now()
        async with self._sessions.begin() as session:
            a = await session.execute(delete(SessionRow).where(SessionRow.expires_at <= now))
            b = await session.execute(delete(LoginStateRow).where(LoginStateRow.expires_at <= now))
        return (a.rowcount or 0) + (b.rowcount or 0)

    # conversations

    async def _conversation_row(self, session: AsyncSession, owner: Owner, cid: uuid.UUID | str) -> ConversationRow:
        row = await session.scalar(select(ConversationRow).where(
            ConversationRow.id == _uuid(cid), ConversationRow.user_id == owner.user_id,
            ConversationRow.tenant == owner.tenant))
        if row is None:
            raise NotFound("no such conversation")
        return row

    async def create_conversation(self, owner: Owner, title: str = "") -> Conversation:
        now = self.now()
        async with self._sessions.begin() as session:
            row = ConversationRow(tenant=owner.tenant, user_id=owner.user_id, title=_cut(title.strip(), MAX_TITLE),
                                  created_at=now, updated_at=now)
            session.add(row)
        return _conversation(row)

    async def get_conversation(self, owner: Owner, cid: uuid.UUID | str) -> Conversation:
        async with self._sessions() as session:
            return _conversation(await self._conversation_row(session, owner, cid))

    async def list_conversations(self, owner: Owner, query: str | None = None, *, limit: int = 200
                                 ) -> list[Conversation]:
        """The owner's conversations, most recently active first; with ``query`` only those whose title
        or any message text contains it (case-insensitive)."""
        stmt = select(ConversationRow).where(ConversationRow.user_id == owner.user_id,
                                             ConversationRow.tenant == owner.tenant)
        query = (query or "").strip()[:MAX_SEARCH]
        if query:
            pattern = _like(query)
            in_messages = select(MessageRow.conversation_id).where(
                func.lower(MessageRow.text).like(pattern, escape="\\"))
            stmt = stmt.where(or_(func.lower(ConversationRow.title).like(pattern, escape="\\"),
                                  ConversationRow.id.in_(in_messages)))
        stmt = stmt.order_by(ConversationRow.updated_at.desc(), ConversationRow.created_at.desc()).limit(limit)
        async with self._sessions() as session:
            rows = (await session.scalars(stmt)).all()
        return [_conversation(r) for r in rows]

    async def rename_conversation(self, owner: Owner, cid: uuid.UUID | str, title: str) -> Conversation:
        async with self._sessions.begin() as session:
            row = await self._conversation_row(session, owner, cid)
            row.title = _cut(title.strip(), MAX_TITLE) or ""
        return _conversation(row)

    async def delete_conversation(self, owner: Owner, cid: uuid.UUID | str) -> None:
        async with self._sessions.begin() as session:
            row = await self._conversation_row(session, owner, cid)
            await session.delete(row)

    # messages

    async def add_message(self, owner: Owner, cid: uuid.UUID | str, role: Literal["user", "assistant"], text: str,
                          *, data: Sequence[Any] = (), citations: Sequence[Any] = (), partial: bool = False,
                          stop_reason: str | None = None, mode: str | None = None, notice: str | None = None,
                          usage: Mapping[str, Any] | None = None, title_if_empty: str | None = None
                          ) -> StoredMessage:
        """Append a message to the owner's conversation (which becomes the most recent one)."""
        now = self.now()
        async with self._sessions.begin() as session:
            conversation = await self._conversation_row(session, owner, cid)
            conversation.updated_at = now
            if title_if_empty and not conversation.title:
                conversation.title = _cut(" ".join(title_if_empty.split()), 80) or ""
            row = MessageRow(conversation_id=conversation.id, role=role, text=_clean(text), data=_clean(list(data)),
                             citations=_clean(list(citations)), partial=partial, stop_reason=stop_reason, mode=mode,
                             notice=_clean(notice), usage=_clean(dict(usage or {})), created_at=now)
            session.add(row)
        return _message(row)

    async def _message_row(self, session: AsyncSession, owner: Owner, mid: uuid.UUID | str) -> MessageRow:
        row = await session.scalar(
            select(MessageRow).join(ConversationRow, ConversationRow.id == MessageRow.conversation_id)
            .where(MessageRow.id == _uuid(mid), ConversationRow.user_id == owner.user_id,
                   ConversationRow.tenant == owner.tenant))
        if row is None:
            raise NotFound("no such message")
        return row

    async def get_message(self, owner: Owner, mid: uuid.UUID | str) -> StoredMessage:
        async with self._sessions() as session:
            return _message(await self._message_row(session, owner, mid))

    async def update_message(self, owner: Owner, mid: uuid.UUID | str, *, text: str | None = None,
                             data: Sequence[Any] | None = None, citations: Sequence[Any] | None = None,
                             partial: bool | None = None, stop_reason: str | None = None, mode: str | None = None,
                             notice: str | None = None, usage: Mapping[str, Any] | None = None) -> StoredMessage:
        async with self._sessions.begin() as session:
            row = await self._message_row(session, owner, mid)
            if text is not None:
                row.text = _clean(text)
            if data is not None:
                row.data = _clean(list(data))
            if citations is not None:
                row.citations = _clean(list(citations))
            if partial is not None:
                row.partial = partial
            if stop_reason is not None:
                row.stop_reason = stop_reason
            if mode is not None:
                row.mode = mode
            if notice is not None:
                row.notice = _clean(notice)
            if usage is not None:
                row.usage = _clean(dict(usage))
            conversation = await session.get(ConversationRow, row.conversation_id)
            if conversation is not None:
                conversation.updated_at = self.now()
        return _message(row)

    async def list_messages(self, owner: Owner, cid: uuid.UUID | str) -> list[StoredMessage]:
        """The conversation's messages in order, each with its tool calls and the owner's feedback."""
        async with self._sessions() as session:
            conversation = await self._conversation_row(session, owner, cid)
            rows = (await session.scalars(select(MessageRow).where(MessageRow.conversation_id == conversation.id)
                                          .order_by(MessageRow.seq))).all()
            ids = [r.id for r in rows]
            calls: dict[uuid.UUID, list[ToolCallRow]] = {}
            feedback: dict[uuid.UUID, FeedbackRow] = {}
            if ids:
                for call in (await session.scalars(select(ToolCallRow).where(ToolCallRow.message_id.in_(ids))
                                                   .order_by(ToolCallRow.created_at))).all():
                    calls.setdefault(call.message_id, []).append(call)
                for fb in (await session.scalars(select(FeedbackRow).where(
                        FeedbackRow.message_id.in_(ids), FeedbackRow.user_id == owner.user_id))).all():
                    feedback[fb.message_id] = fb
        return [_message(r, calls.get(r.id, ()), feedback.get(r.id)) for r in rows]

    async def history(self, owner: Owner, cid: uuid.UUID | str) -> list[dict[str, Any]]:
        """What the model saw in earlier turns: the ``data`` of every message, in order."""
        out: list[dict[str, Any]] = []
        for message in await self.list_messages(owner, cid):
            out.extend(m for m in message.data if isinstance(m, dict))
        return out

    # tool calls

    async def record_tool_call(self, owner: Owner, mid: uuid.UUID | str, call_id: str, tool: str, *,
                               arguments: Mapping[str, Any] | None = None, status: str = "running",
                               duration_s: float | None = None, preview: str | None = None,
                               error: str | None = None, approval: str | None = None) -> StoredToolCall:
        """Insert or update the tool call ``call_id`` of the assistant message ``mid``."""
        now = self.now()
        async with self._sessions.begin() as session:
            message = await self._message_row(session, owner, mid)
            row = await session.scalar(select(ToolCallRow).where(ToolCallRow.message_id == message.id,
                                                                 ToolCallRow.call_id == call_id[:200]))
            if row is None:
                row = ToolCallRow(message_id=message.id, call_id=call_id[:200], tool=_cut(tool, MAX_TOOL_NAME),
                                  arguments=_clean(dict(arguments or {})), status=status, duration_s=duration_s,
                                  preview=_cut(preview or "", MAX_PREVIEW), error=_cut(error, MAX_PREVIEW),
                                  approval=approval, created_at=now, updated_at=now)
                session.add(row)
            else:
                row.status = status
                row.updated_at = now
                if arguments is not None:
                    row.arguments = _clean(dict(arguments))
                if duration_s is not None:
                    row.duration_s = duration_s
                if preview is not None:
                    row.preview = _cut(preview, MAX_PREVIEW) or ""
                if error is not None:
                    row.error = _cut(error, MAX_PREVIEW)
                if approval is not None:
                    row.approval = approval
        return _tool_call(row)

    # feedback

    async def set_feedback(self, owner: Owner, mid: uuid.UUID | str, rating: int, comment: str = "") -> Feedback:
        """Thumbs up (1) or down (-1) with an optional comment on an answer (replaces an earlier one)."""
        if rating not in (1, -1):
            raise ValueError("rating must be 1 (up) or -1 (down)")
        now = self.now()
        async with self._sessions.begin() as session:
            message = await self._message_row(session, owner, mid)
            if message.role != "assistant":
                raise ValueError("feedback is given on answers only")
            row = await session.scalar(select(FeedbackRow).where(FeedbackRow.message_id == message.id,
                                                                 FeedbackRow.user_id == owner.user_id))
            if row is None:
                row = FeedbackRow(message_id=message.id, user_id=owner.user_id, tenant=owner.tenant, rating=rating,
                                  comment=_cut(comment, MAX_COMMENT) or "", created_at=now, updated_at=now)
                session.add(row)
            else:
                row.rating, row.comment, row.updated_at = rating, _cut(comment, MAX_COMMENT) or "", now
        return _feedback(row)

    async def get_feedback(self, owner: Owner, mid: uuid.UUID | str) -> Feedback | None:
        async with self._sessions() as session:
            message = await self._message_row(session, owner, mid)
            row = await session.scalar(select(FeedbackRow).where(FeedbackRow.message_id == message.id,
                                                                 FeedbackRow.user_id == owner.user_id))
        return _feedback(row) if row is not None else None


class DbApprovalStore:
    """:class:`~kontor.host.approvals.ApprovalStore` over the host's tables (``user``: the subject)."""

    def __init__(self, store: HostStore) -> None:
        self.store = store

    async def get_user_decision(self, tenant: str, user: str, tool: str) -> Literal["always"] | None:
        async with self.store._sessions() as session:
            row = await session.get(UserApprovalRow, (tenant, user, tool))
        return "always" if row is not None and row.decision == "always" else None

    async def set_user_decision(self, tenant: str, user: str, tool: str, decision: Literal["always"] | None) -> None:
        if decision not in (None, "always"):
            raise ValueError(f"only 'always' is remembered, not {decision!r}")
        if len(tool) > MAX_TOOL_NAME:
            raise ValueError("tool name too long")
        async with self.store._sessions.begin() as session:
            row = await session.get(UserApprovalRow, (tenant, user, tool))
            if decision is None:
                if row is not None:
                    await session.delete(row)
            elif row is None:
                session.add(UserApprovalRow(tenant=tenant, user=user, tool=tool, decision=decision,
                                            updated_at=self.store.now()))
            else:
                row.decision, row.updated_at = decision, self.store.now()

    async def list_user_decisions(self, tenant: str, user: str) -> dict[str, Literal["always"]]:
        async with self.store._sessions() as session:
            rows = (await session.scalars(select(UserApprovalRow).where(
                UserApprovalRow.tenant == tenant, UserApprovalRow.user == user).order_by(UserApprovalRow.tool))).all()
        return {r.tool: "always" for r in rows if r.decision == "always"}

    async def get_admin_rule(self, tenant: str, key: str) -> AdminRule | None:
        async with self.store._sessions() as session:
            row = await session.get(AdminRuleRow, (tenant, key))
        return row.rule if row is not None else None  # type: ignore[return-value]

    async def set_admin_rule(self, tenant: str, key: str, rule: AdminRule | None) -> None:
        if rule not in (None, "always_ask", "blocked"):
            raise ValueError(f"unknown admin rule {rule!r} (always_ask, blocked or None)")
        async with self.store._sessions.begin() as session:
            row = await session.get(AdminRuleRow, (tenant, key))
            if rule is None:
                if row is not None:
                    await session.delete(row)
            elif row is None:
                session.add(AdminRuleRow(tenant=tenant, key=key, rule=rule, updated_at=self.store.now()))
            else:
                row.rule, row.updated_at = rule, self.store.now()

    async def list_admin_rules(self, tenant: str) -> dict[str, AdminRule]:
        async with self.store._sessions() as session:
            rows = (await session.scalars(select(AdminRuleRow).where(AdminRuleRow.tenant == tenant))).all()
        return {r.key: r.rule for r in rows}  # type: ignore[misc]
