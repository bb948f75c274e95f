"""Settings from the environment (``KONTOR_*``), with pydantic-settings."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def _default_data_root() -> Path:
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "share"
    return base / "kontor"


class Limits(BaseSettings):
    """Input limits for ingestion. Every one is explicit, configurable and tested."""

    model_config = SettingsConfigDict(env_prefix="KONTOR_LIMIT_", extra="ignore")

    max_file_bytes: int = 50 * 1024 * 1024
    max_upload_bytes: int = 10 * 1024 * 1024  # base64 uploads through MCP, decoded size
    max_archive_total_bytes: int = 200 * 1024 * 1024  # sum of uncompressed member sizes
    max_archive_ratio: float = 100.0  # uncompressed / compressed, per archive
    max_archive_members: int = 5000
    max_nesting_depth: int = 3  # zip in zip in e-mail ...
    max_pages: int = 2000
    max_rows: int = 200_000  # spreadsheet / CSV rows
    max_xml_bytes: int = 50 * 1024 * 1024
    per_file_seconds: float = 120.0
    parser_memory_mb: int = 2048  # address-space cap of a parser process
    parser_workers: int = 2
    max_batch_files: int = 100_000


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KONTOR_", extra="ignore")

    data_root: Path = Field(default_factory=_default_data_root)
    # Tenant of a server run standalone (stdio, or loopback HTTP without auth). Behind the gateway
    # (auth_jwks_url set) it is ignored: the tenant comes only from each request's verified token.
    tenant: str = "demo"

    # Behind the gateway: verify the gateway's internal tokens. auth_jwks_url is the gateway's JWKS
    # (e.g. http://127.0.0.1:8700/.well-known/jwks.json), auth_issuer the internal issuer
    # (http://127.0.0.1:8700/internal), auth_audience this server's canonical URL
    # (http://127.0.0.1:8711/mcp). Empty auth_jwks_url: standalone.
    auth_jwks_url: str = ""
    auth_issuer: str = ""
    auth_audience: str = ""

    # Object store for raw uploads.
    object_store: Literal["local", "s3"] = "local"
    s3_endpoint: str = "localhost:9000"
    s3_access_key: str = ""
    s3_secret_key: str = ""
    s3_bucket: str = "kontor"
    s3_secure: bool = False
    s3_region: str | None = None

    # Embeddings: a name resolved to bundled weights, or a local model directory. Never downloaded.
    embedding_model: str = "all-MiniLM-L6-v2"
    embedding_batch_size: int = 64
    embedding_device: str = "cpu"

    # Files per ingest batch: one parse round, one embedding call, one lakehouse commit. Larger
    # batches give the embedder more texts per call (less padding); a crash redoes at most one.
    ingest_batch_files: int = Field(default=128, ge=1, le=4096)

    # Chunking (characters).
    chunk_size: int = 1200
    chunk_overlap: int = 150

    # Where ingest_files may read from (besides object-store keys). Empty: only the tenant's raw/.
    # "{tenant}" in a root is the caller's tenant; behind the gateway only such roots count.
    import_roots: Annotated[list[Path], NoDecode] = Field(default_factory=list)

    # Lakehouse query limits.
    sql_max_rows: int = 1000
    sql_timeout_seconds: float = 10.0
    max_search_k: int = 100
    max_query_chars: int = 2000

    log_level: str = "INFO"

    @property
    def behind_gateway(self) -> bool:
        """True when this server verifies the gateway's tokens (``KONTOR_AUTH_JWKS_URL`` is set)."""
        return bool(self.auth_jwks_url.strip())

    @field_validator("data_root")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @field_validator("import_roots", mode="before")
    @classmethod
    def _split_roots(cls, value: object) -> object:
        if isinstance(value, str):  # "a:b:c" like PATH
            return [p for p in value.split(os.pathsep) if p.strip()]
        return value


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


@lru_cache(maxsize=1)
def get_limits() -> Limits:
    return Limits()
