"""HTML handler (BeautifulSoup): headings with a section path, paragraphs, grouped lists, tables, code.

Scripts, styles, navigation and other non-content elements are dropped.
"""

from __future__ import annotations

import warnings
from typing import Any

from bs4 import BeautifulSoup, Comment, Doctype, NavigableString, Tag, XMLParsedAsHTMLWarning

from kontor.servers.ingest.detect import HTML
from kontor.servers.ingest.handlers.common import SectionPath, clean_inline, header_names
from kontor.servers.ingest.model import Block, CorruptFile, ParsedDocument
from kontor.settings import Limits

DROP = {"script", "style", "nav", "noscript", "template", "svg", "iframe", "object", "embed", "canvas",
        "button", "select", "input", "textarea", "head", "meta", "link"}
HEADINGS = {"h1": 1, "h2": 2, "h3": 3, "h4": 4, "h5": 5, "h6": 6}
PARAGRAPHS = {"p", "blockquote", "address", "figcaption", "caption", "dt", "dd", "summary", "legend"}
CONTAINERS = {"html", "body", "div", "section", "article", "main", "header", "footer", "aside", "form",
              "figure", "center", "details", "fieldset", "hgroup", "dl", "li", "td", "th", "tr", "tbody",
              "thead", "tfoot", "picture", "search", "span", "a", "font", "label"}
BLOCK_LEVEL = set(HEADINGS) | PARAGRAPHS | {"ul", "ol", "table", "pre", "div", "section", "article",
                                           "main", "header", "footer", "aside", "form", "figure", "hr",
                                           "details", "fieldset", "dl"}
_MAX_LIST_DEPTH = 10

warnings.filterwarnings("ignore", category=XMLParsedAsHTMLWarning)


_SPACED = BLOCK_LEVEL | {"br", "li", "td", "th", "tr", "dt", "dd", "option"}


def _text(node: Tag) -> str:
    """Text of an element: inline markup joined without gaps ("<b>Wort</b>." → "Wort."), block-level
    children and line breaks separated by a space."""
    parts: list[str] = []
    for el in node.descendants:
        if type(el) is NavigableString:
            parts.append(str(el))
        elif isinstance(el, Tag) and el.name in _SPACED:
            parts.append(" ")
    return clean_inline("".join(parts))


def _has_block_child(node: Tag) -> bool:
    return node.find(BLOCK_LEVEL) is not None


class _Walker:
    def __init__(self) -> None:
        self.blocks: list[Block] = []
        self.sections = SectionPath()
        self.inline: list[str] = []

    def flush(self) -> None:
        text = clean_inline("".join(self.inline))
        self.inline.clear()
        if text:
            self.blocks.append(Block(kind="paragraph", text=text, section=self.sections.path))

    def _list_lines(self, node: Tag, depth: int) -> list[str]:
        lines: list[str] = []
        ordered = node.name == "ol"
        number = 0
        for li in node.find_all("li", recursive=False):
            number += 1
            nested = li.find_all(["ul", "ol"], recursive=False)
            for n in nested:
                n.extract()
            text = _text(li)
            marker = f"{number}." if ordered else "-"
            if text:
                lines.append(f"{'  ' * depth}{marker} {text}")
            if depth < _MAX_LIST_DEPTH:
                for n in nested:
                    lines.extend(self._list_lines(n, depth + 1))
        return lines

    def _table(self, node: Tag) -> str:
        rows: list[tuple[list[str], bool]] = []
        for tr in node.find_all("tr"):
            if tr.find_parent("table") is not node:
                continue  # rows of nested tables are read with their own table
            cells = tr.find_all(["td", "th"], recursive=False)
            rows.append(([_text(c) for c in cells], bool(cells) and all(c.name == "th" for c in cells)))
        rows = [(r, h) for r, h in rows if any(r)]
        if not rows:
            return ""
        if len(rows) == 1:
            return " | ".join(c for c in rows[0][0] if c)
        width = max(len(r) for r, _ in rows)
        headers = header_names(rows[0][0], width)
        out = []
        for cells, _ in rows[1:]:
            parts = [f"{headers[i]}: {v}" for i, v in enumerate(cells) if v]
            if parts:
                out.append(" | ".join(parts))
        return "\n".join(out)

    def walk(self, node: Tag) -> None:
        for child in list(node.children):
            if isinstance(child, (Comment, Doctype)):
                continue
            if isinstance(child, NavigableString):
                if type(child) is NavigableString:
                    self.inline.append(str(child))
                continue
            if not isinstance(child, Tag):
                continue
            name = (child.name or "").lower()
            if name in DROP:
                continue
            if name == "title":
                continue
            if name in HEADINGS:
                self.flush()
                text = _text(child)
                if text:
                    level = HEADINGS[name]
                    path = self.sections.push(level, text)
                    self.blocks.append(Block(kind="heading", text=text, section=path, level=level))
            elif name in ("ul", "ol"):
                self.flush()
                lines = self._list_lines(child, 0)
                if lines:
                    self.blocks.append(Block(kind="list", text="\n".join(lines), section=self.sections.path))
            elif name == "table":
                self.flush()
                text = self._table(child)
                if text:
                    self.blocks.append(Block(kind="table", text=text, section=self.sections.path))
                for nested in child.find_all("table"):
                    text = self._table(nested)
                    if text:
                        self.blocks.append(Block(kind="table", text=text, section=self.sections.path))
            elif name == "pre":
                self.flush()
                code = child.get_text().strip("\n")
                if code.strip():
                    self.blocks.append(Block(kind="code", text=code, section=self.sections.path))
            elif name in PARAGRAPHS and not _has_block_child(child):
                self.flush()
                text = _text(child)
                if text:
                    self.blocks.append(Block(kind="paragraph", text=text, section=self.sections.path))
            elif name == "br":
                self.flush()
            elif name == "hr":
                self.flush()
            elif name in CONTAINERS or name in PARAGRAPHS or _has_block_child(child):
                block_like = name not in {"span", "a", "font", "label"} or _has_block_child(child)
                if block_like:
                    self.flush()
                self.walk(child)
                if block_like:
                    self.flush()
            else:
                self.inline.append(_text(child))


def html_blocks(markup: bytes | str) -> tuple[str | None, list[Block]]:
    """(title, blocks) of an HTML document or fragment."""
    try:
        soup = BeautifulSoup(markup, "lxml")
    except Exception as exc:  # parser failures on binary junk
        raise CorruptFile(f"HTML cannot be parsed: {type(exc).__name__}: {exc}") from exc
    title_tag = soup.find("title")
    title = _text(title_tag) if isinstance(title_tag, Tag) else None
    for tag in soup.find_all(list(DROP - {"head"})):
        tag.decompose()
    walker = _Walker()
    root: Any = soup.body or soup
    walker.walk(root)
    walker.flush()
    if not title:
        first = next((b for b in walker.blocks if b.kind == "heading"), None)
        title = first.text if first else None
    return title or None, walker.blocks


def html_to_text(markup: bytes | str) -> str:
    """Plain text of HTML, block by block."""
    _, blocks = html_blocks(markup)
    return "\n\n".join(b.text for b in blocks)


def parse(data: bytes, name: str, limits: Limits) -> ParsedDocument:
    """Parse an HTML page (the encoding comes from the BOM / meta charset / sniffing)."""
    title, blocks = html_blocks(data)
    return ParsedDocument(mime=HTML, title=title or name, blocks=blocks)
