"""Markdown and plain-text handlers.

Markdown: ATX ('#') and setext headings with a section path, lists grouped, fenced code as ``code``
Blocks, pipe tables as ``table`` Blocks, YAML front matter into metadata. Plain text: paragraphs split on
blank lines. Both decode with BOM / UTF-8 / charset sniffing (cp1252 exports included).
"""

from __future__ import annotations

import re

from kontor.servers.ingest.detect import MARKDOWN, TEXT
from kontor.servers.ingest.handlers.common import SectionPath, clean_inline, decode_text, header_names
from kontor.servers.ingest.model import Block, ParsedDocument
from kontor.settings import Limits

_ATX = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})(.*)$")
_LIST_ITEM = re.compile(r"^(\s*)([-*+]|\d{1,9}[.)])[ \t]+(.*)$")
_TABLE_SEP = re.compile(r"^[ \t]*\|?[ \t]*:?-{3,}:?[ \t]*(\|[ \t]*:?-{3,}:?[ \t]*)*\|?[ \t]*$")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_HR = re.compile(r"^ {0,3}([-*_])([ \t]*\1){2,}[ \t]*$")
_FRONT_KEY = re.compile(r"^([A-Za-z_][\w\- ]*):\s*(.*)$")
_PARA_SPLIT = re.compile(r"\n[ \t]*\n+")


def _split_row(line: str) -> list[str]:
    line = line.strip()
    if line.startswith("|"):
        line = line[1:]
    if line.endswith("|") and not line.endswith("\\|"):
        line = line[:-1]
    cells = re.split(r"(?<!\\)\|", line)
    return [clean_inline(c.replace("\\|", "|")) for c in cells]


def _front_matter(lines: list[str]) -> tuple[dict[str, str], int]:
    """YAML-style front matter ('---' … '---') as flat key/value pairs; returns (meta, first body line)."""
    if not lines or lines[0].strip() != "---":
        return {}, 0
    for end in range(1, min(len(lines), 200)):
        if lines[end].strip() in ("---", "..."):
            meta: dict[str, str] = {}
            for line in lines[1:end]:
                m = _FRONT_KEY.match(line)
                if m and m.group(2).strip():
                    meta[m.group(1).strip()] = m.group(2).strip().strip("\"'")
            return meta, end + 1
    return {}, 0


def markdown_blocks(text: str) -> tuple[list[Block], dict[str, str]]:
    """Blocks of a Markdown text and its front matter."""
    lines = text.split("\n")
    front, i = _front_matter(lines)
    blocks: list[Block] = []
    sections = SectionPath()
    para: list[str] = []
    items: list[str] = []

    def flush_para() -> None:
        body = "\n".join(ln.rstrip() for ln in para).strip()
        para.clear()
        if body:
            blocks.append(Block(kind="paragraph", text=body, section=sections.path))

    def flush_list() -> None:
        if items:
            blocks.append(Block(kind="list", text="\n".join(items), section=sections.path))
            items.clear()

    def heading(level: int, title: str) -> None:
        title = clean_inline(title)
        if title:
            path = sections.push(level, title)
            blocks.append(Block(kind="heading", text=title, section=path, level=level))

    n = len(lines)
    while i < n:
        line = lines[i]
        stripped = line.strip()
        fence = _FENCE.match(line)
        if fence:
            flush_para()
            flush_list()
            marker = fence.group(1)
            code: list[str] = []
            i += 1
            while i < n and not lines[i].strip().startswith(marker):
                code.append(lines[i])
                i += 1
            i += 1  # closing fence (or end of text)
            body = "\n".join(code).strip("\n")
            if body.strip():
                blocks.append(Block(kind="code", text=body, section=sections.path))
            continue
        atx = _ATX.match(line)
        if atx:
            flush_para()
            flush_list()
            heading(len(atx.group(1)), atx.group(2) or "")
            i += 1
            continue
        if para and len(para) == 1 and _SETEXT.match(line) and not items:
            title = para.pop()
            heading(1 if stripped.startswith("=") else 2, title)
            i += 1
            continue
        if "|" in line and i + 1 < n and _TABLE_SEP.match(lines[i + 1]) and "-" in lines[i + 1]:
            flush_para()
            flush_list()
            header = _split_row(line)
            headers = header_names(header, len(header))
            i += 2
            rows: list[str] = []
            while i < n and "|" in lines[i] and lines[i].strip():
                cells = _split_row(lines[i])
                parts = [f"{headers[k] if k < len(headers) else f'Spalte {k + 1}'}: {v}"
                         for k, v in enumerate(cells) if v]
                if parts:
                    rows.append(" | ".join(parts))
                i += 1
            if rows:
                blocks.append(Block(kind="table", text="\n".join(rows), section=sections.path))
            continue
        item = _LIST_ITEM.match(line)
        if item and not (_HR.match(line)):
            flush_para()
            indent = len(item.group(1).expandtabs(4)) // 2
            items.append(f"{'  ' * min(indent, 5)}{item.group(2)} {item.group(3).strip()}")
            i += 1
            continue
        if not stripped:
            flush_para()
            # A list continues across one blank line when the next line is another item.
            if items and not (i + 1 < n and _LIST_ITEM.match(lines[i + 1])):
                flush_list()
            i += 1
            continue
        if _HR.match(line):
            flush_para()
            flush_list()
            i += 1
            continue
        if items and line[:1] in (" ", "\t"):
            items[-1] += " " + stripped  # continuation of a list item
            i += 1
            continue
        flush_list()
        para.append(stripped[1:].strip() if stripped.startswith(">") else line)
        i += 1
    flush_para()
    flush_list()
    return blocks, front


def plain_blocks(text: str) -> list[Block]:
    """Paragraphs of plain text, split on blank lines."""
    blocks = []
    for chunk in _PARA_SPLIT.split(text):
        body = "\n".join(ln.rstrip() for ln in chunk.split("\n")).strip("\n")
        if body.strip():
            blocks.append(Block(kind="paragraph", text=body.strip()))
    return blocks


def parse_markdown(data: bytes, name: str, limits: Limits) -> ParsedDocument:
    """Parse Markdown; the title is the front-matter title, else the first heading, else the file name."""
    text, encoding = decode_text(data)
    blocks, front = markdown_blocks(text)
    title = front.get("title") or front.get("Title")
    if not title:
        first = next((b for b in blocks if b.kind == "heading"), None)
        title = first.text if first else name
    meta: dict[str, object] = {"encoding": encoding}
    if front:
        meta["front_matter"] = front
    return ParsedDocument(mime=MARKDOWN, title=title, blocks=blocks, metadata=meta)


def parse_plain(data: bytes, name: str, limits: Limits) -> ParsedDocument:
    """Parse plain text."""
    text, encoding = decode_text(data)
    return ParsedDocument(mime=TEXT, title=name, blocks=plain_blocks(text), metadata={"encoding": encoding})
