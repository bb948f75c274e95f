"""What a format handler returns: structured blocks, product rows and child documents."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

BlockKind = Literal["heading", "paragraph", "list", "table", "code", "product", "record"]


class IngestError(Exception):
    """A file that cannot be ingested. ``reason`` is shown to the user in the job report."""

    code = "invalid_file"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class UnsupportedType(IngestError):
    code = "unsupported_type"


class CorruptFile(IngestError):
    code = "corrupt_file"


class LimitExceeded(IngestError):
    code = "limit_exceeded"


class UnsafeContent(IngestError):
    """Content that is refused for safety: XML entities/DTDs, path tricks in archives."""

    code = "unsafe_content"


@dataclass
class Block:
    """One structural unit of a document, in reading order.

    ``section`` is the heading path above the block ("Vertrag > § 3 Kündigung"); ``page`` is
    1-based; ``sheet`` names a spreadsheet sheet. Tables are rendered as text rows
    ("col: value | col: value") so that they stay readable inside a chunk.
    """

    kind: BlockKind
    text: str
    page: int | None = None
    sheet: str | None = None
    section: str | None = None
    level: int | None = None  # heading level (1 = top)


@dataclass
class Product:
    """One article of a product catalog (BMEcat), one row of the ``products`` table."""

    supplier_pid: str
    gtin: str | None = None
    manufacturer_pid: str | None = None
    manufacturer_name: str | None = None
    name: str | None = None  # DESCRIPTION_SHORT
    description: str | None = None  # DESCRIPTION_LONG
    classification_system: str | None = None  # e.g. "ETIM-7.0", "ECLASS-5.1"
    classification_class: str | None = None  # e.g. "EC000042"
    features: list[dict[str, Any]] = field(default_factory=list)
    # each feature: {"name": "EF000008", "values": ["12"], "unit": "MMT", "system": "ETIM-7.0"}
    order_unit: str | None = None
    price: float | None = None
    currency: str | None = None
    keywords: list[str] = field(default_factory=list)


@dataclass
class Attachment:
    """A document inside a document (e-mail attachment, archive member), ingested on its own."""

    name: str
    data: bytes


@dataclass
class ParsedDocument:
    mime: str  # detected type, e.g. "application/pdf"
    title: str
    blocks: list[Block] = field(default_factory=list)
    products: list[Product] = field(default_factory=list)
    children: list[Attachment] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    pages: int | None = None

    @property
    def text(self) -> str:
        """The document's full text; chunk offsets point into this string."""
        return BLOCK_SEPARATOR.join(b.text for b in self.blocks)


BLOCK_SEPARATOR = "\n\n"
