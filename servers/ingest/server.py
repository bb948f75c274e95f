"""MCP server ``ingest``: turns files into searchable chunks in the tenant's lakehouse.

Tools start ingestion jobs that are recorded in the tenant's job database, report MCP
progress while they run and resume after a restart. The tenant is taken from the
request (:class:`kontor.auth.ServerAuth`: behind the gateway only from its verified token),
never from an argument.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio
from anyio.abc import TaskGroup
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import BaseModel, Field

from kontor.auth import JwksSource, server_auth
from kontor.servers.ingest.jobs import ItemSpec, JobNotFound, JobReport
from kontor.servers.ingest.objectstore import InvalidKey
from kontor.servers.ingest.parsepool import ParserPool
from kontor.servers.ingest.pipeline import (
    IngestService,
    PathNotAllowed,
    check_import_roots,
    expand_paths,
    tenant_import_roots,
)
from kontor.settings import Limits, Settings
from kontor.tenancy import validate_tenant

log = logging.getLogger(__name__)
MAX_PATHS_PER_CALL = 1000


class FileProblem(BaseModel):
    source: str
    code: str | None = None
    reason: str | None = None


class JobResult(BaseModel):
    """The state of an ingestion job and what it produced so far."""

    job_id: str
    state: Literal["queued", "running", "completed", "failed", "cancelled"]
    total: int = Field(description="files in the job")
    ok: int
    skipped: int
    failed: int
    pending: int
    cancelled: int
    documents: int = Field(description="documents written (attachments and archive members count on their own)")
    chunks: int
    failures: list[FileProblem] = Field(default_factory=list)
    skipped_files: list[FileProblem] = Field(default_factory=list)
    message: str | None = None


def job_result(report: JobReport) -> JobResult:
    c = report.counts
    return JobResult(
        job_id=report.job_id, state=report.state,  # type: ignore[arg-type]
        total=report.total, ok=c["ok"], skipped=c["skipped"], failed=c["failed"], pending=c["pending"],
        cancelled=c["cancelled"], documents=report.documents, chunks=report.chunks,
        failures=[FileProblem(**f) for f in report.failures],
        skipped_files=[FileProblem(**f) for f in report.skipped], message=report.message,
    )


@dataclass
class _RunningJob:
    done: anyio.Event = field(default_factory=anyio.Event)
    listeners: list[Any] = field(default_factory=list)
    error: str | None = None


class IngestRuntime:
    """Per-process state: the parser pool, one service per tenant, and the running jobs.

    Jobs of one tenant run one after another (the lakehouse has one writer per tenant);
    they run in the server's task group, so a client that disconnects does not stop them.
    """

    def __init__(self, settings: Settings, limits: Limits) -> None:
        self.settings = settings
        self.limits = limits
        self.pool: ParserPool | None = None
        self.services: dict[str, IngestService] = {}
        self.locks: dict[str, anyio.Lock] = {}
        self.running: dict[str, _RunningJob] = {}
        self.tg: TaskGroup | None = None

    def service(self, tenant: str) -> IngestService:
        validate_tenant(tenant)
        if tenant not in self.services:
            if self.pool is None:
                self.pool = ParserPool(self.limits)
            self.services[tenant] = IngestService(self.settings, self.limits, tenant, pool=self.pool)
            self.locks[tenant] = anyio.Lock()
        return self.services[tenant]

    def start(self, tenant: str, job_id: str) -> _RunningJob:
        running = self.running.setdefault(job_id, _RunningJob())
        assert self.tg is not None, "runtime not started"
        self.tg.start_soon(self._run, tenant, job_id, running)
        return running

    async def _run(self, tenant: str, job_id: str, running: _RunningJob) -> None:
        service = self.service(tenant)

        async def progress(done: int, total: int, message: str) -> None:
            for listener in list(running.listeners):
                try:
                    await listener(done, total, message)
                except Exception:  # a vanished client must not stop the job
                    running.listeners.remove(listener)

        try:
            async with self.locks[tenant]:
                await service.run(job_id, progress)
        except Exception as exc:
            running.error = f"{type(exc).__name__}: {exc}"
        finally:
            running.done.set()
            self.running.pop(job_id, None)

    async def resume_all(self) -> None:
        """Find jobs that an earlier process left unfinished, in every tenant, and run them."""
        tenants_dir = self.settings.data_root / "tenants"
        if not tenants_dir.is_dir():
            return
        for db in sorted(tenants_dir.glob("*/jobs/jobs.db")):
            tenant = db.parent.parent.name
            try:
                service = self.service(tenant)
            except ValueError:
                continue
            for job_id in await service.jobs.unfinished_jobs():
                log.info("resuming job %s of tenant %s", job_id, tenant)
                self.start(tenant, job_id)

    async def close(self) -> None:
        for service in self.services.values():
            await service.close()
        if self.pool is not None:
            self.pool.close()


def build_server(settings: Settings, limits: Limits, *, jwks: JwksSource | None = None) -> MCPServer:
    """The ``ingest`` MCP server; behind the gateway when ``KONTOR_AUTH_JWKS_URL`` is set (``jwks``: tests)."""
    auth = server_auth(settings, jwks)
    runtime = IngestRuntime(settings, limits)

    @asynccontextmanager
    async def lifespan(_: MCPServer) -> AsyncIterator[IngestRuntime]:
        async with anyio.create_task_group() as tg:
            runtime.tg = tg
            await runtime.resume_all()
            try:
                yield runtime
            finally:
                tg.cancel_scope.cancel()
        with anyio.CancelScope(shield=True):
            await runtime.close()

    server = MCPServer(
        "ingest",
        title="Kontor ingest",
        instructions=(
            "Ingests files into the tenant's lakehouse: PDF, DOCX, XLSX, CSV, JSON, XML, BMEcat catalogs, "
            "HTML, Markdown, text, e-mail and ZIP. Use ingest_files for files on the server or object-store "
            "keys, ingest_upload for small files sent as base64; then search them with the lakehouse server."
        ),
        lifespan=lifespan,
        **auth.mcp_kwargs(),
    )

    async def _await_job(ctx: Context, tenant: str, job_id: str, wait: bool) -> JobResult:
        service = runtime.service(tenant)
        running = runtime.start(tenant, job_id)
        if wait:
            async def relay(done: int, total: int, message: str) -> None:
                await ctx.report_progress(done, total, message)

            running.listeners.append(relay)
            await running.done.wait()
            if running.error:
                raise ToolError(f"ingest job {job_id} failed: {running.error}")
        return job_result(await service.jobs.report(job_id))

    write = ToolAnnotations(readOnlyHint=False, destructiveHint=False, idempotentHint=True, openWorldHint=False)

    @server.tool(
        title="Ingest files",
        annotations=write,
        description=(
            "Ingest files or folders (recursively) from the server's allowed import roots, and/or objects "
            "already in the tenant's object store (keys 'tenants/<tenant>/raw/<sha256>/<name>'). Unchanged "
            "files are skipped; changed files replace their earlier chunks. With wait=true the call reports "
            "progress and returns the finished job report; with wait=false it returns the job id at once."
        ),
    )
    async def ingest_files(ctx: Context, paths: list[str] | None = None, keys: list[str] | None = None,
                           wait: bool = True) -> JobResult:
        tenant = auth.tenant()
        paths, keys = paths or [], keys or []
        if not paths and not keys:
            raise ToolError("give at least one entry in 'paths' or 'keys'")
        if len(paths) + len(keys) > MAX_PATHS_PER_CALL:
            raise ToolError(f"at most {MAX_PATHS_PER_CALL} entries in 'paths' and 'keys' together")
        service = runtime.service(tenant)
        try:
            roots = tenant_import_roots(settings.import_roots, tenant, shared_allowed=not settings.behind_gateway)
            resolved = check_import_roots(paths, roots) if paths else []
            specs, problems = expand_paths(resolved)
            if problems:
                raise ToolError("; ".join(f"{p}: {why}" for p, why in problems[:20]))
            for key in keys:
                service.objects.check_tenant(key, tenant)
            specs += [ItemSpec("object", key, key.rsplit("/", 1)[-1]) for key in keys]
            job_id = await service.job_for_paths(specs, "mcp")
        except (PathNotAllowed, InvalidKey, ValueError) as exc:
            raise ToolError(str(exc)) from exc
        return await _await_job(ctx, tenant, job_id, wait)

    @server.tool(
        title="Ingest an uploaded file",
        annotations=write,
        description=(
            "Ingest one small file sent as base64 ('content_base64') under its original file name. The file "
            "is kept in the tenant's object store. Size limit: KONTOR_LIMIT_MAX_UPLOAD_BYTES (decoded)."
        ),
    )
    async def ingest_upload(ctx: Context, name: str, content_base64: str, wait: bool = True) -> JobResult:
        tenant = auth.tenant()
        if not name or len(name) > 255:
            raise ToolError("'name' must be a file name of 1 to 255 characters")
        max_b64 = (limits.max_upload_bytes + 2) // 3 * 4 + 4
        if len(content_base64) > max_b64:
            raise ToolError(f"'content_base64' is larger than the upload limit of {limits.max_upload_bytes} bytes")
        try:
            data = base64.b64decode(content_base64, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ToolError(f"'content_base64' is not valid base64: {exc}") from exc
        if not data:
            raise ToolError("'content_base64' decodes to an empty file")
        service = runtime.service(tenant)
        try:
            job_id = await service.job_for_upload(name, data)
        except ValueError as exc:
            raise ToolError(str(exc)) from exc
        return await _await_job(ctx, tenant, job_id, wait)

    @server.tool(
        title="Ingestion job status",
        annotations=ToolAnnotations(readOnlyHint=True, idempotentHint=True, openWorldHint=False),
        description="State, counts and per-file failures of an ingestion job of this tenant.",
    )
    async def job_status(job_id: str) -> JobResult:
        service = runtime.service(auth.tenant())
        try:
            return job_result(await service.jobs.report(_job_id(job_id)))
        except JobNotFound as exc:
            raise ToolError(f"no ingestion job {job_id!r} in this tenant") from exc

    @server.tool(
        title="Cancel an ingestion job",
        annotations=ToolAnnotations(readOnlyHint=False, destructiveHint=False, idempotentHint=True,
                                    openWorldHint=False),
        description=(
            "Stop a queued or running job after its current batch. Files already ingested stay; the rest "
            "are marked cancelled."
        ),
    )
    async def cancel_job(job_id: str) -> JobResult:
        service = runtime.service(auth.tenant())
        try:
            await service.jobs.request_cancel(_job_id(job_id))
        except JobNotFound as exc:
            raise ToolError(f"no ingestion job {job_id!r} in this tenant") from exc
        return job_result(await service.jobs.report(job_id))

    return server


def _job_id(value: str) -> str:
    if not isinstance(value, str) or len(value) != 32 or any(c not in "0123456789abcdef" for c in value):
        raise ToolError(f"'job_id' {value!r} is not a job id (32 hex characters)")
    return value

