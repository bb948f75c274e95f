"""The registry's tables, on the gateway's :data:`~kontor.gateway.db.Base` metadata.

Same rules as :mod:`kontor.gateway.db`: portable types only (``String``, ``Text``, ``Uuid``,
``JSON``/JSONB, timezone-aware UTC timestamps), deterministic constraint names (the metadata's
naming convention), no dialect-specific SQL. Every table name starts with ``registry_``.

Installations are *not* a registry table: the registry writes the gateway's ``installations``
and ``tool_pins`` rows (:class:`~kontor.gateway.db.InstallationRow`,
:class:`~kontor.gateway.db.ToolPinRow`), so the gateway serves from one table. An
installation made by the registry carries its registry facts in ``config["registry"]``
(server name, version id, the names of the secrets it uses); the version string is the
installation's ``version`` column.

A version's ``server.json`` is immutable once submitted: the verbatim text, the parsed document,
the SHA-256 of the submitted bytes and the version string are written once. The repository has no
way to change them and the ORM refuses a flush that would (:class:`ImmutableVersion`).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    Uuid,
    event,
    inspect,
)
from sqlalchemy.orm import Mapped, mapped_column

from kontor.gateway.db import MAX_EMAIL_LENGTH, Base, GatewayDBError, JSONType, UTCDateTime
from kontor.registry.lifecycle import Decision, ProofMethod, VersionState, Visibility

__all__ = [
    "MAX_REASON_LENGTH",
    "MAX_SERVER_NAME_LENGTH",
    "ImmutableVersion",
    "NamespaceRow",
    "PublisherRow",
    "RegistryEventRow",
    "ReviewRunRow",
    "SecretRow",
    "ServerRow",
    "ToolSnapshotRow",
    "VersionDecisionRow",
    "VersionRow",
    "registry_tables",
]

MAX_SERVER_NAME_LENGTH = 200  # the schema's limit for "name"
MAX_VERSION_STRING_LENGTH = 255  # the schema's limit for "version"
MAX_NAMESPACE_LENGTH = 200
MAX_REASON_LENGTH = 2000
MAX_SNAPSHOT_TOOL_NAME = 255
MAX_SECRET_NAME_LENGTH = 128

_ACTOR = MAX_EMAIL_LENGTH


def _in(column: str, values: Any) -> str:
    return f"{column} IN ({', '.join(repr(str(v.value)) for v in values)})"


def _id() -> Mapped[uuid.UUID]:
    return mapped_column(Uuid(), primary_key=True, default=uuid.uuid4)


class PublisherRow(Base):
    """Someone who publishes servers: a display name and the account that owns it."""

    __tablename__ = "registry_publishers"

    id: Mapped[uuid.UUID] = _id()
    display_name: Mapped[str] = mapped_column(String(200))
    #: The owning account: a normalised e-mail address (or another stable user id).
    owner: Mapped[str] = mapped_column(String(_ACTOR), index=True)
    #: The tenant the owner signs in through, if any (no foreign key: publishers outlive tenants).
    owner_tenant_id: Mapped[str | None] = mapped_column(String(63), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class NamespaceRow(Base):
    """A namespace a publisher proved (``com.example`` or ``com.example.*``), how and when."""

    __tablename__ = "registry_namespaces"
    __table_args__ = (
        UniqueConstraint("namespace"),
        CheckConstraint(_in("proof_method", ProofMethod), name="proof_method"),
    )

    id: Mapped[uuid.UUID] = _id()
    publisher_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("registry_publishers.id", ondelete="CASCADE"),
                                                    index=True)
    namespace: Mapped[str] = mapped_column(String(MAX_NAMESPACE_LENGTH))
    proof_method: Mapped[str] = mapped_column(String(8))
    proven_at: Mapped[datetime] = mapped_column(UTCDateTime())
    evidence: Mapped[dict[str, Any]] = mapped_column(JSONType, default=lambda: {})


class ServerRow(Base):
    """A server of the catalog: ``namespace/name``, its publisher, who may see it, its gateway name."""

    __tablename__ = "registry_servers"
    __table_args__ = (
        UniqueConstraint("name_key"),
        UniqueConstraint("slug"),
        CheckConstraint(_in("visibility", Visibility), name="visibility"),
        CheckConstraint("(visibility = 'public' AND owner_tenant_id IS NULL) OR "
                        "(visibility = 'private' AND owner_tenant_id IS NOT NULL)", name="private_owner"),
    )

    id: Mapped[uuid.UUID] = _id()
    name: Mapped[str] = mapped_column(String(MAX_SERVER_NAME_LENGTH))
    #: ``name`` lower-cased: names that differ only in letter case are one server.
    name_key: Mapped[str] = mapped_column(String(MAX_SERVER_NAME_LENGTH))
    #: The gateway's name of the server (``^[a-z][a-z0-9-]{0,23}$``): the installation's ``server``,
    #: the tool prefix ``<slug>__`` and the scopes ``<slug>:read``/``<slug>:write``.
    slug: Mapped[str] = mapped_column(String(24))
    publisher_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("registry_publishers.id"), index=True)
    visibility: Mapped[str] = mapped_column(String(8))
    owner_tenant_id: Mapped[str | None] = mapped_column(String(63), ForeignKey("tenants.id", ondelete="CASCADE"),
                                                        nullable=True, index=True)
    #: Kontor's own servers: installed for new tenants by default; their slugs are reserved.
    first_party: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class VersionRow(Base):
    """One submitted version: the ``server.json`` verbatim and parsed, its hash, and its lifecycle state."""

    __tablename__ = "registry_versions"
    __table_args__ = (
        UniqueConstraint("server_id", "version"),
        CheckConstraint(_in("state", VersionState), name="state"),
    )

    id: Mapped[uuid.UUID] = _id()
    server_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("registry_servers.id", ondelete="CASCADE"), index=True)
    version: Mapped[str] = mapped_column(String(MAX_VERSION_STRING_LENGTH))
    #: The submitted document exactly as sent (UTF-8 decoded; ``.encode()`` gives the submitted bytes).
    server_json_text: Mapped[str] = mapped_column(Text)
    server_json: Mapped[dict[str, Any]] = mapped_column(JSONType)
    #: SHA-256 (hex) of the submitted bytes.
    sha256: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(24), index=True)
    submitted_by: Mapped[str] = mapped_column(String(_ACTOR))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    approved_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class ReviewRunRow(Base):
    """One run of the automated review of a version: when, by whom, the outcome and the evidence report."""

    __tablename__ = "registry_review_runs"
    __table_args__ = (UniqueConstraint("version_id", "number"),)

    id: Mapped[uuid.UUID] = _id()
    version_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("registry_versions.id", ondelete="CASCADE"),
                                                  index=True)
    #: 1, 2, … per version, in the order the runs started.
    number: Mapped[int] = mapped_column(Integer)
    started_by: Mapped[str] = mapped_column(String(_ACTOR))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    passed: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    risk: Mapped[str | None] = mapped_column(String(16), nullable=True)
    report: Mapped[dict[str, Any]] = mapped_column(JSONType, default=lambda: {})
    #: The server's ``instructions`` from the live snapshot, and their hash.
    instructions: Mapped[str | None] = mapped_column(Text, nullable=True)
    instructions_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    #: Set when the review itself failed (an exception, not a finding).
    error: Mapped[str | None] = mapped_column(String(MAX_REASON_LENGTH), nullable=True)


class VersionDecisionRow(Base):
    """A person's decision on a version, with the reason; an approval names the review run it approved."""

    __tablename__ = "registry_decisions"
    __table_args__ = (CheckConstraint(_in("decision", Decision), name="decision"),)

    id: Mapped[uuid.UUID] = _id()
    version_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("registry_versions.id", ondelete="CASCADE"),
                                                  index=True)
    review_run_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("registry_review_runs.id", ondelete="SET NULL"), nullable=True)
    approver: Mapped[str] = mapped_column(String(_ACTOR))
    decision: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(String(MAX_REASON_LENGTH))
    decided_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ToolSnapshotRow(Base):
    """One tool of a review run's live snapshot: the full definition as served and its pin hash."""

    __tablename__ = "registry_tool_snapshots"
    __table_args__ = (UniqueConstraint("review_run_id", "tool_name"),)

    id: Mapped[uuid.UUID] = _id()
    review_run_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("registry_review_runs.id", ondelete="CASCADE"),
                                                     index=True)
    version_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("registry_versions.id", ondelete="CASCADE"),
                                                  index=True)
    position: Mapped[int] = mapped_column(Integer)
    tool_name: Mapped[str] = mapped_column(String(MAX_SNAPSHOT_TOOL_NAME))
    definition: Mapped[dict[str, Any]] = mapped_column(JSONType)
    #: :func:`kontor.gateway.pinning.definition_hash` of ``definition`` (what the gateway pins).
    definition_hash: Mapped[str] = mapped_column(String(64))
    #: The server's instructions hash at the time of the snapshot (the same for every tool of a run).
    instructions_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)


class RegistryEventRow(Base):
    """Every lifecycle transition and registry action: who, on what, from which state to which, and why."""

    __tablename__ = "registry_events"
    __table_args__ = (Index("ix_registry_events_subject", "subject_type", "subject_id"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"), primary_key=True,
                                    autoincrement=True)
    time: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    actor: Mapped[str | None] = mapped_column(String(_ACTOR), nullable=True)
    #: ``publisher`` | ``namespace`` | ``server`` | ``version`` | ``installation`` | ``secret``
    subject_type: Mapped[str] = mapped_column(String(32))
    subject_id: Mapped[str] = mapped_column(String(255))
    tenant_id: Mapped[str | None] = mapped_column(String(63), nullable=True, index=True)
    from_state: Mapped[str | None] = mapped_column(String(24), nullable=True)
    to_state: Mapped[str | None] = mapped_column(String(24), nullable=True)
    reason: Mapped[str | None] = mapped_column(String(MAX_REASON_LENGTH), nullable=True)
    detail: Mapped[dict[str, Any]] = mapped_column(JSONType, default=lambda: {})


class SecretRow(Base):
    """A tenant's secret for one server (an API key, a header value), encrypted (``store.SecretBox``).

    ``ciphertext`` is ``base64(nonce ‖ AES-256-GCM(value))`` with the tenant, server and name as
    associated data, so a ciphertext copied to another row does not decrypt. ``key_id`` names the
    key it was encrypted with (key rotation).
    """

    __tablename__ = "registry_secrets"
    __table_args__ = (UniqueConstraint("tenant_id", "server_id", "name"),)

    id: Mapped[uuid.UUID] = _id()
    tenant_id: Mapped[str] = mapped_column(String(63), ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    server_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("registry_servers.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(MAX_SECRET_NAME_LENGTH))
    ciphertext: Mapped[str] = mapped_column(Text)
    key_id: Mapped[str] = mapped_column(String(16))
    updated_by: Mapped[str | None] = mapped_column(String(_ACTOR), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())

    def __repr__(self) -> str:  # never the ciphertext
        return f"SecretRow(tenant_id={self.tenant_id!r}, server_id={self.server_id!r}, name={self.name!r})"


def registry_tables() -> list[str]:
    """Names of the registry's tables."""
    return sorted(t for t in Base.metadata.tables if t.startswith("registry_"))


# --- immutability of a submitted version ------------------------------------------------------


class ImmutableVersion(GatewayDBError):
    """An attempt to change a submitted ``server.json`` (versions are immutable: submit a new version)."""


_FROZEN = ("server_id", "version", "server_json_text", "server_json", "sha256", "submitted_by", "created_at")


@event.listens_for(VersionRow, "before_update")
def _refuse_changes(_mapper: Any, _connection: Any, target: VersionRow) -> None:
    state = inspect(target)
    changed = [name for name in _FROZEN if state.attrs[name].history.has_changes()]
    if changed:
        raise ImmutableVersion(f"version {target.version!r} is immutable once submitted "
                               f"(tried to change {', '.join(changed)}); submit a new version instead")
