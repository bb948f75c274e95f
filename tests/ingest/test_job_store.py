"""The ingestion job store answers "not found" for unknown jobs, also in a tenant that has no job yet."""

from __future__ import annotations

from pathlib import Path

import pytest

from kontor.servers.ingest.jobs import JobNotFound, JobStore


async def test_unknown_job_in_a_tenant_without_jobs_is_not_found(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs" / "jobs.db")  # never initialised: no table yet
    try:
        with pytest.raises(JobNotFound):
            await store.report("no-such-job")
        with pytest.raises(JobNotFound):
            await store.request_cancel("no-such-job")
    finally:
        await store.close()
