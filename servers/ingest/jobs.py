"""Ingestion jobs recorded in the tenant's job database (SQLAlchemy + aiosqlite).

A job is a list of items (files, uploads, object-store keys). Items move
``pending -> ok | skipped | failed | cancelled``; the job ends when no item is pending.
Because every item's outcome is committed after its documents reached the lakehouse, an
ingest server killed mid-job finds the unfinished items on restart and processes exactly
those again (the lakehouse write replaces partial leftovers by document id).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import ForeignKey, Integer, String, Text, event, func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

JobState = Literal["queued", "running", "completed", "failed", "cancelled"]
ItemState = Literal["pending", "ok", "skipped", "failed", "cancelled"]
ItemKind = Literal["path", "object"]
ACTIVE_STATES = ("queued", "running")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class Base(DeclarativeBase):
    pass


class JobRow(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    state: Mapped[str] = mapped_column(String(16), index=True)
    created_at: Mapped[str] = mapped_column(String(32))
    updated_at: Mapped[str] = mapped_column(String(32))
    finished_at: Mapped[str | None] = mapped_column(String(32), nullable=True)
    origin: Mapped[str] = mapped_column(String(32))  # cli | mcp | upload
    cancel_requested: Mapped[int] = mapped_column(Integer, default=0)
    message: Mapped[str | None] = mapped_column(Text, nullable=True)


class ItemRow(Base):
    __tablename__ = "job_items"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(8))
    ref: Mapped[str] = mapped_column(Text)  # absolute path or object-store key
    source: Mapped[str] = mapped_column(Text)  # display name used in citations
    state: Mapped[str] = mapped_column(String(16), index=True, default="pending")
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    code: Mapped[str | None] = mapped_column(String(32), nullable=True)
    documents: Mapped[int] = mapped_column(Integer, default=0)
    chunks: Mapped[int] = mapped_column(Integer, default=0)
    seconds: Mapped[float | None] = mapped_column(nullable=True)


@dataclass
class ItemSpec:
    kind: ItemKind
    ref: str
    source: str


@dataclass
class Item:
    id: int
    position: int
    kind: ItemKind
    ref: str
    source: str
    state: ItemState = "pending"


@dataclass
class ItemOutcome:
    state: ItemState
    reason: str | None = None
    code: str | None = None
    documents: int = 0
    chunks: int = 0
    seconds: float | None = None


@dataclass
class JobReport:
    job_id: str
    state: str
    created_at: str
    finished_at: str | None
    total: int
    counts: dict[str, int]
    documents: int
    chunks: int
    failures: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    message: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "state": self.state,
            "created_at": self.created_at,
            "finished_at": self.finished_at,
            "total": self.total,
            "counts": self.counts,
            "documents": self.documents,
            "chunks": self.chunks,
            "failures": self.failures,
            "skipped": self.skipped,
            "message": self.message,
        }


class JobNotFound(LookupError):
    pass


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


class JobStore:
    """The job database of one tenant (``tenants/<t>/jobs/jobs.db``)."""

    def __init__(self, db_path: Path) -> None:
        db_path.parent.mkdir(parents=True, exist_ok=True)
        self.engine: AsyncEngine = create_async_engine(f"sqlite+aiosqlite:///{db_path}")
        event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self._session = async_sessionmaker(self.engine, expire_on_commit=False)
        self._ready = False

    async def init(self) -> JobStore:
        if not self._ready:
            async with self.engine.begin() as conn:
                await conn.run_sync(Base.metadata.create_all)
            self._ready = True
        return self

    async def close(self) -> None:
        await self.engine.dispose()

    async def create(self, items: list[ItemSpec], origin: str) -> str:
        await self.init()
        job_id = uuid.uuid4().hex
        now = _now()
        async with self._session() as session, session.begin():
            session.add(JobRow(id=job_id, state="queued", created_at=now, updated_at=now, origin=origin))
            await session.flush()
            session.add_all(
                ItemRow(job_id=job_id, position=i, kind=s.kind, ref=s.ref, source=s.source, state="pending")
                for i, s in enumerate(items)
            )
        return job_id

    async def pending_items(self, job_id: str) -> list[Item]:
        async with self._session() as session:
            rows = await session.scalars(
                select(ItemRow)
                .where(ItemRow.job_id == job_id, ItemRow.state == "pending")
                .order_by(ItemRow.position)
            )
            return [Item(r.id, r.position, r.kind, r.ref, r.source) for r in rows]  # type: ignore[arg-type]

    async def set_state(self, job_id: str, state: JobState, message: str | None = None) -> None:
        values: dict[str, Any] = {"state": state, "updated_at": _now()}
        if state in ("completed", "failed", "cancelled"):
            values["finished_at"] = values["updated_at"]
        if message is not None:
            values["message"] = message
        async with self._session() as session, session.begin():
            await session.execute(update(JobRow).where(JobRow.id == job_id).values(**values))

    async def record(self, outcomes: dict[int, ItemOutcome]) -> None:
        """Commit the outcomes of several items in one transaction."""
        if not outcomes:
            return
        async with self._session() as session, session.begin():
            for item_id, o in outcomes.items():
                await session.execute(
                    update(ItemRow)
                    .where(ItemRow.id == item_id)
                    .values(state=o.state, reason=o.reason, code=o.code, documents=o.documents,
                            chunks=o.chunks, seconds=o.seconds)
                )

    async def request_cancel(self, job_id: str) -> str:
        await self.init()  # a tenant without jobs yet has no table: the answer is "not found", not a DB error
        async with self._session() as session, session.begin():
            job = await session.get(JobRow, job_id)
            if job is None:
                raise JobNotFound(job_id)
            if job.state in ACTIVE_STATES:
                job.cancel_requested = 1
                job.updated_at = _now()
            return job.state

    async def cancel_requested(self, job_id: str) -> bool:
        async with self._session() as session:
            job = await session.get(JobRow, job_id)
            return bool(job and job.cancel_requested)

    async def cancel_pending(self, job_id: str) -> None:
        async with self._session() as session, session.begin():
            await session.execute(
                update(ItemRow)
                .where(ItemRow.job_id == job_id, ItemRow.state == "pending")
                .values(state="cancelled", reason="job cancelled before this file was processed")
            )

    async def unfinished_jobs(self) -> list[str]:
        await self.init()
        async with self._session() as session:
            rows = await session.scalars(
                select(JobRow.id).where(JobRow.state.in_(ACTIVE_STATES)).order_by(JobRow.created_at)
            )
            return list(rows)

    async def report(self, job_id: str, max_listed: int = 200) -> JobReport:
        await self.init()
        async with self._session() as session:
            job = await session.get(JobRow, job_id)
            if job is None:
                raise JobNotFound(job_id)
            counts_rows = await session.execute(
                select(ItemRow.state, func.count(), func.sum(ItemRow.documents), func.sum(ItemRow.chunks))
                .where(ItemRow.job_id == job_id)
                .group_by(ItemRow.state)
            )
            counts = {s: 0 for s in ("pending", "ok", "skipped", "failed", "cancelled")}
            documents = chunks = 0
            for state, n, docs, ch in counts_rows:
                counts[state] = int(n)
                documents += int(docs or 0)
                chunks += int(ch or 0)
            listed: dict[str, list[dict[str, Any]]] = {"failed": [], "skipped": []}
            for state in listed:
                rows = await session.scalars(
                    select(ItemRow)
                    .where(ItemRow.job_id == job_id, ItemRow.state == state)
                    .order_by(ItemRow.position)
                    .limit(max_listed)
                )
                listed[state] = [{"source": r.source, "code": r.code, "reason": r.reason} for r in rows]
            return JobReport(
                job_id=job.id,
                state=job.state,
                created_at=job.created_at,
                finished_at=job.finished_at,
                total=sum(counts.values()),
                counts=counts,
                documents=documents,
                chunks=chunks,
                failures=listed["failed"],
                skipped=listed["skipped"],
                message=job.message,
            )
