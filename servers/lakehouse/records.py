"""Rows the lakehouse stores. The ingest pipeline builds them; search returns them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class DocumentRecord:
    """One ingested document (``documents`` Delta table)."""

    document_id: str  # stable per source: sha256 of the source identity, hex, 32 chars
    source: str  # source name shown in citations, e.g. "contracts/nda.pdf" or "mail.eml!/offer.pdf"
    title: str
    mime: str
    content_sha256: str
    size_bytes: int
    domain: str  # tax | legal | product | general
    domain_cues: list[str]  # what decided the domain, human-readable
    text: str  # full text; chunk offsets point into it
    pages: int | None = None
    parent_id: str | None = None  # e-mail or archive the document came from
    object_key: str | None = None  # raw object in the object store
    metadata: dict[str, Any] = field(default_factory=dict)
    ingested_at: str = ""  # ISO-8601 UTC


@dataclass
class ChunkRecord:
    """One searchable chunk (LanceDB ``chunks`` table)."""

    chunk_id: str  # f"{document_id}:{ordinal}"
    document_id: str
    ordinal: int
    text: str
    source: str
    title: str
    domain: str
    kind: str  # paragraph | table | list | product | mixed ...
    page: int | None
    sheet: str | None
    section: str | None
    char_start: int
    char_end: int
    identifiers: list[str] = field(default_factory=list)  # SKU, EAN/GTIN, MPN, ETIM/ECLASS codes


@dataclass
class ProductRecord:
    """One row of the ``products`` Delta table (flattened :class:`Product` + provenance)."""

    document_id: str
    supplier_pid: str
    gtin: str | None
    manufacturer_pid: str | None
    manufacturer_name: str | None
    name: str | None
    description: str | None
    classification_system: str | None
    classification_class: str | None
    features_json: str  # JSON list of {"name","values","unit","system"}
    order_unit: str | None = None
    price: float | None = None
    currency: str | None = None


@dataclass
class SearchHit:
    chunk_id: str
    document_id: str
    text: str
    score: float
    title: str
    source: str
    page: int | None
    sheet: str | None
    section: str | None
    char_start: int
    char_end: int
    domain: str
    matched: list[str] = field(default_factory=list)  # which modes found it: vector/keyword/identifier

    def citation(self) -> dict[str, Any]:
        return {
            "document_id": self.document_id,
            "title": self.title,
            "source": self.source,
            "page": self.page,
            "sheet": self.sheet,
            "section": self.section,
            "char_start": self.char_start,
            "char_end": self.char_end,
        }
