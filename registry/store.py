"""The registry's repository: publishers, namespaces, servers, versions, reviews, decisions, installations, secrets.

Like :class:`kontor.gateway.db.GatewayDB` (whose engine it shares), it returns frozen dataclasses,
never ORM rows. Every state change is one transaction that also writes its event row
(``registry_events``: actor, subject, from/to state, reason), so a state and its history never
disagree.

Concurrency: every state transition is an optimistic compare-and-set,
``UPDATE … SET state = :to WHERE id = :id AND state = :from``, and only a row count of 1 counts as
done. Two approvals of one version racing each other (two admins, two gateway replicas) therefore
cannot both win: on PostgreSQL the second ``UPDATE`` waits for the first transaction's row lock and
then matches nothing; on SQLite the writers are serialised by the database lock. The loser gets
:class:`~kontor.registry.lifecycle.IllegalTransition` naming the state the winner left behind.

Installations are the gateway's own ``installations`` rows; installing pins exactly the approved
snapshot's tool definitions into the gateway's ``tool_pins`` (pins of tools the snapshot does not
have are removed), so the gateway's :meth:`~kontor.gateway.db.GatewayDB.check_tools` withholds
every tool whose live definition differs from what the platform admin approved.

Secrets (:class:`SecretBox`): values are encrypted with AES-256-GCM before they reach the
database, with the tenant, server and secret name as associated data; listings return names and
times only (:class:`SecretRef`), and only :meth:`RegistryStore.secret_value` decrypts.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
import uuid
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, func, or_, select, true, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from kontor.gateway.db import (
    MAX_EMAIL_LENGTH,
    MAX_TOOL_NAME_LENGTH,
    MAX_VERSION_LENGTH,
    SERVED_STATES,
    AlreadyExists,
    Conflict,
    EventRow,
    GatewayDB,
    GatewayDBError,
    Installation,
    InstallationRow,
    InstallationState,
    InvalidValue,
    NotFound,
    PinState,
    Role,
    TenantRow,
    ToolPinRow,
    UserRow,
    contains_nul,
)
from kontor.gateway.naming import SEPARATOR, NameCollision, NamingError, check_collisions, namespaced
from kontor.gateway.pinning import DEFINITION_FIELDS, canonical_json, definition_hash, definition_of, instructions_hash
from kontor.registry.lifecycle import (
    DECISIONS,
    RERUN_FROM,
    REVIEW_DECISIONS,
    Decision,
    IllegalTransition,
    ProofMethod,
    VersionState,
    Visibility,
    check_installation_transition,
    check_version_transition,
)
from kontor.registry.models import (
    MAX_NAMESPACE_LENGTH,
    MAX_REASON_LENGTH,
    MAX_SECRET_NAME_LENGTH,
    MAX_SERVER_NAME_LENGTH,
    ImmutableVersion,
    NamespaceRow,
    PublisherRow,
    RegistryEventRow,
    ReviewRunRow,
    SecretRow,
    ServerRow,
    ToolSnapshotRow,
    VersionDecisionRow,
    VersionRow,
)
from kontor.sealing import SealedBox, Undecryptable
from kontor.tenancy import validate_tenant

__all__ = [
    "CONFIG_KEY",
    "FIRST_PARTY_SLUGS",
    "RESERVED_SLUGS",
    "AlreadyExists",
    "CatalogEntry",
    "Conflict",
    "IllegalTransition",
    "ImmutableVersion",
    "InvalidValue",
    "Namespace",
    "NotFound",
    "PermissionDenied",
    "Publisher",
    "RegistryError",
    "RegistryEvent",
    "RegistryStore",
    "ReviewRecord",
    "ReviewRun",
    "SecretBox",
    "SecretRef",
    "SecretsUnavailable",
    "Server",
    "ToolSnapshot",
    "Version",
    "VersionDecision",
    "changed_fields",
    "derive_slug",
    "latest_version",
    "normalise_actor",
    "normalise_reason",
    "pinned_definitions",
]

#: Gateway names of Kontor's own servers: only first-party catalog entries get them.
FIRST_PARTY_SLUGS = frozenset({"lakehouse", "ingest", "training", "etim", "ctax", "law"})
#: Names no third-party server gets: the first-party ones and words the gateway uses itself (``tenant:admin``).
RESERVED_SLUGS = FIRST_PARTY_SLUGS | {"gateway", "registry", "tenant", "kontor", "host", "admin", "mcp"}
#: Key under an installation's ``config`` where the registry keeps its facts (not settable by users).
CONFIG_KEY = "registry"

_NAMESPACE = re.compile(r"[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?(?:\.\*)?")
_SECRET_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,128}")


# --- errors -----------------------------------------------------------------------------------


class RegistryError(GatewayDBError):
    """Base class of the registry's own errors (the gateway's NotFound/Conflict/InvalidValue are reused)."""


class PermissionDenied(RegistryError, PermissionError):
    """The actor may not do this (self-approval, a member installing, a server of another publisher)."""


class SecretsUnavailable(RegistryError):
    """No secret key is configured, or a stored secret cannot be decrypted with it."""


# --- records ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Publisher:
    id: uuid.UUID
    display_name: str
    owner: str
    owner_tenant_id: str | None
    created_at: datetime


@dataclass(frozen=True)
class Namespace:
    id: uuid.UUID
    publisher_id: uuid.UUID
    namespace: str
    proof_method: ProofMethod
    proven_at: datetime
    evidence: dict[str, Any]


@dataclass(frozen=True)
class Server:
    id: uuid.UUID
    name: str
    slug: str
    publisher_id: uuid.UUID
    visibility: Visibility
    owner_tenant_id: str | None
    first_party: bool
    created_at: datetime


@dataclass(frozen=True)
class Version:
    id: uuid.UUID
    server_id: uuid.UUID
    server_name: str
    slug: str
    version: str
    state: VersionState
    server_json_text: str = field(repr=False)
    server_json: dict[str, Any] = field(repr=False)
    sha256: str
    submitted_by: str
    created_at: datetime
    updated_at: datetime
    approved_at: datetime | None

    @property
    def server_json_bytes(self) -> bytes:
        """The submitted bytes, exactly (their SHA-256 is :attr:`sha256`)."""
        return self.server_json_text.encode("utf-8")


@dataclass(frozen=True)
class ReviewRun:
    id: uuid.UUID
    version_id: uuid.UUID
    number: int
    started_by: str
    started_at: datetime
    finished_at: datetime | None
    passed: bool | None
    risk: str | None
    report: dict[str, Any] = field(repr=False)
    instructions: str | None = field(repr=False)
    instructions_hash: str | None
    error: str | None


@dataclass(frozen=True)
class ToolSnapshot:
    review_run_id: uuid.UUID
    position: int
    tool_name: str
    definition: dict[str, Any] = field(repr=False)
    definition_hash: str
    instructions_hash: str | None


@dataclass(frozen=True)
class VersionDecision:
    id: uuid.UUID
    version_id: uuid.UUID
    review_run_id: uuid.UUID | None
    approver: str
    decision: Decision
    reason: str
    decided_at: datetime


@dataclass(frozen=True)
class RegistryEvent:
    id: int
    time: datetime
    actor: str | None
    subject_type: str
    subject_id: str
    tenant_id: str | None
    from_state: str | None
    to_state: str | None
    reason: str | None
    detail: dict[str, Any]


@dataclass(frozen=True)
class SecretRef:
    """A stored secret without its value: safe to list, log and show."""

    tenant_id: str
    server_id: uuid.UUID
    name: str
    key_id: str
    updated_by: str | None
    updated_at: datetime


@dataclass(frozen=True)
class CatalogEntry:
    """A server a tenant may install: the server, its latest approved version, and the tenant's installation."""

    server: Server
    latest: Version
    approved_versions: tuple[str, ...]
    installation: Installation | None


@dataclass(frozen=True)
class ReviewRecord:
    """The outcome of one automated review, normalised for storage (see :meth:`ReviewRecord.from_outcome`)."""

    passed: bool
    risk: str | None
    report: dict[str, Any]
    tools: tuple[dict[str, Any], ...] = ()  # full definitions as served
    instructions: str | None = None
    error: str | None = None

    @classmethod
    def from_outcome(cls, outcome: Any) -> ReviewRecord:
        """Accepts the review's dict (``passed``, ``risk``, ``report``, ``snapshot``) or an object with those fields.

        ``snapshot`` may be None (no live listing), or a dict with ``tools`` — a list of entries
        ``{"name", "hash", "definition"}`` (as :mod:`kontor.registry.snapshot` records them) or of
        plain tool definitions — and optionally ``instructions``. Hashes are recomputed here.
        """
        def get(key: str, default: Any = None) -> Any:
            if isinstance(outcome, Mapping):
                return outcome.get(key, default)
            return getattr(outcome, key, default)

        passed = get("passed")
        if not isinstance(passed, bool):
            raise InvalidValue("the review outcome needs a boolean 'passed'")
        report = get("report") or {}
        if hasattr(report, "to_dict"):
            report = report.to_dict()
        if not isinstance(report, Mapping):
            raise InvalidValue("the review outcome's 'report' must be a JSON object")
        risk = get("risk")
        if risk is None and isinstance(report.get("risk"), Mapping):
            risk = report["risk"].get("label")
        snapshot = get("snapshot")
        tools: list[dict[str, Any]] = []
        instructions = None
        if isinstance(snapshot, Mapping):
            for entry in snapshot.get("tools") or ():
                if isinstance(entry, Mapping) and isinstance(entry.get("definition"), Mapping):
                    tools.append(dict(entry["definition"]))
                elif isinstance(entry, Mapping):
                    tools.append(dict(entry))
            text = snapshot.get("instructions")
            instructions = text if isinstance(text, str) else None
        elif snapshot is not None:
            raise InvalidValue("the review outcome's 'snapshot' must be a JSON object or null")
        return cls(passed, str(risk) if risk is not None else None, dict(report), tuple(tools), instructions,
                   get("error"))


# --- helpers ----------------------------------------------------------------------------------


def normalise_actor(actor: str) -> str:
    """An actor id: trimmed, NFC, at most 320 characters, no control characters; e-mail addresses lower-cased."""
    if not isinstance(actor, str):
        raise InvalidValue("actor must be a string (a user's e-mail address or a service name)")
    value = unicodedata.normalize("NFC", actor).strip()
    if not value or len(value) > MAX_EMAIL_LENGTH or any(not ch.isprintable() for ch in value):
        raise InvalidValue(f"invalid actor {actor!r}: 1-{MAX_EMAIL_LENGTH} printable characters")
    return value.lower() if "@" in value else value


def _same_actor(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and a.strip().casefold() == b.strip().casefold()


def normalise_reason(reason: str | None, *, required: bool = True) -> str | None:
    """A decision's or transition's reason: required (non-blank) unless told otherwise, at most 2000 characters."""
    if reason is None or (isinstance(reason, str) and not reason.strip()):
        if required:
            raise InvalidValue("a reason is required (a non-empty text)")
        return None
    if not isinstance(reason, str):
        raise InvalidValue("reason must be a string")
    reason = reason.strip()
    if len(reason) > MAX_REASON_LENGTH or "\x00" in reason:
        raise InvalidValue(f"reason must have at most {MAX_REASON_LENGTH} characters and no NUL")
    return reason


def derive_slug(server_name: str) -> str:
    """The gateway name proposed for ``namespace/name`` — the same rule as the review's ``gateway_name_for``:
    the name part, lower case, runs of other characters as ``-``, starting with a letter, at most 24
    characters, ``server`` when nothing is left (``io.github.alice/Weather_MCP`` → ``weather-mcp``)."""
    part = server_name.rsplit("/", 1)[-1].lower()
    slug = "".join(ch if ch.isascii() and (ch.isalnum() or ch == "-") else "-" for ch in part)
    slug = re.sub(r"-{2,}", "-", slug)
    slug = slug.lstrip("-0123456789")[:24].rstrip("-")
    return slug or "server"


def _scrub_nul(value: Any) -> tuple[Any, bool]:
    """``value`` with U+0000 replaced by U+FFFD (PostgreSQL cannot store it), and whether anything changed."""
    if isinstance(value, str):
        return (value.replace("\x00", "\ufffd"), True) if "\x00" in value else (value, False)
    if isinstance(value, Mapping):
        changed = False
        out = {}
        for k, v in value.items():
            k2, c1 = _scrub_nul(k)
            v2, c2 = _scrub_nul(v)
            out[k2] = v2
            changed = changed or c1 or c2
        return out, changed
    if isinstance(value, list | tuple):
        items = [_scrub_nul(v) for v in value]
        return [v for v, _ in items], any(c for _, c in items)
    return value, False


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


def _publisher(row: PublisherRow) -> Publisher:
    return Publisher(row.id, row.display_name, row.owner, row.owner_tenant_id, row.created_at)


def _namespace(row: NamespaceRow) -> Namespace:
    return Namespace(row.id, row.publisher_id, row.namespace, ProofMethod(row.proof_method), row.proven_at,
                     dict(row.evidence or {}))


def _server(row: ServerRow) -> Server:
    return Server(row.id, row.name, row.slug, row.publisher_id, Visibility(row.visibility), row.owner_tenant_id,
                  bool(row.first_party), row.created_at)


def _version(row: VersionRow, server: ServerRow) -> Version:
    return Version(row.id, row.server_id, server.name, server.slug, row.version, VersionState(row.state),
                   row.server_json_text, dict(row.server_json or {}), row.sha256, row.submitted_by, row.created_at,
                   row.updated_at, row.approved_at)


def _run(row: ReviewRunRow) -> ReviewRun:
    return ReviewRun(row.id, row.version_id, row.number, row.started_by, row.started_at, row.finished_at, row.passed,
                     row.risk, dict(row.report or {}), row.instructions, row.instructions_hash, row.error)


def _snapshot(row: ToolSnapshotRow) -> ToolSnapshot:
    return ToolSnapshot(row.review_run_id, row.position, row.tool_name, dict(row.definition or {}),
                        row.definition_hash, row.instructions_hash)


def _decision(row: VersionDecisionRow) -> VersionDecision:
    return VersionDecision(row.id, row.version_id, row.review_run_id, row.approver, Decision(row.decision),
                           row.reason, row.decided_at)


def _event(row: RegistryEventRow) -> RegistryEvent:
    return RegistryEvent(row.id, row.time, row.actor, row.subject_type, row.subject_id, row.tenant_id,
                         row.from_state, row.to_state, row.reason, dict(row.detail or {}))


def _installation(row: InstallationRow) -> Installation:
    return Installation(row.id, row.tenant_id, row.server, row.version, InstallationState(row.state),
                        list(row.granted_scopes or []), dict(row.config or {}), row.upstream_url,
                        row.created_at, row.updated_at)


def _secret_ref(row: SecretRow) -> SecretRef:
    return SecretRef(row.tenant_id, row.server_id, row.name, row.key_id, row.updated_by, row.updated_at)


def _uuid(value: uuid.UUID | str, what: str) -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise NotFound(f"no {what} {value!r}") from None


# --- secrets ----------------------------------------------------------------------------------


class SecretBox(SealedBox):
    """The registry's sealing of tenant secrets (:class:`kontor.sealing.SealedBox`), e.g. under
    ``<data_root>/registry/secrets.key``; the key id is stored beside each ciphertext."""

    def __init__(self, key: bytes) -> None:
        try:
            super().__init__(key)
        except ValueError as exc:
            raise InvalidValue(str(exc)) from None

    def decrypt(self, token: str, context: str) -> str:
        try:
            return super().decrypt(token, context)
        except Undecryptable:
            raise SecretsUnavailable("a stored secret cannot be decrypted with the configured key") from None


def _secret_context(tenant: str, server_id: uuid.UUID, name: str) -> str:
    return f"kontor-registry-secret/v1\n{tenant}\n{server_id}\n{name}"


# --- tool comparison --------------------------------------------------------------------------


def pinned_definitions(tools: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Tool name → its pinned fields (:func:`~kontor.gateway.pinning.definition_of`)."""
    out: dict[str, dict[str, Any]] = {}
    for tool in tools:
        definition = definition_of(tool)
        if isinstance(definition.get("name"), str):
            out[definition["name"]] = definition
    return out


def changed_fields(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    return [f for f in DEFINITION_FIELDS if canonical_json(before.get(f)) != canonical_json(after.get(f))]


# --- the repository ---------------------------------------------------------------------------


class RegistryStore:
    """Async repository over the registry's tables and the gateway's installations and pins.

    ``gateway``: the :class:`GatewayDB` whose engine (and clock) the store shares; its tables must
    exist (:func:`kontor.registry.migrations.upgrade` or ``GatewayDB.init`` after importing
    :mod:`kontor.registry.models`). ``secret_box``: encrypts tenant secrets; without one, storing a
    secret raises :class:`SecretsUnavailable`.
    """

    def __init__(self, gateway: GatewayDB, *, secret_box: SecretBox | None = None) -> None:
        self.gateway = gateway
        self.engine = gateway.engine
        self.secret_box = secret_box
        self._sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    def _now(self) -> datetime:
        now = self.gateway.clock()
        if now.tzinfo is None:
            raise ValueError("clock must return an aware datetime")
        return _utc(now)

    # events

    def _event(self, session: AsyncSession, subject_type: str, subject_id: object, actor: str | None, *,
               from_state: str | None = None, to_state: str | None = None, reason: str | None = None,
               tenant: str | None = None, detail: Mapping[str, Any] | None = None) -> None:
        session.add(RegistryEventRow(
            time=self._now(), actor=actor, subject_type=subject_type, subject_id=str(subject_id)[:255],
            tenant_id=tenant, from_state=None if from_state is None else str(from_state),
            to_state=None if to_state is None else str(to_state),
            reason=reason[:MAX_REASON_LENGTH] if reason else reason, detail=dict(detail or {})))

    async def list_events(self, *, subject_type: str | None = None, subject_id: object | None = None,
                          tenant: str | None = None, limit: int = 200) -> list[RegistryEvent]:
        """The most recent ``limit`` registry events (oldest first), optionally of one subject or tenant."""
        query = select(RegistryEventRow).order_by(RegistryEventRow.id.desc()).limit(limit)
        if subject_type is not None:
            query = query.where(RegistryEventRow.subject_type == subject_type)
        if subject_id is not None:
            query = query.where(RegistryEventRow.subject_id == str(subject_id))
        if tenant is not None:
            query = query.where(RegistryEventRow.tenant_id == tenant)
        async with self._sessions() as session:
            rows = (await session.scalars(query)).all()
        return [_event(r) for r in reversed(rows)]

    # tenants and users

    async def _tenant(self, session: AsyncSession, tenant: str) -> TenantRow:
        validate_tenant(tenant)
        if tenant.endswith("\n"):
            raise InvalidValue(f"invalid tenant id {tenant!r}")
        row = await session.get(TenantRow, tenant)
        if row is None:
            raise NotFound(f"tenant {tenant!r} does not exist")
        return row

    async def is_tenant_admin(self, tenant: str, actor: str) -> bool:
        """Whether ``actor`` is an enabled admin user of ``tenant``."""
        try:
            email = normalise_actor(actor)
        except InvalidValue:
            return False
        async with self._sessions() as session:
            await self._tenant(session, tenant)
            row = await session.scalar(select(UserRow).where(UserRow.tenant_id == tenant, UserRow.email == email))
        return row is not None and row.role == Role.admin.value and not row.disabled

    # publishers and namespaces

    async def create_publisher(self, display_name: str, owner: str, *, owner_tenant: str | None = None,
                               actor: str | None = None) -> Publisher:
        name = (display_name or "").strip()
        if not name or len(name) > 200 or "\x00" in name:
            raise InvalidValue("a publisher's display name must have 1-200 characters, none of them NUL")
        owner = normalise_actor(owner)
        if owner_tenant is not None:
            validate_tenant(owner_tenant)
        async with self._sessions.begin() as session:
            row = PublisherRow(display_name=name, owner=owner, owner_tenant_id=owner_tenant, created_at=self._now())
            session.add(row)
            await session.flush()
            self._event(session, "publisher", row.id, actor or owner, to_state="created",
                        detail={"display_name": name, "owner": owner})
            return _publisher(row)

    async def get_publisher(self, publisher_id: uuid.UUID | str) -> Publisher:
        async with self._sessions() as session:
            row = await session.get(PublisherRow, _uuid(publisher_id, "publisher"))
        if row is None:
            raise NotFound(f"no publisher {publisher_id}")
        return _publisher(row)

    async def list_publishers(self, *, owner: str | None = None) -> list[Publisher]:
        query = select(PublisherRow).order_by(PublisherRow.created_at, PublisherRow.display_name)
        if owner is not None:
            query = query.where(PublisherRow.owner == normalise_actor(owner))
        async with self._sessions() as session:
            return [_publisher(r) for r in (await session.scalars(query)).all()]

    async def add_namespace(self, publisher_id: uuid.UUID | str, namespace: str, method: ProofMethod | str, *,
                            evidence: Mapping[str, Any] | None = None, actor: str) -> Namespace:
        """Record a proven namespace (``com.example``; ``com.example.*`` covers sub-namespaces, as a DNS proof does).

        A namespace belongs to one publisher: proving it again for the same publisher refreshes
        the proof; another publisher's claim raises :class:`AlreadyExists`.
        """
        ns = (namespace or "").strip().lower()
        if not _NAMESPACE.fullmatch(ns) or len(ns) > MAX_NAMESPACE_LENGTH:
            raise InvalidValue(f"invalid namespace {namespace!r}: use reverse DNS such as com.example "
                               "(or com.example.* for every sub-namespace)")
        try:
            method = ProofMethod(method)
        except ValueError:
            raise InvalidValue(f"invalid proof method {method!r}: use one of "
                               f"{', '.join(m.value for m in ProofMethod)}") from None
        evidence = dict(evidence or {})
        if contains_nul(evidence):
            raise InvalidValue("evidence must not contain NUL characters")
        actor = normalise_actor(actor)
        pid = _uuid(publisher_id, "publisher")
        try:
            async with self._sessions.begin() as session:
                if await session.get(PublisherRow, pid) is None:
                    raise NotFound(f"no publisher {publisher_id}")
                row = await session.scalar(select(NamespaceRow).where(NamespaceRow.namespace == ns))
                if row is not None and row.publisher_id != pid:
                    raise AlreadyExists(f"namespace {ns!r} belongs to another publisher")
                if row is None:
                    row = NamespaceRow(publisher_id=pid, namespace=ns)
                    session.add(row)
                row.proof_method, row.proven_at, row.evidence = method.value, self._now(), evidence
                await session.flush()
                self._event(session, "namespace", ns, actor, to_state="proven",
                            detail={"publisher": str(pid), "method": method.value})
                return _namespace(row)
        except IntegrityError:
            raise AlreadyExists(f"namespace {ns!r} belongs to another publisher") from None

    async def list_namespaces(self, publisher_id: uuid.UUID | str) -> list[Namespace]:
        async with self._sessions() as session:
            rows = (await session.scalars(select(NamespaceRow).where(
                NamespaceRow.publisher_id == _uuid(publisher_id, "publisher")).order_by(NamespaceRow.namespace))).all()
        return [_namespace(r) for r in rows]

    # servers

    async def _server_by_name(self, session: AsyncSession, name: str) -> ServerRow | None:
        return await session.scalar(select(ServerRow).where(ServerRow.name_key == name.lower()))

    async def find_server(self, name_or_slug: str) -> Server | None:
        """The server named ``namespace/name`` (any letter case), or with that gateway name; None if none."""
        async with self._sessions() as session:
            row = await self._find_server_row(session, name_or_slug)
        return _server(row) if row is not None else None

    async def _find_server_row(self, session: AsyncSession, name_or_slug: str) -> ServerRow | None:
        if not isinstance(name_or_slug, str) or not name_or_slug:
            return None
        if "/" in name_or_slug:
            return await self._server_by_name(session, name_or_slug)
        return await session.scalar(select(ServerRow).where(ServerRow.slug == name_or_slug))

    async def get_server(self, server_id: uuid.UUID | str) -> Server:
        async with self._sessions() as session:
            row = await session.get(ServerRow, _uuid(server_id, "server"))
        if row is None:
            raise NotFound(f"no server {server_id}")
        return _server(row)

    async def list_servers(self, *, publisher_id: uuid.UUID | str | None = None) -> list[Server]:
        query = select(ServerRow).order_by(ServerRow.name_key)
        if publisher_id is not None:
            query = query.where(ServerRow.publisher_id == _uuid(publisher_id, "publisher"))
        async with self._sessions() as session:
            return [_server(r) for r in (await session.scalars(query)).all()]

    async def _free_slug(self, session: AsyncSession, name: str, wanted: str | None, first_party: bool) -> str:
        if wanted is not None:
            candidates: Iterable[str] = [wanted]
        else:
            base = derive_slug(name)
            candidates = [base, *(f"{base[:24 - len(str(n)) - 1].rstrip('-')}-{n}" for n in range(2, 100))]
        for slug in candidates:
            try:
                namespaced(slug, "x")
            except NamingError:
                raise InvalidValue(f"invalid gateway name {slug!r} for server {name!r}: use 1-24 lowercase "
                                   "letters, digits and hyphens, starting with a letter") from None
            if slug in RESERVED_SLUGS and not (first_party and slug in FIRST_PARTY_SLUGS):
                if wanted is not None:
                    raise InvalidValue(f"the gateway name {slug!r} is reserved")
                continue
            if await session.scalar(select(ServerRow.id).where(ServerRow.slug == slug)) is None:
                return slug
            if wanted is not None:
                raise AlreadyExists(f"the gateway name {slug!r} is taken by another server")
        raise Conflict(f"no free gateway name for server {name!r}")

    # versions

    async def create_version(self, publisher_id: uuid.UUID | str, document: Mapping[str, Any], text: str, *,
                             actor: str, visibility: Visibility | str | None = None,
                             owner_tenant: str | None = None, first_party: bool = False,
                             slug: str | None = None) -> Version:
        """Store a validated submission verbatim as a new version in state ``submitted`` (creating its server).

        The server (``document["name"]``) is created on its first version and belongs to the
        publisher who submitted it; ``visibility``/``owner_tenant`` apply then (public by default) and
        must not contradict an existing server's. A version string already submitted for the server
        raises :class:`AlreadyExists` (versions are immutable).
        """
        actor = normalise_actor(actor)
        pid = _uuid(publisher_id, "publisher")
        name, version = document.get("name"), document.get("version")
        if not isinstance(name, str) or not isinstance(version, str):
            raise InvalidValue("the document needs a string 'name' and 'version'")
        if len(name) > MAX_SERVER_NAME_LENGTH:
            raise InvalidValue(f"server name longer than {MAX_SERVER_NAME_LENGTH} characters")
        if visibility is not None:
            try:
                visibility = Visibility(visibility)
            except ValueError:
                raise InvalidValue(f"invalid visibility {visibility!r}: use public or private") from None
        if visibility == Visibility.private and owner_tenant is None:
            raise InvalidValue("a private server needs its owning tenant")
        if owner_tenant is not None and visibility is None:
            visibility = Visibility.private
        if visibility == Visibility.public and owner_tenant is not None:
            raise InvalidValue("a public server has no owning tenant")
        raw = text.encode("utf-8")
        digest = hashlib.sha256(raw).hexdigest()
        try:
            async with self._sessions.begin() as session:
                publisher = await session.get(PublisherRow, pid)
                if publisher is None:
                    raise NotFound(f"no publisher {publisher_id}")
                server = await self._server_by_name(session, name)
                now = self._now()
                if server is None:
                    if owner_tenant is not None:
                        await self._tenant(session, owner_tenant)
                    server = ServerRow(name=name, name_key=name.lower(),
                                       slug=await self._free_slug(session, name, slug, first_party),
                                       publisher_id=pid, visibility=(visibility or Visibility.public).value,
                                       owner_tenant_id=owner_tenant, first_party=first_party, created_at=now)
                    session.add(server)
                    await session.flush()
                    self._event(session, "server", server.name, actor, to_state="created", tenant=owner_tenant,
                                detail={"slug": server.slug, "visibility": server.visibility,
                                        "publisher": str(pid), "first_party": first_party})
                else:
                    if server.publisher_id != pid:
                        raise PermissionDenied(f"server {server.name!r} belongs to another publisher")
                    if visibility is not None and (visibility.value != server.visibility
                                                   or owner_tenant != server.owner_tenant_id):
                        raise Conflict(f"server {server.name!r} is {server.visibility}; its visibility is set by "
                                       "its first version")
                exists = await session.scalar(select(VersionRow.id).where(
                    VersionRow.server_id == server.id, VersionRow.version == version))
                if exists is not None:
                    raise AlreadyExists(f"version {version!r} of {server.name!r} was already submitted; versions "
                                        "are immutable, submit a new version number")
                row = VersionRow(server_id=server.id, version=version, server_json_text=text,
                                 server_json=dict(document), sha256=digest, state=VersionState.submitted.value,
                                 submitted_by=actor, created_at=now, updated_at=now)
                session.add(row)
                await session.flush()
                self._event(session, "version", row.id, actor, to_state=VersionState.submitted.value,
                            reason="submitted", tenant=server.owner_tenant_id,
                            detail={"server": server.name, "version": version, "sha256": digest})
                return _version(row, server)
        except IntegrityError as exc:
            raise AlreadyExists(f"version {version!r} of {name!r} (or its server) was created concurrently: "
                                f"{type(exc.orig).__name__}") from None

    async def _version_rows(self, session: AsyncSession, version_id: uuid.UUID | str,
                            ) -> tuple[VersionRow, ServerRow]:
        row = await session.get(VersionRow, _uuid(version_id, "version"))
        if row is None:
            raise NotFound(f"no version {version_id}")
        server = await session.get(ServerRow, row.server_id)
        assert server is not None
        return row, server

    async def get_version(self, version_id: uuid.UUID | str) -> Version:
        async with self._sessions() as session:
            row, server = await self._version_rows(session, version_id)
            return _version(row, server)

    async def find_version(self, server: str, version: str) -> Version | None:
        """Version ``version`` of the server named (or with the gateway name) ``server``; None if there is none."""
        async with self._sessions() as session:
            srow = await self._find_server_row(session, server)
            if srow is None:
                return None
            row = await session.scalar(select(VersionRow).where(VersionRow.server_id == srow.id,
                                                                VersionRow.version == version))
            return _version(row, srow) if row is not None else None

    async def list_versions(self, server_id: uuid.UUID | str | None = None, *,
                            states: Collection[VersionState | str] | None = None) -> list[Version]:
        """Versions (of one server, or all), optionally in ``states``, oldest first."""
        query = (select(VersionRow, ServerRow).join(ServerRow, ServerRow.id == VersionRow.server_id)
                 .order_by(VersionRow.created_at, VersionRow.version))
        if server_id is not None:
            query = query.where(VersionRow.server_id == _uuid(server_id, "server"))
        if states is not None:
            query = query.where(VersionRow.state.in_([VersionState(s).value for s in states]))
        async with self._sessions() as session:
            return [_version(v, s) for v, s in (await session.execute(query)).all()]

    async def review_queue(self) -> list[Version]:
        """Versions waiting for a platform admin (``in_review``), oldest first."""
        return await self.list_versions(states=[VersionState.in_review])

    async def _move_version(self, session: AsyncSession, row: VersionRow, server: ServerRow,
                            to_state: VersionState, actor: str, reason: str | None,
                            detail: Mapping[str, Any] | None = None) -> None:
        """Compare-and-set ``row`` from its current state to ``to_state``; an event in the same transaction."""
        subject = f"version {row.version!r} of {server.name!r}"
        source = row.state
        check_version_transition(subject, source, to_state)
        now = self._now()
        values: dict[str, Any] = {"state": to_state.value, "updated_at": now}
        if to_state == VersionState.approved:
            values["approved_at"] = now
        result = await session.execute(
            update(VersionRow).where(VersionRow.id == row.id, VersionRow.state == source).values(**values)
            .execution_options(synchronize_session=False))
        if result.rowcount != 1:
            current = await session.scalar(select(VersionRow.state).where(VersionRow.id == row.id))
            raise IllegalTransition("version", subject, source, to_state,
                                    detail=f"another transaction moved it to {current!r} first")
        await session.refresh(row)
        self._event(session, "version", row.id, actor, from_state=source, to_state=to_state.value, reason=reason,
                    tenant=server.owner_tenant_id, detail={"server": server.name, "version": row.version,
                                                           **(detail or {})})

    async def transition_version(self, version_id: uuid.UUID | str, to_state: VersionState | str, *, actor: str,
                                 reason: str | None, detail: Mapping[str, Any] | None = None) -> Version:
        """Move a version along :data:`~kontor.registry.lifecycle.VERSION_TRANSITIONS` (with its event)."""
        actor = normalise_actor(actor)
        target = VersionState(to_state)
        async with self._sessions.begin() as session:
            row, server = await self._version_rows(session, version_id)
            await self._move_version(session, row, server, target, actor, reason, detail)
            return _version(row, server)

    # reviews

    async def start_review(self, version_id: uuid.UUID | str, *, actor: str,
                           reason: str = "automated review") -> tuple[Version, ReviewRun]:
        """Move the version to ``checking`` (from ``submitted`` or a re-run state) and open a review run."""
        actor = normalise_actor(actor)
        async with self._sessions.begin() as session:
            row, server = await self._version_rows(session, version_id)
            state = VersionState(row.state)
            if state != VersionState.submitted and state not in RERUN_FROM:
                raise IllegalTransition("version", f"version {row.version!r} of {server.name!r}", state,
                                        VersionState.checking,
                                        detail=f"the review runs on submission and again only from "
                                               f"{', '.join(sorted(s.value for s in RERUN_FROM))}")
            if state != VersionState.checking:
                await self._move_version(session, row, server, VersionState.checking, actor, reason)
            number = (await session.scalar(select(func.max(ReviewRunRow.number)).where(
                ReviewRunRow.version_id == row.id)) or 0) + 1
            run = ReviewRunRow(version_id=row.id, number=number, started_by=actor, started_at=self._now(), report={})
            session.add(run)
            await session.flush()
            return _version(row, server), _run(run)

    async def finish_review(self, run_id: uuid.UUID | str, record: ReviewRecord, *,
                            actor: str) -> tuple[Version, ReviewRun]:
        """Store a run's outcome and snapshot, and move the version to ``in_review`` or ``checks_failed``.

        Only the latest run of a version still in ``checking`` moves it; an older run's outcome is
        stored as evidence only.
        """
        actor = normalise_actor(actor)
        report, scrubbed = _scrub_nul(dict(record.report))
        passed = record.passed
        notes: list[str] = []
        tools: list[tuple[str, dict[str, Any], str]] = []
        seen: set[str] = set()
        for tool in record.tools:
            name = tool.get("name")
            if not isinstance(name, str) or not name or name in seen:
                passed = False
                notes.append(f"snapshot tool without a unique name: {str(name)[:80]!r}")
                continue
            seen.add(name)
            digest = definition_hash(tool)
            stored, changed = _scrub_nul(tool)
            if changed or len(name) > 255:
                passed = False
                notes.append(f"tool {name[:80]!r} cannot be stored as served (NUL characters or a name over 255 "
                             "characters)")
                if len(name) > 255:
                    continue
            tools.append((stored["name"], stored, digest))
        if scrubbed:
            notes.append("NUL characters in the report were replaced by U+FFFD")
        if notes:
            report = {**report, "store_notes": notes}
        instructions, instr_changed = _scrub_nul(record.instructions)
        if instr_changed:
            passed = False
        instr_hash = None
        if record.instructions is not None or record.tools:
            instr_hash = instructions_hash(record.instructions)
        error = (record.error or None) and str(record.error).replace("\x00", "\ufffd")[:MAX_REASON_LENGTH]
        async with self._sessions.begin() as session:
            run = await session.get(ReviewRunRow, _uuid(run_id, "review run"))
            if run is None:
                raise NotFound(f"no review run {run_id}")
            if run.finished_at is not None:
                raise Conflict(f"review run {run.number} has already finished")
            row, server = await self._version_rows(session, run.version_id)
            run.finished_at = self._now()
            run.passed = passed
            run.risk = record.risk[:16] if record.risk else None
            run.report = report
            run.instructions = instructions
            run.instructions_hash = instr_hash
            run.error = error
            for position, (name, definition, digest) in enumerate(tools):
                session.add(ToolSnapshotRow(review_run_id=run.id, version_id=row.id, position=position,
                                            tool_name=name, definition=definition, definition_hash=digest,
                                            instructions_hash=instr_hash))
            latest = await session.scalar(select(func.max(ReviewRunRow.number)).where(
                ReviewRunRow.version_id == row.id))
            if row.state == VersionState.checking.value and latest == run.number:
                target = VersionState.in_review if passed else VersionState.checks_failed
                why = "automated checks passed" if passed else "automated checks failed"
                if error:
                    why = f"the review could not run: {error}"
                await self._move_version(session, row, server, target, actor, why,
                                         {"review_run": run.number, "risk": run.risk, "tools": len(tools)})
            await session.flush()
            return _version(row, server), _run(run)

    async def list_review_runs(self, version_id: uuid.UUID | str) -> list[ReviewRun]:
        async with self._sessions() as session:
            rows = (await session.scalars(select(ReviewRunRow).where(
                ReviewRunRow.version_id == _uuid(version_id, "version")).order_by(ReviewRunRow.number))).all()
        return [_run(r) for r in rows]

    async def latest_review_run(self, version_id: uuid.UUID | str, *, finished: bool = True) -> ReviewRun | None:
        runs = [r for r in await self.list_review_runs(version_id) if r.finished_at is not None or not finished]
        return runs[-1] if runs else None

    async def snapshot(self, run_id: uuid.UUID | str) -> list[ToolSnapshot]:
        """The tools recorded by one review run, in the order the server listed them."""
        async with self._sessions() as session:
            rows = (await session.scalars(select(ToolSnapshotRow).where(
                ToolSnapshotRow.review_run_id == _uuid(run_id, "review run")).order_by(ToolSnapshotRow.position))).all()
        return [_snapshot(r) for r in rows]

    async def _approved_run_id(self, session: AsyncSession, version_id: uuid.UUID) -> uuid.UUID | None:
        return await session.scalar(
            select(VersionDecisionRow.review_run_id).where(VersionDecisionRow.version_id == version_id,
                                                           VersionDecisionRow.decision == Decision.approve.value)
            .order_by(VersionDecisionRow.decided_at.desc()).limit(1))

    async def approved_snapshot(self, version_id: uuid.UUID | str) -> list[ToolSnapshot]:
        """The tools the platform admin approved for this version (the snapshot of the run the approval names).

        Raises :class:`NotFound` for a version that was never approved.
        """
        vid = _uuid(version_id, "version")
        async with self._sessions() as session:
            run_id = await self._approved_run_id(session, vid)
            if run_id is None:
                raise NotFound(f"version {version_id} has no approved snapshot")
            rows = (await session.scalars(select(ToolSnapshotRow).where(
                ToolSnapshotRow.review_run_id == run_id).order_by(ToolSnapshotRow.position))).all()
        return [_snapshot(r) for r in rows]

    async def approved_tool_names(self, *, exclude_server: str | None = None) -> dict[str, list[str]]:
        """Server name → tool names of its latest approved version (for the review's shadowing check)."""
        out: dict[str, list[str]] = {}
        for entry in await self.catalog(None, include_private=True):
            if exclude_server is not None and entry.server.name.lower() == exclude_server.lower():
                continue
            out[entry.server.name] = [t.tool_name for t in await self.approved_snapshot(entry.latest.id)]
        return out

    # decisions

    async def decide(self, version_id: uuid.UUID | str, decision: Decision | str, *, actor: str,
                     reason: str) -> Version:
        """A person's decision (approve, reject, request changes, deprecate, revoke) with its reason.

        One transaction: the compare-and-set transition, the decision row, the event — and for
        ``revoke`` the tenants' installations of this version are disabled (events included).
        A publisher (the publisher's owner, or whoever submitted the version) can never make a
        review decision on it (:class:`PermissionDenied`).
        """
        actor = normalise_actor(actor)
        reason = normalise_reason(reason)  # type: ignore[assignment]
        try:
            decision = Decision(decision)
        except ValueError:
            raise InvalidValue(f"invalid decision {decision!r}: use one of "
                               f"{', '.join(d.value for d in Decision)}") from None
        target = DECISIONS[decision]
        async with self._sessions.begin() as session:
            row, server = await self._version_rows(session, version_id)
            publisher = await session.get(PublisherRow, server.publisher_id)
            if decision in REVIEW_DECISIONS and (_same_actor(actor, publisher.owner if publisher else None)
                                                 or _same_actor(actor, row.submitted_by)):
                raise PermissionDenied(f"{actor} published version {row.version!r} of {server.name!r} and cannot "
                                       f"{decision.value.replace('_', ' ')} it; another platform admin must")
            run_id = None
            if decision == Decision.approve:
                run_id = await session.scalar(select(ReviewRunRow.id).where(
                    ReviewRunRow.version_id == row.id, ReviewRunRow.finished_at.is_not(None))
                    .order_by(ReviewRunRow.number.desc()).limit(1))
            await self._move_version(session, row, server, target, actor, reason, {"decision": decision.value})
            session.add(VersionDecisionRow(version_id=row.id, review_run_id=run_id, approver=actor,
                                           decision=decision.value, reason=reason, decided_at=self._now()))
            if decision == Decision.revoke:
                await self._disable_installations_of(session, server, row, actor, reason)
            await session.flush()
            return _version(row, server)

    async def _disable_installations_of(self, session: AsyncSession, server: ServerRow, version: VersionRow,
                                        actor: str, reason: str) -> None:
        rows = (await session.scalars(select(InstallationRow).where(
            InstallationRow.server == server.slug, InstallationRow.version == version.version,
            InstallationRow.state.in_([s.value for s in SERVED_STATES])))).all()
        for inst in rows:
            if (inst.config or {}).get(CONFIG_KEY, {}).get("version_id") not in (None, str(version.id)):
                continue
            await self._move_installation(session, inst, InstallationState.disabled, actor,
                                          f"version {version.version} revoked: {reason}")

    async def list_decisions(self, version_id: uuid.UUID | str) -> list[VersionDecision]:
        async with self._sessions() as session:
            rows = (await session.scalars(select(VersionDecisionRow).where(
                VersionDecisionRow.version_id == _uuid(version_id, "version"))
                .order_by(VersionDecisionRow.decided_at))).all()
        return [_decision(r) for r in rows]

    # catalog

    @staticmethod
    def _visible(tenant: str | None, include_private: bool = False) -> Any:
        if include_private:
            return true()
        if tenant is None:
            return ServerRow.visibility == Visibility.public.value
        return or_(ServerRow.visibility == Visibility.public.value, ServerRow.owner_tenant_id == tenant)

    async def catalog(self, tenant: str | None, *, include_private: bool = False) -> list[CatalogEntry]:
        """Servers with an approved version that ``tenant`` may see: public ones and its own private ones.

        ``tenant=None`` (an anonymous reader) sees approved public servers only. Each entry has
        the latest approved version (:func:`latest_version`) and the tenant's installation, if any.
        """
        query = (select(VersionRow, ServerRow).join(ServerRow, ServerRow.id == VersionRow.server_id)
                 .where(VersionRow.state == VersionState.approved.value, self._visible(tenant, include_private))
                 .order_by(ServerRow.name_key))
        async with self._sessions() as session:
            if tenant is not None:
                await self._tenant(session, tenant)
            pairs = (await session.execute(query)).all()
            installs: dict[str, InstallationRow] = {}
            if tenant is not None:
                installs = {r.server: r for r in (await session.scalars(select(InstallationRow).where(
                    InstallationRow.tenant_id == tenant))).all()}
            by_server: dict[uuid.UUID, tuple[ServerRow, list[VersionRow]]] = {}
            for version, server in pairs:
                by_server.setdefault(server.id, (server, []))[1].append(version)
            entries = []
            for server, versions in by_server.values():
                latest = latest_version(versions)
                inst = installs.get(server.slug)
                entries.append(CatalogEntry(_server(server), _version(latest, server),
                                            tuple(v.version for v in sorted(versions, key=_version_key)),
                                            _installation(inst) if inst is not None else None))
        return entries

    async def visible_server(self, tenant: str | None, name: str) -> Server:
        """The server ``name`` (or gateway name) if ``tenant`` may see it; :class:`NotFound` otherwise.

        A private server of another tenant is reported as not found, never as forbidden, so its
        existence is not revealed.
        """
        async with self._sessions() as session:
            row = await self._find_server_row(session, name)
        if row is None or (row.visibility == Visibility.private.value and row.owner_tenant_id != tenant):
            raise NotFound(f"no server {name!r}")
        return _server(row)

    async def latest_approved(self, server_id: uuid.UUID | str) -> Version | None:
        versions = await self.list_versions(server_id, states=[VersionState.approved])
        if not versions:
            return None
        by_id = {v.id: v for v in versions}
        async with self._sessions() as session:
            rows = (await session.scalars(select(VersionRow).where(VersionRow.id.in_(list(by_id))))).all()
        return by_id[latest_version(rows).id]

    # installations

    async def get_installation(self, tenant: str, slug: str) -> Installation | None:
        async with self._sessions() as session:
            await self._tenant(session, tenant)
            row = await self._installation_row(session, tenant, slug)
        return _installation(row) if row is not None else None

    async def list_installations(self, tenant: str) -> list[Installation]:
        async with self._sessions() as session:
            await self._tenant(session, tenant)
            rows = (await session.scalars(select(InstallationRow).where(InstallationRow.tenant_id == tenant)
                                          .order_by(InstallationRow.server))).all()
        return [_installation(r) for r in rows]

    async def _installation_row(self, session: AsyncSession, tenant: str, slug: str) -> InstallationRow | None:
        return await session.scalar(select(InstallationRow).where(InstallationRow.tenant_id == tenant,
                                                                  InstallationRow.server == slug))

    async def _move_installation(self, session: AsyncSession, row: InstallationRow, to_state: InstallationState,
                                 actor: str, reason: str | None, detail: Mapping[str, Any] | None = None,
                                 values: Mapping[str, Any] | None = None) -> None:
        subject = f"installation of {row.server!r} for tenant {row.tenant_id!r}"
        source = row.state
        check_installation_transition(subject, source, to_state)
        result = await session.execute(
            update(InstallationRow).where(InstallationRow.id == row.id, InstallationRow.state == source)
            .values(state=to_state.value, updated_at=self._now(), **(values or {}))
            .execution_options(synchronize_session=False))
        if result.rowcount != 1:
            current = await session.scalar(select(InstallationRow.state).where(InstallationRow.id == row.id))
            raise IllegalTransition("installation", subject, source, to_state,
                                    detail=f"another transaction moved it to {current!r} first")
        await session.refresh(row)
        self._event(session, "installation", row.id, actor, from_state=source, to_state=to_state.value,
                    reason=reason, tenant=row.tenant_id, detail={"server": row.server, "version": row.version,
                                                                 **(detail or {})})

    async def _check_names(self, session: AsyncSession, tenant: str, slug: str, tools: Iterable[str]) -> None:
        existing = await session.execute(
            select(ToolPinRow.server, ToolPinRow.tool)
            .join(InstallationRow, (InstallationRow.tenant_id == ToolPinRow.tenant_id)
                  & (InstallationRow.server == ToolPinRow.server))
            .where(ToolPinRow.tenant_id == tenant, ToolPinRow.server != slug,
                   InstallationRow.state.in_([s.value for s in SERVED_STATES])))
        served = {f"{s}{SEPARATOR}{t}": f"server {s!r}" for s, t in existing.all()}
        servable = []
        for name in tools:
            try:
                namespaced(slug, name)
            except NamingError:
                continue  # the gateway leaves an unservable name out by itself
            servable.append(name)
        collisions = check_collisions(served, slug, servable)
        if collisions:
            raise NameCollision(collisions)

    async def _replace_pins(self, session: AsyncSession, tenant: str, slug: str,
                            tools: Sequence[Mapping[str, Any]], actor: str, detail: Mapping[str, Any]) -> None:
        """Make the pins of ``slug`` exactly ``tools`` (approved definitions); other pins of it are removed."""
        definitions = pinned_definitions(tools)
        now = self._now()
        pins = {r.tool: r for r in (await session.scalars(select(ToolPinRow).where(
            ToolPinRow.tenant_id == tenant, ToolPinRow.server == slug))).all()}
        for name, pin in pins.items():
            if name not in definitions:
                await session.delete(pin)
        pinned = {}
        for name, definition in definitions.items():
            if len(name) > MAX_TOOL_NAME_LENGTH or contains_nul(definition):
                continue  # not storable as a pin: the gateway withholds it (check_tools)
            pin = pins.get(name)
            if pin is None:
                pin = ToolPinRow(tenant_id=tenant, server=slug, tool=name)
                session.add(pin)
            pin.definition = definition
            pin.definition_hash = definition_hash(definition)
            pin.approved_by = actor
            pin.approved_at = now
            pin.state = PinState.approved.value
            pin.live_hash = pin.live_definition = pin.reason = None
            pin.updated_at = now
            pinned[name] = pin.definition_hash
        session.add(EventRow(time=now, tenant_id=tenant, actor=actor, kind="tools_pinned", subject=slug,
                             detail={"tools": pinned, "source": "registry", **detail}))

    async def write_installation(self, tenant: str, server: Server, version: Version, *, actor: str,
                                 reason: str, path: Sequence[InstallationState], upstream_url: str,
                                 granted_scopes: Sequence[str], config: Mapping[str, Any],
                                 tools: Sequence[Mapping[str, Any]], detail: Mapping[str, Any] | None = None,
                                 allowed_from: Collection[InstallationState | None] | None = None,
                                 expect_version: str | None = None) -> Installation:
        """Create or update the tenant's installation of ``server`` at ``version``, pinning ``tools`` (one transaction).

        ``path``: the states to move through, each checked against the installation table and
        written as an event (empty: the state stays, e.g. an upgrade of an enabled installation).
        ``allowed_from``: states the installation must be in now (None: no installation).
        ``expect_version``: the installed version the caller saw (an upgrade refuses when another
        upgrade got there first). Name collisions with the tenant's other served servers raise
        :class:`~kontor.gateway.naming.NameCollision` and nothing is stored.
        """
        slug = server.slug
        if len(version.version) > MAX_VERSION_LENGTH:
            raise InvalidValue(f"version strings longer than {MAX_VERSION_LENGTH} characters cannot be installed")
        try:
            async with self._sessions.begin() as session:
                await self._tenant(session, tenant)
                row = await self._installation_row(session, tenant, slug)
                current = InstallationState(row.state) if row is not None else None
                if allowed_from is not None and current not in allowed_from:
                    raise IllegalTransition("installation", f"installation of {slug!r} for tenant {tenant!r}",
                                            current, path[-1] if path else (current or InstallationState.requested),
                                            detail="not allowed from this state")
                if expect_version is not None and (row is None or row.version != expect_version):
                    raise Conflict(f"the installation of {slug!r} is at version "
                                   f"{row.version if row is not None else None!r}, not {expect_version!r}; "
                                   "look at the difference again")
                final = path[-1] if path else current
                if final in SERVED_STATES:
                    await self._check_names(session, tenant, slug, pinned_definitions(tools))
                now = self._now()
                values = {"version": version.version, "upstream_url": upstream_url,
                          "granted_scopes": sorted(set(granted_scopes)), "config": dict(config)}
                if row is None:
                    if not path:
                        raise InvalidValue("a new installation needs a path of states")
                    check_installation_transition(f"installation of {slug!r} for tenant {tenant!r}", None,
                                                  path[0])
                    row = InstallationRow(tenant_id=tenant, server=slug, state=path[0].value, created_at=now,
                                          updated_at=now, **values)
                    session.add(row)
                    await session.flush()
                    self._event(session, "installation", row.id, actor, to_state=path[0].value, reason=reason,
                                tenant=tenant, detail={"server": slug, "version": version.version,
                                                       **(detail or {})})
                    steps = list(path[1:])
                else:
                    steps = list(path)
                    if not steps:  # no state change: a compare-and-set on the state still guards the write
                        result = await session.execute(
                            update(InstallationRow).where(InstallationRow.id == row.id,
                                                          InstallationRow.state == row.state)
                            .values(updated_at=now, **values).execution_options(synchronize_session=False))
                        if result.rowcount != 1:
                            raise Conflict(f"the installation of {slug!r} changed concurrently; try again")
                        await session.refresh(row)
                        self._event(session, "installation", row.id, actor, from_state=row.state,
                                    to_state=row.state, reason=reason, tenant=tenant,
                                    detail={"server": slug, "version": version.version, **(detail or {})})
                for i, step in enumerate(steps):
                    await self._move_installation(session, row, step, actor, reason,
                                                  {"version": version.version, **(detail or {})},
                                                  values if i == 0 else None)
                await self._replace_pins(session, tenant, slug, tools, actor,
                                         {"version": version.version, "version_id": str(version.id)})
                await session.flush()
                return _installation(row)
        except IntegrityError:
            raise Conflict(f"the installation of {slug!r} for tenant {tenant!r} changed concurrently; "
                           "try again") from None

    async def transition_installation(self, tenant: str, slug: str, to_state: InstallationState, *, actor: str,
                                      reason: str | None, repin: Sequence[Mapping[str, Any]] | None = None,
                                      delete_pins: bool = False, delete_secrets_of: uuid.UUID | None = None,
                                      detail: Mapping[str, Any] | None = None) -> Installation:
        """Move an installation along the table; optionally re-pin, drop pins, delete secrets (one transaction)."""
        actor = normalise_actor(actor)
        async with self._sessions.begin() as session:
            await self._tenant(session, tenant)
            row = await self._installation_row(session, tenant, slug)
            if row is None:
                raise NotFound(f"server {slug!r} is not installed for tenant {tenant!r}")
            if to_state in SERVED_STATES:
                names = list(pinned_definitions(repin)) if repin is not None else list((await session.scalars(
                    select(ToolPinRow.tool).where(ToolPinRow.tenant_id == tenant, ToolPinRow.server == slug))).all())
                await self._check_names(session, tenant, slug, names)
            await self._move_installation(session, row, to_state, actor, reason, detail)
            if repin is not None:
                await self._replace_pins(session, tenant, slug, repin, actor, {"version": row.version})
            if delete_pins:
                await session.execute(delete(ToolPinRow).where(ToolPinRow.tenant_id == tenant,
                                                               ToolPinRow.server == slug))
            if delete_secrets_of is not None:
                names = list((await session.scalars(select(SecretRow.name).where(
                    SecretRow.tenant_id == tenant, SecretRow.server_id == delete_secrets_of))).all())
                await session.execute(delete(SecretRow).where(SecretRow.tenant_id == tenant,
                                                              SecretRow.server_id == delete_secrets_of))
                if names:
                    self._event(session, "secret", f"{slug}", actor, to_state="deleted", reason=reason,
                                tenant=tenant, detail={"names": sorted(names)})
            await session.flush()
            return _installation(row)

    async def record_installation_event(self, tenant: str, slug: str, *, actor: str, reason: str,
                                        detail: Mapping[str, Any]) -> None:
        """An event about an installation without a state change (e.g. more drifted tools while in needs_reapproval)."""
        async with self._sessions.begin() as session:
            row = await self._installation_row(session, tenant, slug)
            if row is None:
                raise NotFound(f"server {slug!r} is not installed for tenant {tenant!r}")
            self._event(session, "installation", row.id, normalise_actor(actor), from_state=row.state,
                        to_state=row.state, reason=reason, tenant=tenant, detail={"server": slug, **detail})

    # secrets

    def _box(self) -> SecretBox:
        if self.secret_box is None:
            raise SecretsUnavailable("no secret key is configured for the registry; secrets cannot be stored")
        return self.secret_box

    async def set_secret(self, tenant: str, server_id: uuid.UUID, name: str, value: str, *, actor: str) -> SecretRef:
        """Store (or replace) a tenant's secret for a server, encrypted; the event names the secret, never its value."""
        if not isinstance(name, str) or not _SECRET_NAME.fullmatch(name) or len(name) > MAX_SECRET_NAME_LENGTH:
            raise InvalidValue(f"invalid secret name {name!r}: 1-128 letters, digits, '_', '.', '-'")
        if not isinstance(value, str) or not value or len(value) > 16384:
            raise InvalidValue("a secret value must be a non-empty string of at most 16384 characters")
        actor = normalise_actor(actor)
        box = self._box()
        token = box.encrypt(value, _secret_context(tenant, server_id, name))
        try:
            async with self._sessions.begin() as session:
                await self._tenant(session, tenant)
                if await session.get(ServerRow, server_id) is None:
                    raise NotFound(f"no server {server_id}")
                now = self._now()
                row = await session.scalar(select(SecretRow).where(
                    SecretRow.tenant_id == tenant, SecretRow.server_id == server_id, SecretRow.name == name))
                if row is None:
                    row = SecretRow(tenant_id=tenant, server_id=server_id, name=name, created_at=now)
                    session.add(row)
                row.ciphertext, row.key_id, row.updated_by, row.updated_at = token, box.key_id, actor, now
                await session.flush()
                self._event(session, "secret", f"{server_id}/{name}", actor, to_state="set", tenant=tenant,
                            detail={"name": name})
                return _secret_ref(row)
        except IntegrityError:
            raise Conflict(f"secret {name!r} was set concurrently; try again") from None

    async def list_secrets(self, tenant: str, server_id: uuid.UUID | None = None) -> list[SecretRef]:
        """The tenant's secrets (names and times, never values)."""
        query = select(SecretRow).where(SecretRow.tenant_id == tenant).order_by(SecretRow.server_id, SecretRow.name)
        if server_id is not None:
            query = query.where(SecretRow.server_id == server_id)
        async with self._sessions() as session:
            await self._tenant(session, tenant)
            return [_secret_ref(r) for r in (await session.scalars(query)).all()]

    async def secret_value(self, tenant: str, server_id: uuid.UUID, name: str) -> str:
        """Decrypt one secret (for the connection to the server); :class:`NotFound` if it is not set."""
        async with self._sessions() as session:
            row = await session.scalar(select(SecretRow).where(
                SecretRow.tenant_id == tenant, SecretRow.server_id == server_id, SecretRow.name == name))
        if row is None:
            raise NotFound(f"secret {name!r} is not set for tenant {tenant!r}")
        return self._box().decrypt(row.ciphertext, _secret_context(tenant, server_id, name))

    async def delete_secret(self, tenant: str, server_id: uuid.UUID, name: str, *, actor: str) -> bool:
        async with self._sessions.begin() as session:
            result = await session.execute(delete(SecretRow).where(
                SecretRow.tenant_id == tenant, SecretRow.server_id == server_id, SecretRow.name == name))
            if result.rowcount:
                self._event(session, "secret", f"{server_id}/{name}", normalise_actor(actor), to_state="deleted",
                            tenant=tenant, detail={"name": name})
            return bool(result.rowcount)


# --- version ordering -------------------------------------------------------------------------

_SEMVER = re.compile(r"v?(\d+)\.(\d+)\.(\d+)(?:-([0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?")


def _semver(text: str) -> tuple[Any, ...] | None:
    m = _SEMVER.fullmatch(text)
    if m is None:
        return None
    pre = m.group(4)
    pre_key: tuple[Any, ...] = (1,) if pre is None else (0, *((0, int(p)) if p.isdigit() else (1, p)
                                                              for p in pre.split(".")))
    return (int(m.group(1)), int(m.group(2)), int(m.group(3)), pre_key)


def _version_key(row: Any) -> tuple[Any, ...]:
    when = row.approved_at or row.created_at
    return (_semver(row.version) or (), when)


def latest_version(rows: Sequence[Any]) -> Any:
    """The latest of ``rows`` (with ``version``, ``approved_at``, ``created_at``): by semantic version when every
    one parses as one (as the official registry does), else by approval time."""
    if all(_semver(r.version) is not None for r in rows):
        return max(rows, key=lambda r: (_semver(r.version), r.approved_at or r.created_at))
    return max(rows, key=lambda r: (r.approved_at or r.created_at, r.version))
