"""Gateway settings (``KONTOR_GATEWAY_*``) and the URLs every part derives from them.

All public URLs (token audiences, issuers, metadata documents) are built from the configured
``public_origin``, never from request headers, so a forged ``Host`` cannot change them.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from kontor.settings import get_settings
from kontor.tenancy import validate_tenant


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KONTOR_GATEWAY_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8700
    #: Scheme, host and port clients use to reach the gateway; default http://<host>:<port>.
    public_origin: str = ""
    #: http (not https) allowed for the public origin and for outbound fetches to loopback.
    dev_mode: bool = True
    #: SQLAlchemy async URL; default SQLite under <data root>/gateway/.
    db_url: str = ""

    access_token_ttl_s: int = 600
    refresh_token_ttl_s: int = 30 * 24 * 3600
    auth_code_ttl_s: int = 60
    internal_token_ttl_s: int = 120

    discovery_timeout_s: float = 5.0
    tool_call_timeout_s: float = 120.0
    #: How long a cached aggregated tools/list stays fresh before upstreams are asked again.
    catalog_ttl_s: float = 30.0
    max_body_bytes: int = 4 * 1024 * 1024
    max_result_bytes: int = 8 * 1024 * 1024
    page_size: int = Field(default=100, ge=1, le=1000)

    rate_tenant_per_s: float = 200.0
    rate_tenant_burst: float = 400.0
    rate_user_per_s: float = 50.0
    rate_user_burst: float = 100.0
    #: Anonymous dynamic client registration (RFC 7591), per client address and per tenant.
    rate_register_per_s: float = 0.2
    rate_register_burst: float = 20.0
    rate_register_tenant_per_s: float = 2.0
    rate_register_tenant_burst: float = 200.0

    audit: bool = True
    #: NORMAL: an answered call's record survives a killed gateway (kill -9); FULL: every audit commit
    #: is also fsynced, so records survive a power cut too (about 0.4 ms more per commit).
    audit_synchronous: Literal["FULL", "NORMAL"] = "NORMAL"
    #: Serve ``tools/call`` on open sessions without the SDK transport's per-request machinery
    #: (:mod:`kontor.gateway.fastpath`); off: every request goes through the SDK (for comparison).
    fast_path: bool = True
    #: Platform admins of the registry (review, approve, reject, revoke): comma-separated ``tenant:email``
    #: entries, e.g. ``demo:admin@demo.local,ops:alice@example.com``. Empty by default; in dev mode the
    #: dev bootstrap also names its demo admin in ``<data_root>/gateway/registry/platform-admins.txt``.
    platform_admins: str = ""

    @field_validator("platform_admins")
    @classmethod
    def _platform_admins(cls, value: str) -> str:
        parse_platform_admins(value)  # refuse a malformed entry at start-up, naming it
        return value

    @property
    def platform_admin_entries(self) -> frozenset[tuple[str, str]]:
        """The configured platform admins as ``(tenant, email)`` pairs (email lower case)."""
        return parse_platform_admins(self.platform_admins)

    @field_validator("public_origin")
    @classmethod
    def _origin(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if not value:
            return value
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path or parts.query:
            raise ValueError("public_origin must be scheme://host[:port] without a path")
        return value

    @property
    def origin(self) -> str:
        if self.public_origin:
            return self.public_origin
        host = f"[{self.host}]" if ":" in self.host else self.host
        if host in ("0.0.0.0", "[::]"):
            host = "127.0.0.1"
        return f"http://{host}:{self.port}"

    @property
    def data_dir(self) -> Path:
        return Path(get_settings().data_root) / "gateway"

    @property
    def database_url(self) -> str:
        if self.db_url:
            return self.db_url
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return f"sqlite+aiosqlite:///{self.data_dir / 'gateway.db'}"

    # -- URLs ---------------------------------------------------------------------------

    def resource_uri(self, tenant: str) -> str:
        """Canonical URI of a tenant's MCP endpoint: the audience of that tenant's access tokens."""
        return f"{self.origin}/t/{validate_tenant(tenant)}/mcp"

    def issuer(self, tenant: str) -> str:
        """Issuer of the built-in authorization server for ``tenant`` (one issuer per tenant)."""
        return f"{self.origin}/t/{validate_tenant(tenant)}"

    def resource_metadata_url(self, tenant: str) -> str:
        """RFC 9728 path-inserted well-known URI of the tenant endpoint's metadata."""
        return f"{self.origin}/.well-known/oauth-protected-resource/t/{validate_tenant(tenant)}/mcp"

    def as_metadata_url(self, tenant: str) -> str:
        """RFC 8414 path-inserted well-known URI of the tenant issuer's metadata."""
        return f"{self.origin}/.well-known/oauth-authorization-server/t/{validate_tenant(tenant)}"

    @property
    def internal_issuer(self) -> str:
        """Issuer of the internal tokens the gateway mints for upstream servers."""
        return f"{self.origin}/internal"

    @property
    def internal_jwks_url(self) -> str:
        return f"{self.origin}/.well-known/jwks.json"


def parse_platform_admins(text: str) -> frozenset[tuple[str, str]]:
    """``"demo:admin@demo.local, ops:alice@example.com"`` (commas or new lines) → ``{(tenant, email), …}``.

    Blank entries and ``#`` comment lines are skipped; anything else must be ``tenant:email`` with a
    valid tenant id and an e-mail address, or ValueError names the entry.
    """
    entries: set[tuple[str, str]] = set()
    for raw in text.replace("\n", ",").split(","):
        entry = raw.strip()
        if not entry or entry.startswith("#"):
            continue
        tenant, sep, email = entry.partition(":")
        email = email.strip().lower()
        local, at, domain = email.partition("@")
        if not sep or not at or not local or not domain or any(ch.isspace() for ch in email):
            raise ValueError(f"platform admin {entry!r}: expected tenant:email, e.g. demo:admin@demo.local")
        try:
            validate_tenant(tenant.strip())
        except ValueError as exc:
            raise ValueError(f"platform admin {entry!r}: {exc}") from None
        entries.add((tenant.strip(), email))
    return frozenset(entries)


@lru_cache(maxsize=1)
def get_gateway_settings() -> GatewaySettings:
    return GatewaySettings()
