"""PDF handler (pypdf): one paragraph Block per paragraph, with its 1-based page number."""

from __future__ import annotations

import io
import logging
import re

from pypdf import PdfReader
from pypdf.errors import DependencyError, FileNotDecryptedError, PdfReadError

from kontor.servers.ingest.detect import PDF
from kontor.servers.ingest.handlers.common import clean_inline
from kontor.servers.ingest.model import Block, CorruptFile, LimitExceeded, ParsedDocument
from kontor.settings import Limits

logging.getLogger("pypdf").setLevel(logging.ERROR)  # recoverable-structure warnings are noise here

_EOF_WINDOW = 1024  # Acrobat accepts %%EOF anywhere in the last 1024 bytes; so do we
_SENTENCE_END = re.compile(r"[.!?:;\"”)]$")
_HYPHEN_END = re.compile(r"[A-Za-zÄÖÜäöüß]-$")


def _paragraphs(page_text: str) -> list[str]:
    """Split a page's extracted text into paragraphs.

    pypdf gives one line per text line and blank lines only for some layouts, so a paragraph also ends
    after a line clearly shorter than the page's long lines (the last line of a paragraph, a heading, a
    list item). Lines are joined with spaces; a hyphen at a line end before a lowercase letter is removed.
    """
    lines = [ln.strip() for ln in page_text.replace("\r", "\n").split("\n")]
    longest = max((len(ln) for ln in lines), default=0)
    short = 0.7 * longest
    paragraphs: list[str] = []
    current = ""

    def flush() -> None:
        nonlocal current
        text = clean_inline(current)
        if text:
            paragraphs.append(text)
        current = ""

    for line in lines:
        if not line:
            flush()
            continue
        if current and _HYPHEN_END.search(current) and line[:1].islower():
            current = current[:-1] + line
        else:
            current = f"{current} {line}" if current else line
        if len(line) < short or (len(line) < 0.9 * longest and _SENTENCE_END.search(line)):
            flush()
    flush()
    return paragraphs


def _meta(reader: PdfReader) -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        info = reader.metadata
    except Exception:  # a broken info dictionary must not fail the document
        return out
    if not info:
        return out
    for key, label in (("/Title", "title"), ("/Author", "author"), ("/Subject", "subject"),
                       ("/Creator", "creator"), ("/Producer", "producer"), ("/CreationDate", "created")):
        try:
            value = info.get(key)
        except Exception:
            continue
        if value:
            text = clean_inline(str(value))
            if text and text not in ("(anonymous)", "(unspecified)"):
                out[label] = text
    return out


def parse(data: bytes, name: str, limits: Limits) -> ParsedDocument:
    """Parse a PDF. Truncated or garbled files → CorruptFile; more than ``max_pages`` → LimitExceeded."""
    if b"%%EOF" not in data[-_EOF_WINDOW:]:
        raise CorruptFile("PDF is truncated or damaged: no %%EOF marker at the end of the file")
    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
        if reader.is_encrypted:
            try:
                ok = reader.decrypt("")
            except (DependencyError, NotImplementedError) as exc:
                raise CorruptFile(f"PDF is encrypted with an unsupported method: {exc}") from exc
            if not ok:
                raise CorruptFile("PDF is password-protected; it cannot be read without the password")
        n_pages = len(reader.pages)
    except CorruptFile:
        raise
    except FileNotDecryptedError as exc:
        raise CorruptFile("PDF is password-protected; it cannot be read without the password") from exc
    except (PdfReadError, ValueError, KeyError, TypeError, AttributeError, IndexError, RecursionError,
            OSError, AssertionError, ZeroDivisionError) as exc:
        raise CorruptFile(f"PDF structure cannot be read: {exc}") from exc
    if n_pages > limits.max_pages:
        raise LimitExceeded(f"PDF has {n_pages} pages, more than the limit of {limits.max_pages}")
    if n_pages == 0:
        raise CorruptFile("PDF has no pages")

    blocks: list[Block] = []
    page_errors: list[str] = []
    for number in range(1, n_pages + 1):
        try:
            text = reader.pages[number - 1].extract_text() or ""
        except Exception as exc:  # pypdf raises many types on damaged content streams
            page_errors.append(f"page {number}: {type(exc).__name__}: {exc}")
            continue
        for para in _paragraphs(text):
            blocks.append(Block(kind="paragraph", text=para, page=number))
    if page_errors and len(page_errors) == n_pages:
        raise CorruptFile(f"no page of the PDF could be read ({page_errors[0]})")

    meta: dict[str, object] = dict(_meta(reader))
    if page_errors:
        meta["page_errors"] = page_errors
    if not blocks:
        meta["note"] = "no extractable text (scanned PDF without a text layer?)"
    title = str(meta.get("title") or name)
    return ParsedDocument(mime=PDF, title=title, blocks=blocks, metadata=meta, pages=n_pages)
