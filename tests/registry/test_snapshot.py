"""The live snapshot (review check 4): stdio servers in the sandbox, remote servers over Streamable HTTP.

Sandboxed fixtures: ``fixture_stdio.py`` (no dependencies, so it runs as ``nobody`` under the
system python with ``-I -S``: network, hang, memory, flood and exit behaviours) and
``fixture_mcp_server.py`` (a real SDK server, run with this virtualenv's python, which lives
under /root here, so that run keeps the caller's uid). The remote snapshot goes through the
production SSRF-safe transport with a client that may reach loopback.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from kontor.gateway.pinning import definition_hash, instructions_hash
from kontor.gateway.safehttp import SafeHttpClient, pinned_pool
from kontor.gateway.upstream import UpstreamSession
from kontor.registry import snapshot as snapshot_module
from kontor.registry.sandbox import NOBODY, Isolation, SandboxPolicy, detect_isolation
from kontor.registry.snapshot import check_snapshot, snapshot_remote, snapshot_stdio, tool_hashes
from tests.registry.fixture_mcp_server import INSTRUCTIONS, build
from tests.registry.fixture_net import ThreadServer
from tests.registry.fixture_stdio import TOOLS

HERE = Path(__file__).parent
RAW = HERE / "fixture_stdio.py"
SDK_FIXTURE = HERE / "fixture_mcp_server.py"
ISOLATION = detect_isolation()
isolated = pytest.mark.skipif(not ISOLATION.available, reason=f"no sandbox isolation here: {ISOLATION.detail}")


def _system_python() -> str:
    """A python3 the unprivileged sandbox user can run (the venv's lives under /root, mode 0700)."""
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.access(candidate, os.X_OK):
            return candidate
    return sys.executable


PY = _system_python()
AS_NOBODY = os.geteuid() == 0 and PY != sys.executable


def _exists(path: str) -> bool:
    return Path(path).exists()


def raw(mode: str, *args: object) -> list[str]:
    return [PY, "-I", "-S", str(RAW), mode, *map(str, args)]


def policy(**overrides: object) -> SandboxPolicy:
    overrides.setdefault("wall_clock_s", 15.0)
    overrides.setdefault("run_as", "auto" if AS_NOBODY else None)
    return SandboxPolicy(**overrides)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- a well-behaved server


@isolated
async def test_raw_definitions_pages_and_sandbox_facts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KONTOR_SECRET_FOR_TEST", "must-not-leak")
    started = time.monotonic()
    result = await snapshot_stdio(raw("ok"), env={"EXPLICIT": "1"}, policy=policy())
    assert result.passed, result.findings
    ev = result.evidence
    assert ev["pages"]["tools/list"] == 2
    # every tool's full definition as sent, hashed exactly as the gateway pins it
    assert [t["definition"] for t in ev["tools"]] == TOOLS
    assert tool_hashes(result) == {t["name"]: definition_hash(t) for t in TOOLS}
    import mcp_types

    parsed = mcp_types.Tool.model_validate(TOOLS[0])  # the SDK's model drops the vendor annotation...
    assert definition_hash(parsed) != tool_hashes(result)["echo"]  # ...so the raw result is what counts
    assert [p["name"] for p in ev["prompts"]] == ["greet"]
    assert [r["uri"] for r in ev["resources"]] == ["fixture://readme"]
    assert [r["name"] for r in ev["resourceTemplates"]] == ["note"]
    assert ev["serverInfo"] == {"name": "fixture-stdio", "version": "1.0.0"}
    assert ev["instructions_hash"] == instructions_hash(ev["instructions"])

    inside = json.loads(ev["instructions"])
    assert inside["env"] == sorted(["EXPLICIT", "HOME", "LANG", "LC_ALL", "PATH", "TMPDIR"])  # nothing inherited
    assert inside["pid"] == 1  # its own PID namespace
    assert inside["rlimits"] == {"RLIMIT_AS": policy().memory_bytes, "RLIMIT_NOFILE": 256,
                                 "RLIMIT_FSIZE": 64 * 1024 * 1024, "RLIMIT_CPU": 120}
    assert inside["cwd"].startswith(str(Path(inside["home"]).parent))
    assert not _exists(inside["cwd"])  # the fresh directory is gone afterwards
    if AS_NOBODY:
        assert (inside["uid"], inside["gid"], inside["groups"]) == (NOBODY, NOBODY, [])
    sandbox = ev["sandbox"]
    assert sandbox["isolation"]["available"] and "net" in sandbox["isolation"]["namespaces"]
    assert sandbox["exit"]["killed_by_sandbox"] is False
    assert time.monotonic() - started < 10
    json.dumps(result.to_dict())


@isolated
async def test_network_is_unreachable_in_the_sandbox() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(0.2)
        port = listener.getsockname()[1]
        accepted: list[object] = []
        stop = threading.Event()

        def accept() -> None:
            while not stop.is_set():
                try:
                    accepted.append(listener.accept()[0])
                except OSError:
                    continue

        thread = threading.Thread(target=accept, daemon=True)
        thread.start()
        try:
            # Control: the same code outside the sandbox reaches the host listener.
            control = await anyio.run_process(raw("probe", port), check=True)
            assert json.loads(control.stdout)["host_loopback"] == "connected"
            await anyio.sleep(0.3)
            assert len(accepted) == 1

            result = await snapshot_stdio(raw("net", port), policy=policy())
            assert result.passed, result.findings
            report = json.loads(result.evidence["instructions"])
            await anyio.sleep(0.3)
        finally:
            stop.set()
            thread.join(timeout=2)
            for conn in accepted:
                conn.close()  # type: ignore[attr-defined]
    assert report["host_loopback"].startswith("failed") and "unreachable" in report["host_loopback"].lower()
    assert report["internet"].startswith("failed")
    assert report["dns"].startswith("failed")
    assert len(accepted) == 1  # nothing arrived from inside the sandbox
    assert result.evidence["sandbox"]["isolation"]["network"] == "none (empty network namespace)"


# --------------------------------------------------------------------------- limits


@isolated
async def test_hanging_server_hits_the_wall_clock_limit() -> None:
    started = time.monotonic()
    result = await snapshot_stdio(raw("hang"), policy=policy(wall_clock_s=1.5))
    elapsed = time.monotonic() - started
    assert not result.passed
    assert result.rules() == ["snapshot.timeout"]
    assert "initialize" in result.findings[0].message and "1.5 s" in result.findings[0].message
    assert result.evidence["failed_at"] == "initialize"
    exit_info = result.evidence["sandbox"]["exit"]
    assert exit_info["killed_by_sandbox"] is True and exit_info["signal"] == "SIGKILL"  # killed and reaped
    assert 1.4 < elapsed < 6


@isolated
async def test_memory_hog_is_stopped_by_the_memory_limit() -> None:
    result = await snapshot_stdio(raw("hog"), policy=policy(memory_bytes=256 * 1024 * 1024))
    assert result.rules() == ["snapshot.memory-limit"]
    assert "256 MiB" in result.findings[0].message and "MemoryError" in result.findings[0].message
    assert result.evidence["sandbox"]["exit"]["exited_on_its_own"] is True


@isolated
async def test_output_flood_and_early_exit() -> None:
    flood = await snapshot_stdio(raw("flood"), policy=policy(max_message_bytes=1024 * 1024))
    assert flood.rules() == ["snapshot.output-limit"]
    assert flood.evidence["sandbox"]["exit"]["killed_by_sandbox"] is True
    gone = await snapshot_stdio(raw("exit"), policy=policy())
    assert gone.rules() == ["snapshot.exited"]
    assert "exit code 3" in gone.findings[0].message and "giving up on purpose" in gone.findings[0].message


@isolated
async def test_unrunnable_command_is_a_launch_failure() -> None:
    result = await snapshot_stdio(["/nonexistent/server"], policy=policy())
    assert result.rules() == ["snapshot.launch-failed"]
    assert "/nonexistent/server" in result.findings[0].message


async def test_no_isolation_means_not_run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(snapshot_module, "detect_isolation",
                        lambda: Isolation(False, None, (), (), "unshare is not installed"))
    marker = tmp_path / "ran"
    result = await snapshot_stdio(["/bin/sh", "-c", f"touch {marker}"], policy=policy())
    assert result.rules() == ["snapshot.sandbox-unavailable"]
    assert "unshare is not installed" in result.findings[0].message
    assert not marker.exists()


# --------------------------------------------------------------------------- a real SDK server, stdio and remote


@pytest.fixture(scope="module")
def sdk_server() -> Iterator[str]:
    server = ThreadServer(build().streamable_http_app(), lifespan="on")
    yield f"http://127.0.0.1:{server.port}/mcp"
    server.stop()


async def _gateway_hashes(url: str) -> dict[str, str]:
    """What the gateway itself pins: its own raw JSON-RPC client, hashed with pinning.definition_hash."""
    target = await SafeHttpClient(allow_http=True, allow_private=True).vet(url)
    pool = pinned_pool(target)
    session = UpstreamSession("fixture", url, pool, token=lambda: "unused")
    try:
        await session.start()
        listed = await session.request("tools/list", {})
    finally:
        await session.close()
        await pool.aclose()
    return {tool["name"]: definition_hash(tool) for tool in listed["tools"]}


@isolated
async def test_sdk_server_snapshots_agree_with_gateway_pins(sdk_server: str) -> None:
    gateway = await _gateway_hashes(sdk_server)
    assert set(gateway) == {"lookup_product", "delete_quote"}

    # stdio, in the sandbox (this virtualenv's python is readable by root only here: keep the uid)
    stdio = await snapshot_stdio([sys.executable, str(SDK_FIXTURE)], policy=policy(run_as=None, wall_clock_s=30))
    assert stdio.passed, (stdio.findings, stdio.evidence.get("sandbox"))
    assert tool_hashes(stdio) == gateway
    assert stdio.evidence["instructions"] == INSTRUCTIONS
    assert stdio.evidence["instructions_hash"] == instructions_hash(INSTRUCTIONS)
    assert [p["name"] for p in stdio.evidence["prompts"]] == ["summarise"]

    # remote, through the SSRF-safe transport (a client allowed to reach loopback)
    remote = await snapshot_remote(sdk_server, client=SafeHttpClient(allow_http=True, allow_private=True))
    assert remote.passed, remote.findings
    assert tool_hashes(remote) == gateway
    assert remote.evidence["instructions_hash"] == stdio.evidence["instructions_hash"]
    assert remote.evidence["target"]["vetted"]["addresses"] == ["127.0.0.1"]
    lookup = next(t for t in remote.evidence["tools"] if t["name"] == "lookup_product")
    assert lookup["definition"]["annotations"] == {"readOnlyHint": True}
    assert lookup["definition"]["title"] == "Look up a product"


async def test_remote_snapshot_refuses_unsafe_urls(sdk_server: str) -> None:
    default = await snapshot_remote(sdk_server)  # production client: http and loopback refused
    assert default.rules() == ["snapshot.unsafe-url"]
    loopback = await snapshot_remote(sdk_server.replace("http://", "https://"))
    assert loopback.rules() == ["snapshot.unsafe-url"] and "loopback" in loopback.findings[0].message
    metadata = await snapshot_remote("https://169.254.169.254/mcp")
    assert [(f.rule, f.severity) for f in metadata.findings] == [("snapshot.unsafe-url", "critical")]


async def test_remote_snapshot_with_an_injected_transport(sdk_server: str) -> None:
    from mcp.client.streamable_http import streamable_http_client

    result = await snapshot_remote(sdk_server, transport_factory=lambda url, headers: streamable_http_client(url))
    assert result.passed and set(tool_hashes(result)) == {"lookup_product", "delete_quote"}


async def test_remote_down_is_unreachable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/mcp"
        result = await snapshot_remote(url, client=SafeHttpClient(allow_http=True, allow_private=True), timeout_s=5)
    assert result.rules() == ["snapshot.unreachable"]


async def test_check_snapshot_picks_the_remote_or_says_why_not(sdk_server: str) -> None:
    doc = {"name": "test.kontor/fixture", "remotes": [
        {"type": "sse", "url": "https://example.com/sse"},
        {"type": "streamable-http", "url": sdk_server}]}
    result = await check_snapshot(doc, client=SafeHttpClient(allow_http=True, allow_private=True))
    assert result.passed and result.evidence["source"] == "$.remotes[1]"
    nothing = await check_snapshot({"name": "a/b", "packages": [{"registryType": "npm", "identifier": "x"}]})
    assert nothing.rules() == ["snapshot.not-attempted"]


@isolated
async def test_check_snapshot_runs_a_package_through_its_launcher() -> None:
    doc = {"name": "test.kontor/fixture", "packages": [{"registryType": "pypi", "identifier": "fixture-stdio",
                                                        "version": "1.0.0", "transport": {"type": "stdio"}}]}
    result = await check_snapshot(doc, package_command=lambda package: raw("ok"), policy=policy())
    assert result.passed and result.evidence["source"] == "$.packages[0]"
    assert set(tool_hashes(result)) == {"echo", "add", "delete_note"}


def test_unshare_is_what_provides_isolation_here() -> None:
    if shutil.which("unshare") is None:
        pytest.skip("unshare not installed")
    assert ISOLATION.available, ISOLATION.detail
