"""Citations from search results: which passage of which document an answer rests on.

``lakehouse__search`` answers with ``structuredContent`` of the shape::

    {"query": ..., "mode": ..., "results": [
        {"text": ..., "score": 0.8, "chunk_id": ..., "domain": ...,
         "citation": {"document_id", "title", "source", "page", "sheet", "section", "char_start", "char_end"}}]}

(or, from a server without structured output, the same JSON as its text content). Each result
becomes a :class:`Citation`, numbered in the order it was first seen in a turn
(:class:`CitationIndex`), so the model can cite ``[n]`` and the web page can show chip ``n``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

__all__ = ["Citation", "CitationIndex", "extract_citations", "render_for_model"]


@dataclass(frozen=True)
class Citation:
    """One cited passage. ``number`` is its place in the turn (1-based; 0 until numbered)."""

    document_id: str
    title: str
    text: str
    score: float | None = None
    source: str | None = None
    page: int | None = None
    sheet: str | None = None
    section: str | None = None
    char_start: int | None = None
    char_end: int | None = None
    chunk_id: str | None = None
    tool: str = ""
    number: int = 0

    @property
    def key(self) -> tuple[Any, ...]:
        return (self.document_id, self.chunk_id or "", self.char_start, self.char_end)

    @property
    def location(self) -> str:
        """Where in the document: "p. 3", "sheet Preise", "§ 4 Haftung" (joined), or ""."""
        parts = []
        if self.page is not None:
            parts.append(f"p. {self.page}")
        if self.sheet:
            parts.append(f"sheet {self.sheet}")
        if self.section:
            parts.append(self.section)
        return ", ".join(parts)

    def label(self) -> str:
        where = f" ({self.location})" if self.location else ""
        return f"[{self.number}] {self.title or self.document_id}{where}"


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _results(payload: Any) -> list[Any]:
    if isinstance(payload, Mapping) and isinstance(payload.get("results"), list):
        return payload["results"]
    return []


def extract_citations(tool: str, structured: Any = None, texts: Iterable[str] = ()) -> list[Citation]:
    """The passages of a search result: from ``structured`` content, else from JSON text content.
    Results without a document are skipped; anything that is not a search result gives ``[]``."""
    results = _results(structured)
    if not results:
        for text in texts:
            try:
                results = _results(json.loads(text))
            except (TypeError, ValueError):
                continue
            if results:
                break
    out: list[Citation] = []
    for hit in results:
        if not isinstance(hit, Mapping):
            continue
        cite = hit.get("citation") if isinstance(hit.get("citation"), Mapping) else {}
        document = _str(cite.get("document_id")) or _str(hit.get("document_id"))
        text = hit.get("text")
        if not document or not isinstance(text, str):
            continue
        score = hit.get("score")
        out.append(Citation(
            document_id=document, title=_str(cite.get("title")) or _str(hit.get("title")) or document, text=text,
            score=float(score) if isinstance(score, int | float) and not isinstance(score, bool) else None,
            source=_str(cite.get("source")), page=_int(cite.get("page")), sheet=_str(cite.get("sheet")),
            section=_str(cite.get("section")), char_start=_int(cite.get("char_start")),
            char_end=_int(cite.get("char_end")), chunk_id=_str(hit.get("chunk_id")), tool=tool))
    return out


class CitationIndex:
    """The citations of one turn, numbered once each (the same passage found twice keeps its number)."""

    def __init__(self) -> None:
        self._by_key: dict[tuple[Any, ...], Citation] = {}

    def add(self, citations: Iterable[Citation]) -> tuple[list[Citation], list[Citation]]:
        """Number ``citations``; returns (all of them with their numbers, only the new ones)."""
        numbered, new = [], []
        for citation in citations:
            known = self._by_key.get(citation.key)
            if known is None:
                known = replace(citation, number=len(self._by_key) + 1)
                self._by_key[citation.key] = known
                new.append(known)
            numbered.append(known)
        return numbered, new

    @property
    def all(self) -> list[Citation]:
        return sorted(self._by_key.values(), key=lambda c: c.number)

    def __len__(self) -> int:
        return len(self._by_key)


def render_for_model(citations: Iterable[Citation], max_chars_each: int = 1500) -> str:
    """Numbered passages for the model to read and cite as ``[n]``."""
    blocks = []
    for c in citations:
        text = c.text if len(c.text) <= max_chars_each else c.text[:max_chars_each] + " …"
        score = f" (score {c.score:.3g})" if c.score is not None else ""
        blocks.append(f"{c.label()}{score}\n{text}")
    if not blocks:
        return "No passages found."
    return "Passages (cite them as [n]):\n\n" + "\n\n".join(blocks)
