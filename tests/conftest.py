"""Shared fixtures: an isolated data root per test and paths to the team's reference data."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

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
