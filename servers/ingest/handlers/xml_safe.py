"""Generic XML handler and the safe streaming XML parser shared with the BMEcat handler.

Safety rules (also used for BMEcat): no entity resolution, no network, no DTD loading, no huge trees, and
any document whose DTD declares entities (internal "billion laughs", external ``SYSTEM`` entities,
parameter entities) is refused as UnsafeContent before a single element is read. A plain
``<!DOCTYPE BMECAT SYSTEM "bmecat_2005.dtd">`` without declarations is fine: the DTD is never loaded.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from typing import Any

from lxml import etree

from kontor.servers.ingest.detect import XML
from kontor.servers.ingest.handlers.common import clean_inline
from kontor.servers.ingest.model import Block, CorruptFile, LimitExceeded, ParsedDocument, UnsafeContent
from kontor.settings import Limits

_ENTITY_DECL = re.compile(rb"<!ENTITY", re.I)
_PROLOG_SCAN = 64 * 1024
LINES_PER_BLOCK = 200


def local_name(tag: Any) -> str:
    """'{ns}NAME' → 'NAME'; comments and processing instructions → ''."""
    if not isinstance(tag, str):
        return ""
    return tag.rsplit("}", 1)[-1]


def _check_prolog_bytes(data: bytes) -> None:
    """Byte-level guard: an ENTITY declaration before the root element (ASCII-compatible encodings)."""
    head = data[:_PROLOG_SCAN]
    for candidate in (head, head.replace(b"\x00", b"")):  # the second catches UTF-16
        start = candidate.upper().find(b"<!DOCTYPE")
        if start < 0:
            continue
        doctype = candidate[start:]
        bracket, close = doctype.find(b"["), doctype.find(b">")
        if 0 <= bracket < close or (bracket >= 0 and close < 0):
            end = doctype.find(b"]>")
            doctype = doctype[: end if end >= 0 else len(doctype)]
        else:
            doctype = doctype[: close if close >= 0 else len(doctype)]
        if _ENTITY_DECL.search(doctype):
            raise UnsafeContent(
                "XML declares entities in its DTD (entity expansion / external entity attack); refused"
            )


def _check_dtd(element: Any) -> None:
    docinfo = element.getroottree().docinfo
    dtd = docinfo.internalDTD
    if dtd is None:
        return
    entities = list(dtd.entities())
    if entities:
        names = ", ".join(e.name for e in entities[:5])
        external = [e for e in entities if getattr(e, "system_url", None)]
        kind = "external entities" if external else "entities"
        raise UnsafeContent(
            f"XML DTD declares {kind} ({names}); entity expansion and external entities are refused"
        )


def safe_iterparse(data: bytes, limits: Limits, what: str = "XML") -> Iterator[tuple[str, Any]]:
    """Stream ("start"|"end", element) events with all entity/DTD/network features off.

    Raises LimitExceeded above ``max_xml_bytes``, UnsafeContent for entity declarations, CorruptFile for
    malformed XML. The caller should clear elements it has consumed to keep memory bounded.
    """
    if len(data) > limits.max_xml_bytes:
        raise LimitExceeded(f"{what} is {len(data)} bytes, more than the limit of {limits.max_xml_bytes}")
    _check_prolog_bytes(data)
    context = etree.iterparse(
        io.BytesIO(data),
        events=("start", "end"),
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        huge_tree=False,
        remove_comments=True,
        remove_pis=True,
    )
    first = True
    try:
        for event, element in context:
            if first:
                _check_dtd(element)
                first = False
            yield event, element
    except etree.XMLSyntaxError as exc:
        msg = str(exc)
        if "entity" in msg.lower() and ("amplification" in msg.lower() or "loop" in msg.lower()):
            raise UnsafeContent(f"{what} entity expansion refused: {msg}") from exc
        raise CorruptFile(f"{what} is not well-formed: {msg}") from exc
    if first:
        raise CorruptFile(f"{what} has no root element")


def release(element: Any) -> None:
    """Free a consumed element and its already-processed preceding siblings."""
    element.clear(keep_tail=False)
    parent = element.getparent()
    if parent is not None:
        while element.getprevious() is not None:
            del parent[0]


def _leaf_line(element: Any) -> str:
    name = local_name(element.tag)
    text = clean_inline(element.text or "")
    attrs = ", ".join(f"{local_name(k)}={clean_inline(v)}" for k, v in element.attrib.items())
    label = f"{name} ({attrs})" if attrs else name
    return f"{label}: {text}" if text else (label if attrs else "")


def parse(data: bytes, name: str, limits: Limits) -> ParsedDocument:
    """Parse generic XML: leaf elements become "name: text" lines, grouped into one paragraph per parent
    element, with the element path as the section. A BMEcat root is handed to the BMEcat handler."""
    path: list[str] = []
    has_children: list[bool] = []
    pending: list[list[str]] = []
    blocks: list[Block] = []
    root_name = ""
    for event, element in safe_iterparse(data, limits):
        tag = local_name(element.tag)
        if event == "start":
            if not path:
                root_name = tag
                if tag.upper() == "BMECAT":
                    from kontor.servers.ingest.handlers import bmecat

                    return bmecat.parse(data, name, limits)
            if has_children:
                has_children[-1] = True
            path.append(tag)
            has_children.append(False)
            pending.append([])
            continue
        is_parent = has_children.pop()
        lines = pending.pop()
        path.pop()
        if not is_parent:
            line = _leaf_line(element)
            if line and pending:
                pending[-1].append(line)
                if len(pending[-1]) >= LINES_PER_BLOCK:  # a flat list of many leaves: emit in parts
                    text = "\n".join(pending[-1])
                    blocks.append(Block(kind="paragraph", text=text, section=" > ".join(path)))
                    pending[-1].clear()
            elif line:
                lines.append(line)
        else:
            own = clean_inline(element.text or "")
            if own:
                lines.insert(0, own)
        # Mixed content: text after a child element belongs to the parent.
        tail = clean_inline(element.tail or "")
        if tail and pending:
            pending[-1].append(tail)
        if lines:
            section = " > ".join([*path, tag])
            blocks.append(Block(kind="paragraph", text="\n".join(lines), section=section))
        release(element)
    return ParsedDocument(mime=XML, title=name, blocks=blocks, metadata={"root": root_name})
