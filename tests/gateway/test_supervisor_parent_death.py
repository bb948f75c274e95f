"""Children die with a supervisor that is killed (-9) instead of holding their ports as orphans.

A tiny supervisor with ``python -c`` children runs as a subprocess; the test SIGKILLs it and
watches the children. Linux only (``prctl(PR_SET_PDEATHSIG)``); elsewhere nothing changes.
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

import pytest

from kontor.gateway import supervisor as supervisor_module
from kontor.gateway.supervisor import die_with_parent
from tests.gateway.test_supervisor import alive

REPO = Path(__file__).resolve().parents[2]
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")

SUPERVISOR = """
    import json, signal, sys
    from kontor.gateway.supervisor import ChildSpec, Supervisor
    sleeper = [sys.executable, "-c", "import time\\nwhile True: time.sleep(1)"]
    stubborn = [sys.executable, "-c",
                "import signal, time\\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\\nwhile True: time.sleep(1)"]
    death = None if sys.argv[1] == "none" else getattr(signal, sys.argv[1])
    sup = Supervisor([ChildSpec("a", sleeper), ChildSpec("b", sleeper), ChildSpec("stubborn", stubborn)],
                     parent_death_signal=death)
    sup.start()
    print(json.dumps({n: c.pid for n, c in sup.children.items()}), flush=True)
    sup.run()
"""


def start_supervisor(tmp_path: Path, death: str) -> tuple[subprocess.Popen[str], dict[str, int]]:
    script = tmp_path / "supervise.py"
    script.write_text(textwrap.dedent(SUPERVISOR))
    proc = subprocess.Popen([sys.executable, str(script), death], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, cwd=REPO)
    try:
        pids = json.loads(proc.stdout.readline())  # type: ignore[union-attr]
    except BaseException:
        proc.kill()
        proc.wait(10)
        raise
    return proc, pids


def gone_within(pids: list[int], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while any(alive(p) for p in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@linux_only
def test_children_die_when_the_supervisor_is_killed(tmp_path: Path) -> None:
    proc, pids = start_supervisor(tmp_path, "SIGKILL")
    children = list(pids.values())
    try:
        time.sleep(0.3)  # the stubborn child installs its SIGTERM handler: SIGKILL must get it anyway
        assert all(alive(p) for p in children)
        proc.kill()
        proc.wait(10)
        assert gone_within(children, 5), {n: alive(p) for n, p in pids.items()}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        kill_all(children)


@linux_only
def test_without_a_parent_death_signal_children_outlive_a_killed_supervisor(tmp_path: Path) -> None:
    """The control: the orphans the mechanism prevents (and proof the test above can fail)."""
    proc, pids = start_supervisor(tmp_path, "none")
    children = list(pids.values())
    try:
        proc.kill()
        proc.wait(10)
        time.sleep(0.5)
        assert all(alive(p) for p in children)
    finally:
        kill_all(children)
    assert gone_within(children, 5)


@linux_only
def test_a_child_whose_parent_died_before_exec_kills_itself(tmp_path: Path) -> None:
    """The window between fork and prctl: a child already re-parented signals itself at once."""
    script = tmp_path / "race.py"
    script.write_text(textwrap.dedent("""
        import os, signal
        from kontor.gateway.supervisor import die_with_parent
        preexec = die_with_parent(signal.SIGTERM)
        # a direct child: its parent is the one preexec was made in, so it goes on
        pid = os.fork()
        if pid == 0:
            preexec()
            os._exit(7)
        _, status = os.waitpid(pid, 0)
        print("direct", os.waitstatus_to_exitcode(status))
        # a grandchild stands in for a child whose parent is gone: getppid() is someone else
        pid = os.fork()
        if pid == 0:
            inner = os.fork()
            if inner == 0:
                preexec()
                os._exit(7)
            _, status = os.waitpid(inner, 0)
            os._exit(100 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status))
        _, status = os.waitpid(pid, 0)
        print("orphan", os.waitstatus_to_exitcode(status))
    """))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["direct", "7", "orphan", str(100 + signal.SIGTERM)]


def test_no_preexec_where_it_cannot_work(monkeypatch: pytest.MonkeyPatch) -> None:
    assert die_with_parent(None) is None
    monkeypatch.setattr(supervisor_module.sys, "platform", "darwin")
    assert die_with_parent(signal.SIGKILL) is None  # elsewhere children start as before
