"""The audit log: hash chain, tamper detection, anchor, durability under kill -9, group commit.

The storage tests run on SQLite (the default: a file) and on a fresh database of the throwaway
PostgreSQL server from ``tests/conftest.py`` (the anchor file then lies in the test's tmp_path).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from kontor.gateway.audit import (
    GENESIS,
    AuditEvent,
    AuditIntegrityError,
    AuditLog,
    AuditWriteError,
    hash_arguments,
    record_hash,
)

REPO = Path(__file__).resolve().parents[2]


def call(i: int, tenant: str = "acme", **extra: object) -> AuditEvent:
    fields: dict = dict(tenant=tenant, subject=f"user{i % 3}@acme.de", client_id="claude-desktop",
                        tool="lakehouse__search", arguments={"query": f"q{i}"}, decision="allowed",
                        status="ok", latency_ms=1.5 + i, upstream="lakehouse")
    fields.update(extra)
    return AuditEvent.tool_call(**fields)


async def fill(log: AuditLog, n: int) -> None:
    for i in range(n):
        await log.append(call(i))


@dataclass(frozen=True)
class Store:
    """Where a test's audit log lives: a SQLite file (anchor beside it), or a PostgreSQL URL plus an anchor path."""

    location: str | Path
    anchor_path: Path | None = None

    @property
    def url(self) -> str:
        return self.location if isinstance(self.location, str) else f"sqlite+aiosqlite:///{self.location}"

    def log(self, **options: Any) -> AuditLog:
        """A new (not yet initialised) AuditLog on this store."""
        return AuditLog(self.location, anchor_path=self.anchor_path, **options)

    async def raw(self, sql: str, **params: object) -> None:
        """Run SQL behind the log's back, as someone with write access to the database would."""
        engine = create_async_engine(self.url)
        try:
            async with engine.begin() as conn:
                await conn.execute(text(sql), params)
        finally:
            await engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "sqlite":
        return Store(tmp_path / "audit" / "audit.db")
    return Store(str(request.getfixturevalue("pg_url")), tmp_path / "audit.anchor.json")


@pytest.fixture
async def log(store: Store) -> AsyncIterator[AuditLog]:
    audit = store.log()
    await audit.init()
    yield audit
    await audit.close()


def files_containing(directory: Path, needle: bytes) -> dict[str, bool]:
    """Every file in ``directory`` -> whether its bytes contain ``needle``."""
    return {p.name: needle in p.read_bytes() for p in directory.iterdir() if p.is_file()}


async def test_chain_verifies_and_records_hold_the_fields(log: AuditLog) -> None:
    assert (await log.verify()).ok  # empty log
    seqs = [await log.append(call(i)) for i in range(10)]
    assert seqs == list(range(1, 11))
    denied = await log.append(AuditEvent.tool_call(tenant="acme", subject="eve", client_id="x", tool="law__search",
                                                   arguments={}, decision="denied", reason="insufficient_scope"))
    result = await log.verify()
    assert result.ok and result.checked == 11 and result.head_seq == 11 and result.first_bad_seq is None
    newest = await log.query(tenant="acme", limit=2)
    assert [r.seq for r in newest] == [denied, 10]
    assert newest[0].decision == "denied" and newest[0].reason == "insufficient_scope" and newest[0].status is None
    first = (await log.query(tenant="acme", before_seq=2, limit=5))[0]
    assert first.seq == 1 and first.prev_hash == GENESIS
    assert first.args_sha256 == hash_arguments({"query": "q0"})
    assert first.tool == "lakehouse__search" and first.client_id == "claude-desktop" and first.upstream == "lakehouse"
    assert first.latency_ms == 1.5 and first.ts.endswith("Z")
    assert first.hash == record_hash(first.__dict__)
    second = (await log.query(before_seq=3, limit=1))[0]
    assert second.prev_hash == first.hash


async def test_query_filters_by_tenant(log: AuditLog) -> None:
    for i in range(6):
        await log.append(call(i, tenant="acme" if i % 2 else "globex"))
    assert {r.tenant for r in await log.query(tenant="globex", limit=100)} == {"globex"}
    assert len(await log.query(tenant="acme", limit=100)) == 3
    assert len(await log.query(tenant="acme", limit=2)) == 2
    assert await log.query(tenant="nobody") == []


def test_arguments_hash_is_canonical() -> None:
    assert hash_arguments({"b": 1, "a": [1, "ü"]}) == hash_arguments({"a": [1, "ü"], "b": 1})
    assert hash_arguments({"a": 1}) != hash_arguments({"a": "1"})
    assert hash_arguments(None) == hash_arguments({})
    with pytest.raises(ValueError):
        AuditEvent(tenant="acme", decision="allowed", args_sha256='{"secret": 1}')  # arguments in the hash field
    with pytest.raises(ValueError):
        AuditEvent(tenant="acme", decision="maybe")


async def test_edited_middle_record_is_detected(store: Store, log: AuditLog) -> None:
    await fill(log, 12)
    await store.raw("UPDATE audit_log SET tenant = 'globex' WHERE seq = 7")
    result = await log.verify()
    assert not result.ok and result.first_bad_seq == 7 and "altered" in result.reason
    assert result.checked == 6


async def test_edited_and_rehashed_record_breaks_the_next_link(store: Store, log: AuditLog) -> None:
    await fill(log, 12)
    record = (await log.query(before_seq=8, limit=1))[0]
    edited = dict(record.__dict__, decision="denied")
    await store.raw("UPDATE audit_log SET decision = 'denied', hash = :h WHERE seq = 7", h=record_hash(edited))
    result = await log.verify()
    assert not result.ok and result.first_bad_seq == 8 and "does not link" in result.reason


async def test_deleted_middle_record_is_detected(store: Store, log: AuditLog) -> None:
    await fill(log, 12)
    await store.raw("DELETE FROM audit_log WHERE seq = 5")
    result = await log.verify()
    assert not result.ok and result.first_bad_seq == 5 and "missing" in result.reason


async def test_deleted_and_renumbered_record_is_detected(store: Store, log: AuditLog) -> None:
    await fill(log, 12)
    await store.raw("DELETE FROM audit_log WHERE seq = 5")
    await store.raw("UPDATE audit_log SET seq = seq - 1 WHERE seq > 5")  # close the gap
    result = await log.verify()
    assert not result.ok and result.first_bad_seq == 5


async def test_reordered_records_are_detected(store: Store, log: AuditLog) -> None:
    await fill(log, 12)
    await store.raw("UPDATE audit_log SET seq = -1 WHERE seq = 6")
    await store.raw("UPDATE audit_log SET seq = 6 WHERE seq = 7")
    await store.raw("UPDATE audit_log SET seq = 7 WHERE seq = -1")
    result = await log.verify()
    assert not result.ok and result.first_bad_seq == 6


async def test_truncated_tail_is_detected_by_the_anchor(store: Store) -> None:
    async with store.log() as log:
        await fill(log, 20)
        await log.write_anchor()
        anchor = json.loads(log.anchor_path.read_text())
        assert anchor["seq"] == 20 and anchor["hash"] == log.head[1]
        await store.raw("DELETE FROM audit_log WHERE seq > 17")
        result = await log.verify()
        assert not result.ok and result.first_bad_seq == 18 and "truncated" in result.reason
        assert result.checked == 17 and result.anchor_seq == 20
        # Without the anchor the shorter chain is internally valid: exactly why the anchor exists.
        log.anchor_path.unlink()
        result = await log.verify()
        assert result.ok and result.anchor_seq is None
        log.anchor_path.write_text(json.dumps(anchor))
    with pytest.raises(AuditIntegrityError, match="truncated"):
        await store.log().init()  # appending on top would overwrite the evidence


async def test_rewritten_tail_is_detected_by_the_anchor(store: Store) -> None:
    async with store.log() as log:
        await fill(log, 10)
    await store.raw("DELETE FROM audit_log WHERE seq > 8")  # cut the tail, then write new records past it
    with pytest.raises(AuditIntegrityError, match="truncated"):
        await store.log().init()
    rebuilt = store.log()
    await rebuilt.init(check_anchor=False)
    await fill(rebuilt, 5)  # seq 9..13: a valid chain, but seq 10 is not the anchored record
    result = await rebuilt.verify()
    assert not result.ok and result.first_bad_seq == 10 and "anchor" in result.reason
    await rebuilt.close()


async def test_anchor_is_updated_periodically_and_on_close(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.db", anchor_interval_s=0.0)
    await log.init()
    await log.append(call(1))
    for _ in range(200):  # written by the writer task right after the commit, off the caller's path
        if log.anchor_path.exists():
            break
        await asyncio.sleep(0.01)
    assert json.loads(log.anchor_path.read_text())["seq"] == 1
    idle = AuditLog(tmp_path / "c.db", anchor_interval_s=0.2)
    await idle.init()
    await idle.append(call(1))  # not due yet; the writer schedules it for later
    assert not idle.anchor_path.exists()
    for _ in range(200):
        if idle.anchor_path.exists():
            break
        await asyncio.sleep(0.01)
    assert json.loads(idle.anchor_path.read_text())["seq"] == 1  # with no further appends
    await idle.close()
    slow = AuditLog(tmp_path / "b.db", anchor_interval_s=3600)
    await slow.init()
    await fill(slow, 3)
    assert not slow.anchor_path.exists()
    await slow.close()
    assert json.loads(slow.anchor_path.read_text())["seq"] == 3
    await log.close()


async def test_concurrent_appends_are_gapless_and_group_committed(log: AuditLog) -> None:
    seqs = await asyncio.gather(*(log.append(call(i)) for i in range(100)))
    assert sorted(seqs) == list(range(1, 101))
    assert log.commits < 100  # appends queued during a commit joined a later one
    result = await log.verify()
    assert result.ok and result.checked == 100
    seqs = await asyncio.gather(*(log.append(call(i)) for i in range(100)))
    assert sorted(seqs) == list(range(101, 201))
    assert (await log.verify()).ok


async def test_reopen_continues_the_chain(store: Store) -> None:
    async with store.log() as log:
        await fill(log, 3)
    async with store.log() as log:
        assert await log.append(call(4)) == 4
        result = await log.verify()
        assert result.ok and result.checked == 4


async def test_arguments_never_reach_the_disk(tmp_path: Path) -> None:
    canary = "CANARY-7f3a9c-do-not-store"
    db = tmp_path / "audit.db"
    async with AuditLog(db) as log:
        await log.append(AuditEvent.tool_call(tenant="acme", subject="alice", client_id="c", tool="ctax__compute",
                                              arguments={"iban": canary, "nested": {"x": [canary]}},
                                              decision="allowed", status="ok", latency_ms=3.0, upstream="ctax"))
        found = files_containing(tmp_path, canary.encode())
        assert any(name.endswith("-wal") for name in found)  # checked while the WAL still holds the record
        assert not any(found.values()), found
    found = files_containing(tmp_path, canary.encode())
    assert "audit.db" in found and "audit.db.anchor.json" in found
    assert not any(found.values()), found


async def test_failed_commit_raises_and_the_chain_stays_whole(log: AuditLog, monkeypatch: pytest.MonkeyPatch) -> None:
    await fill(log, 3)
    original = log._commit

    async def broken(rows: list) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(log, "_commit", broken)
    with pytest.raises(AuditWriteError, match="disk full"):
        await log.append(call(99))
    monkeypatch.setattr(log, "_commit", original)
    assert await log.append(call(4)) == 4
    assert (await log.verify()).ok


async def test_closed_log_refuses_appends(store: Store) -> None:
    log = store.log()
    await log.init()
    await log.close()
    with pytest.raises(AuditWriteError):
        await log.append(call(1))


CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from kontor.gateway.audit import AuditEvent, AuditLog

    async def main():
        log = AuditLog(sys.argv[1], anchor_interval_s=0.05)
        await log.init()

        async def worker(n):
            i = 0
            while True:
                seq = await log.append(AuditEvent.tool_call(
                    tenant="acme", subject=f"u{n}", client_id="c", tool="t", arguments={"i": i},
                    decision="allowed", status="ok", latency_ms=1.0, upstream="up"))
                sys.stdout.write(f"{seq}\\n")
                sys.stdout.flush()
                i += 1

        await asyncio.gather(*(worker(n) for n in range(8)))

    asyncio.run(main())
    """
)


async def test_kill_9_loses_no_acknowledged_record(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", CHILD, str(db), stdout=subprocess.PIPE,
                                                cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stdout is not None
    printed: list[int] = []
    started: float | None = None
    async with asyncio.timeout(30):
        # enough records, and appending long enough for several anchors (interval 0.05 s) to be written
        while len(printed) < 400 or started is None or time.monotonic() - started < 0.5:
            line = await proc.stdout.readline()
            if not line:
                break
            printed.append(int(line))
            started = started or time.monotonic()
    proc.send_signal(signal.SIGKILL)  # mid-stream: appends are in flight
    rest = await proc.stdout.read()
    assert await proc.wait() == -signal.SIGKILL
    printed += [int(x) for x in rest.split(b"\n")[:-1]]  # only complete lines count as acknowledged
    assert len(printed) >= 400, "the child did not get going"
    async with AuditLog(db) as log:
        result = await log.verify()
        assert result.ok, result
        assert result.anchor_seq is not None and result.anchor_seq <= result.head_seq
        assert result.head_seq >= max(printed)
        stored = {r.seq for r in await log.query(limit=10_000)}
        assert set(printed) <= stored


async def test_odd_text_does_not_poison_a_batch(log: AuditLog) -> None:
    odd = call(1, tool="bad\ud800name", reason="x" * 5000, subject="nul\x00user")
    # longer than their columns (PostgreSQL enforces those lengths, SQLite does not)
    long = call(2, tenant="t" * 300, kind="k" * 100, trace_id="0" * 100)
    seqs = await asyncio.gather(*(log.append({3: odd, 6: long}.get(i) or call(i)) for i in range(10)))
    assert sorted(seqs) == list(range(1, 11))
    stored = (await log.query(before_seq=5, limit=1))[0]
    assert stored.tool == "bad?name" and len(stored.reason) == 1000 and stored.subject == "nul?user"
    stored = (await log.query(before_seq=8, limit=1))[0]
    assert (len(stored.tenant), len(stored.kind), len(stored.trace_id or "")) == (200, 64, 64)
    assert (await log.verify()).ok
