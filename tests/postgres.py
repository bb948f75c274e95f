"""A throwaway PostgreSQL cluster for the tests: no docker, no system service, no network.

:func:`find_binaries` looks for the server programs (``initdb``, ``pg_ctl``, ``postgres``): first
on ``PATH``, then in the newest ``/usr/lib/postgresql/<version>/bin`` (where Debian and Ubuntu put
them; ``apt-get install postgresql`` provides them). :class:`PostgresCluster` then

* makes a temporary directory and runs ``initdb -A trust -U kontor --no-sync -E UTF8`` in it
  (trust authentication is fine: the server is reachable only from this machine);
* starts the server with ``pg_ctl``, listening on ``127.0.0.1`` at a free port and on a Unix
  socket in that directory, tuned for speed over durability (``fsync=off``: a crash loses only
  test data);
* waits until it accepts connections;
* hands out a fresh database per test (:meth:`PostgresCluster.database`: ``CREATE DATABASE``
  with a unique name, ``DROP DATABASE ... WITH (FORCE)`` afterwards), so tests are isolated;
* on :meth:`PostgresCluster.stop` stops the server (``pg_ctl stop -m immediate``) and deletes
  the directory (also at interpreter exit, should the test session end without stopping it).

``initdb`` and ``postgres`` refuse to run as root. When the tests run as root (as in CI
containers) the server programs run as an unprivileged user instead (``nobody`` by default,
``KONTOR_PG_OS_USER`` to choose another), through :mod:`subprocess`'s ``user=``/``group=``
arguments; the temporary directory is then owned by that user. Failures raise
:class:`PostgresError` with the command's output and the tail of the server log.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import glob
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PostgresCluster", "PostgresError", "PostgresNotFound", "ServerBinaries", "find_binaries"]

SUPERUSER = "kontor"
SERVER_PROGRAMS = ("initdb", "pg_ctl", "postgres")
DEBIAN_GLOB = "/usr/lib/postgresql/*/bin"

# Speed over durability: the data is thrown away anyway.
SERVER_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "100",
    "shared_buffers": "32MB",
    "max_wal_size": "1GB",
    "logging_collector": "off",
    "log_min_messages": "warning",
    "timezone": "'UTC'",
}


class PostgresError(RuntimeError):
    """The cluster could not be created, started, used or stopped."""


class PostgresNotFound(PostgresError):
    """No PostgreSQL server programs on this machine."""


@dataclass(frozen=True)
class ServerBinaries:
    bindir: Path

    def __getitem__(self, program: str) -> str:
        return str(self.bindir / program)


def _complete(bindir: Path) -> bool:
    return all(os.access(bindir / p, os.X_OK) for p in SERVER_PROGRAMS)


def _version_key(bindir: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", Path(bindir).parent.name)) or (0,)


def find_binaries(path: str | None = None, debian_glob: str | None = None) -> ServerBinaries:
    """Where ``initdb``, ``pg_ctl`` and ``postgres`` are: ``PATH`` (``path`` if given) first, then the
    highest-versioned ``/usr/lib/postgresql/*/bin`` (``debian_glob``). Raises :class:`PostgresNotFound`."""
    debian_glob = debian_glob or DEBIAN_GLOB
    initdb = shutil.which("initdb", path=path if path is not None else os.environ.get("PATH", os.defpath))
    if initdb is not None:
        # Follow symlinks (/usr/local/bin/initdb -> /usr/lib/postgresql/15/bin/initdb): pg_ctl and
        # postgres sit beside the real file, not necessarily beside the link.
        for bindir in (Path(initdb).parent, Path(initdb).resolve().parent):
            if _complete(bindir):
                return ServerBinaries(bindir)
    for bindir in sorted(glob.glob(debian_glob), key=_version_key, reverse=True):
        if _complete(Path(bindir)):
            return ServerBinaries(Path(bindir))
    raise PostgresNotFound(
        f"PostgreSQL server programs ({', '.join(SERVER_PROGRAMS)}) not found on PATH or in {debian_glob}; "
        "install them (Debian/Ubuntu: apt-get install postgresql)")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no server log)"
    return "\n".join(text.splitlines()[-lines:]) or "(server log is empty)"


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class PostgresCluster:
    """One PostgreSQL server in a temporary directory; see the module docstring.

    Use as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    def __init__(self, binaries: ServerBinaries | None = None, *, os_user: str | None = None,
                 start_timeout_s: float = 60.0) -> None:
        self.binaries = binaries or find_binaries()
        self.start_timeout_s = start_timeout_s
        self.port: int | None = None
        self.root: Path | None = None
        self._uid: int | None = None
        self._gid: int | None = None
        if os.geteuid() == 0:  # initdb/postgres refuse root: run them as an unprivileged user
            name = os_user or os.environ.get("KONTOR_PG_OS_USER", "nobody")
            try:
                entry = pwd.getpwnam(name)
            except KeyError:
                raise PostgresError(f"running as root, and there is no user {name!r} to run PostgreSQL as "
                                    "(set KONTOR_PG_OS_USER to an unprivileged user)") from None
            self._uid, self._gid = entry.pw_uid, entry.pw_gid
        self._executor: ThreadPoolExecutor | None = None

    # paths

    @property
    def datadir(self) -> Path:
        assert self.root is not None, "call start() first"
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        assert self.root is not None, "call start() first"
        return self.root / "socket"

    @property
    def log_file(self) -> Path:
        assert self.root is not None, "call start() first"
        return self.root / "server.log"

    # running the server programs

    def _run(self, program: str, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """Run a server program (as the unprivileged user when we are root); raise with its output on failure."""
        command = [self.binaries[program], *args]
        extra = {} if self._uid is None else {"user": self._uid, "group": self._gid, "extra_groups": []}
        env = {**os.environ, "LC_ALL": "C", "TZ": "UTC"}
        for leaky in ("PGDATA", "PGHOST", "PGPORT", "PGUSER", "PGDATABASE", "PGOPTIONS", "PGSERVICE"):
            env.pop(leaky, None)
        try:
            result = subprocess.run(command, cwd=self.root, env=env, capture_output=True, text=True,
                                    timeout=timeout, check=False, **extra)
        except subprocess.TimeoutExpired:
            raise PostgresError(f"{' '.join(command)} timed out after {timeout:.0f} s\n"
                                f"--- server log (tail) ---\n{_tail(self.log_file)}") from None
        if result.returncode != 0:
            raise PostgresError(f"{' '.join(command)} failed (exit {result.returncode}):\n"
                                f"{(result.stdout + result.stderr).strip()}\n"
                                f"--- server log (tail) ---\n{_tail(self.log_file)}")
        return result

    def _make_root(self) -> Path:
        root = Path(tempfile.mkdtemp(prefix="kontor-pg-"))
        if self._uid is not None:
            os.chown(root, self._uid, self._gid if self._gid is not None else -1)
            # The unprivileged user must be able to reach the directory through its parents.
            for parent in root.parents:
                if not os.stat(parent).st_mode & 0o001:
                    shutil.rmtree(root, ignore_errors=True)
                    raise PostgresError(f"{parent} is not searchable by other users, so the PostgreSQL server "
                                        "(run unprivileged, as we are root) cannot reach its data directory; "
                                        "point TMPDIR at a directory such as /tmp")
        return root

    # lifecycle

    def start(self) -> PostgresCluster:
        """initdb, start the server on a free port and wait until it accepts connections."""
        if self.root is not None:
            return self
        self.root = self._make_root()
        atexit.register(self.stop)
        try:
            self.socket_dir.mkdir()
            if self._uid is not None:
                os.chown(self.socket_dir, self._uid, self._gid if self._gid is not None else -1)
            self._run("initdb", "-D", str(self.datadir), "-A", "trust", "-U", SUPERUSER, "--no-sync",
                      "-E", "UTF8", "--no-locale")
            for attempt in range(3):  # the free port may be taken before the server binds it
                self.port = _free_port()
                settings = {**SERVER_SETTINGS, "port": str(self.port),
                            "unix_socket_directories": f"'{self.socket_dir}'"}
                with open(self.datadir / "postgresql.conf", "a") as conf:  # later lines win
                    conf.write("".join(f"{key} = {value}\n" for key, value in settings.items()))
                try:
                    self._run("pg_ctl", "start", "-w", "-t", str(int(self.start_timeout_s)), "-D", str(self.datadir),
                              "-l", str(self.log_file), timeout=self.start_timeout_s + 10)
                    break
                except PostgresError:
                    if attempt == 2 or "already in use" not in _tail(self.log_file):
                        raise
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            try:
                self.execute("SELECT 1")
                return
            except Exception as exc:  # noqa: BLE001 - keep trying until the deadline
                if time.monotonic() > deadline:
                    raise PostgresError(f"PostgreSQL did not accept connections within {self.start_timeout_s} s: "
                                        f"{exc}\n--- server log (tail) ---\n{_tail(self.log_file)}") from None
                time.sleep(0.1)

    def stop(self) -> None:
        """Stop the server (immediate mode: no checkpoint) and delete its directory. Idempotent."""
        if self.root is None:
            return
        try:
            if (self.datadir / "postmaster.pid").exists():
                with contextlib.suppress(PostgresError):
                    self._run("pg_ctl", "stop", "-m", "immediate", "-w", "-D", str(self.datadir), timeout=60)
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=False)
                self._executor = None
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None
            self.port = None
            atexit.unregister(self.stop)

    def __enter__(self) -> PostgresCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # SQL and databases

    def execute(self, sql: str, database: str = "postgres") -> None:
        """Run one statement as the superuser over the Unix socket.

        asyncpg in a private thread with its own event loop, so this works from synchronous
        fixtures while the test's event loop exists (and needs no ``psql``).
        """
        import asyncpg  # a project dependency; imported late so this module loads without it

        async def run() -> None:
            conn = await asyncpg.connect(host=str(self.socket_dir), port=self.port, user=SUPERUSER,
                                         database=database, timeout=10)
            try:
                await conn.execute(sql)
            finally:
                await conn.close()

        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kontor-pg")
        self._executor.submit(asyncio.run, run()).result()

    def url(self, database: str, driver: str = "asyncpg") -> str:
        """SQLAlchemy URL of ``database`` over TCP on 127.0.0.1."""
        if self.port is None:
            raise PostgresError("the cluster is not running")
        return f"postgresql+{driver}://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, prefix: str = "test") -> str:
        """A new empty database with a unique name; returns the name."""
        name = f"{prefix}_{uuid.uuid4().hex[:16]}"
        self.execute(f"CREATE DATABASE {_quote_ident(name)}")
        return name

    def drop_database(self, name: str) -> None:
        """Drop ``name``, disconnecting whatever is still connected to it."""
        self.execute(f"DROP DATABASE IF EXISTS {_quote_ident(name)} WITH (FORCE)")

    @contextlib.contextmanager
    def database(self, prefix: str = "test") -> Iterator[str]:
        """A fresh database for the ``with`` block; yields its ``postgresql+asyncpg://`` URL."""
        name = self.create_database(prefix)
        try:
            yield self.url(name)
        finally:
            self.drop_database(name)
