"""DOCX handler (python-docx): headings by style with a section path, paragraphs, grouped lists, tables."""

from __future__ import annotations

import io
import re
import zipfile
from typing import Any

import docx
from docx.opc.exceptions import PackageNotFoundError
from docx.table import Table
from docx.text.paragraph import Paragraph
from lxml import etree

from kontor.servers.ingest.detect import DOCX
from kontor.servers.ingest.handlers.common import SectionPath, check_zip_limits, clean_inline, header_names
from kontor.servers.ingest.model import Block, CorruptFile, IngestError, ParsedDocument
from kontor.settings import Limits

_HEADING_STYLE = re.compile(r"^(?:heading|überschrift|berschrift)\s*(\d)$", re.I)
_LIST_STYLE = re.compile(r"list|liste|aufzählung|aufzaehlung", re.I)


def _style_name(par: Paragraph) -> str:
    try:
        style = par.style
        return (style.name or "") if style is not None else ""
    except (KeyError, AttributeError, ValueError):
        return ""


def _heading_level(par: Paragraph, style: str) -> int | None:
    m = _HEADING_STYLE.match(style.strip())
    if m:
        return max(1, int(m.group(1)))
    if style.strip().lower() in ("title", "titel"):
        return 1
    return None


def _is_list_item(par: Paragraph, style: str) -> bool:
    if _LIST_STYLE.search(style):
        return True
    ppr = par._p.pPr
    return ppr is not None and ppr.numPr is not None


def _table_rows(table: Table) -> list[list[str]]:
    rows: list[list[str]] = []
    for row in table.rows:
        seen: set[int] = set()
        cells: list[str] = []
        for cell in row.cells:
            key = id(cell._tc)
            if key in seen:  # a horizontally merged cell is repeated once per grid column
                continue
            seen.add(key)
            cells.append(clean_inline(cell.text))
        rows.append(cells)
    return rows


def _render_table(rows: list[list[str]]) -> str:
    rows = [r for r in rows if any(c for c in r)]
    if not rows:
        return ""
    if len(rows) == 1:
        return " | ".join(c for c in rows[0] if c)
    width = max(len(r) for r in rows)
    headers = header_names(rows[0], width)
    lines = []
    for row in rows[1:]:
        parts = [f"{headers[i]}: {v}" for i, v in enumerate(row) if v]
        if parts:
            lines.append(" | ".join(parts))
    return "\n".join(lines)


def parse(data: bytes, name: str, limits: Limits) -> ParsedDocument:
    """Parse a Word document in reading order."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            check_zip_limits(zf, limits, "DOCX package")
        document = docx.Document(io.BytesIO(data))
    except IngestError:
        raise
    except (zipfile.BadZipFile, PackageNotFoundError, etree.XMLSyntaxError) as exc:
        raise CorruptFile(f"DOCX package cannot be read: {exc}") from exc
    except Exception as exc:  # python-docx raises KeyError, AttributeError, ... on damaged packages
        raise CorruptFile(f"DOCX package cannot be read: {type(exc).__name__}: {exc}") from exc

    blocks: list[Block] = []
    sections = SectionPath()
    list_items: list[str] = []
    title: str | None = None

    def flush_list() -> None:
        if list_items:
            blocks.append(Block(kind="list", text="\n".join(list_items), section=sections.path))
            list_items.clear()

    try:
        content: list[Any] = list(document.iter_inner_content())
        for item in content:
            if isinstance(item, Table):
                flush_list()
                text = _render_table(_table_rows(item))
                if text:
                    blocks.append(Block(kind="table", text=text, section=sections.path))
                continue
            par: Paragraph = item
            text = clean_inline(par.text)
            if not text:
                continue
            style = _style_name(par)
            level = _heading_level(par, style)
            if level is not None:
                flush_list()
                path = sections.push(level, text)
                blocks.append(Block(kind="heading", text=text, section=path, level=level))
                title = title or text
            elif _is_list_item(par, style):
                list_items.append(f"- {text}")
            else:
                flush_list()
                blocks.append(Block(kind="paragraph", text=text, section=sections.path))
        flush_list()
        props = document.core_properties
        meta = {k: v for k, v in (("title", props.title), ("author", props.author),
                                  ("subject", props.subject)) if v}
    except Exception as exc:  # damaged document.xml parts surface as assorted python-docx errors
        raise CorruptFile(f"DOCX content cannot be read: {type(exc).__name__}: {exc}") from exc
    return ParsedDocument(mime=DOCX, title=str(meta.get("title") or title or name), blocks=blocks,
                          metadata=meta)
