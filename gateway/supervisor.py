"""Supervision of the local mesh's processes: the gateway and every first-party server.

:class:`Supervisor` starts each :class:`ChildSpec` as a subprocess, waits for its ``/health``,
restarts a child that exits with exponential backoff (``backoff_initial_s`` doubling up to
``backoff_max_s``; the count resets once the child has stayed up and healthy for ``stable_after_s``),
restarts a child that never becomes healthy within ``start_timeout_s``, and on shutdown terminates
every child, killing those that have not exited after ``stop_timeout_s``. It logs to stderr
through :mod:`logging`; children inherit stderr and write their stdout there too (stdout belongs
to whatever runs the supervisor).

The supervisor knows nothing about Kontor: command lines, environments and health URLs are
injected (:func:`mesh_specs` builds the real ones), so the core is tested with tiny
``python -c`` children. Children run in their own session, so a Ctrl-C in the terminal reaches
only the supervisor, which then stops them in order.

A supervisor that dies without stopping its children (``kill -9``, the OOM killer, a crash) must
not leave them behind holding their ports: on Linux each child asks the kernel for a signal
(``parent_death_signal``, SIGKILL by default) when the supervisor goes away
(``prctl(PR_SET_PDEATHSIG)``, set between fork and exec). The kernel sends it when the *thread*
that started the child exits, so start children from a thread that lives as long as the
supervisor (``kontor up`` does everything in its main thread). Elsewhere there is no such
mechanism and the children outlive a killed supervisor, as before.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

log = logging.getLogger("kontor.supervisor")

HealthCheck = Callable[[httpx.Response], bool]


def ok_status(response: httpx.Response) -> bool:
    """Healthy when ``/health`` answers 2xx."""
    return response.is_success


def gateway_alive(response: httpx.Response) -> bool:
    """The gateway is up when its own part is ok, even while it reports upstream servers as degraded."""
    if response.is_success:
        return True
    try:
        body = response.json()
    except ValueError:
        return False
    return isinstance(body, dict) and body.get("gateway") == "ok"


@dataclass(frozen=True)
class ChildSpec:
    """One supervised process. ``env`` is its complete environment (None: the supervisor's own)."""

    name: str
    argv: Sequence[str]
    env: Mapping[str, str] | None = None
    health_url: str | None = None
    healthy: HealthCheck = ok_status
    cwd: str | None = None


@dataclass
class Child:
    """Run-time state of one child (read it for status; the supervisor writes it)."""

    spec: ChildSpec
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    failures: int = 0  # consecutive crashes since the child was last stable
    started_at: float = 0.0
    healthy_since: float | None = None
    restart_at: float | None = None  # when a crashed child is started again
    last_exit: int | None = None
    restart_delays: list[float] = field(default_factory=list)  # every backoff delay applied, in order

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None


class Supervisor:
    """Starts, watches, restarts and stops a fixed set of child processes.

    Typical use: ``start()``, ``wait_healthy()``, then ``run()`` in the main thread until
    ``request_stop()`` (or a signal, after ``install_signal_handlers()``); ``run()`` stops the
    children before it returns. ``stop()`` may also be called directly.
    """

    def __init__(
        self,
        specs: Sequence[ChildSpec],
        *,
        backoff_initial_s: float = 1.0,
        backoff_max_s: float = 30.0,
        stable_after_s: float = 60.0,
        start_timeout_s: float = 180.0,
        stop_timeout_s: float = 10.0,
        poll_interval_s: float = 0.25,
        health_timeout_s: float = 1.0,
        parent_death_signal: int | None = signal.SIGKILL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ValueError("child names must be unique")
        if backoff_initial_s <= 0 or backoff_max_s < backoff_initial_s:
            raise ValueError("need 0 < backoff_initial_s <= backoff_max_s")
        self.children: dict[str, Child] = {s.name: Child(s) for s in specs}
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.stable_after_s = stable_after_s
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.poll_interval_s = poll_interval_s
        self.health_timeout_s = health_timeout_s
        #: Signal each child gets when the supervisor dies (Linux only; None: children outlive it).
        self.parent_death_signal = parent_death_signal
        self._clock = clock
        self._stop = threading.Event()
        self._lock = threading.RLock()
        self._stopped = False
        self._http = httpx.Client(timeout=health_timeout_s, follow_redirects=False, trust_env=False)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start every child (in the given order) without waiting for them."""
        with self._lock:
            for child in self.children.values():
                if not child.running:
                    self._spawn(child)

    def wait_healthy(self, timeout_s: float | None = None) -> dict[str, bool]:
        """Wait until every child answers its health check (or ``timeout_s``); name -> healthy.

        A child that exits meanwhile is restarted by the same rules as in :meth:`run`.
        """
        deadline = self._clock() + (self.start_timeout_s if timeout_s is None else timeout_s)
        while not self._stop.is_set():
            self.check_once()
            if all(c.healthy_since is not None for c in self.children.values()):
                break
            if self._clock() >= deadline:
                break
            self._stop.wait(self.poll_interval_s)
        return {name: c.healthy_since is not None for name, c in self.children.items()}

    def run(self) -> None:
        """Watch the children until a stop is requested, then stop them."""
        try:
            while not self._stop.is_set():
                self.check_once()
                self._stop.wait(self.poll_interval_s)
        finally:
            self.stop()

    def request_stop(self) -> None:
        """Make :meth:`run` (and :meth:`wait_healthy`) return; safe from signal handlers and other threads."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def install_signal_handlers(self) -> None:
        """SIGINT, SIGTERM and SIGHUP request a clean stop (call from the main thread)."""

        def handler(signum: int, _frame: Any) -> None:
            log.info("received %s, stopping", signal.Signals(signum).name)
            self.request_stop()

        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, handler)

    def stop(self) -> None:
        """Terminate every child, wait up to ``stop_timeout_s`` in all, then kill what is left."""
        self._stop.set()
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            live = [c for c in reversed(list(self.children.values())) if c.running]
            for child in live:
                log.info("stopping %s (pid %s)", child.name, child.pid)
                with contextlib.suppress(ProcessLookupError):
                    child.proc.terminate()  # type: ignore[union-attr]
            deadline = time.monotonic() + self.stop_timeout_s
            for child in live:
                proc = child.proc
                assert proc is not None
                try:
                    proc.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    log.warning("%s did not exit within %.0f s; killing it", child.name, self.stop_timeout_s)
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    proc.wait()
                child.last_exit = proc.returncode
                child.healthy_since = None
            self._http.close()

    # -- one round of checks ---------------------------------------------------------------

    def check_once(self) -> None:
        """Reap exits, schedule and perform restarts, probe health: one pass over the children."""
        with self._lock:
            if self._stopped:
                return
            now = self._clock()
            for child in self.children.values():
                if child.proc is None:
                    if child.restart_at is not None and now >= child.restart_at and not self._stop.is_set():
                        self._spawn(child)
                    continue
                code = child.proc.poll()
                if code is not None:
                    self._crashed(child, code, now)
                    continue
                if child.healthy_since is None:
                    if self._probe(child):
                        child.healthy_since = now
                        log.info("%s is healthy (pid %s, %.1f s after start)", child.name, child.pid,
                                 now - child.started_at)
                    elif now - child.started_at > self.start_timeout_s:
                        log.warning("%s not healthy after %.0f s; restarting it", child.name, self.start_timeout_s)
                        self._kill(child)
                        self._crashed(child, child.proc.returncode if child.proc else -9, now)
                elif child.failures and now - child.healthy_since >= self.stable_after_s:
                    log.info("%s stayed up for %.0f s; backoff reset", child.name, self.stable_after_s)
                    child.failures = 0

    def backoff(self, failures: int) -> float:
        """Delay before restart number ``failures`` (1, 2, ...) of a child: doubling, capped."""
        return min(self.backoff_initial_s * 2 ** max(0, failures - 1), self.backoff_max_s)

    # -- internals -------------------------------------------------------------------------

    def _spawn(self, child: Child) -> None:
        spec = child.spec
        child.restart_at = None
        child.healthy_since = None
        child.starts += 1
        child.started_at = self._clock()
        try:
            child.proc = subprocess.Popen(  # noqa: S603 - the command lines are the caller's
                list(spec.argv), env=dict(spec.env) if spec.env is not None else None, cwd=spec.cwd,
                stdin=subprocess.DEVNULL, stdout=_stdout_target(), start_new_session=True,
                preexec_fn=die_with_parent(self.parent_death_signal))
        except OSError as exc:
            log.error("cannot start %s: %s", spec.name, exc)
            child.proc = None
            self._crashed(child, None, self._clock())
            return
        log.info("started %s (pid %s)%s", spec.name, child.proc.pid,
                 f", restart {child.starts - 1}" if child.starts > 1 else "")
        if spec.health_url is None:  # nothing to probe: running counts as healthy
            child.healthy_since = child.started_at

    def _crashed(self, child: Child, code: int | None, now: float) -> None:
        child.last_exit = code
        child.proc = None
        if child.healthy_since is not None and now - child.healthy_since >= self.stable_after_s:
            child.failures = 0  # it had been stable: this is a fresh failure, not a crash loop
        child.healthy_since = None
        child.failures += 1
        delay = self.backoff(child.failures)
        child.restart_delays.append(delay)
        child.restart_at = now + delay
        log.warning("%s exited with %s; restarting in %.1f s (failure %d in a row)", child.name,
                    "an error starting it" if code is None else code, delay, child.failures)

    def _probe(self, child: Child) -> bool:
        url = child.spec.health_url
        if url is None:
            return True
        try:
            return bool(child.spec.healthy(self._http.get(url)))
        except httpx.HTTPError:
            return False

    def _kill(self, child: Child) -> None:
        proc = child.proc
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(self.stop_timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(sig: int | None) -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child receive ``sig`` when this process dies (Linux), else None.

    Everything that can fail (loading libc) happens here, in the parent; the function run in the
    child between fork and exec only makes a few system calls. If the parent died before the
    request took effect (the child was already re-parented), the child sends ``sig`` to itself
    at once, so there is no window in which an orphan survives.
    """
    if sig is None or not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        log.warning("prctl is not available; children will outlive a killed supervisor")
        return None
    prctl.restype = ctypes.c_int
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    parent = os.getpid()
    signum = int(sig)

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0)
        if os.getppid() != parent:  # the supervisor is already gone
            os.kill(os.getpid(), signum)
            os._exit(128 + signum)  # a signal the forked copy of our handlers catches must not let it run on

    return preexec


def _stdout_target() -> int | None:
    """Children's stdout goes to our stderr (None: inherit, when stderr has no file descriptor)."""
    try:
        return sys.stderr.fileno()
    except (AttributeError, ValueError, io.UnsupportedOperation):
        return None


# -- the Kontor mesh ------------------------------------------------------------------------


def connect_host(host: str) -> str:
    """The address to reach a server bound to ``host`` from this machine (wildcards -> loopback)."""
    if host in ("0.0.0.0", "", "*"):
        return "127.0.0.1"
    if host in ("::", "[::]"):
        return "::1"
    return host


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def mesh_specs(
    *,
    host: str,
    port: int,
    servers: Mapping[str, int],
    issuer: str,
    env: Mapping[str, str] | None = None,
    python: str = sys.executable,
    server_host: str = "127.0.0.1",
) -> list[ChildSpec]:
    """The gateway and each first-party server (name -> port) as children.

    The gateway gets ``--host/--port`` and ``KONTOR_GATEWAY_HOST/PORT``; each server serves
    Streamable HTTP on ``server_host`` (loopback) and verifies the gateway's internal tokens:
    ``KONTOR_AUTH_JWKS_URL`` (the gateway's JWKS, reached directly), ``KONTOR_AUTH_ISSUER``
    (``issuer``) and ``KONTOR_AUTH_AUDIENCE`` (its own ``/mcp`` URL).
    """
    base = dict(os.environ if env is None else env)
    base.update({"KONTOR_GATEWAY_HOST": host, "KONTOR_GATEWAY_PORT": str(port)})
    gateway_origin = f"http://{_url_host(connect_host(host))}:{port}"
    specs = [ChildSpec("gateway", [python, "-m", "kontor.gateway", "serve", "--host", host, "--port", str(port)],
                       env=base, health_url=f"{gateway_origin}/health", healthy=gateway_alive)]
    for name, server_port in servers.items():
        origin = f"http://{_url_host(server_host)}:{server_port}"
        server_env = {**base, "KONTOR_AUTH_JWKS_URL": f"{gateway_origin}/.well-known/jwks.json",
                      "KONTOR_AUTH_ISSUER": issuer, "KONTOR_AUTH_AUDIENCE": f"{origin}/mcp"}
        specs.append(ChildSpec(name, [python, "-m", "kontor.cli", "serve", name, "--http",
                                      f"{_url_host(server_host)}:{server_port}"],
                               env=server_env, health_url=f"{origin}/health"))
    return specs
