"""Subprocesses of the benchmarks: start on loopback, wait for /health, stop; shared by the scripts here.

Each child writes to ``<logs>/<name>.log`` and, on Linux, gets SIGTERM when the benchmark itself
dies, even by SIGKILL (PR_SET_PDEATHSIG), so no server outlives a run.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 120.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    health_url: str

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the benchmark dies, even by SIGKILL (Linux: PR_SET_PDEATHSIG)."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None).prctl(1, int(signal.SIGTERM))


def start_process(name: str, cmd: Sequence[str], env: dict[str, str], health_url: str, logs: Path,
                  processes: list[Process], *, cwd: Path = REPO) -> Process:
    """Start ``cmd`` (output to ``logs/<name>.log``); :func:`wait_healthy` waits for it."""
    log_path = logs / f"{name}.log"
    with log_path.open("ab") as fh:
        popen = subprocess.Popen(list(cmd), env=env, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 cwd=cwd, preexec_fn=_die_with_parent if sys.platform == "linux" else None)
    proc = Process(name, popen, log_path, health_url)
    processes.append(proc)
    return proc


def wait_healthy(procs: Sequence[Process], timeout_s: float = START_TIMEOUT_S) -> None:
    """Wait until every process answers 200 on its /health (they start in parallel: imports are slow)."""
    deadline = time.monotonic() + timeout_s
    waiting = list(procs)
    while waiting:
        for proc in list(waiting):
            if proc.popen.poll() is not None:
                raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(proc.health_url, timeout=2.0).status_code == 200:
                    waiting.remove(proc)
        if not waiting:
            return
        if time.monotonic() > deadline:
            names = ", ".join(p.name for p in waiting)
            raise TimeoutError(f"not healthy after {timeout_s:.0f} s: {names}\n{waiting[0].tail()}")
        time.sleep(0.2)


def stop_process(proc: Process) -> None:
    if proc.popen.poll() is None:
        proc.popen.terminate()
        try:
            proc.popen.wait(10)
        except subprocess.TimeoutExpired:
            proc.popen.kill()
            proc.popen.wait(5)


def run_with_servers(prefix: str, body: Callable[[Path, list[Process]], int],
                     log: Callable[[str], None]) -> int:
    """Run ``body(root, processes)`` in a fresh temporary data root; whatever it started is stopped and
    the root removed at the end, also on Ctrl-C or SIGTERM (exit code 130 then)."""

    def terminated(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, terminated)
    processes: list[Process] = []
    root = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        return body(root, processes)
    except KeyboardInterrupt:
        log("interrupted; stopping the servers")
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the teardown short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for proc in reversed(processes):
            with contextlib.suppress(Exception):
                stop_process(proc)
        shutil.rmtree(root, ignore_errors=True)
        log("stopped everything, removed the data root")
