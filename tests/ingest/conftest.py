"""Fixtures for the ingest tests: a real S3-compatible HTTP server (moto) on loopback."""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

STARTUP_SECONDS = 30.0
STOP_SECONDS = 10.0


@dataclass(frozen=True)
class S3Server:
    endpoint: str  # host:port, as minio wants it
    access_key: str = "kontor-test"
    secret_key: str = "kontor-test-secret"
    region: str = "us-east-1"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers(port: int) -> bool:
    """Whether an HTTP server answers on 127.0.0.1:port (http.client ignores proxy settings)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1.0)
    try:
        conn.request("GET", "/")
        conn.getresponse().read()
        return True
    except OSError:
        return False
    finally:
        conn.close()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=STOP_SECONDS)


def _start_moto(log_path: Path) -> tuple[subprocess.Popen[bytes], int]:
    env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
    for attempt in range(3):  # the free port may be taken between probing and binding
        port = _free_port()
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
            )
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline and proc.poll() is None:
            if _answers(port):
                return proc, port
            time.sleep(0.1)
        _stop(proc)
        if attempt == 2 or time.monotonic() >= deadline:
            break
    tail = log_path.read_text(errors="replace")[-2000:]
    raise RuntimeError(f"moto S3 server did not start within {STARTUP_SECONDS:.0f} s; its log:\n{tail}")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto's standalone S3 server as a subprocess on a free loopback port, for the session."""
    log_path = tmp_path_factory.mktemp("moto") / "moto.log"
    proc, port = _start_moto(log_path)
    try:
        yield S3Server(endpoint=f"127.0.0.1:{port}")
    finally:
        _stop(proc)
