"""Fixtures for the provider-adapter tests: a fake model server per test, providers aimed at it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.host.fakes import FakeServer


@pytest.fixture
async def server() -> AsyncIterator[FakeServer]:
    async with FakeServer() as fake:
        yield fake
