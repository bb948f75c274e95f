"""Starting Kontor servers as real subprocesses for end-to-end tests (loopback only)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(data_root: Path, tenant: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KONTOR_")}
    env.update({"KONTOR_DATA_ROOT": str(data_root), "KONTOR_TENANT": tenant, "HF_HUB_OFFLINE": "1",
                "KONTOR_LOG_LEVEL": "WARNING"})
    env.update(extra)
    return env


def serve_command(name: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "kontor.cli", "serve", name, *args]


@contextmanager
def http_server(name: str, env: dict[str, str], timeout: float = 120.0) -> Iterator[tuple[str, subprocess.Popen]]:
    """Start ``kontor serve NAME --http`` on a free loopback port; yield (MCP URL, process)."""
    port = free_port()
    proc = subprocess.Popen(serve_command(name, "--http", f"127.0.0.1:{port}"), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_healthy(f"http://127.0.0.1:{port}/health", proc, timeout)
        yield f"http://127.0.0.1:{port}/mcp", proc
    finally:
        stop(proc)


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise RuntimeError(f"server exited with {proc.returncode}: {err[-2000:]}")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} not healthy after {timeout:.0f} s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
