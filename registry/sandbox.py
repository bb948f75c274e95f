"""Running an untrusted MCP server command in a sandbox, as an MCP stdio transport.

The registry's live snapshot (review check 4) runs a submitted package's server to list its
tools. The command runs:

* **without network** — in a new Linux network namespace (``unshare --net``; with ``--user
  --map-root-user`` when not root), which has only a loopback interface that is down: every
  connect, to the internet or to the host's own services, fails. It also gets new PID (with its
  own ``/proc``), mount, IPC and UTS namespaces where available, so it cannot see or signal host
  processes, and everything it started dies with it (``--kill-child``);
* **as an unprivileged user** — when the registry runs as root, the server runs as ``nobody``
  (uid 65534) with no supplementary groups and ``no_new_privs``, so it cannot write the host's
  files or read root's (``SandboxPolicy.run_as``);
* **with limits** — a wall-clock limit (enforced by the caller, the process group is killed),
  ``RLIMIT_AS`` (memory), ``RLIMIT_NOFILE`` (open files), ``RLIMIT_FSIZE`` (file size),
  ``RLIMIT_CPU``, and ``RLIMIT_NPROC`` when it runs as its own user; its stdout lines (the MCP
  messages) are capped at ``max_message_bytes`` and its stderr at ``stderr_bytes``;
* **in a fresh directory** — a new temporary working directory and ``HOME``, removed afterwards,
  and a minimal environment (``PATH``, ``HOME``, ``TMPDIR``, ``LANG`` plus what the caller passes
  explicitly): nothing is inherited from the registry's environment, so no secrets leak in.

Isolation is detected once (:func:`detect_isolation`) by trying ``unshare`` with the strongest
set of namespaces first. Without any, :class:`SandboxedStdio` refuses to run the command
(:class:`SandboxUnavailable`) unless ``SandboxPolicy.allow_unisolated`` is set; the evidence
records what was achieved either way.

The limits are applied by a tiny launcher (``python -I -S -c …``) that runs inside the
namespaces, sets the rlimits, drops privileges and ``exec``s the command.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import mcp_types as types
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.shared.message import SessionMessage

__all__ = [
    "NOBODY",
    "Isolation",
    "SandboxPolicy",
    "SandboxUnavailable",
    "SandboxedStdio",
    "detect_isolation",
]

NOBODY = 65534
MiB = 1024 * 1024
_SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"


@dataclass(frozen=True)
class SandboxPolicy:
    """Limits for one sandboxed run. ``run_as``: "auto" = nobody when running as root, else unchanged."""

    wall_clock_s: float = 60.0
    memory_bytes: int = 2048 * MiB  # RLIMIT_AS (address space: Node.js reserves a lot of it)
    open_files: int = 256
    file_size_bytes: int = 64 * MiB
    cpu_s: int = 120
    processes: int = 256  # RLIMIT_NPROC, only applied when the server runs as its own user
    max_message_bytes: int = 8 * MiB
    stderr_bytes: int = 1 * MiB
    run_as: int | str | None = "auto"
    allow_unisolated: bool = False

    def uid(self) -> int | None:
        if self.run_as == "auto":
            return NOBODY if os.geteuid() == 0 else None
        if self.run_as is None:
            return None
        return int(self.run_as)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class SandboxUnavailable(RuntimeError):
    """No isolation mechanism works here and the policy does not allow running without one."""


@dataclass(frozen=True)
class Isolation:
    available: bool
    mechanism: str | None
    prefix: tuple[str, ...]
    namespaces: tuple[str, ...]
    detail: str
    user_namespace: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"available": self.available, "mechanism": self.mechanism, "namespaces": list(self.namespaces),
                "network": "none (empty network namespace)" if "net" in self.namespaces else "host network",
                "detail": self.detail}


_FULL = ("--net", "--ipc", "--uts", "--pid", "--fork", "--kill-child", "--mount", "--mount-proc")
_NET_ONLY = ("--net", "--fork", "--kill-child")


@functools.lru_cache(maxsize=1)
def detect_isolation() -> Isolation:
    """The strongest ``unshare`` configuration that works here (cached), or why none does."""
    if not sys.platform.startswith("linux"):
        return Isolation(False, None, (), (), f"no network namespaces on {sys.platform}")
    unshare = shutil.which("unshare", path=_SAFE_PATH) or shutil.which("unshare")
    if unshare is None:
        return Isolation(False, None, (), (), "unshare (util-linux) is not installed")
    root = os.geteuid() == 0
    user = () if root else ("--user", "--map-root-user")
    candidates = [
        (user + _FULL, ("net", "pid", "mount", "ipc", "uts") + (("user",) if user else ())),
        (user + _NET_ONLY, ("net",) + (("user",) if user else ())),
    ]
    errors: list[str] = []
    for flags, names in candidates:
        try:
            done = subprocess.run([unshare, *flags, "--", "true"], capture_output=True, timeout=10,
                                  env={"PATH": _SAFE_PATH}, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            errors.append(f"{' '.join(flags)}: {exc}")
            continue
        if done.returncode == 0:
            return Isolation(True, "unshare", (unshare, *flags, "--"), names,
                             f"{unshare} {' '.join(flags)}" + (" (as root)" if root else " (user namespace)"),
                             user_namespace=bool(user))
        errors.append(f"{' '.join(flags)}: exit {done.returncode}: {done.stderr.decode(errors='replace').strip()}")
    return Isolation(False, None, (), (), "unshare failed: " + " | ".join(errors))


# The launcher runs inside the namespaces: limits, a fresh directory, privileges dropped, then exec.
_LAUNCHER = r"""
import ctypes, json, os, resource, sys
spec = json.loads(sys.argv[1])
argv = sys.argv[3:]
try:
    for name, value in spec["rlimits"].items():
        resource.setrlimit(getattr(resource, name), (value, value))
    os.chdir(spec["cwd"])
    os.umask(0o077)
    uid = spec.get("uid")
    if uid is not None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    ctypes.CDLL(None, use_errno=True).prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
except Exception as exc:
    sys.stderr.write("kontor-sandbox: setup failed: %s: %s\n" % (type(exc).__name__, exc))
    os._exit(125)
try:
    os.execvpe(argv[0], argv, spec["env"])
except OSError as exc:
    sys.stderr.write("kontor-sandbox: cannot run %r as uid %s: %s\n" % (argv[0], uid, exc))
    os._exit(127 if isinstance(exc, FileNotFoundError) else 126)
"""


@dataclass
class ExitInfo:
    returncode: int | None = None
    exited_on_its_own: bool = False
    stderr_tail: str = ""
    stderr_bytes: int = 0
    killed_by_us: bool = False
    overflow: str | None = None

    @property
    def signal_name(self) -> str | None:
        if self.returncode is not None and self.returncode < 0:
            try:
                return signal.Signals(-self.returncode).name
            except ValueError:
                return f"signal {-self.returncode}"
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"returncode": self.returncode, "signal": self.signal_name, "exited_on_its_own": self.exited_on_its_own,
                "killed_by_sandbox": self.killed_by_us, "stderr_bytes": self.stderr_bytes,
                "stderr_tail": self.stderr_tail, "overflow": self.overflow}


@dataclass
class SandboxedStdio:
    """An MCP client transport (async context manager yielding the read and write streams) for a sandboxed command."""

    command: Sequence[str]
    env: Mapping[str, str] | None = None
    policy: SandboxPolicy = field(default_factory=SandboxPolicy)
    isolation: Isolation | None = None

    def __post_init__(self) -> None:
        if not self.command:
            raise ValueError("command must not be empty")
        self.exit = ExitInfo()
        self.started_at: float | None = None
        self._process: anyio.abc.Process | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._root: Path | None = None
        self._stderr_path: Path | None = None
        self._streams: tuple[Any, ...] = ()
        self._shutting_down = False
        self._eof_early = False

    # ----------------------------------------------------------------- evidence

    def evidence(self) -> dict[str, Any]:
        isolation = self.isolation or detect_isolation()
        uid = self.policy.uid()
        return {
            "command": list(self.command),
            "isolation": isolation.to_dict() if isolation.available else
            {"available": False, "detail": isolation.detail, "network": "host network (NOT isolated)"},
            "user": self._user_text(isolation, uid),
            "limits": {"wall_clock_s": self.policy.wall_clock_s, "memory_bytes": self.policy.memory_bytes,
                       "open_files": self.policy.open_files, "file_size_bytes": self.policy.file_size_bytes,
                       "cpu_s": self.policy.cpu_s, "max_message_bytes": self.policy.max_message_bytes,
                       "processes": self.policy.processes if self._nproc_applies() else None},
            "environment": sorted(self._environment("/HOME", "/TMP")),
            "exit": self.exit.to_dict(),
        }

    @staticmethod
    def _user_text(isolation: Isolation, uid: int | None) -> str:
        if isolation.user_namespace:
            return f"uid {os.geteuid()} (the caller's), shown as root inside a user namespace"
        if uid is not None:
            return f"uid {uid} (no supplementary groups, no_new_privs)"
        return f"uid {os.geteuid()} (unchanged{': ROOT, privileges not dropped' if os.geteuid() == 0 else ''})"

    def _nproc_applies(self) -> bool:
        isolation = self.isolation or detect_isolation()
        return self.policy.uid() is not None and not isolation.user_namespace

    def _environment(self, home: str, tmp: str) -> dict[str, str]:
        env = {"PATH": _SAFE_PATH, "HOME": home, "TMPDIR": tmp, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
        env.update(dict(self.env or {}))
        return env

    # ----------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> tuple[MemoryObjectReceiveStream[SessionMessage | Exception],
                                        MemoryObjectSendStream[SessionMessage]]:
        isolation = self.isolation = self.isolation or detect_isolation()
        if not isolation.available and not self.policy.allow_unisolated:
            raise SandboxUnavailable(f"no isolation mechanism available ({isolation.detail}); refusing to run "
                                     f"{self.command[0]!r} (SandboxPolicy.allow_unisolated overrides)")
        uid = None if isolation.user_namespace else self.policy.uid()
        root, work, home = self._prepare_dir(uid)
        rlimits = {"RLIMIT_AS": self.policy.memory_bytes, "RLIMIT_NOFILE": self.policy.open_files,
                   "RLIMIT_FSIZE": self.policy.file_size_bytes, "RLIMIT_CPU": self.policy.cpu_s,
                   "RLIMIT_CORE": 0}
        if uid is not None:
            rlimits["RLIMIT_NPROC"] = self.policy.processes
        spec = {"rlimits": rlimits, "cwd": str(work), "uid": uid,
                "env": self._environment(str(home), str(work / "tmp"))}
        argv = [*isolation.prefix, sys.executable, "-I", "-S", "-c", _LAUNCHER, json.dumps(spec), "--",
                *self.command]
        self._stderr_path = root / "stderr.log"
        stderr = os.open(self._stderr_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            self._process = await anyio.open_process(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                                     stderr=stderr, env={"PATH": _SAFE_PATH}, cwd=str(work),
                                                     start_new_session=True)
        except BaseException:
            self._cleanup_dir()
            raise
        finally:
            os.close(stderr)
        self.started_at = time.monotonic()
        read_writer, read_stream = anyio.create_memory_object_stream[SessionMessage | Exception](16)
        write_stream, write_reader = anyio.create_memory_object_stream[SessionMessage](16)
        self._streams = (read_writer, read_stream, write_stream, write_reader)
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._tg.start_soon(self._read_stdout, read_writer)
        self._tg.start_soon(self._write_stdin, write_reader)
        self._tg.start_soon(self._watch_stderr)
        return read_stream, write_stream

    def _prepare_dir(self, uid: int | None) -> tuple[Path, Path, Path]:
        """A fresh root (0711) with ``work`` (the cwd, with ``tmp``) and ``home``, owned by the server's uid."""
        root = self._root = Path(tempfile.mkdtemp(prefix="kontor-sandbox-"))
        work, home = root / "work", root / "home"
        for directory in (work, home, work / "tmp"):
            directory.mkdir(mode=0o700)
            if uid is not None:
                os.chown(directory, uid, uid)
        root.chmod(0o711)
        return root, work, home

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        try:
            with anyio.CancelScope(shield=True):  # the server must be stopped even when the caller is cancelled
                await self._shutdown()
        finally:
            for stream in self._streams:
                stream.close()
            if self._tg is not None:  # exited outside the shield: cancel scopes unwind in order
                self._tg.cancel_scope.cancel()
                await self._tg.__aexit__(None, None, None)
            self._collect_stderr()
            self._cleanup_dir()
        return None

    async def _shutdown(self) -> None:
        process = self._process
        if process is None:
            return
        self._shutting_down = True
        self.exit.exited_on_its_own = process.returncode is not None or self._eof_early
        if process.returncode is None:
            # Close stdin (a well-behaved server exits), then kill the whole group: the unshare
            # process, and with it (--kill-child) the namespace's init and everything under it.
            if process.stdin is not None:
                try:
                    await process.stdin.aclose()
                except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
                    pass
            with anyio.move_on_after(0.5):
                await process.wait()
            if process.returncode is None:
                self.exit.killed_by_us = True
                self._kill_group()
                with anyio.move_on_after(5):
                    await process.wait()
        self.exit.returncode = process.returncode
        isolation = self.isolation or detect_isolation()
        if "pid" not in isolation.namespaces:
            # Without a PID namespace, children the server started may outlive it in its group.
            self._kill_group()
        with anyio.move_on_after(2):
            await process.aclose()  # closes the pipes and reaps the process

    def _kill_group(self) -> None:
        if self._process is None:
            return
        try:
            os.killpg(self._process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def kill(self, reason: str) -> None:
        """Stop the server now (a limit was hit); ``reason`` goes into the evidence."""
        self.exit.overflow = self.exit.overflow or reason
        self.exit.killed_by_us = True
        self._kill_group()

    # ----------------------------------------------------------------- pipes

    async def _read_stdout(self, sink: MemoryObjectSendStream[SessionMessage | Exception]) -> None:
        assert self._process is not None and self._process.stdout is not None
        limit = self.policy.max_message_bytes
        buffer = bytearray()
        try:
            async with sink:
                async for chunk in self._process.stdout:
                    buffer += chunk
                    while (cut := buffer.find(b"\n")) >= 0:
                        line = bytes(buffer[:cut]).strip()
                        del buffer[: cut + 1]
                        if len(line) > limit:
                            raise _Overflow(f"a message of {len(line)} bytes, more than {limit}")
                        if line:
                            await sink.send(_parse(line))
                    if len(buffer) > limit:
                        raise _Overflow(f"a message longer than {limit} bytes")
        except _Overflow as exc:
            self.kill(f"stdout: {exc}")
            try:
                await sink.send(ValueError(f"server sent {exc}"))
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        else:
            if not self._shutting_down and not self.exit.killed_by_us:
                self._eof_early = True  # the server closed its stdout (exited) before we stopped it

    async def _write_stdin(self, source: MemoryObjectReceiveStream[SessionMessage]) -> None:
        assert self._process is not None and self._process.stdin is not None
        try:
            async with source:
                async for message in source:
                    data = message.message.model_dump_json(by_alias=True, exclude_unset=True) + "\n"
                    await self._process.stdin.send(data.encode())
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass

    async def _watch_stderr(self) -> None:
        """Kill the server when its stderr passes ``stderr_bytes`` (RLIMIT_FSIZE is the hard backstop)."""
        while self._stderr_path is not None:
            await anyio.sleep(0.2)
            size = _size(self._stderr_path)
            if size is None:
                return
            if size > self.policy.stderr_bytes:
                self.kill(f"stderr: more than {self.policy.stderr_bytes} bytes")
                return

    def _collect_stderr(self) -> None:
        if self._stderr_path is None or not self._stderr_path.exists():
            return
        size = self._stderr_path.stat().st_size
        with self._stderr_path.open("rb") as fh:
            fh.seek(max(0, size - 4096))
            tail = fh.read().decode("utf-8", errors="replace")
        self.exit.stderr_bytes = size
        self.exit.stderr_tail = tail[-2000:]

    def _cleanup_dir(self) -> None:
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
            self._root = None
            self._stderr_path = None


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


class _Overflow(Exception):
    pass


def _parse(line: bytes) -> SessionMessage | Exception:
    try:
        return SessionMessage(types.jsonrpc_message_adapter.validate_json(line, by_name=False))
    except ValueError as exc:
        return exc
