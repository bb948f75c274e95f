"""Structure-aware chunking: :class:`ParsedDocument` blocks in, :class:`ChunkRecord` rows out.

Every chunk is one contiguous span of ``doc.text`` (``chunk.text == doc.text[char_start:char_end]``),
so a citation can highlight exactly what was retrieved. Rules, in order of precedence:

* A chunk never spans two sheets.
* Headings start a new chunk and stay attached to the content that follows them. A heading
  ends up alone only at the end of the document, before a sheet change, or when a run of
  headings is itself longer than the chunk size.
* A product block is always its own chunk (together with the headings right above it).
* Paragraphs, lists, tables, code and records are packed whole while they fit in
  ``target_chars``. A block that does not fit on its own (or together with the headings it
  must carry) is split: tables, lists, code, records and products at line (row / item)
  boundaries, paragraphs and headings at sentence boundaries, then at line breaks, then at
  whitespace, and only a token longer than the chunk size is cut mid-word. Consecutive pieces
  of one split block overlap by about ``overlap_chars``, starting at a boundary of the same kind
  where one exists. The last piece of a split block may take the following small blocks.
* A chunk may span pages; it then carries its first page. A new chunk starts at
  a page change once the current one is over half the target size.

Chunk metadata: ``page`` = the first page any of its blocks names, ``sheet`` (shared by all its
blocks), ``section`` = the heading path of the first content (non-heading) block, ``kind`` = the
kind shared by all content blocks (headings don't count, so "heading + paragraphs" is
``paragraph``), else ``mixed``; a heading-only chunk is ``heading``. Chunk spans are trimmed of
surrounding whitespace, and whitespace-only blocks are skipped. Output is deterministic.

Tables are rendered by the handlers as ``col: value | col: value`` rows, so every row of a split
table carries its column names; no header row needs to be repeated (which the exact-span rule
would not allow anyway).
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field

from kontor.servers.ingest.model import BLOCK_SEPARATOR, Block, ParsedDocument
from kontor.servers.lakehouse.records import ChunkRecord

MIN_TARGET_CHARS = 100

LINE_KINDS = frozenset({"table", "list", "code", "product", "record"})

# Abbreviations after which a period does not end a sentence (lowercase, with the period).
# Single letters ("z.", "B.", "S.") and dotted forms ("z.B.", "u.a.", "i.d.R.") are caught by rule.
ABBREVIATIONS = frozenset(
    """
    abb. abs. abschn. abt. allg. anh. anl. anm. art. aufl. az. bd. bes. betr. bspw. bzgl. bzw. ca.
    co. dez. dgl. dipl. dr. einschl. entspr. erg. etc. evtl. exkl. feb. ff. fr. gem. ggf. ggü. grds.
    hr. hrsg. inkl. ing. insb. jan. jh. jr. kap. kfm. lfd. lit. lt. max. min. mind. mio. mrd. nov.
    nr. okt. pkt. prof. rd. rz. s. sep. sept. skt. sog. st. std. str. stk. tel. tsd. tz. u. usw.
    uvm. vgl. vs. zit. ziff. zzgl. zt. no. e.g. i.e. approx. incl. fig. resp.
    """.split()
)

MONTHS = frozenset(
    """
    januar februar märz april mai juni juli august september oktober november dezember
    jan feb mär apr jun jul aug sep sept okt nov dez
    """.split()
)

_SENTENCE_END = re.compile(r"[.!?…]+[\"'»«“”„)\]]*(\s+)")
_LINE_BREAK = re.compile(r"[ \t\r\f\v]*\n\s*")
_WHITESPACE = re.compile(r"\s+")
_TOKEN_BEFORE = re.compile(r"(\S+)$")
_WORD_AFTER = re.compile(r"[^\s.,;:!?]+")
# How far past a window's end a boundary scan looks (for the whitespace after a break). A longer
# whitespace run is cut short; the next piece skips the rest of it.
_SCAN_SLACK = 64


def _validate(target_chars: int, overlap_chars: int) -> None:
    if target_chars < MIN_TARGET_CHARS:
        raise ValueError(f"target_chars must be at least {MIN_TARGET_CHARS}, got {target_chars}")
    if overlap_chars < 0 or overlap_chars >= target_chars:
        raise ValueError(
            f"overlap_chars must be >= 0 and < target_chars ({target_chars}), got {overlap_chars}"
        )


# --------------------------------------------------------------------------- boundaries


@dataclass
class _Boundaries:
    """Break candidates of one class inside a span: a piece may end at ``ends[i]`` (exclusive)
    and the next piece then starts at ``starts[i]``; both lists are ascending."""

    ends: list[int] = field(default_factory=list)
    starts: list[int] = field(default_factory=list)

    def add(self, end: int, start: int) -> None:
        self.ends.append(end)
        self.starts.append(start)


def _is_sentence_end(text: str, lo: int, punct_start: int, punct: str, next_start: int) -> bool:
    """Whether the punctuation at ``punct_start`` ends a sentence (German-aware heuristics)."""
    nxt = text[next_start]
    if nxt.islower():  # German sentences start with a capital letter or a digit
        return False
    if not punct.startswith(".") or len(punct.rstrip("\"'»«“”„)]")) > 1:
        return True  # "!", "?", "…", or "..." (ellipsis) end sentences
    match = _TOKEN_BEFORE.search(text, max(lo, punct_start - 40), punct_start)
    if match is None:
        return True
    token = match.group(1).lstrip("([\"'„“»«").lower()
    if not token:
        return True
    if f"{token}." in ABBREVIATIONS:
        return False
    if len(token) == 1 and token.isalpha():  # "z. B.", "S. 5", initials
        return False
    if "." in token and len(token) <= 8:  # "z.B.", "u.a.", "i.d.R."
        return False
    if token.isdigit() or token.rstrip(".").replace(".", "").isdigit():
        # ordinals and dates: "3. Oktober", "am 1. Januar"; a digit ending a sentence is rarer
        word = _WORD_AFTER.match(text, next_start)
        if word is not None and word.group(0).lower() in MONTHS:
            return False
    return True


def _sentence_boundaries(text: str, block_start: int, lo: int, limit: int, hi: int) -> _Boundaries:
    out = _Boundaries()
    for m in _SENTENCE_END.finditer(text, lo, min(hi, limit + _SCAN_SLACK)):
        punct_end = m.start(1)
        if punct_end > limit:
            break
        next_start = m.end()
        if next_start >= hi:
            break
        punct = text[m.start() : punct_end]
        if _is_sentence_end(text, block_start, m.start(), punct, next_start):
            out.add(punct_end, next_start)
    return out


def _regex_boundaries(pattern: re.Pattern[str], text: str, lo: int, limit: int, hi: int) -> _Boundaries:
    out = _Boundaries()
    for m in pattern.finditer(text, lo, min(hi, limit + _SCAN_SLACK)):
        if m.start() > limit or m.end() >= hi:
            break
        if m.start() > lo:
            out.add(m.start(), m.end())
    return out


class _Window:
    """Break candidates that end a piece within ``(lo, limit]`` of the block ``[block_start, hi)``,
    by class from most to least preferred (whitespace is always last). A class is scanned only
    when asked for, and only over the window, so splitting a long block stays linear in its
    length and cheap when the preferred class has candidates."""

    def __init__(self, text: str, block_start: int, lo: int, limit: int, hi: int, kind: str) -> None:
        self.args = (text, lo, limit, hi)
        self.block_start = block_start
        self.order = (
            ("lines", "sentences", "words") if kind in LINE_KINDS else ("sentences", "lines", "words")
        )
        self._cache: dict[str, _Boundaries] = {}

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, rank: int) -> _Boundaries:
        name = self.order[rank]
        found = self._cache.get(name)
        if found is None:
            text, lo, limit, hi = self.args
            if name == "sentences":
                found = _sentence_boundaries(text, self.block_start, lo, limit, hi)
            else:
                found = _regex_boundaries(
                    _LINE_BREAK if name == "lines" else _WHITESPACE, text, lo, limit, hi
                )
            self._cache[name] = found
        return found


# --------------------------------------------------------------------------- splitting


def _skip_space(text: str, pos: int, hi: int) -> int:
    while pos < hi and text[pos].isspace():
        pos += 1
    return pos


def _overlap_start(classes: _Window, pos: int, piece_end: int, next_pos: int, overlap: int) -> int:
    """Where the piece after ``[pos, piece_end)`` starts so that the two overlap by about
    ``overlap`` characters, at the most preferred boundary class that has a candidate."""
    if overlap <= 0:
        return next_pos
    want = piece_end - overlap
    lo = max(pos + (piece_end - pos) // 2 + 1, piece_end - overlap - overlap // 2)
    hi = piece_end - max(1, overlap // 2)
    if lo > hi:
        return next_pos
    for rank in range(len(classes)):
        bounds = classes[rank]
        i = bisect_left(bounds.starts, lo)
        j = bisect_right(bounds.starts, hi)
        if i < j:
            return min(bounds.starts[i:j], key=lambda s: (abs(s - want), s))
    return next_pos


def _split_span(
    text: str, start: int, end: int, kind: str, first_budget: int, target: int, overlap: int
) -> list[tuple[int, int]]:
    """Split ``text[start:end]`` (trimmed, non-empty) into pieces; the first piece holds at most
    ``first_budget`` characters, every other at most ``target``."""
    pieces: list[tuple[int, int]] = []
    pos, budget = start, first_budget
    while end - pos > budget:
        limit = pos + budget
        classes = _Window(text, start, pos, limit, end, kind)
        piece_end = next_pos = -1
        for rank in range(len(classes)):
            bounds = classes[rank]
            # A preferred boundary must leave a piece of useful size; whitespace takes any.
            floor = pos + (budget // 3 if rank < len(classes) - 1 else 0)
            i = bisect_right(bounds.ends, limit) - 1
            if i >= 0 and bounds.ends[i] > floor:
                piece_end, next_pos = bounds.ends[i], bounds.starts[i]
                break
        if piece_end < 0:  # a single token longer than the budget: cut it
            piece_end = next_pos = limit
        pieces.append((pos, piece_end))
        pos = _skip_space(text, _overlap_start(classes, pos, piece_end, next_pos, overlap), end)
        budget = target
    pieces.append((pos, end))
    return pieces


# --------------------------------------------------------------------------- packing


@dataclass
class _Chunk:
    start: int
    end: int
    page: int | None
    sheet: str | None
    last_page: int | None
    first_section: str | None
    content_section: str | None = None
    content_kinds: list[str] = field(default_factory=list)

    @property
    def has_content(self) -> bool:
        return bool(self.content_kinds)

    @property
    def size(self) -> int:
        return self.end - self.start

    def kind(self) -> str:
        if not self.content_kinds:
            return "heading"
        first = self.content_kinds[0]
        return first if all(k == first for k in self.content_kinds) else "mixed"

    def section(self) -> str | None:
        return self.content_section if self.has_content else self.first_section


class _Packer:
    def __init__(self, text: str, target: int, overlap: int) -> None:
        self.text = text
        self.target = target
        self.overlap = overlap
        self.done: list[_Chunk] = []
        self.cur: _Chunk | None = None

    def flush(self) -> None:
        if self.cur is not None:
            self.done.append(self.cur)
            self.cur = None

    def _add(self, block: Block, start: int, end: int) -> None:
        """Extend (or open) the current chunk with ``text[start:end]`` of ``block``."""
        if self.cur is None:
            self.cur = _Chunk(start, end, block.page, block.sheet, block.page, block.section)
        else:
            self.cur.end = end
            if block.page is not None:
                self.cur.last_page = block.page
                if self.cur.page is None:
                    self.cur.page = block.page
        if block.kind != "heading":
            if not self.cur.content_kinds:
                self.cur.content_section = block.section
            self.cur.content_kinds.append(block.kind)

    def feed(self, block: Block, start: int, end: int) -> None:
        cur = self.cur
        if cur is not None and block.sheet != cur.sheet:
            self.flush()
            cur = None
        if block.kind == "heading":
            if cur is not None and (cur.has_content or end - cur.start > self.target):
                self.flush()
            self._place(block, start, end)
            return
        if block.kind == "product":
            if cur is not None and cur.has_content:
                self.flush()
            self._place(block, start, end)
            self.flush()
            return
        if cur is not None and cur.has_content:
            page_change = block.page is not None and cur.last_page is not None and block.page != cur.last_page
            if page_change and cur.size > self.target // 2:
                self.flush()
            elif end - cur.start <= self.target:
                self._add(block, start, end)
                return
            else:
                self.flush()
        self._place(block, start, end)

    def _place(self, block: Block, start: int, end: int) -> None:
        """Place a block into an empty or heading-only current chunk, splitting it if needed."""
        cur = self.cur
        if cur is not None and end - cur.start > self.target and start - cur.start > self.target // 2:
            # The headings above would leave too little room: let them stand alone.
            self.flush()
            cur = None
        prefix_start = cur.start if cur is not None else start
        if end - prefix_start <= self.target:
            self._add(block, start, end)
            return
        first_budget = self.target - (start - prefix_start)
        pieces = _split_span(self.text, start, end, block.kind, first_budget, self.target, self.overlap)
        for index, (piece_start, piece_end) in enumerate(pieces):
            self._add(block, piece_start, piece_end)
            if index < len(pieces) - 1:
                self.flush()


def block_spans(doc: ParsedDocument) -> list[tuple[Block, int, int]]:
    """Each non-blank block with its trimmed ``[start, end)`` span in ``doc.text``."""
    spans: list[tuple[Block, int, int]] = []
    offset = 0
    for block in doc.blocks:
        text = block.text
        stripped = text.strip()
        if stripped:
            lead = len(text) - len(text.lstrip())
            spans.append((block, offset + lead, offset + lead + len(stripped)))
        offset += len(text) + len(BLOCK_SEPARATOR)
    return spans


def chunk_document(
    doc: ParsedDocument,
    *,
    document_id: str,
    source: str,
    domain: str,
    target_chars: int = 1200,
    overlap_chars: int = 150,
) -> list[ChunkRecord]:
    """Cut ``doc`` into searchable chunks that follow its structure (see the module docstring)."""
    _validate(target_chars, overlap_chars)
    text = doc.text
    packer = _Packer(text, target_chars, overlap_chars)
    for block, start, end in block_spans(doc):
        packer.feed(block, start, end)
    packer.flush()
    return [
        ChunkRecord(
            chunk_id=f"{document_id}:{ordinal}",
            document_id=document_id,
            ordinal=ordinal,
            text=text[chunk.start : chunk.end],
            source=source,
            title=doc.title,
            domain=domain,
            kind=chunk.kind(),
            page=chunk.page,
            sheet=chunk.sheet,
            section=chunk.section(),
            char_start=chunk.start,
            char_end=chunk.end,
            identifiers=[],
        )
        for ordinal, chunk in enumerate(packer.done)
    ]
