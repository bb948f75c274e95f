"""The ingestion pipeline: files -> raw objects -> parsed trees -> chunks -> vectors -> lakehouse.

Work is done in batches of files: parsing runs in the worker processes of a
:class:`ParserPool` (in parallel), embeddings are computed for the whole batch in one
``encode`` call, and the batch is written to the lakehouse in one transaction per table.
After each batch the job database records every file's outcome, so a restart continues
with exactly the files that were not finished.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import numpy as np

from kontor.paths import TenantPaths, safe_name
from kontor.servers.ingest.chunking import chunk_document
from kontor.servers.ingest.classify import classify_domain
from kontor.servers.ingest.jobs import Item, ItemOutcome, ItemSpec, JobReport, JobStore
from kontor.servers.ingest.model import BLOCK_SEPARATOR, ParsedDocument
from kontor.servers.ingest.objectstore import ObjectStore, object_store_from_settings
from kontor.servers.ingest.parsepool import ParsedNode, ParserPool
from kontor.servers.lakehouse.analysis import extract_identifiers
from kontor.servers.lakehouse.embeddings import Embedder, get_embedder
from kontor.servers.lakehouse.records import ChunkRecord, DocumentRecord, ProductRecord
from kontor.servers.lakehouse.store import LakehouseStore
from kontor.settings import Limits, Settings

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, int, str], Awaitable[None]]
OPTIMIZE_EVERY_FILES = 1024  # keeps the rows the indexes have not seen yet bounded during long jobs
IGNORED_NAMES = {".DS_Store", "Thumbs.db", "desktop.ini"}


class PathNotAllowed(ValueError):
    """A path outside the tenant's allowed import roots."""


def document_id_for(identity: str) -> str:
    return hashlib.sha256(identity.encode("utf-8")).hexdigest()[:32]


def item_identity(item: Item | ItemSpec) -> str:
    return f"file:{item.ref}" if item.kind == "path" else f"object:{item.source}"


@dataclass
class _Prepared:
    """One file of a batch after reading and parsing (in a worker thread)."""

    item: Item
    outcome: ItemOutcome | None = None  # set when the file is finished here (skip / failure)
    nodes: list[ParsedNode] = field(default_factory=list)
    object_key: str | None = None
    started: float = 0.0


@dataclass
class _DocumentPlan:
    record: DocumentRecord
    chunks: list[ChunkRecord]
    embed_texts: list[str]
    products: list[ProductRecord]


def expand_paths(paths: Iterable[Path]) -> tuple[list[ItemSpec], list[tuple[str, str]]]:
    """Files and folders (recursive, sorted) -> item specs, plus (path, reason) for what was skipped."""
    specs: list[ItemSpec] = []
    problems: list[tuple[str, str]] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.exists():
            problems.append((str(raw), "no such file or folder"))
            continue
        if path.is_file():
            resolved = path.resolve()
            specs.append(ItemSpec("path", str(resolved), path.name))
            continue
        base = path.resolve()
        for dirpath, dirnames, filenames in os.walk(base, followlinks=False):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                full = Path(dirpath) / name
                if name.startswith(".") or name in IGNORED_NAMES:
                    continue
                if full.is_symlink() and base not in full.resolve().parents:
                    problems.append((str(full), "symbolic link leaving the folder"))
                    continue
                rel = full.relative_to(base).as_posix()
                specs.append(ItemSpec("path", str(full.resolve()), f"{base.name}/{rel}"))
    return specs, problems


TENANT_PLACEHOLDER = "{tenant}"


def tenant_import_roots(roots: Iterable[Path], tenant: str, *, shared_allowed: bool) -> list[Path]:
    """The import roots one tenant may read: ``{tenant}`` in a root becomes the tenant's id.

    Behind the gateway one server serves every tenant, so a root without the placeholder would be
    readable by all of them: such roots count only when ``shared_allowed`` (a single-tenant server).
    """
    out: list[Path] = []
    for root in roots:
        text = str(root)
        if TENANT_PLACEHOLDER in text:
            out.append(Path(text.replace(TENANT_PLACEHOLDER, tenant)))
        elif shared_allowed:
            out.append(root)
    return out


def check_import_roots(paths: Iterable[str], roots: list[Path]) -> list[Path]:
    """Resolve each path and refuse any outside the configured import roots."""
    resolved_roots = [r.expanduser().resolve() for r in roots]
    out: list[Path] = []
    for p in paths:
        if not isinstance(p, str) or not p or "\x00" in p:
            raise PathNotAllowed(f"invalid path {p!r}")
        path = Path(p).expanduser().resolve()
        if not any(path == r or r in path.parents for r in resolved_roots):
            allowed = ", ".join(str(r) for r in resolved_roots) or \
                "none configured for this tenant (KONTOR_IMPORT_ROOTS; use {tenant} in a root behind the gateway)"
            raise PathNotAllowed(f"path {p!r} is outside the allowed import roots ({allowed})")
        out.append(path)
    return out


class IngestService:
    """Ingestion for one tenant: creates and runs jobs. Shared heavy parts are passed in."""

    def __init__(
        self,
        settings: Settings,
        limits: Limits,
        tenant: str,
        *,
        pool: ParserPool,
        object_store: ObjectStore | None = None,
        embedder: Embedder | None = None,
    ) -> None:
        self.settings = settings
        self.limits = limits
        self.tenant = tenant
        self.paths = TenantPaths(settings.data_root, tenant).ensure()
        self.jobs = JobStore(self.paths.jobs / "jobs.db")
        self.pool = pool
        self.objects = object_store or object_store_from_settings(settings)
        self._embedder = embedder
        self._store: LakehouseStore | None = None

    # -- lazily loaded heavy parts ---------------------------------------------------------
    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            s = self.settings
            self._embedder = get_embedder(s.embedding_model, s.embedding_device, s.embedding_batch_size)
        return self._embedder

    @property
    def store(self) -> LakehouseStore:
        if self._store is None:
            self._store = LakehouseStore(self.paths, self.embedder.spec)
        return self._store

    async def close(self) -> None:
        await self.jobs.close()

    # -- creating jobs -----------------------------------------------------------------------
    async def job_for_paths(self, specs: list[ItemSpec], origin: str) -> str:
        if len(specs) > self.limits.max_batch_files:
            raise ValueError(f"{len(specs)} files in one job, over the limit of {self.limits.max_batch_files}")
        return await self.jobs.create(specs, origin)

    async def job_for_upload(self, name: str, data: bytes) -> str:
        if len(data) > self.limits.max_upload_bytes:
            raise ValueError(f"upload is {len(data)} bytes, over the limit of {self.limits.max_upload_bytes}")
        sha = hashlib.sha256(data).hexdigest()
        clean = safe_name(name)
        key = await anyio.to_thread.run_sync(self.objects.put, self.tenant, sha, clean, data)
        return await self.jobs.create([ItemSpec("object", key, clean)], "upload")

    # -- running -----------------------------------------------------------------------------
    async def run(self, job_id: str, progress: ProgressFn | None = None) -> JobReport:
        items = await self.jobs.pending_items(job_id)
        report = await self.jobs.report(job_id)
        total = report.total
        done = total - len(items)
        await self.jobs.set_state(job_id, "running")
        try:
            if items:
                # The model and tables open before the first batch, in a thread: loading is slow.
                await anyio.to_thread.run_sync(lambda: self.store)
            size = self.settings.ingest_batch_files
            optimize_every = max(1, OPTIMIZE_EVERY_FILES // size)
            for start in range(0, len(items), size):
                if await self.jobs.cancel_requested(job_id):
                    await self.jobs.cancel_pending(job_id)
                    await self.jobs.set_state(job_id, "cancelled", "cancelled on request")
                    return await self.jobs.report(job_id)
                batch = items[start : start + size]
                outcomes = await self._run_batch(batch)
                await self.jobs.record(outcomes)
                done += len(batch)
                if (start // size + 1) % optimize_every == 0:
                    await anyio.to_thread.run_sync(self.store.optimize)
                if progress is not None:
                    await progress(done, total, f"{done}/{total} files")
            if items:
                await anyio.to_thread.run_sync(self.store.optimize)
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                if not isinstance(exc, Exception):
                    raise  # cancelled or killed: the job stays "running" and resumes on restart
                log.exception("job %s failed", job_id)
                await self.jobs.set_state(job_id, "failed", f"{type(exc).__name__}: {exc}")
            raise
        await self.jobs.set_state(job_id, "completed")
        return await self.jobs.report(job_id)

    async def resume_unfinished(self, progress: ProgressFn | None = None) -> list[str]:
        """Run every job left queued or running by an earlier process; returns their ids."""
        resumed = await self.jobs.unfinished_jobs()
        for job_id in resumed:
            log.info("resuming ingest job %s for tenant %s", job_id, self.tenant)
            await self.run(job_id, progress)
        return resumed

    async def _run_batch(self, batch: list[Item]) -> dict[int, ItemOutcome]:
        prepared: list[_Prepared] = [_Prepared(item) for item in batch]
        limiter = anyio.CapacityLimiter(self.pool.size)

        async def prepare(p: _Prepared) -> None:
            await anyio.to_thread.run_sync(self._prepare, p, limiter=limiter)

        async with anyio.create_task_group() as tg:
            for p in prepared:
                tg.start_soon(prepare, p)
        return await anyio.to_thread.run_sync(self._finish_batch, prepared)

    def _read(self, item: Item) -> bytes:
        if item.kind == "path":
            path = Path(item.ref)
            size = path.stat().st_size
            if size > self.limits.max_file_bytes:
                raise ValueError(f"file is {size} bytes, over the limit of {self.limits.max_file_bytes}")
            return path.read_bytes()
        self.objects.check_tenant(item.ref, self.tenant)
        return self.objects.get(item.ref, tenant=self.tenant)

    def _prepare(self, p: _Prepared) -> None:
        """Read, skip if unchanged, keep the raw object, parse (worker thread)."""
        p.started = time.monotonic()
        item = p.item
        try:
            data = self._read(item)
        except FileNotFoundError:
            p.outcome = ItemOutcome("failed", "file not found", "not_found")
            return
        except (OSError, ValueError) as exc:
            p.outcome = ItemOutcome("failed", str(exc), "unreadable")
            return
        if not data:
            p.outcome = ItemOutcome("failed", "file is empty", "corrupt_file")
            return
        sha = hashlib.sha256(data).hexdigest()
        if self.store.document_hash(document_id_for(item_identity(item))) == sha:
            p.outcome = ItemOutcome("skipped", "unchanged since the last ingest", "unchanged")
            return
        result = self.pool.parse(data, item.source)
        if result.error_code:
            p.outcome = ItemOutcome("failed", result.error, result.error_code)
            return
        top = result.nodes[0]
        if top.parsed is None:
            p.outcome = ItemOutcome("failed", top.error, top.error_code)
            return
        p.nodes = result.nodes
        p.object_key = (
            item.ref if item.kind == "object" else self.objects.put(self.tenant, sha, safe_name(item.source), data)
        )

    def _plan_documents(self, p: _Prepared) -> list[_DocumentPlan]:
        identity = item_identity(p.item)
        now = datetime.now(UTC).isoformat(timespec="seconds")
        plans: list[_DocumentPlan] = []
        ids: list[str] = []
        for node in p.nodes:
            suffix = "!/".join(node.path[1:])
            ids.append(document_id_for(identity + ("!/" + suffix if suffix else "")))
        parents = {child: i for i, node in enumerate(p.nodes) for child in node.children}
        for i, node in enumerate(p.nodes):
            if node.parsed is None:
                continue
            parent_index = parents.get(i)
            if parent_index is not None and p.nodes[parent_index].parsed is None:
                continue
            source = p.item.source + "".join("!/" + part for part in node.path[1:])
            plans.append(self._plan_one(node, node.parsed, ids[i], source,
                                        ids[parent_index] if parent_index is not None else None,
                                        p.object_key if i == 0 else None, now))
        return plans

    def _plan_one(self, node: ParsedNode, doc: ParsedDocument, doc_id: str, source: str,
                  parent_id: str | None, object_key: str | None, now: str) -> _DocumentPlan:
        text = doc.text
        domain, cues = classify_domain(doc.title, text, doc.mime, bool(doc.products),
                                       product_count=len(doc.products))
        chunks = chunk_document(doc, document_id=doc_id, source=source, domain=domain,
                                target_chars=self.settings.chunk_size, overlap_chars=self.settings.chunk_overlap)
        product_ids = _product_identifiers(doc)
        for chunk in chunks:
            ids = set(extract_identifiers(chunk.text))
            for start, identifiers in product_ids:
                if chunk.char_start <= start < chunk.char_end:
                    ids.update(identifiers)
            chunk.identifiers = sorted(ids)
        record = DocumentRecord(
            document_id=doc_id, source=source, title=doc.title or source.rsplit("/", 1)[-1], mime=doc.mime,
            content_sha256=node.sha256, size_bytes=node.size, domain=domain, domain_cues=cues, text=text,
            pages=doc.pages, parent_id=parent_id, object_key=object_key,
            metadata=dict(doc.metadata), ingested_at=now,
        )
        products = [_product_row(doc_id, prod) for prod in doc.products]
        embed_texts = [embedding_text(record.title, c) for c in chunks]
        return _DocumentPlan(record, chunks, embed_texts, products)

    def _finish_batch(self, prepared: list[_Prepared]) -> dict[int, ItemOutcome]:
        """Chunk, embed and write every parsed file of the batch (worker thread)."""
        outcomes: dict[int, ItemOutcome] = {}
        plans_by_item: dict[int, list[_DocumentPlan]] = {}
        for p in prepared:
            if p.outcome is not None:
                outcomes[p.item.id] = p.outcome
                continue
            try:
                plans_by_item[p.item.id] = self._plan_documents(p)
            except Exception as exc:  # a chunker/classifier bug fails this file only
                log.exception("could not prepare %s", p.item.source)
                outcomes[p.item.id] = ItemOutcome("failed", f"could not prepare: {exc}", "handler_error")
        plans = [plan for group in plans_by_item.values() for plan in group]
        texts = [t for plan in plans for t in plan.embed_texts]
        vectors = self.embedder.encode(texts) if texts else np.zeros((0, self.embedder.dim), np.float32)
        batch: list[tuple[DocumentRecord, list[ChunkRecord], np.ndarray, list[ProductRecord]]] = []
        offset = 0
        for plan in plans:
            n = len(plan.chunks)
            batch.append((plan.record, plan.chunks, vectors[offset : offset + n], plan.products))
            offset += n
        if batch:
            stale: list[str] = []
            for item_plans in plans_by_item.values():
                top = item_plans[0].record
                keep = {pl.record.document_id for pl in item_plans}
                stale.extend(self._stale_descendants(top.document_id, keep))
            if stale:
                self.store.delete_documents(stale)
            self.store.write_documents(batch)
        by_id = {p.item.id: p for p in prepared}
        for item_id, item_plans in plans_by_item.items():
            p = by_id[item_id]
            failed_children = [n for n in p.nodes[1:] if n.parsed is None]
            reason = None
            if failed_children:
                reason = "; ".join(f"{'!/'.join(n.path[1:])}: {n.error}" for n in failed_children[:10])
            outcomes[item_id] = ItemOutcome(
                "ok", reason, "partial" if failed_children else None, documents=len(item_plans),
                chunks=sum(len(pl.chunks) for pl in item_plans),
                seconds=round(time.monotonic() - p.started, 3),
            )
        return outcomes

    def _stale_descendants(self, document_id: str, keep: set[str]) -> list[str]:
        stale: list[str] = []
        frontier = [document_id]
        while frontier:
            current = frontier.pop()
            for child in self.store.children_of(current):
                frontier.append(child)
                if child not in keep:
                    stale.append(child)
        return stale


def embedding_text(title: str, chunk: ChunkRecord) -> str:
    """What is embedded: the chunk with its title and section as context."""
    head = " — ".join(x for x in (title, chunk.section) if x)
    return f"{head}\n{chunk.text}" if head and not chunk.text.startswith(title) else chunk.text


def _product_identifiers(doc: ParsedDocument) -> list[tuple[int, list[str]]]:
    """(character offset of each product block, that product's identifiers)."""
    out: list[tuple[int, list[str]]] = []
    offset = 0
    products = iter(doc.products)
    for block in doc.blocks:
        if block.kind == "product":
            product = next(products, None)
            if product is not None:
                ids = [product.supplier_pid, product.gtin, product.manufacturer_pid, product.classification_class]
                out.append((offset, [i for i in ids if i]))
        offset += len(block.text) + len(BLOCK_SEPARATOR)
    return out


def _product_row(document_id: str, product: Any) -> ProductRecord:
    return ProductRecord(
        document_id=document_id, supplier_pid=product.supplier_pid, gtin=product.gtin,
        manufacturer_pid=product.manufacturer_pid, manufacturer_name=product.manufacturer_name,
        name=product.name, description=product.description,
        classification_system=product.classification_system,
        classification_class=product.classification_class,
        features_json=json.dumps(product.features, ensure_ascii=False),
        order_unit=product.order_unit, price=product.price, currency=product.currency,
    )
