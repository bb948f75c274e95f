"""Initial schema: the gateway's tables, the OAuth server's and the registry's.

Revision ID: 0001_initial
Revises:
Create Date: 2026-03-02

A database that ``GatewayDB.init`` (``metadata.create_all``) made before migrations existed is
adopted: only the missing tables are created (with their indexes), existing ones are left as
they are. Types are spelled out here (not imported from the models) so this revision stays what
it was when later revisions change the models.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001_initial"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: kontor.gateway.db.UTCDateTime stores through DateTime(timezone=True)
TIMESTAMP = sa.DateTime(timezone=True)
#: kontor.gateway.db.JSONType
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
#: BIGINT identity on PostgreSQL, INTEGER (the rowid) on SQLite
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

#: Every table of this revision, in creation order (referenced tables first).
TABLES = (
    "events",
    "oauth_revoked_jti",
    "registry_events",
    "registry_publishers",
    "tenants",
    "installations",
    "oauth_clients",
    "registry_namespaces",
    "registry_servers",
    "tool_pins",
    "users",
    "oauth_codes",
    "oauth_refresh_tokens",
    "oauth_sessions",
    "registry_secrets",
    "registry_versions",
    "registry_review_runs",
    "registry_decisions",
    "registry_tool_snapshots",
)


def upgrade() -> None:
    existing = set(sa.inspect(op.get_bind()).get_table_names())

    def create(name: str, *elements: sa.SchemaItem, indexes: Sequence[tuple[str, list[str]]] = ()) -> None:
        if name in existing:
            return  # made by metadata.create_all before migrations existed: adopted as it is
        op.create_table(name, *elements)
        for index, columns in indexes:
            op.create_index(op.f(index), name, columns, unique=False)

    create(
        "events",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("time", TIMESTAMP, nullable=False),
        sa.Column("tenant_id", sa.String(length=63), nullable=True),
        sa.Column("actor", sa.String(length=320), nullable=True),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("subject", sa.String(length=500), nullable=True),
        sa.Column("detail", JSON, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_events")),
        indexes=[("ix_events_kind", ["kind"]), ("ix_events_tenant_id", ["tenant_id"]), ("ix_events_time", ["time"])],
    )

    create(
        "oauth_revoked_jti",
        sa.Column("jti", sa.String(length=64), nullable=False),
        sa.Column("tenant_id", sa.String(length=63), nullable=True),
        sa.Column("revoked_at", TIMESTAMP, nullable=False),
        sa.Column("expires_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("jti", name=op.f("pk_oauth_revoked_jti")),
        indexes=[("ix_oauth_revoked_jti_expires_at", ["expires_at"])],
    )

    create(
        "registry_events",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("time", TIMESTAMP, nullable=False),
        sa.Column("actor", sa.String(length=320), nullable=True),
        sa.Column("subject_type", sa.String(length=32), nullable=False),
        sa.Column("subject_id", sa.String(length=255), nullable=False),
        sa.Column("tenant_id", sa.String(length=63), nullable=True),
        sa.Column("from_state", sa.String(length=24), nullable=True),
        sa.Column("to_state", sa.String(length=24), nullable=True),
        sa.Column("reason", sa.String(length=2000), nullable=True),
        sa.Column("detail", JSON, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_registry_events")),
        indexes=[
            ("ix_registry_events_subject", ["subject_type", "subject_id"]),
            ("ix_registry_events_tenant_id", ["tenant_id"]),
            ("ix_registry_events_time", ["time"]),
        ],
    )

    create(
        "registry_publishers",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("display_name", sa.String(length=200), nullable=False),
        sa.Column("owner", sa.String(length=320), nullable=False),
        sa.Column("owner_tenant_id", sa.String(length=63), nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_registry_publishers")),
        indexes=[("ix_registry_publishers_owner", ["owner"])],
    )

    create(
        "tenants",
        sa.Column("id", sa.String(length=63), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("allowed_issuers", JSON, nullable=False),
        sa.Column("settings", JSON, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tenants")),
    )

    create(
        "installations",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.String(length=63), nullable=False),
        sa.Column("server", sa.String(length=64), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=True),
        sa.Column("state", sa.String(length=24), nullable=False),
        sa.Column("granted_scopes", JSON, nullable=False),
        sa.Column("config", JSON, nullable=False),
        sa.Column("upstream_url", sa.String(length=2048), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.CheckConstraint(
            "state IN ('requested', 'enabled', 'disabled', 'uninstalled', 'needs_reapproval')",
            name=op.f("ck_installations_state"),
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_installations_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_installations")),
        sa.UniqueConstraint("tenant_id", "server", name=op.f("uq_installations_tenant_id_server")),
        indexes=[("ix_installations_tenant_id", ["tenant_id"])],
    )

    create(
        "oauth_clients",
        sa.Column("tenant_id", sa.String(length=63), nullable=False),
        sa.Column("client_id", sa.String(length=64), nullable=False),
        sa.Column("client_secret_hash", sa.String(length=64), nullable=True),
        sa.Column("client_name", sa.String(length=200), nullable=True),
        sa.Column("redirect_uris", JSON, nullable=False),
        sa.Column("grant_types", JSON, nullable=False),
        sa.Column("response_types", JSON, nullable=False),
        sa.Column("token_endpoint_auth_method", sa.String(length=32), nullable=False),
        sa.Column("scope", sa.String(length=4096), nullable=True),
        sa.Column("client_metadata", JSON, nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_oauth_clients_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("tenant_id", "client_id", name=op.f("pk_oauth_clients")),
    )

    create(
        "registry_namespaces",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("publisher_id", sa.Uuid(), nullable=False),
        sa.Column("namespace", sa.String(length=200), nullable=False),
        sa.Column("proof_method", sa.String(length=8), nullable=False),
        sa.Column("proven_at", TIMESTAMP, nullable=False),
        sa.Column("evidence", JSON, nullable=False),
        sa.CheckConstraint(
            "proof_method IN ('http', 'dns', 'admin')", name=op.f("ck_registry_namespaces_proof_method")
        ),
        sa.ForeignKeyConstraint(
            ["publisher_id"],
            ["registry_publishers.id"],
            name=op.f("fk_registry_namespaces_publisher_id_registry_publishers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_registry_namespaces")),
        sa.UniqueConstraint("namespace", name=op.f("uq_registry_namespaces_namespace")),
        indexes=[("ix_registry_namespaces_publisher_id", ["publisher_id"])],
    )

    create(
        "registry_servers",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("name_key", sa.String(length=200), nullable=False),
        sa.Column("slug", sa.String(length=24), nullable=False),
        sa.Column("publisher_id", sa.Uuid(), nullable=False),
        sa.Column("visibility", sa.String(length=8), nullable=False),
        sa.Column("owner_tenant_id", sa.String(length=63), nullable=True),
        sa.Column("first_party", sa.Boolean(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.CheckConstraint(
            "(visibility = 'public' AND owner_tenant_id IS NULL) OR "
            "(visibility = 'private' AND owner_tenant_id IS NOT NULL)",
            name=op.f("ck_registry_servers_private_owner"),
        ),
        sa.CheckConstraint("visibility IN ('public', 'private')", name=op.f("ck_registry_servers_visibility")),
        sa.ForeignKeyConstraint(
            ["owner_tenant_id"],
            ["tenants.id"],
            name=op.f("fk_registry_servers_owner_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["publisher_id"],
            ["registry_publishers.id"],
            name=op.f("fk_registry_servers_publisher_id_registry_publishers"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_registry_servers")),
        sa.UniqueConstraint("name_key", name=op.f("uq_registry_servers_name_key")),
        sa.UniqueConstraint("slug", name=op.f("uq_registry_servers_slug")),
        indexes=[
            ("ix_registry_servers_owner_tenant_id", ["owner_tenant_id"]),
            ("ix_registry_servers_publisher_id", ["publisher_id"]),
        ],
    )

    create(
        "tool_pins",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.String(length=63), nullable=False),
        sa.Column("server", sa.String(length=64), nullable=False),
        sa.Column("tool", sa.String(length=128), nullable=False),
        sa.Column("definition_hash", sa.String(length=64), nullable=True),
        sa.Column("definition", JSON, nullable=True),
        sa.Column("approved_by", sa.String(length=320), nullable=True),
        sa.Column("approved_at", TIMESTAMP, nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("live_hash", sa.String(length=64), nullable=True),
        sa.Column("live_definition", JSON, nullable=True),
        sa.Column("reason", sa.String(length=500), nullable=True),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.CheckConstraint("state IN ('approved', 'withheld')", name=op.f("ck_tool_pins_state")),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_tool_pins_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tool_pins")),
        sa.UniqueConstraint("tenant_id", "server", "tool", name=op.f("uq_tool_pins_tenant_id_server_tool")),
        indexes=[("ix_tool_pins_tenant_id", ["tenant_id"])],
    )

    create(
        "users",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.String(length=63), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("password_hash", sa.String(length=255), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("failed_logins", sa.Integer(), nullable=False),
        sa.Column("locked_until", TIMESTAMP, nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        sa.CheckConstraint("role IN ('admin', 'member')", name=op.f("ck_users_role")),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_users_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("tenant_id", "email", name=op.f("uq_users_tenant_id_email")),
        indexes=[("ix_users_tenant_id", ["tenant_id"])],
    )

    create(
        "oauth_codes",
        sa.Column("code_hash", sa.String(length=64), nullable=False),
        sa.Column("tenant_id", sa.String(length=63), nullable=False),
        sa.Column("client_id", sa.String(length=2048), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("redirect_uri", sa.String(length=2048), nullable=False),
        sa.Column("scope", JSON, nullable=False),
        sa.Column("resource", sa.String(length=2048), nullable=True),
        sa.Column("code_challenge", sa.String(length=128), nullable=False),
        sa.Column("code_challenge_method", sa.String(length=8), nullable=False),
        sa.Column("family_id", sa.Uuid(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("expires_at", TIMESTAMP, nullable=False),
        sa.Column("used", sa.Boolean(), nullable=False),
        sa.Column("family_revoked", sa.Boolean(), nullable=False),
        sa.Column("access_jti", sa.String(length=64), nullable=True),
        sa.Column("access_expires_at", TIMESTAMP, nullable=True),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_oauth_codes_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_oauth_codes_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("code_hash", name=op.f("pk_oauth_codes")),
        indexes=[
            ("ix_oauth_codes_expires_at", ["expires_at"]),
            ("ix_oauth_codes_family_id", ["family_id"]),
            ("ix_oauth_codes_tenant_id", ["tenant_id"]),
            ("ix_oauth_codes_user_id", ["user_id"]),
        ],
    )

    create(
        "oauth_refresh_tokens",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("family_id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.String(length=63), nullable=False),
        sa.Column("client_id", sa.String(length=2048), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("scope", JSON, nullable=False),
        sa.Column("resource", sa.String(length=2048), nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("expires_at", TIMESTAMP, nullable=False),
        sa.Column("used", sa.Boolean(), nullable=False),
        sa.Column("revoked", sa.Boolean(), nullable=False),
        sa.Column("access_jti", sa.String(length=64), nullable=True),
        sa.Column("access_expires_at", TIMESTAMP, nullable=True),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_oauth_refresh_tokens_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_oauth_refresh_tokens_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("token_hash", name=op.f("pk_oauth_refresh_tokens")),
        indexes=[
            ("ix_oauth_refresh_tokens_expires_at", ["expires_at"]),
            ("ix_oauth_refresh_tokens_family_id", ["family_id"]),
            ("ix_oauth_refresh_tokens_tenant_id", ["tenant_id"]),
            ("ix_oauth_refresh_tokens_user_id", ["user_id"]),
        ],
    )

    create(
        "oauth_sessions",
        sa.Column("id_hash", sa.String(length=64), nullable=False),
        sa.Column("tenant_id", sa.String(length=63), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=True),
        sa.Column("email", sa.String(length=320), nullable=True),
        sa.Column("csrf_token", sa.String(length=64), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("expires_at", TIMESTAMP, nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_oauth_sessions_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_oauth_sessions_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id_hash", name=op.f("pk_oauth_sessions")),
        indexes=[("ix_oauth_sessions_expires_at", ["expires_at"]), ("ix_oauth_sessions_tenant_id", ["tenant_id"])],
    )

    create(
        "registry_secrets",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.String(length=63), nullable=False),
        sa.Column("server_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("ciphertext", sa.Text(), nullable=False),
        sa.Column("key_id", sa.String(length=16), nullable=False),
        sa.Column("updated_by", sa.String(length=320), nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.ForeignKeyConstraint(
            ["server_id"],
            ["registry_servers.id"],
            name=op.f("fk_registry_secrets_server_id_registry_servers"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_registry_secrets_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_registry_secrets")),
        sa.UniqueConstraint(
            "tenant_id", "server_id", "name", name=op.f("uq_registry_secrets_tenant_id_server_id_name")
        ),
        indexes=[("ix_registry_secrets_server_id", ["server_id"]), ("ix_registry_secrets_tenant_id", ["tenant_id"])],
    )

    create(
        "registry_versions",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("server_id", sa.Uuid(), nullable=False),
        sa.Column("version", sa.String(length=255), nullable=False),
        sa.Column("server_json_text", sa.Text(), nullable=False),
        sa.Column("server_json", JSON, nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=24), nullable=False),
        sa.Column("submitted_by", sa.String(length=320), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.Column("approved_at", TIMESTAMP, nullable=True),
        sa.CheckConstraint(
            "state IN ('submitted', 'checking', 'checks_failed', 'in_review', 'changes_requested', 'rejected', "
            "'approved', 'deprecated', 'revoked')",
            name=op.f("ck_registry_versions_state"),
        ),
        sa.ForeignKeyConstraint(
            ["server_id"],
            ["registry_servers.id"],
            name=op.f("fk_registry_versions_server_id_registry_servers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_registry_versions")),
        sa.UniqueConstraint("server_id", "version", name=op.f("uq_registry_versions_server_id_version")),
        indexes=[("ix_registry_versions_server_id", ["server_id"]), ("ix_registry_versions_state", ["state"])],
    )

    create(
        "registry_review_runs",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("version_id", sa.Uuid(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("started_by", sa.String(length=320), nullable=False),
        sa.Column("started_at", TIMESTAMP, nullable=False),
        sa.Column("finished_at", TIMESTAMP, nullable=True),
        sa.Column("passed", sa.Boolean(), nullable=True),
        sa.Column("risk", sa.String(length=16), nullable=True),
        sa.Column("report", JSON, nullable=False),
        sa.Column("instructions", sa.Text(), nullable=True),
        sa.Column("instructions_hash", sa.String(length=64), nullable=True),
        sa.Column("error", sa.String(length=2000), nullable=True),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["registry_versions.id"],
            name=op.f("fk_registry_review_runs_version_id_registry_versions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_registry_review_runs")),
        sa.UniqueConstraint("version_id", "number", name=op.f("uq_registry_review_runs_version_id_number")),
        indexes=[("ix_registry_review_runs_version_id", ["version_id"])],
    )

    create(
        "registry_decisions",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("version_id", sa.Uuid(), nullable=False),
        sa.Column("review_run_id", sa.Uuid(), nullable=True),
        sa.Column("approver", sa.String(length=320), nullable=False),
        sa.Column("decision", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=2000), nullable=False),
        sa.Column("decided_at", TIMESTAMP, nullable=False),
        sa.CheckConstraint(
            "decision IN ('approve', 'reject', 'request_changes', 'revoke', 'deprecate')",
            name=op.f("ck_registry_decisions_decision"),
        ),
        sa.ForeignKeyConstraint(
            ["review_run_id"],
            ["registry_review_runs.id"],
            name=op.f("fk_registry_decisions_review_run_id_registry_review_runs"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["registry_versions.id"],
            name=op.f("fk_registry_decisions_version_id_registry_versions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_registry_decisions")),
        indexes=[("ix_registry_decisions_version_id", ["version_id"])],
    )

    create(
        "registry_tool_snapshots",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("review_run_id", sa.Uuid(), nullable=False),
        sa.Column("version_id", sa.Uuid(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("tool_name", sa.String(length=255), nullable=False),
        sa.Column("definition", JSON, nullable=False),
        sa.Column("definition_hash", sa.String(length=64), nullable=False),
        sa.Column("instructions_hash", sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(
            ["review_run_id"],
            ["registry_review_runs.id"],
            name=op.f("fk_registry_tool_snapshots_review_run_id_registry_review_runs"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["registry_versions.id"],
            name=op.f("fk_registry_tool_snapshots_version_id_registry_versions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_registry_tool_snapshots")),
        sa.UniqueConstraint(
            "review_run_id", "tool_name", name=op.f("uq_registry_tool_snapshots_review_run_id_tool_name")
        ),
        indexes=[
            ("ix_registry_tool_snapshots_review_run_id", ["review_run_id"]),
            ("ix_registry_tool_snapshots_version_id", ["version_id"]),
        ],
    )


def downgrade() -> None:
    existing = set(sa.inspect(op.get_bind()).get_table_names())
    for name in reversed(TABLES):
        if name in existing:
            op.drop_table(name)
