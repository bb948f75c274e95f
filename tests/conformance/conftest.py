"""Fixtures for the conformance tests: the pinned suite's CLI and our fixture server as a real subprocess."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conformance import runner
from tests.servers_util import free_port, stop, wait_healthy

SERVER_SCRIPT = Path(__file__).resolve().parent / "everything_server.py"
STARTUP_SECONDS = 30.0


@contextmanager
def everything_server(log_dir: Path, *extra_args: str) -> Iterator[str]:
    """Start ``everything_server.py`` on a free loopback port; yield its MCP URL (``http://127.0.0.1:P/mcp``)."""
    port = free_port()
    log_path = log_dir / f"everything-server-{port}.log"
    with log_path.open("wb") as log:  # a file, not a pipe: a full pipe would stall the server
        proc = subprocess.Popen([sys.executable, str(SERVER_SCRIPT), "--port", str(port), *extra_args],
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        try:
            wait_healthy(f"http://127.0.0.1:{port}/health", proc, STARTUP_SECONDS)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"{exc}\n{log_path.read_text(errors='replace')[-3000:]}") from exc
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        stop(proc)


@pytest.fixture(scope="session")
def conformance_cli() -> Path:
    """The locally installed suite; skipped without Node.js, failed (not skipped) when only the install is missing."""
    try:
        return runner.cli_path()
    except runner.ConformanceNotInstalled as exc:
        if "node is not on PATH" in str(exc):
            pytest.skip(str(exc))
        pytest.fail(str(exc))


@pytest.fixture(scope="session")
def server_scenarios(conformance_cli: Path) -> list[str]:
    return runner.list_server_scenarios()


@pytest.fixture(scope="session")
def expected_failures() -> dict[str, str]:
    return runner.load_expected_failures()
