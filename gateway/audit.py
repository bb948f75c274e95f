"""Hash-chained, durable audit log of tool calls (and denied attempts).

Storage: SQLite in WAL mode (the project's DB layer; PostgreSQL through SQLAlchemy at scale), in a
file of its own. Why not a JSONL file: SQLite gives atomic multi-record commits (no torn last line
to repair after a crash), indexed queries per tenant, and the same code runs on PostgreSQL.

Durability: with ``synchronous="NORMAL"`` (the default) a commit appends to the WAL in the OS page
cache before ``append()`` returns, so a record whose call was answered survives a kill -9 of the
gateway (what the audit promises); it takes tens of microseconds and runs on the event loop. With
``synchronous="FULL"`` every commit also fsyncs the WAL (about 0.4 ms on the development machine),
so records survive a power cut too; that runs on one writer thread (one thread hop per batch).

Group commit: ``append()`` queues the record and awaits a future. One writer task takes
everything queued, assigns sequence numbers and hashes in queue order, inserts the batch in
one transaction and commits; appends that arrive while a commit is in flight form the next
batch. Each caller resumes only after the commit holding its own record has returned, so the
gateway can send its response knowing the record is durable.

Chain: record ``n`` stores ``prev_hash`` (record ``n-1``'s hash, 64 zeros for ``n = 1``) and
``hash = sha256(canonical JSON of all its fields including seq and prev_hash)``; ``seq`` runs
1, 2, 3 ... without gaps. :meth:`AuditLog.verify` finds an edited record (hash mismatch), a
deleted one (gap), a reordered one (broken link) and a record re-hashed after editing (the
next record's link breaks). What a chain alone cannot show is a cut-off tail: deleting the
last records leaves a valid shorter chain. So the writer also keeps a *head anchor* — the
last committed seq and hash — in a separate JSON file, rewritten atomically at most every
``anchor_interval_s`` and on close; a log that ends before the anchor, or whose record at the
anchor's seq has another hash, is reported as truncated/rewritten. Records committed after the
latest anchor can still be cut off unnoticed (a window of at most ``anchor_interval_s``), and
someone who can rewrite both the database and the anchor can rebuild a consistent chain: keep
the anchor where the gateway's database user cannot write, or ship it off the machine.

One writer process per log: the chain head lives in that process (seq is the primary key, so a
second writer fails its appends rather than forking the chain). For SQLite the writer is a plain
``sqlite3`` connection (SQLAlchemy's async adapter costs four thread hops per commit, aiosqlite
two, and each hop costs more than a NORMAL commit); table creation, queries and verification go
through SQLAlchemy, which is also the write path on other databases.

Arguments are never stored, only the sha256 of their canonical JSON (:func:`hash_arguments`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import os
import re
import sqlite3
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import Column, Float, Index, Integer, MetaData, String, Table, Text, event, insert, select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

__all__ = [
    "AuditEvent",
    "AuditIntegrityError",
    "AuditLog",
    "AuditRecord",
    "AuditWriteError",
    "VerifyResult",
    "canonical_json",
    "hash_arguments",
]

GENESIS = "0" * 64
DECISIONS = ("allowed", "denied")
STATUSES = ("ok", "error", "timeout", "cancelled")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_MAX_TEXT = 1000  # reasons and names are cut to this many characters, so a record stays small

metadata = MetaData()
audit_table = Table(
    "audit_log",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("ts", String(40), nullable=False),
    Column("kind", String(64), nullable=False),
    Column("tenant", String(200), nullable=False),
    Column("subject", Text),
    Column("client_id", Text),
    Column("tool", Text),
    Column("args_sha256", String(64)),
    Column("decision", String(16), nullable=False),
    Column("reason", Text),
    Column("status", String(16)),
    Column("latency_ms", Float),
    Column("upstream", Text),
    Column("trace_id", String(64)),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    Index("ix_audit_log_tenant_seq", "tenant", "seq"),
)


# Longest value kept per column: its declared length (PostgreSQL enforces it; SQLite does not), else _MAX_TEXT.
_LIMITS = {column.name: getattr(column.type, "length", None) or _MAX_TEXT for column in audit_table.columns}


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no whitespace, UTF-8, no NaN/Infinity: one byte string per value."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def hash_arguments(arguments: Mapping[str, Any] | None) -> str:
    """sha256 of the canonical JSON of a tool call's arguments (``{}`` when there are none)."""
    return hashlib.sha256(canonical_json(dict(arguments or {}))).hexdigest()


class AuditWriteError(RuntimeError):
    """The record could not be committed; the caller must not report the call as done."""


class AuditIntegrityError(RuntimeError):
    """The stored log contradicts its anchor (truncated or rewritten); appending would hide it."""


@dataclass(frozen=True, kw_only=True)
class AuditEvent:
    """What the gateway knows about one call. Build it with :meth:`tool_call` to hash the arguments."""

    tenant: str
    decision: Literal["allowed", "denied"]
    subject: str | None = None
    client_id: str | None = None
    tool: str | None = None
    args_sha256: str | None = None
    reason: str | None = None
    status: Literal["ok", "error", "timeout", "cancelled"] | None = None
    latency_ms: float | None = None
    upstream: str | None = None
    kind: str = "tools/call"
    trace_id: str | None = None

    def __post_init__(self) -> None:
        if not self.tenant:
            raise ValueError("tenant is required")
        if self.decision not in DECISIONS:
            raise ValueError(f"decision must be one of {DECISIONS}")
        if self.status is not None and self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES} or None")
        if self.args_sha256 is not None and not _HEX64.match(self.args_sha256):
            raise ValueError("args_sha256 must be a lower-case sha256 hex digest (use AuditEvent.tool_call)")
        if self.latency_ms is not None and not math.isfinite(self.latency_ms):
            raise ValueError("latency_ms must be finite")

    @classmethod
    def tool_call(cls, *, arguments: Mapping[str, Any] | None, **kwargs: Any) -> AuditEvent:
        """An event for a ``tools/call``; ``arguments`` are hashed here and not kept."""
        return cls(args_sha256=hash_arguments(arguments), **kwargs)


@dataclass(frozen=True)
class AuditRecord:
    seq: int
    ts: str
    kind: str
    tenant: str
    subject: str | None
    client_id: str | None
    tool: str | None
    args_sha256: str | None
    decision: str
    reason: str | None
    status: str | None
    latency_ms: float | None
    upstream: str | None
    trace_id: str | None
    prev_hash: str
    hash: str


_RECORD_FIELDS = tuple(f.name for f in fields(AuditRecord))
_INSERT_SQL = f"INSERT INTO audit_log ({', '.join(_RECORD_FIELDS)}) VALUES ({', '.join('?' for _ in _RECORD_FIELDS)})"
_HASHED_FIELDS = tuple(name for name in _RECORD_FIELDS if name != "hash")


def record_hash(row: Mapping[str, Any]) -> str:
    """The chain hash of a record: sha256 over the canonical JSON of every field but ``hash``."""
    return hashlib.sha256(canonical_json({name: row[name] for name in _HASHED_FIELDS})).hexdigest()


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    checked: int  # records whose hash and link were verified
    first_bad_seq: int | None = None
    reason: str | None = None
    head_seq: int = 0  # last seq seen in the log
    anchor_seq: int | None = None  # None: no anchor, so a cut-off tail cannot be detected


def _cut(value: str | None, limit: int = _MAX_TEXT) -> str | None:
    """Bounded length, valid UTF-8 and no NUL: a lone surrogate, a NUL (PostgreSQL text cannot hold
    one) or a value longer than its column (PostgreSQL refuses it) would otherwise fail the whole
    batch's commit. Replacements keep the length: a surrogate or NUL becomes ``?``."""
    if value is None:
        return None
    return str(value)[:limit].encode("utf-8", "replace").decode("utf-8").replace("\x00", "?")


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


class AuditLog:
    """The audit log. ``path_or_url``: a file path (SQLite) or an SQLAlchemy async URL.

    ``anchor_path`` defaults to ``<db file>.anchor.json`` for SQLite files and to no anchor for
    other URLs. ``max_batch`` caps the records per commit (1 turns group commit off, for baselines).
    """

    def __init__(
        self,
        path_or_url: str | os.PathLike[str],
        *,
        anchor_path: str | os.PathLike[str] | None = None,
        anchor_interval_s: float = 1.0,
        synchronous: Literal["FULL", "NORMAL"] = "NORMAL",
        max_batch: int = 1000,
    ) -> None:
        text = os.fspath(path_or_url)
        self.db_file: Path | None = None
        if "://" in text:
            self.url = text
            parsed = make_url(text)
            if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
                self.db_file = Path(parsed.database)
        else:
            self.db_file = Path(text).expanduser().resolve()
            self.url = f"sqlite+aiosqlite:///{self.db_file}"
        if anchor_path is not None:
            self.anchor_path: Path | None = Path(anchor_path)
        elif self.db_file is not None:
            self.anchor_path = self.db_file.with_name(self.db_file.name + ".anchor.json")
        else:
            self.anchor_path = None
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError("synchronous must be FULL or NORMAL")
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self.anchor_interval_s = anchor_interval_s
        self.synchronous = synchronous
        self.max_batch = max_batch
        self._engine: AsyncEngine | None = None
        self._wconn: AsyncConnection | None = None
        self._sqlite_writer: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None  # the fsyncing writer thread (FULL only)
        self._queue: list[tuple[AuditEvent, str, asyncio.Future[int]]] = []
        self._writer: asyncio.Task[None] | None = None
        self._head_seq = 0
        self._head_hash = GENESIS
        self._anchored_seq = 0
        self._anchored_at = 0.0
        self._anchor_lock = asyncio.Lock()
        self._anchor_timer: asyncio.TimerHandle | None = None
        self._anchor_task: asyncio.Task[None] | None = None
        self._closed = False
        self.commits = 0  # number of transactions committed (group-commit statistics)

    # ----------------------------------------------------------------- lifecycle

    async def init(self, *, check_anchor: bool = True) -> None:
        """Create the table, load the chain head, and (by default) refuse a log that contradicts its anchor."""
        try:
            await self._open(check_anchor)
        except BaseException:
            await self._release()
            raise

    async def _open(self, check_anchor: bool) -> None:
        if self.db_file is not None:
            self.db_file.parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(self.url)
        if engine.dialect.name == "sqlite":
            synchronous = self.synchronous

            @event.listens_for(engine.sync_engine, "connect")
            def _pragmas(dbapi_connection: Any, _record: Any) -> None:
                cursor = dbapi_connection.cursor()
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute(f"PRAGMA synchronous={synchronous}")
                cursor.execute("PRAGMA busy_timeout=10000")
                cursor.close()

        self._engine = engine
        async with engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
        if engine.dialect.name == "sqlite" and self.db_file is not None:
            # The writer is a plain sqlite3 connection (see _commit): SQLAlchemy's async adapter costs
            # four thread hops per commit, aiosqlite two; each hop costs more than the commit itself.
            writer = sqlite3.connect(self.db_file, check_same_thread=False)
            for pragma in ("journal_mode=WAL", f"synchronous={self.synchronous}", "busy_timeout=10000"):
                writer.execute(f"PRAGMA {pragma}")
            self._sqlite_writer = writer
            if self.synchronous == "FULL":
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kontor-audit")
        else:
            self._wconn = await engine.connect()
        self._head_seq, self._head_hash = await self._read_head()
        if self._head_seq and record_hash(await self._record_row(self._head_seq)) != self._head_hash:
            raise AuditIntegrityError(f"the last record (seq {self._head_seq}) does not match its hash")
        anchor = self._read_anchor()
        if anchor is not None:
            self._anchored_seq = anchor[0]
            if check_anchor:
                problem = await self._anchor_problem(anchor, self._head_seq)
                if problem is not None:
                    raise AuditIntegrityError(problem[1])
        self._anchored_at = time.monotonic()

    async def close(self) -> None:
        """Commit what is queued, write the anchor, release the database."""
        if self._closed:
            return
        self._closed = True
        if self._writer is not None:
            await asyncio.gather(self._writer, return_exceptions=True)
        if self._anchor_timer is not None:
            self._anchor_timer.cancel()
            self._anchor_timer = None
        if self._anchor_task is not None:
            await asyncio.gather(self._anchor_task, return_exceptions=True)
        try:
            if self._engine is not None:
                await self._write_anchor_if_moved()
        finally:
            await self._release()

    async def _release(self) -> None:
        if self._wconn is not None:
            await self._wconn.close()
            self._wconn = None
        if self._sqlite_writer is not None:
            self._sqlite_writer.close()
            self._sqlite_writer = None
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None

    async def __aenter__(self) -> AuditLog:
        await self.init()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def head(self) -> tuple[int, str]:
        """(seq, hash) of the last committed record."""
        return self._head_seq, self._head_hash

    # ----------------------------------------------------------------- appending

    async def append(self, audit_event: AuditEvent) -> int:
        """Add a record; returns its seq once it is durably committed. Raises AuditWriteError otherwise."""
        if self._closed or self._engine is None:
            raise AuditWriteError("audit log is not open")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()
        self._queue.append((audit_event, _now_iso(), future))
        if self._writer is None or self._writer.done():
            self._writer = loop.create_task(self._drain())
        return await future  # a cancelled caller leaves the record in its batch: it is still written

    async def _drain(self) -> None:
        while self._queue:
            batch = self._queue[: self.max_batch]
            del self._queue[: self.max_batch]
            seq, prev = self._head_seq, self._head_hash
            rows: list[dict[str, Any]] = []
            try:
                for audit_event, ts, _ in batch:
                    seq += 1
                    row = self._row(audit_event, seq, ts, prev)
                    prev = row["hash"]
                    rows.append(row)
                await self._commit(rows)
            except Exception as exc:  # every caller of the batch gets the failure
                error = AuditWriteError(f"audit commit failed: {type(exc).__name__}: {exc}")
                for _, _, future in batch:
                    if not future.done():
                        future.set_exception(error)
                with contextlib.suppress(Exception):  # the commit may have happened after all
                    self._head_seq, self._head_hash = await self._read_head()
                continue
            self._head_seq, self._head_hash = seq, prev
            self.commits += 1
            for (_, _, future), row in zip(batch, rows, strict=True):
                if not future.done():
                    future.set_result(row["seq"])
            if time.monotonic() - self._anchored_at >= self.anchor_interval_s:
                await self._anchor_quietly()
            else:
                self._schedule_anchor()  # so the tail gets anchored even if no further record comes

    async def _commit(self, rows: list[dict[str, Any]]) -> None:
        if self._sqlite_writer is not None:
            params = [tuple(r[n] for n in _RECORD_FIELDS) for r in rows]
            if self._executor is None:
                # NORMAL: the commit appends to the WAL in the OS page cache (tens of microseconds, no
                # fsync; WAL readers never block it), so it runs right here: no thread hop at all.
                self._write_sqlite(params)
            else:  # FULL: the fsync (about 0.4 ms here) runs on the writer thread, one hop per batch
                await asyncio.get_running_loop().run_in_executor(self._executor, self._write_sqlite, params)
            return
        try:
            assert self._wconn is not None
            await self._wconn.execute(insert(audit_table), rows)
            await self._wconn.commit()
        except BaseException:
            with contextlib.suppress(Exception):
                if self._wconn is not None:
                    await self._wconn.rollback()
            raise

    def _write_sqlite(self, params: list[tuple[Any, ...]]) -> None:
        writer = self._sqlite_writer
        assert writer is not None
        try:
            writer.executemany(_INSERT_SQL, params)
            writer.commit()
        except BaseException:
            with contextlib.suppress(Exception):
                writer.rollback()
            raise

    @staticmethod
    def _row(audit_event: AuditEvent, seq: int, ts: str, prev_hash: str) -> dict[str, Any]:
        values = audit_event.__dict__
        row: dict[str, Any] = {
            "seq": seq,
            "ts": ts,
            "kind": _cut(values["kind"], _LIMITS["kind"]),
            "tenant": _cut(values["tenant"], _LIMITS["tenant"]),
            "subject": _cut(values["subject"]),
            "client_id": _cut(values["client_id"]),
            "tool": _cut(values["tool"]),
            "args_sha256": values["args_sha256"],
            "decision": values["decision"],
            "reason": _cut(values["reason"]),
            "status": values["status"],
            "latency_ms": None if values["latency_ms"] is None else round(float(values["latency_ms"]), 3),
            "upstream": _cut(values["upstream"]),
            "trace_id": _cut(values["trace_id"], _LIMITS["trace_id"]),
            "prev_hash": prev_hash,
        }
        row["hash"] = record_hash(row)
        return row

    # ----------------------------------------------------------------- anchor

    def _schedule_anchor(self) -> None:
        if self.anchor_path is None or self._anchor_timer is not None or self._closed:
            return
        delay = max(0.0, self.anchor_interval_s - (time.monotonic() - self._anchored_at))
        self._anchor_timer = asyncio.get_running_loop().call_later(delay, self._anchor_due)

    def _anchor_due(self) -> None:
        self._anchor_timer = None
        if not self._closed:
            self._anchor_task = asyncio.get_running_loop().create_task(self._anchor_quietly())

    async def _anchor_quietly(self) -> None:
        with contextlib.suppress(OSError):  # an anchor write failure must not fail appends
            await self._write_anchor_if_moved()

    def _read_anchor(self) -> tuple[int, str] | None:
        if self.anchor_path is None or not self.anchor_path.exists():
            return None
        try:
            data = json.loads(self.anchor_path.read_text())
            return int(data["seq"]), str(data["hash"])
        except (ValueError, KeyError, TypeError) as exc:
            raise AuditIntegrityError(f"anchor file {self.anchor_path} is unreadable: {exc}") from None

    async def _write_anchor_if_moved(self) -> None:
        async with self._anchor_lock:  # one writer at a time, so the anchor never moves backwards
            self._anchored_at = time.monotonic()
            if self.anchor_path is None or self._head_seq <= self._anchored_seq:
                return
            seq, digest = self._head_seq, self._head_hash
            await asyncio.to_thread(_write_atomically, self.anchor_path,
                                    canonical_json({"seq": seq, "hash": digest, "ts": _now_iso()}))
            self._anchored_seq = seq

    async def write_anchor(self) -> None:
        """Write the head anchor now (also done every ``anchor_interval_s`` and on close)."""
        await self._write_anchor_if_moved()

    async def _anchor_problem(self, anchor: tuple[int, str], head_seq: int) -> tuple[int, str] | None:
        seq, digest = anchor
        if seq > head_seq:
            return head_seq + 1, (f"log truncated: the anchor records seq {seq} but the log ends at seq {head_seq} "
                                  f"(records {head_seq + 1}..{seq} are missing)")
        if seq > 0:
            row = await self._record_row(seq)
            if row is None:
                return seq, f"record {seq} named by the anchor is missing"
            if row["hash"] != digest:
                return seq, f"record {seq} differs from the anchor's hash (log rewritten from there)"
        return None

    # ----------------------------------------------------------------- reading

    async def _read_head(self) -> tuple[int, str]:
        assert self._engine is not None
        async with self._engine.connect() as conn:
            row = (await conn.execute(
                select(audit_table.c.seq, audit_table.c.hash).order_by(audit_table.c.seq.desc()).limit(1)
            )).first()
        return (0, GENESIS) if row is None else (int(row.seq), str(row.hash))

    async def _record_row(self, seq: int) -> dict[str, Any] | None:
        assert self._engine is not None
        async with self._engine.connect() as conn:
            row = (await conn.execute(select(audit_table).where(audit_table.c.seq == seq))).mappings().first()
        return None if row is None else dict(row)

    async def verify(self, *, page_size: int = 5000) -> VerifyResult:
        """Walk the whole chain in seq order and report the first place where it breaks."""
        if self._engine is None:
            raise RuntimeError("call init() first")
        anchor = self._read_anchor()  # before the walk: records only ever get added after it
        anchor_seq = anchor[0] if anchor else None
        expected, prev, checked, last = 1, GENESIS, 0, 0

        def bad(seq: int, reason: str) -> VerifyResult:
            return VerifyResult(False, checked, seq, reason, last, anchor_seq)

        async with self._engine.connect() as conn:
            while True:
                rows = (await conn.execute(
                    select(audit_table).where(audit_table.c.seq > last).order_by(audit_table.c.seq).limit(page_size)
                )).mappings().all()
                if not rows:
                    break
                for row in rows:
                    seq = int(row["seq"])
                    last = seq
                    if seq != expected:
                        missing = f"{expected}" if seq == expected + 1 else f"{expected}..{seq - 1}"
                        return bad(expected, f"record {missing} missing (deleted): the log jumps to seq {seq}")
                    if row["prev_hash"] != prev:
                        return bad(seq, f"record {seq} does not link to record {seq - 1} "
                                        "(a record was removed, reordered, or altered and re-hashed)")
                    if record_hash(row) != row["hash"]:
                        return bad(seq, f"record {seq} was altered: its content does not match its hash")
                    prev = row["hash"]
                    expected += 1
                    checked += 1
        if anchor is not None:
            problem = await self._anchor_problem(anchor, last)
            if problem is not None:
                return bad(*problem)
        return VerifyResult(True, checked, None, None, last, anchor_seq)

    async def query(
        self,
        tenant: str | None = None,
        *,
        subject: str | None = None,
        tool: str | None = None,
        decision: str | None = None,
        before_seq: int | None = None,
        limit: int = 100,
    ) -> list[AuditRecord]:
        """Newest first; page with ``before_seq`` = the last seq of the previous page."""
        if self._engine is None:
            raise RuntimeError("call init() first")
        limit = max(1, min(int(limit), 10_000))
        stmt = select(audit_table)
        for column, value in (("tenant", tenant), ("subject", subject), ("tool", tool), ("decision", decision)):
            if value is not None:
                stmt = stmt.where(audit_table.c[column] == value)
        if before_seq is not None:
            stmt = stmt.where(audit_table.c.seq < before_seq)
        stmt = stmt.order_by(audit_table.c.seq.desc()).limit(limit)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(stmt)).mappings().all()
        return [AuditRecord(**{name: row[name] for name in _RECORD_FIELDS}) for row in rows]


def _write_atomically(path: Path, data: bytes) -> None:
    """Write-to-temp, fsync, rename, fsync the directory: the file is the old or the new one, never torn."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


# --------------------------------------------------------------------------- benchmark


async def _bench(directory: Path, records: int, concurrency: int, **options: Any) -> tuple[float, float, float]:
    """(p50 ms, p95 ms, records/s) for ``records`` appends by ``concurrency`` tasks."""
    log = AuditLog(directory / f"bench-{concurrency}-{options}.db", **options)
    await log.init()
    latencies: list[float] = []
    per_task = records // concurrency

    async def worker(n: int) -> None:
        for i in range(per_task):
            audit_event = AuditEvent.tool_call(tenant="demo", subject=f"user{n}", client_id="bench",
                                               tool="echo__echo", arguments={"i": i}, decision="allowed",
                                               status="ok", latency_ms=1.234, upstream="echo")
            started = time.perf_counter()
            await log.append(audit_event)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker(n) for n in range(concurrency)))
    elapsed = time.perf_counter() - started
    result = await log.verify()
    assert result.ok, result
    await log.close()
    latencies.sort()
    return (latencies[len(latencies) // 2] * 1000, latencies[int(len(latencies) * 0.95)] * 1000,
            len(latencies) / elapsed)


def _main() -> None:  # pragma: no cover - a benchmark, run by hand
    """``python -m kontor.gateway.audit [DIR] [RECORDS]``: append latency and throughput, with baselines."""
    import sys
    import tempfile

    records = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
    with tempfile.TemporaryDirectory(dir=sys.argv[1] if len(sys.argv) > 1 else None) as tmp:
        configs = [
            ("group commit, FULL", {}),
            ("one commit per record, FULL (baseline)", {"max_batch": 1}),
            ("group commit, NORMAL", {"synchronous": "NORMAL"}),
        ]
        for concurrency in (1, 32):
            for label, options in configs:
                p50, p95, rate = asyncio.run(_bench(Path(tmp), records, concurrency, **options))
                print(f"concurrency {concurrency:2d}  {label:40s} p50 {p50:6.2f} ms  p95 {p95:6.2f} ms  "
                      f"{rate:8.0f} records/s")


if __name__ == "__main__":  # pragma: no cover
    _main()
