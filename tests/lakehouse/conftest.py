"""Fixtures for the lakehouse tests: one embedding model per session, small German corpora."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

from kontor.paths import TenantPaths
from kontor.servers.lakehouse.analysis import extract_identifiers
from kontor.servers.lakehouse.embeddings import Embedder, EmbeddingSpec, get_embedder
from kontor.servers.lakehouse.records import ChunkRecord, DocumentRecord, ProductRecord
from kontor.servers.lakehouse.store import LakehouseStore

MODEL = "all-MiniLM-L6-v2"

Batch = tuple[DocumentRecord, list[ChunkRecord], np.ndarray, list[ProductRecord]]


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    # Same positional arguments as the server uses, so both share the lru_cache entry.
    return get_embedder(MODEL, "cpu", 64)


@pytest.fixture(scope="session")
def qvec(embedder: Embedder) -> Callable[[str], np.ndarray]:
    """Query vectors, encoded once per session (each encode call has a fixed cost)."""
    return lru_cache(maxsize=None)(embedder.encode_one)


def embed_batches(embedder: Embedder, batches: list[Batch]) -> list[Batch]:
    """Real vectors for all chunks of ``batches`` in one encode call."""
    texts = [c.text for _, chunks, _, _ in batches for c in chunks]
    vectors = embedder.encode(texts)
    out: list[Batch] = []
    offset = 0
    for doc, chunks, _, products in batches:
        out.append((doc, chunks, vectors[offset:offset + len(chunks)], products))
        offset += len(chunks)
    return out


def doc_id(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()[:32]


def make_document(
    vectors_for: Embedder | EmbeddingSpec,
    name: str,
    paragraphs: list[str],
    *,
    title: str | None = None,
    domain: str = "general",
    source: str | None = None,
    mime: str = "text/plain",
    kind: str = "paragraph",
    parent_id: str | None = None,
    products: list[dict[str, object]] | None = None,
    sha: str | None = None,
) -> Batch:
    """A document whose chunks are its paragraphs, with real (Embedder) or seeded random vectors."""
    did = doc_id(name)
    text = "\n\n".join(paragraphs)
    title = title or name
    source = source or f"docs/{name}.txt"
    doc = DocumentRecord(
        document_id=did, source=source, title=title, mime=mime,
        content_sha256=sha or hashlib.sha256(text.encode()).hexdigest(), size_bytes=len(text.encode()),
        domain=domain, domain_cues=[f"test:{domain}"], text=text, pages=1, parent_id=parent_id,
        object_key=f"raw/{name}", metadata={"name": name}, ingested_at="2024-05-01T10:00:00+00:00",
    )
    chunks: list[ChunkRecord] = []
    offset = 0
    for i, para in enumerate(paragraphs):
        start = text.index(para, offset)
        offset = start + len(para)
        chunks.append(ChunkRecord(
            chunk_id=f"{did}:{i}", document_id=did, ordinal=i, text=para, source=source, title=title,
            domain=domain, kind=kind, page=1, sheet=None, section=None, char_start=start, char_end=offset,
            identifiers=extract_identifiers(para),
        ))
    if isinstance(vectors_for, Embedder):
        vectors = vectors_for.encode([c.text for c in chunks])
    else:
        seed = int(did[:8], 16)
        vectors = np.random.default_rng(seed).standard_normal((len(chunks), vectors_for.dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    prods = [_product(did, p) for p in (products or [])]
    return doc, chunks, vectors, prods


def _product(document_id: str, fields: dict[str, object]) -> ProductRecord:
    def text(key: str) -> str | None:
        value = fields.get(key)
        return None if value is None else str(value)

    price = fields.get("price")
    return ProductRecord(
        document_id=document_id, supplier_pid=str(fields["supplier_pid"]), gtin=text("gtin"),
        manufacturer_pid=text("manufacturer_pid"), manufacturer_name=text("manufacturer_name"), name=text("name"),
        description=text("description"), classification_system=text("classification_system"),
        classification_class=text("classification_class"), features_json="[]",
        price=float(price) if isinstance(price, int | float) else None, currency="EUR",
    )


@pytest.fixture
def store_factory(tmp_path: Path) -> Iterator:
    """``make(tenant, spec)`` opens a store under this test's data root; all are closed afterwards."""
    opened: list[LakehouseStore] = []

    def make(tenant: str, spec: EmbeddingSpec) -> LakehouseStore:
        store = LakehouseStore(TenantPaths(tmp_path, tenant), spec)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()
