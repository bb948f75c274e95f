"""The supervisor: restarts with capped exponential backoff, health waits, clean shutdown.

Children are tiny ``python -c`` programs, so nothing here needs the real servers.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest

from kontor.gateway.supervisor import ChildSpec, Supervisor, gateway_alive, mesh_specs
from tests.servers_util import free_port

PY = sys.executable


def child(name: str, code: str, **kw: object) -> ChildSpec:
    return ChildSpec(name, [PY, "-c", textwrap.dedent(code)], **kw)  # type: ignore[arg-type]


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][0] != "Z"
    except OSError:
        return False


def until(predicate, timeout: float = 10.0, sup: Supervisor | None = None) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        if sup is not None:
            sup.check_once()
        time.sleep(0.02)


SLEEPER = "import time\nwhile True: time.sleep(1)"


def test_backoff_doubles_and_is_capped():
    sup = Supervisor([], backoff_initial_s=1.0, backoff_max_s=30.0)
    assert [sup.backoff(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]


def test_a_crashing_child_is_restarted_with_exponential_backoff():
    sup = Supervisor([child("crasher", "raise SystemExit(3)")], backoff_initial_s=0.05, backoff_max_s=0.2,
                     stable_after_s=60)
    try:
        sup.start()
        crasher = sup.children["crasher"]
        until(lambda: crasher.starts >= 5, sup=sup)
        assert crasher.restart_delays[:4] == [0.05, 0.1, 0.2, 0.2]  # doubling, capped at backoff_max_s
        assert crasher.last_exit == 3 and crasher.failures >= 4
    finally:
        sup.stop()


def test_restarts_wait_for_the_backoff(tmp_path: Path):
    log = tmp_path / "starts.log"
    code = f"import time\nopen({str(log)!r}, 'a').write(f'{{time.monotonic()}}\\n')\nraise SystemExit(1)"
    sup = Supervisor([child("c", code)], backoff_initial_s=0.2, backoff_max_s=0.4, poll_interval_s=0.01)
    try:
        sup.start()
        until(lambda: log.exists() and len(log.read_text().split()) >= 4, sup=sup)
    finally:
        sup.stop()
    times = [float(t) for t in log.read_text().split()]
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert gaps[0] >= 0.2 and gaps[1] >= 0.4 and gaps[2] >= 0.4, gaps
    assert gaps[2] < 2.0  # ... and not much longer


def test_backoff_resets_after_the_child_stayed_up(tmp_path: Path):
    counter = tmp_path / "runs"
    # Crashes on its first two runs, then stays up.
    code = f"""
        import pathlib, time
        p = pathlib.Path({str(counter)!r})
        n = int(p.read_text()) if p.exists() else 0
        p.write_text(str(n + 1))
        if n < 2:
            raise SystemExit(1)
        while True:
            time.sleep(1)
    """
    sup = Supervisor([child("flaky", code)], backoff_initial_s=0.05, backoff_max_s=1.0, stable_after_s=0.3)
    try:
        sup.start()
        flaky = sup.children["flaky"]
        until(lambda: flaky.starts == 3 and flaky.running, sup=sup)
        assert flaky.failures == 2 and flaky.restart_delays == [0.05, 0.1]
        until(lambda: flaky.failures == 0, sup=sup)  # stable for stable_after_s: the count resets
        os.kill(flaky.pid, signal.SIGKILL)  # a crash now starts again from the initial delay
        until(lambda: flaky.starts == 4, sup=sup)
        assert flaky.restart_delays == [0.05, 0.1, 0.05]
        assert flaky.last_exit == -signal.SIGKILL
    finally:
        sup.stop()


def test_wait_healthy_polls_the_health_url_and_a_dead_child_is_not_healthy():
    port = free_port()
    server = child("web", f"""
        import http.server, time
        time.sleep(0.3)  # not healthy at once
        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                body = b'{{"status": "ok"}}'
                self.send_response(200 if self.path == "/health" else 404)
                self.end_headers()
                self.wfile.write(body)
            def log_message(self, *a):
                pass
        http.server.HTTPServer(("127.0.0.1", {port}), H).serve_forever()
    """, health_url=f"http://127.0.0.1:{port}/health")
    broken = child("broken", "raise SystemExit(1)", health_url=f"http://127.0.0.1:{free_port()}/health")
    plain = child("plain", SLEEPER)  # no health URL: running is healthy
    sup = Supervisor([server, broken, plain], backoff_initial_s=5, start_timeout_s=30)
    try:
        sup.start()
        assert sup.wait_healthy(timeout_s=1.5) == {"web": True, "broken": False, "plain": True}
        assert sup.children["web"].starts == 1
    finally:
        sup.stop()


def test_a_child_that_never_becomes_healthy_is_restarted():
    sup = Supervisor([child("hung", SLEEPER, health_url=f"http://127.0.0.1:{free_port()}/health")],
                     backoff_initial_s=0.05, start_timeout_s=0.3, stop_timeout_s=2)
    try:
        sup.start()
        first = sup.children["hung"].pid
        until(lambda: sup.children["hung"].starts >= 2, sup=sup)
        until(lambda: not alive(first))
    finally:
        sup.stop()


def test_stop_terminates_everyone_and_kills_who_ignores_sigterm():
    stubborn = """
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("ready", flush=True)
        while True:
            time.sleep(1)
    """
    sup = Supervisor([child("polite", SLEEPER), child("stubborn", stubborn)], stop_timeout_s=1.0)
    sup.start()
    time.sleep(0.5)  # let the stubborn one install its handler
    pids = {name: c.pid for name, c in sup.children.items()}
    assert all(alive(pid) for pid in pids.values())
    started = time.monotonic()
    sup.stop()
    took = time.monotonic() - started
    assert not any(alive(pid) for pid in pids.values())
    assert sup.children["polite"].last_exit == -signal.SIGTERM
    assert sup.children["stubborn"].last_exit == -signal.SIGKILL
    assert 0.9 <= took < 5
    sup.check_once()  # nothing is restarted after a stop
    assert all(c.proc is None or c.proc.poll() is not None for c in sup.children.values())


def test_sigterm_to_the_supervisor_stops_it_and_its_children(tmp_path: Path):
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent("""
        import json, logging, sys
        from kontor.gateway.supervisor import ChildSpec, Supervisor
        logging.basicConfig(level=logging.INFO)
        sleeper = [sys.executable, "-c", "import time\\nwhile True: time.sleep(1)"]
        sup = Supervisor([ChildSpec("a", sleeper), ChildSpec("b", sleeper)], stop_timeout_s=5)
        sup.install_signal_handlers()
        sup.start()
        print(json.dumps({n: c.pid for n, c in sup.children.items()}), flush=True)
        sup.run()
        print("stopped", flush=True)
    """))
    proc = subprocess.Popen([PY, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[2])
    try:
        pids = json.loads(proc.stdout.readline())
        assert all(alive(p) for p in pids.values())
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "stopped" in out
    assert not any(alive(p) for p in pids.values())
    assert "stopping a" in err and "stopping b" in err  # logged to stderr


def test_gateway_health_counts_a_degraded_mesh_as_up():
    def resp(status: int, body: object) -> httpx.Response:
        return httpx.Response(status, json=body)

    assert gateway_alive(resp(200, {"status": "ok"}))
    assert gateway_alive(resp(503, {"status": "degraded", "gateway": "ok", "servers": {"lakehouse": "down"}}))
    assert not gateway_alive(resp(503, {"status": "degraded", "gateway": "down"}))
    assert not gateway_alive(httpx.Response(502, text="bad gateway"))


def test_mesh_specs_wire_the_auth_environment():
    specs = {s.name: s for s in mesh_specs(host="0.0.0.0", port=8700, servers={"lakehouse": 8711, "ingest": 8712},
                                           issuer="http://127.0.0.1:8700/internal", env={"PATH": "/bin"},
                                           python="py")}
    gw = specs["gateway"]
    assert list(gw.argv) == ["py", "-m", "kontor.gateway", "serve", "--host", "0.0.0.0", "--port", "8700"]
    assert gw.health_url == "http://127.0.0.1:8700/health" and gw.healthy is gateway_alive
    assert gw.env["KONTOR_GATEWAY_HOST"] == "0.0.0.0" and gw.env["KONTOR_GATEWAY_PORT"] == "8700"
    lake = specs["lakehouse"]
    assert list(lake.argv) == ["py", "-m", "kontor.cli", "serve", "lakehouse", "--http", "127.0.0.1:8711"]
    assert lake.health_url == "http://127.0.0.1:8711/health"
    assert lake.env["KONTOR_AUTH_JWKS_URL"] == "http://127.0.0.1:8700/.well-known/jwks.json"
    assert lake.env["KONTOR_AUTH_ISSUER"] == "http://127.0.0.1:8700/internal"
    assert lake.env["KONTOR_AUTH_AUDIENCE"] == "http://127.0.0.1:8711/mcp"
    assert specs["ingest"].env["KONTOR_AUTH_AUDIENCE"] == "http://127.0.0.1:8712/mcp"
    assert lake.env["PATH"] == "/bin"


def test_duplicate_names_are_refused():
    with pytest.raises(ValueError, match="unique"):
        Supervisor([child("a", SLEEPER), child("a", SLEEPER)])
