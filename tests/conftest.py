"""Shared fixtures: an isolated data root per test, paths to the team's reference data, and a
throwaway PostgreSQL server (:mod:`tests.postgres`) with a fresh database per test."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.postgres import PostgresCluster, PostgresNotFound, ServerBinaries, find_binaries

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# Never touch the real data root or the network from tests.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture
def data_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    root = tmp_path / "kontor-data"
    root.mkdir()
    monkeypatch.setenv("KONTOR_DATA_ROOT", str(root))
    from kontor.settings import get_limits, get_settings

    get_settings.cache_clear()
    get_limits.cache_clear()
    yield root
    get_settings.cache_clear()
    get_limits.cache_clear()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present beside the repository")
    return SHARED_DATA


# --- PostgreSQL -------------------------------------------------------------------------------

REQUIRE_PG = "KONTOR_REQUIRE_PG"


def postgres_binaries_or_skip() -> ServerBinaries:
    """The server programs; skips the test without them, unless ``KONTOR_REQUIRE_PG=1`` (CI) makes it fail."""
    try:
        return find_binaries()
    except PostgresNotFound as exc:
        problem = str(exc)
    if os.environ.get(REQUIRE_PG) == "1":
        pytest.fail(f"{REQUIRE_PG}=1 but PostgreSQL is not available: {problem}", pytrace=False)
    pytest.skip(f"PostgreSQL not available: {problem} (set {REQUIRE_PG}=1 to make this an error)")


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PostgresCluster]:
    """One throwaway PostgreSQL server for the whole session, started on first use."""
    binaries = postgres_binaries_or_skip()
    with PostgresCluster(binaries) as cluster:
        yield cluster


@pytest.fixture
def pg_url(pg_cluster: PostgresCluster) -> Iterator[str]:
    """``postgresql+asyncpg://`` URL of a fresh, empty database, dropped after the test."""
    with pg_cluster.database() as url:
        yield url
