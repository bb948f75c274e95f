"""Kill the ingest server mid-job, restart it, and get exactly the chunks of a clean run."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import anyio
import lancedb
from mcp import Client

from kontor.servers.ingest.parsepool import ParserPool
from kontor.servers.ingest.pipeline import IngestService, expand_paths
from kontor.settings import Limits, Settings
from tests import samples
from tests.servers_util import http_server, server_env


def _chunks(data_root: Path, tenant: str) -> list[tuple]:
    db = lancedb.connect(str(data_root / "tenants" / tenant / "lance"))
    table = db.open_table("chunks").to_arrow().select(["chunk_id", "text", "char_start", "char_end", "source"])
    rows = table.to_pylist()
    return sorted((r["source"], r["chunk_id"], r["text"], r["char_start"], r["char_end"]) for r in rows)


async def _poll_until(client: Client, job_id: str, predicate, limit_s: float = 120.0) -> dict:
    deadline = time.monotonic() + limit_s
    while True:
        status = (await client.call_tool("job_status", {"job_id": job_id})).structured_content
        if predicate(status):
            return status
        assert time.monotonic() < deadline, f"job did not get there: {status}"
        await anyio.sleep(0.05)


async def test_killed_mid_job_resumes_to_the_same_chunks_as_a_clean_run(tmp_path: Path):
    folder = tmp_path / "import"
    samples.text_corpus(folder, 160, words=(4, 10), paragraphs=(1, 2))
    env = server_env(tmp_path / "crash", "acme", KONTOR_IMPORT_ROOTS=str(folder), KONTOR_INGEST_BATCH_FILES="32")

    with http_server("ingest", env) as (url, proc):
        async with Client(url) as client:
            started = await client.call_tool("ingest_files", {"paths": [str(folder)], "wait": False})
            job_id = started.structured_content["job_id"]
            status = await _poll_until(client, job_id, lambda s: s["ok"] > 0)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
    assert status["pending"] > 0, "the job finished before the kill; make the corpus larger"

    with http_server("ingest", env) as (url, _):
        async with Client(url) as client:
            final = await _poll_until(client, job_id, lambda s: s["state"] not in ("queued", "running"))
    assert final["state"] == "completed" and final["ok"] == 160 and final["failed"] == 0

    clean_root = tmp_path / "clean"
    settings = Settings(data_root=clean_root, tenant="acme", ingest_batch_files=32)
    with ParserPool(Limits(), workers=1) as pool:
        service = IngestService(settings, pool.limits, "acme", pool=pool)
        specs, _ = expand_paths([folder])
        await service.run(await service.job_for_paths(specs, "test"))
        await service.close()

    crashed, clean = _chunks(tmp_path / "crash", "acme"), _chunks(clean_root, "acme")
    assert len(crashed) == len(clean)
    assert crashed == clean
