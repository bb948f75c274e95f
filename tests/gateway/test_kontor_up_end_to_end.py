"""``kontor up`` end to end: the real CLI, the real gateway and servers, a real client.

``kontor up`` runs as a subprocess on a fresh data root with every port chosen at random
(``--port``, ``--server-port NAME=PORT``). The test reads what it prints, checks ``/health``,
gets a token from the real ``kontor token`` and calls tools through the gateway with the
``mcp`` client; then it SIGKILLs the lakehouse server while a call to it is in flight and
checks that the client gets a JSON-RPC error (not a hang), that ingest keeps working, and that
the supervisor brings the lakehouse back, whose tools then answer; finally Ctrl-C (SIGINT) must stop every process
``kontor up`` started and free every port. A cheaper test signals ``kontor up`` (SIGTERM, and
SIGKILL) while it is still starting.

Every wait is bounded and every process is killed in ``finally``. Process trees are read from
``/proc``, so this runs on Linux only.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from typer.testing import CliRunner

from kontor.cli import DEFAULT_PORTS, _server_ports, app
from kontor.gateway.bootstrap import DEMO_TENANT, DEV_ADMIN_EMAIL, DEV_LOGIN_FILE, read_dev_password
from tests.servers_util import free_port

REPO = Path(__file__).resolve().parents[2]
TOOL_CALL_TIMEOUT_S = 30  # the gateway's per-call timeout in this test (KONTOR_GATEWAY_TOOL_CALL_TIMEOUT_S)
START_TIMEOUT_S = 120  # kontor up printing its banner (three Python processes importing on a busy machine)
# Keeps DuckDB busy far longer than the test waits before it kills the server (and than the call timeout).
SLOW_SQL = "SELECT count(*) AS n FROM range(100000000000) AS t(i) WHERE hash(i) % 7 = 3"
T = TypeVar("T")


def kontor_argv() -> list[str]:
    exe = Path(sys.executable).with_name("kontor")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "kontor.cli"]


def distinct_free_ports(n: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < n:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


# -- process trees ------------------------------------------------------------------------


def _stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, state) of ``pid``, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    return int(fields[1]), fields[0]


def alive(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[1] != "Z"


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def descendants(root: int) -> set[int]:
    """Every live process below ``root``."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(int(entry))
            if stat is not None and stat[1] != "Z":
                parents.setdefault(stat[0], []).append(int(entry))
    found: set[int] = set()
    todo = [root]
    while todo:
        for child in parents.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def until(what: str, predicate: Callable[[], T], timeout: float, interval: float = 0.1,
          context: Callable[[], str] = lambda: "") -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s\n{context()}")
        time.sleep(interval)


def kill_tree(pids: set[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# -- kontor up as a subprocess ------------------------------------------------------------


@dataclass
class Up:
    proc: subprocess.Popen[bytes]
    root: Path
    port: int
    server_ports: dict[str, int]
    env: dict[str, str]
    out_path: Path
    err_path: Path
    seen: set[int]  # every process ever seen below kontor up (killed in the cleanup)

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stdout(self) -> str:
        return self.out_path.read_text(errors="replace")

    def log(self, tail: int = 6000) -> str:
        return f"--- kontor up stdout ---\n{self.stdout()}\n--- stderr (tail) ---\n" + (
            self.err_path.read_text(errors="replace")[-tail:])

    def tree(self) -> set[int]:
        pids = descendants(self.proc.pid)
        self.seen |= pids
        return pids

    def server_pid(self, name: str) -> int | None:
        """The pid of the supervisor's child serving ``name`` (None while there is none)."""
        for pid in self.tree():
            argv = cmdline(pid)
            if "serve" in argv and name in argv and _stat(pid) is not None and _stat(pid)[0] == self.proc.pid:
                return pid
        return None

    def health(self) -> dict[str, Any]:
        try:
            return httpx.get(f"{self.origin}/health", timeout=5.0, trust_env=False).json()
        except (httpx.HTTPError, ValueError):
            return {}


@pytest.fixture
def kontor_up(tmp_path: Path) -> Iterator[Callable[..., Up]]:
    started: list[Up] = []

    def start(**extra_env: str) -> Up:
        root = tmp_path / f"data-{len(started)}"
        port, lakehouse, ingest = distinct_free_ports(3)
        env = {k: v for k, v in os.environ.items() if not k.startswith("KONTOR_")}
        env.update({"KONTOR_DATA_ROOT": str(root), "KONTOR_LOG_LEVEL": "INFO", "HF_HUB_OFFLINE": "1",
                    "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **extra_env})
        out_path, err_path = tmp_path / f"up-{len(started)}.out", tmp_path / f"up-{len(started)}.err"
        with out_path.open("wb") as out, err_path.open("wb") as err:
            proc = subprocess.Popen([*kontor_argv(), "up", "--port", str(port), "--server-port",
                                     f"lakehouse={lakehouse}", "--server-port", f"ingest={ingest}"],
                                    env=env, cwd=REPO, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        up = Up(proc, root, port, {"lakehouse": lakehouse, "ingest": ingest}, env, out_path, err_path, set())
        started.append(up)
        return up

    try:
        yield start
    finally:
        for up in started:
            if up.proc.poll() is None:
                up.tree()
                up.proc.kill()
                try:
                    up.proc.wait(10)
                except subprocess.TimeoutExpired:
                    pass
            kill_tree(up.seen)


def wait_for_banner(up: Up) -> str:
    def printed() -> bool:
        assert up.proc.poll() is None, f"kontor up exited with {up.proc.returncode}\n{up.log()}"
        up.tree()
        return "Ctrl-C stops everything." in up.stdout()

    until("kontor up printing how to connect", printed, START_TIMEOUT_S, 0.2, up.log)
    return up.stdout()


def kontor_token(up: Up, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in up.env.items() if not k.startswith("KONTOR_GATEWAY_")}
    return subprocess.run([*kontor_argv(), "token", *args], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=60)


def run(coro: Any, timeout: float) -> Any:
    """Run ``coro`` to completion, bounded."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


def port_is_free(port: int) -> bool:
    """Nothing listens on ``port`` and a new server could bind it (as uvicorn does, with SO_REUSEADDR)."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return False
    except OSError:
        pass
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


# -- the tests ------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads process trees from /proc")
def test_kontor_up_serves_the_mesh_survives_a_killed_server_and_stops_cleanly(
        kontor_up: Callable[..., Up]) -> None:
    started = time.monotonic()
    phases: dict[str, float] = {}

    def phase(name: str) -> None:
        phases[name] = round(time.monotonic() - started, 1)

    up = kontor_up(KONTOR_GATEWAY_TOOL_CALL_TIMEOUT_S=str(TOOL_CALL_TIMEOUT_S),
                   KONTOR_SQL_TIMEOUT_SECONDS="300")

    # 1. What it prints: the endpoint, the dev login (as stored), each server on its chosen port.
    banner = wait_for_banner(up)
    phase("up")
    endpoint = f"{up.origin}/t/{DEMO_TENANT}/mcp"
    assert re.search(rf"MCP endpoint\s+{re.escape(endpoint)}\s*$", banner, re.M), banner
    login = re.search(r"dev login\s+tenant (\S+), (\S+) / (\S+)", banner)
    assert login is not None, banner
    assert login.group(1) == DEMO_TENANT and login.group(2) == DEV_ADMIN_EMAIL
    assert login.group(3) == read_dev_password(up.root / "gateway" / DEV_LOGIN_FILE)
    for name, port in up.server_ports.items():
        assert re.search(rf"{name}\s+http://127\.0\.0\.1:{port}/mcp", banner), banner
    children = {name: up.server_pid(name) for name in ("lakehouse", "ingest")}
    assert all(children.values()), (children, up.log())
    assert len(up.tree()) >= 3  # the gateway and both servers

    # 2. /health: the gateway and every server ok.
    assert until("/health ok", lambda: up.health().get("status") == "ok", 30, 0.5, up.log)
    assert up.health() == {"status": "ok", "gateway": "ok", "servers": {"ingest": "ok", "lakehouse": "ok"}}

    # 3. A token from the real `kontor token` (it finds the gateway's origin that `kontor up` recorded).
    minted = kontor_token(up, "--tenant", DEMO_TENANT, "--user", DEV_ADMIN_EMAIL)
    assert minted.returncode == 0, minted.stderr
    token = minted.stdout.strip()
    phase("token")
    assert minted.stdout == token + "\n" and token.count(".") == 2

    async def session() -> tuple[httpx2.AsyncClient, Client]:
        http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"},
                                  timeout=httpx2.Timeout(30.0, read=TOOL_CALL_TIMEOUT_S + 30.0))
        return http, Client(streamable_http_client(endpoint, http_client=http), mode="legacy")

    async def serve_and_fault() -> dict[str, Any]:
        facts: dict[str, Any] = {}
        http, client = await session()
        async with http, client:
            names = [t.name for t in (await client.list_tools()).tools]
            assert {"lakehouse__search", "lakehouse__query_table", "lakehouse__stats"} <= set(names), names
            assert {"ingest__ingest_upload", "ingest__job_status"} <= set(names), names
            assert all(n.startswith(("lakehouse__", "ingest__")) for n in names), names

            upload = await client.call_tool("ingest__ingest_upload", {
                "name": "note.txt", "content_base64": base64.b64encode(b"Kontor end-to-end note.").decode(),
                "wait": False})
            assert not upload.is_error, upload.content
            job_id = upload.structured_content["job_id"]  # type: ignore[index]

            # 4. Fault: SIGKILL the lakehouse while a call to it is in flight. (The first lakehouse call
            # loads the embedding model, then runs a query that does not end by itself: it is in flight
            # either way. A lakehouse call that succeeds follows the restart; loading the model once more
            # before the fault would only cost time.)
            victim = up.server_pid("lakehouse")
            assert victim is not None
            in_flight = asyncio.create_task(client.call_tool("lakehouse__query_table", {"sql": SLOW_SQL}))
            await asyncio.sleep(1.5)
            assert not in_flight.done(), "the slow call finished before the server could be killed"
            os.kill(victim, signal.SIGKILL)
            killed_at = time.monotonic()
            with pytest.raises(MCPError) as error:  # a JSON-RPC error, well within the call timeout
                await asyncio.wait_for(in_flight, TOOL_CALL_TIMEOUT_S + 15)
            facts["error_after_s"] = time.monotonic() - killed_at
            facts["error"] = error.value
            facts["health_after_kill"] = await asyncio.to_thread(up.health)

            # The other server keeps working, in the same session.
            status = await client.call_tool("ingest__job_status", {"job_id": job_id})
            assert not status.is_error, status.content
            assert status.structured_content["job_id"] == job_id  # type: ignore[index]
            facts["victim"] = victim
        return facts

    facts = run(serve_and_fault(), 180)
    phase("calls and fault")
    assert facts["error_after_s"] < TOOL_CALL_TIMEOUT_S, facts
    assert "lakehouse" in str(facts["error"]), facts["error"]
    assert facts["health_after_kill"].get("servers", {}).get("lakehouse") != "ok", facts
    assert facts["health_after_kill"].get("gateway") == "ok", facts
    assert up.server_pid("ingest") == children["ingest"]  # untouched

    # 5. The supervisor restarts the lakehouse: a new pid, /health ok again, a new call succeeds.
    new_pid = until("a restarted lakehouse", lambda: (p := up.server_pid("lakehouse")) not in (None, facts["victim"])
                    and p, 60, 0.2, up.log)
    assert not alive(facts["victim"])
    until("/health ok after the restart", lambda: up.health().get("status") == "ok", 90, 0.5, up.log)
    assert up.health()["servers"] == {"ingest": "ok", "lakehouse": "ok"}
    assert "lakehouse exited with -9; restarting" in up.err_path.read_text(errors="replace")
    phase("restarted")

    async def call_again() -> None:
        http, client = await session()
        async with http, client:
            stats = await client.call_tool("lakehouse__stats", {})
            assert not stats.is_error, stats.content
            assert stats.structured_content["tenant"] == DEMO_TENANT  # type: ignore[index]
            rows = await client.call_tool("lakehouse__query_table", {"sql": "SELECT 40 + 2 AS answer"})
            assert not rows.is_error, rows.content
            assert rows.structured_content["rows"] == [[42]]  # type: ignore[index]

    run(call_again(), 120)
    phase("called again")
    assert up.server_pid("lakehouse") == new_pid

    # 6. Ctrl-C: kontor up stops every process it started and frees every port.
    tree = up.tree()
    assert {children["ingest"], new_pid} <= tree
    up.proc.send_signal(signal.SIGINT)
    try:
        code = up.proc.wait(40)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"kontor up did not exit after SIGINT\n{up.log()}") from None
    assert code == 0, up.log()
    until("every process below kontor up gone", lambda: not any(alive(p) for p in tree), 10, 0.1,
          lambda: f"alive: {[(p, cmdline(p)) for p in tree if alive(p)]}")
    assert all(port_is_free(p) for p in (up.port, *up.server_ports.values()))
    log = up.err_path.read_text(errors="replace")
    assert all(f"stopping {name}" in log for name in ("gateway", "lakehouse", "ingest")), up.log()
    phase("stopped")
    print(f"kontor up end to end, seconds since start: {phases}; "
          f"error {facts['error_after_s']:.2f} s after the kill: {facts['error']}")


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads process trees from /proc")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_kontor_up_signalled_while_starting_leaves_no_process_behind(kontor_up: Callable[..., Up],
                                                                     sig: signal.Signals) -> None:
    """SIGTERM stops the children in order (exit 0); SIGKILL takes them along (parent-death signal)."""
    up = kontor_up()

    def all_started() -> set[int] | None:
        assert up.proc.poll() is None, f"kontor up exited with {up.proc.returncode}\n{up.log()}"
        tree = up.tree()
        return tree if len([p for p in tree if _stat(p) and _stat(p)[0] == up.proc.pid]) >= 3 else None

    tree = until("kontor up starting its three children", all_started, 60, 0.05, up.log)
    up.proc.send_signal(sig)
    try:
        code = up.proc.wait(30)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"kontor up did not exit after {sig.name}\n{up.log()}") from None
    assert code == (0 if sig == signal.SIGTERM else -signal.SIGKILL), up.log()
    until(f"every child gone after {sig.name}", lambda: not any(alive(p) for p in tree), 10, 0.05,
          lambda: f"alive: {[(p, cmdline(p)) for p in tree if alive(p)]}")


def test_server_ports_default_and_override() -> None:
    assert _server_ports([], gateway_port=8700) == DEFAULT_PORTS == {"lakehouse": 8711, "ingest": 8712}
    assert _server_ports(["ingest=9002", " lakehouse=9001"], gateway_port=9000) == {"ingest": 9002,
                                                                                   "lakehouse": 9001}


@pytest.mark.parametrize("args", [
    ["--server-port", "nosuch=9001"], ["--server-port", "lakehouse"], ["--server-port", "lakehouse=x"],
    ["--server-port", "lakehouse=70000"], ["--port", "9000", "--server-port", "lakehouse=9000"],
    ["--server-port", "lakehouse=8712"],  # the default port of ingest
])
def test_bad_server_ports_are_refused_before_anything_starts(data_root: Path, args: list[str]) -> None:
    result = CliRunner().invoke(app, ["up", *args])
    assert result.exit_code == 2, result.output
    assert "--server-port" in result.output
    assert not (data_root / "gateway").exists()  # no bootstrap, no process
