"""Format handlers: bytes in, a :class:`~kontor.servers.ingest.model.ParsedDocument` out.

:func:`parse` detects the type by content and dispatches to the handler module for it. Handlers never
recurse into children (archive members, e-mail attachments): they return them, and the pipeline parses
each one with ``depth + 1``. Every failure caused by the input is an :class:`IngestError` subclass.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from kontor.servers.ingest import detect
from kontor.servers.ingest.detect import detect_type
from kontor.servers.ingest.handlers import (
    archive,
    bmecat,
    csv_tsv,
    docx,
    email_msg,
    html,
    json_data,
    pdf,
    text,
    xlsx,
    xml_safe,
)
from kontor.servers.ingest.model import (
    CorruptFile,
    IngestError,
    LimitExceeded,
    ParsedDocument,
    UnsupportedType,
)
from kontor.settings import Limits

log = logging.getLogger(__name__)

Handler = Callable[[bytes, str, Limits], ParsedDocument]

HANDLERS: dict[str, Handler] = {
    detect.PDF: pdf.parse,
    detect.DOCX: docx.parse,
    detect.XLSX: xlsx.parse,
    detect.ZIP: archive.parse,
    detect.EML: email_msg.parse,
    detect.HTML: html.parse,
    detect.XML: xml_safe.parse,
    detect.BMECAT: bmecat.parse,
    detect.JSON: json_data.parse,
    detect.NDJSON: json_data.parse_lines,
    detect.CSV: csv_tsv.parse,
    detect.MARKDOWN: text.parse_markdown,
    detect.TEXT: text.parse_plain,
}

_LEGACY_OFFICE = "legacy Office files (DOC/XLS/MSG, OLE2) are not supported; save as DOCX/XLSX"
_KNOWN_UNSUPPORTED = {
    detect.PPTX: "PowerPoint presentations (PPTX) are not supported",
    detect.OLE: _LEGACY_OFFICE,
    "application/msword": _LEGACY_OFFICE,
    "application/vnd.ms-excel": _LEGACY_OFFICE,
}


def parse(data: bytes, name: str, limits: Limits, depth: int = 0) -> ParsedDocument:
    """Parse one file. ``depth`` is its nesting depth inside archives/e-mails (0 = uploaded directly).

    Raises LimitExceeded above ``max_file_bytes`` or ``max_nesting_depth``, UnsupportedType for content
    no handler reads (random bytes, images, ...), and the handlers' CorruptFile/UnsafeContent/LimitExceeded.
    """
    if depth > limits.max_nesting_depth:
        raise LimitExceeded(
            f"{name!r} is nested {depth} levels deep in archives/e-mails, more than the limit of "
            f"{limits.max_nesting_depth}"
        )
    if len(data) > limits.max_file_bytes:
        raise LimitExceeded(f"{name!r} is {len(data)} bytes, more than the limit of {limits.max_file_bytes}")
    mime = detect_type(data, name)
    handler = HANDLERS.get(mime)
    if handler is None:
        if mime in _KNOWN_UNSUPPORTED:
            raise UnsupportedType(f"{name!r}: {_KNOWN_UNSUPPORTED[mime]}")
        if mime == detect.OCTET:
            raise UnsupportedType(
                f"{name!r}: content is not a supported format (binary data without a recognised signature)"
            )
        raise UnsupportedType(f"{name!r}: content type {mime} is not supported")
    try:
        doc = handler(data, name, limits)
    except IngestError:
        raise
    except RecursionError as exc:
        raise LimitExceeded(f"{name!r} is nested too deeply to parse") from exc
    except MemoryError as exc:
        raise LimitExceeded(f"{name!r} needs more memory than is available to parse") from exc
    except Exception as exc:
        # Safety net: a library error the handler did not translate is still the input's fault from the
        # user's point of view; keep the traceback in the log for us.
        log.warning("handler for %s failed on %r", mime, name, exc_info=True)
        raise CorruptFile(f"{name!r} ({mime}) cannot be read: {type(exc).__name__}: {exc}") from exc
    doc.metadata.setdefault("depth", depth)
    return doc


__all__ = ["HANDLERS", "parse"]
