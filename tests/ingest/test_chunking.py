"""Structure-aware chunking: exact spans, structure rules, splitting and overlap."""

from __future__ import annotations

import random
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kontor.servers.ingest.chunking import block_spans, chunk_document
from kontor.servers.ingest.model import BLOCK_SEPARATOR, Block, ParsedDocument
from kontor.servers.lakehouse.records import ChunkRecord


def chunk(doc: ParsedDocument, target: int = 1200, overlap: int = 150) -> list[ChunkRecord]:
    return chunk_document(
        doc,
        document_id="doc1",
        source="src/file.pdf",
        domain="general",
        target_chars=target,
        overlap_chars=overlap,
    )


def blocks_in(
    doc: ParsedDocument, c: ChunkRecord, spans: list[tuple[Block, int, int]] | None = None
) -> list[Block]:
    """The (non-blank) blocks whose text overlaps the chunk's span."""
    return [b for b, s, e in spans or block_spans(doc) if s < c.char_end and e > c.char_start]


def check_invariants(doc: ParsedDocument, chunks: list[ChunkRecord], target: int, overlap: int) -> None:
    text = doc.text
    spans = block_spans(doc)
    assert [c.ordinal for c in chunks] == list(range(len(chunks)))
    covered = bytearray(len(text))
    previous_end = 0
    for c in chunks:
        assert c.text == text[c.char_start : c.char_end]
        assert c.text and c.text == c.text.strip()
        assert len(c.text) <= target
        assert c.chunk_id == f"doc1:{c.ordinal}"
        assert c.title == doc.title and c.identifiers == []
        covered[c.char_start : c.char_end] = b"\x01" * (c.char_end - c.char_start)
        # Chunks advance; they overlap only where a long block was split, by about `overlap`.
        assert c.char_start >= 0 and c.char_end > c.char_start
        if c.ordinal:
            assert c.char_start > chunks[c.ordinal - 1].char_start
            assert previous_end - c.char_start <= overlap + overlap // 2
        previous_end = c.char_end
        blocks = blocks_in(doc, c, spans)
        assert len({b.sheet for b in blocks}) == 1, "a chunk spans two sheets"
        assert c.sheet == blocks[0].sheet
        pages = [b.page for b in blocks if b.page is not None]
        assert c.page == (pages[0] if pages else None)
        content = [b for b in blocks if b.kind != "heading"]
        if any(b.kind == "product" for b in content):
            assert len(content) == 1, "a product shares its chunk with other content"
        kinds = {b.kind for b in content}
        assert c.kind == (kinds.pop() if len(kinds) == 1 else "mixed") if content else c.kind == "heading"
        assert c.section == (content[0].section if content else blocks[0].section)
    missing = [m.start() for m in re.finditer(r"\S", text) if not covered[m.start()]]
    assert not missing, f"characters not covered by any chunk: {missing[:10]}"
    # A heading is never alone at the end of a chunk, except before a sheet change, at the end of
    # the document, or when the headings above a block already take over half of the target.
    for c, nxt in zip(chunks, chunks[1:], strict=False):
        last = blocks_in(doc, c, spans)[-1]
        if last.kind == "heading":
            assert c.kind == "heading"
            # measured as the chunker does: from the headings to where the block below them starts
            assert nxt.sheet != c.sheet or nxt.char_start - c.char_start > target // 2
    # Blocks up to half the target are never split.
    for b, s, e in spans:
        if e - s <= target // 2:
            assert any(c.char_start <= s and e <= c.char_end for c in chunks), f"block split: {b.text!r}"


# --------------------------------------------------------------------------- property tests

WORDS = [
    "Lieferung",
    "Vertrag",
    "Schraube",
    "Mutter",
    "der",
    "die",
    "das",
    "und",
    "gemäß",
    "z. B.",
    "bzw.",
    "Nr. 5",
    "§ 3 Abs. 1",
    "Prüfung",
    "Größe",
    "Maß",
    "EUR",
    "12,50",
    "4012345678901",
    "vgl.",
    "ca.",
    "am 3. Oktober",
    "Kündigung",
    "ggf.",
    "u. a.",
    "Zahlung",
    "Rechnung",
]


def sentence(rnd: random.Random) -> str:
    words = " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(1, 25)))
    return words[0].upper() + words[1:] + rnd.choice([".", ".", "!", "?", ":"])


def block_text(rnd: random.Random, kind: str, size: int) -> str:
    """Text for one block; ``size`` (0-100) scales it. Content comes from ``rnd`` so that
    hypothesis draws only a few choices per block (drawing every word is slow)."""
    if size < 4:
        return ["", "   ", "\n\n", " \t "][size]
    if kind == "heading":
        return rnd.choice(["Einleitung", "§ 3 Kündigung", "Preise und Zahlung", "Anlage 1"])
    if size < 8:  # one unsplittable token
        return "X" * rnd.randint(1, 700)
    count = 1 + (size - 8) * 30 // 92
    if kind in ("table", "list", "code", "record"):
        rows = [sentence(rnd) for _ in range(count)]
        if kind == "table":
            rows = [f"Artikel: {r[:40]} | Preis: {i},00" for i, r in enumerate(rows)]
        elif kind == "list":
            rows = [f"- {r}" for r in rows]
        return "\n".join(rows)
    text = " ".join(sentence(rnd) for _ in range(count))
    return f" {text}\n" if rnd.random() < 0.3 else text


@st.composite
def documents(draw: st.DrawFn) -> ParsedDocument:
    rnd = random.Random(draw(st.integers(0, 2**32 - 1)))
    kinds = st.sampled_from(
        ["heading", "paragraph", "paragraph", "list", "table", "code", "product", "record"]
    )
    specs = draw(st.lists(st.tuples(kinds, st.integers(0, 100), st.integers(0, 7)), max_size=14))
    blocks: list[Block] = []
    page, sheet = 1, rnd.choice([None, "Tabelle1"])
    section: str | None = None
    for kind, size, change in specs:
        page += change == 1  # some blocks start a new page
        if sheet is not None and change == 2:
            sheet = f"Tabelle{rnd.randint(1, 3)}"
        text = block_text(rnd, kind, size)
        if kind == "heading":
            blocks.append(Block("heading", text, page=page, sheet=sheet, section=section, level=1))
            section = text
        else:
            blocks.append(Block(kind, text, page=page, sheet=sheet, section=section))  # type: ignore[arg-type]
    return ParsedDocument(mime="text/plain", title="Testdokument", blocks=blocks)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=documents(), target=st.integers(100, 900), overlap_ratio=st.floats(0, 0.45))
def test_chunk_invariants_hold_for_random_documents(
    doc: ParsedDocument, target: int, overlap_ratio: float
) -> None:
    overlap = int(target * overlap_ratio)
    chunks = chunk(doc, target, overlap)
    check_invariants(doc, chunks, target, overlap)
    assert chunk(doc, target, overlap) == chunks  # deterministic


@settings(max_examples=60, deadline=None)
@given(doc=documents(), target=st.integers(100, 400))
def test_extreme_overlap_still_terminates_and_covers(doc: ParsedDocument, target: int) -> None:
    overlap = target - 1
    check_invariants(doc, chunk(doc, target, overlap), target, overlap)


# --------------------------------------------------------------------------- concrete cases


def test_parameters_are_validated() -> None:
    doc = ParsedDocument(mime="text/plain", title="t", blocks=[Block("paragraph", "Hallo.")])
    with pytest.raises(ValueError, match="overlap_chars"):
        chunk(doc, 500, 500)
    with pytest.raises(ValueError, match="overlap_chars"):
        chunk(doc, 500, -1)
    with pytest.raises(ValueError, match="target_chars"):
        chunk(doc, 99, 10)
    assert len(chunk(doc, 100, 0)) == 1


def test_empty_and_blank_documents_have_no_chunks() -> None:
    assert chunk(ParsedDocument(mime="text/plain", title="t")) == []
    blank = ParsedDocument(
        mime="text/plain", title="t", blocks=[Block("paragraph", " \n "), Block("list", "")]
    )
    assert chunk(blank) == []


def test_headings_stay_with_their_paragraphs() -> None:
    blocks = [
        Block("heading", "Rahmenvertrag", level=1),
        Block("heading", "§ 1 Gegenstand", level=2, section="Rahmenvertrag"),
        Block(
            "paragraph",
            "Dieser Vertrag regelt die Lieferung von Befestigungstechnik.",
            section="Rahmenvertrag > § 1 Gegenstand",
        ),
        Block(
            "paragraph", "Er gilt für alle Bestellungen ab 2025.", section="Rahmenvertrag > § 1 Gegenstand"
        ),
        Block("heading", "§ 2 Preise", level=2, section="Rahmenvertrag"),
        Block(
            "paragraph",
            "Es gelten die Preise der jeweils aktuellen Preisliste.",
            section="Rahmenvertrag > § 2 Preise",
        ),
        Block("heading", "Anhang", level=1),
    ]
    doc = ParsedDocument(mime="text/plain", title="Rahmenvertrag", blocks=blocks)
    chunks = chunk(doc)
    check_invariants(doc, chunks, 1200, 150)
    assert [c.text for c in chunks] == [
        BLOCK_SEPARATOR.join(b.text for b in blocks[:4]),
        BLOCK_SEPARATOR.join(b.text for b in blocks[4:6]),
        "Anhang",  # a heading alone only at the end of the document
    ]
    assert [c.kind for c in chunks] == ["paragraph", "paragraph", "heading"]
    assert chunks[0].section == "Rahmenvertrag > § 1 Gegenstand"
    assert chunks[1].section == "Rahmenvertrag > § 2 Preise"
    assert (chunks[1].source, chunks[1].domain, chunks[1].chunk_id) == ("src/file.pdf", "general", "doc1:1")


def test_small_blocks_are_packed_and_mixed_kinds_reported() -> None:
    blocks = [
        Block("paragraph", "Die folgenden Artikel sind lieferbar."),
        Block("list", "- Schraube M8\n- Mutter M8"),
        Block("table", "Artikel: M8 | Preis: 0,12"),
    ]
    doc = ParsedDocument(mime="text/plain", title="t", blocks=blocks)
    [only] = chunk(doc)
    assert only.text == doc.text and only.kind == "mixed"
    assert (only.char_start, only.char_end) == (0, len(doc.text))


def test_blocks_that_do_not_fit_start_a_new_chunk_whole() -> None:
    blocks = [Block("paragraph", f"Absatz {i}. " + "Wort " * 30 + "Ende.") for i in range(6)]
    doc = ParsedDocument(mime="text/plain", title="t", blocks=blocks)
    chunks = chunk(doc, target=400, overlap=50)
    check_invariants(doc, chunks, 400, 50)
    texts = {b.text for b in blocks}
    for c in chunks:  # every chunk is a run of whole paragraphs, none split
        assert all(part in texts for part in c.text.split(BLOCK_SEPARATOR))
    assert len(chunks) == 3


def test_long_table_is_split_at_rows_with_row_overlap() -> None:
    rows = [
        f"Artikelnummer: 10{i:03d} | Bezeichnung: Sechskantschraube M{i % 20 + 3} | Preis: {i},50 EUR"
        for i in range(80)
    ]
    blocks = [
        Block("heading", "Preisliste 2025", level=1),
        Block("table", "\n".join(rows), section="Preisliste 2025", page=4),
    ]
    doc = ParsedDocument(mime="text/plain", title="Preise", blocks=blocks)
    chunks = chunk(doc, target=1000, overlap=150)
    check_invariants(doc, chunks, 1000, 150)
    assert len(chunks) > 5
    assert chunks[0].text.startswith("Preisliste 2025\n\nArtikelnummer: 10000 |")
    seen: list[str] = []
    for i, c in enumerate(chunks):
        assert c.kind == "table" and c.page == 4 and c.section == "Preisliste 2025"
        lines = c.text.split("\n\n", 1)[-1].split("\n") if i == 0 else c.text.split("\n")
        assert all(line in rows for line in lines), "a table chunk contains a partial row"
        if i:
            assert lines[0] in seen, "consecutive table pieces share at least one row"
        seen.extend(lines)
    assert set(seen) == set(rows)


def test_list_split_at_items() -> None:
    items = [f"- Punkt {i}: Die Ware ist bei Anlieferung auf Vollständigkeit zu prüfen." for i in range(40)]
    doc = ParsedDocument(mime="text/plain", title="t", blocks=[Block("list", "\n".join(items))])
    chunks = chunk(doc, target=500, overlap=0)
    check_invariants(doc, chunks, 500, 0)
    for c in chunks:
        assert c.kind == "list"
        assert all(line in items for line in c.text.split("\n"))
    assert sum(len(c.text.split("\n")) for c in chunks) == len(items)  # no overlap asked, none given


def test_each_product_is_its_own_chunk() -> None:
    products = [
        Block("product", f"Sechskantschraube M{n}\nGTIN: 40123456789{n:02d}\nETIM: EC000042", page=2)
        for n in (6, 8, 10)
    ]
    blocks = [
        Block("paragraph", "Katalog der Befestigungstechnik.", page=1),
        Block("heading", "Schrauben", level=1, page=2),
        *products,
        Block("paragraph", "Alle Preise netto.", page=2),
    ]
    doc = ParsedDocument(mime="text/plain", title="Katalog", blocks=blocks)
    chunks = chunk(doc)
    check_invariants(doc, chunks, 1200, 150)
    assert [c.kind for c in chunks] == ["paragraph", "product", "product", "product", "paragraph"]
    assert chunks[1].text == "Schrauben\n\n" + products[0].text  # the heading leads into the first product
    assert [c.text for c in chunks[2:4]] == [products[1].text, products[2].text]


def test_page_numbers_and_page_change_breaks() -> None:
    para = ("Die Gewährleistung beträgt zwei Jahre ab Abnahme. " * 8).strip()  # 399 chars
    middle = "Mängel sind unverzüglich schriftlich anzuzeigen, spätestens binnen einer Woche ab Erhalt."
    blocks = [
        Block("heading", "Gewährleistung", level=1),  # no page: the chunk takes the first page named
        Block("paragraph", para, page=1),
        Block("paragraph", middle, page=2),  # current chunk under half the target: joins across pages
        Block("paragraph", para, page=3),  # chunk over half the target and a new page: new chunk
        Block("paragraph", "Ende.", page=3),
    ]
    doc = ParsedDocument(mime="text/plain", title="t", blocks=blocks)
    chunks = chunk(doc, target=1000, overlap=100)
    check_invariants(doc, chunks, 1000, 100)
    assert [(c.page, c.text.split(BLOCK_SEPARATOR)[-1]) for c in chunks] == [(1, middle), (3, "Ende.")]
    assert chunks[0].text.startswith("Gewährleistung")
    assert len(chunks[0].text) + len(BLOCK_SEPARATOR) + len(para) <= 1000  # it would have fit


def test_chunks_never_span_sheets() -> None:
    blocks = [
        Block("table", "Artikel: A | Preis: 1", sheet="Preise"),
        Block("table", "Artikel: B | Preis: 2", sheet="Preise"),
        Block("heading", "Lager", sheet="Preise"),  # a sheet change cuts off this heading
        Block("table", "Artikel: A | Bestand: 10", sheet="Bestand"),
        Block("table", "Artikel: B | Bestand: 0", sheet="Bestand"),
    ]
    doc = ParsedDocument(mime="application/vnd.ms-excel", title="t", blocks=blocks)
    chunks = chunk(doc)
    check_invariants(doc, chunks, 1200, 150)
    assert [(c.sheet, c.kind) for c in chunks] == [
        ("Preise", "table"),
        ("Preise", "heading"),
        ("Bestand", "table"),
    ]
    assert chunks[2].text == "Artikel: A | Bestand: 10\n\nArtikel: B | Bestand: 0"


GERMAN = (
    "Der Lieferant haftet gem. § 3 Abs. 1 Satz 2 der AGB für Mängel, z. B. an Schrauben bzw. Muttern. "
    "Die Frist beginnt am 3. Oktober mit der Abnahme durch den Kunden, vgl. Nr. 4 des Vertrags. "
    "Ansprüche verjähren nach Art. 12 i.d.R. in zwei Jahren, u. a. bei verdeckten Mängeln! "
    "Wer haftet bei Folgeschäden? "
    "Hierzu gilt Ziff. 7 des Rahmenvertrags, insb. für Schäden an Maschinen ca. ab 5.000 EUR. "
)
SENTENCES = [
    "Der Lieferant haftet gem. § 3 Abs. 1 Satz 2 der AGB für Mängel, z. B. an Schrauben bzw. Muttern.",
    "Die Frist beginnt am 3. Oktober mit der Abnahme durch den Kunden, vgl. Nr. 4 des Vertrags.",
    "Ansprüche verjähren nach Art. 12 i.d.R. in zwei Jahren, u. a. bei verdeckten Mängeln!",
    "Wer haftet bei Folgeschäden?",
    "Hierzu gilt Ziff. 7 des Rahmenvertrags, insb. für Schäden an Maschinen ca. ab 5.000 EUR.",
]


def test_long_german_paragraph_is_split_at_sentences_not_at_abbreviations() -> None:
    assert " ".join(SENTENCES) + " " == GERMAN
    text = GERMAN * 12
    doc = ParsedDocument(
        mime="text/plain", title="t", blocks=[Block("paragraph", text, section="Haftung", page=7)]
    )
    chunks = chunk(doc, target=600, overlap=150)
    check_invariants(doc, chunks, 600, 150)
    assert len(chunks) > 5
    for i, c in enumerate(chunks):
        assert c.page == 7 and c.section == "Haftung" and c.kind == "paragraph"
        assert c.text[-1] in ".!?", f"chunk {i} ends mid-sentence: {c.text[-30:]!r}"
        assert any(c.text.startswith(s) for s in SENTENCES), f"chunk {i} starts mid-sentence: {c.text[:30]!r}"
        assert not re.search(
            r"\b(z\.|bzw\.|Abs\.|Nr\.|Art\.|Ziff\.|ca\.|vgl\.|insb\.|i\.d\.R\.|u\.)$", c.text
        )
    # Overlap: each piece repeats the last sentence(s) of the previous one.
    for a, b in zip(chunks, chunks[1:], strict=False):
        shared = a.char_end - b.char_start
        assert 50 <= shared <= 225


def test_paragraph_without_sentences_splits_at_whitespace_and_giant_tokens_are_cut() -> None:
    words = " ".join(f"wort{i}" for i in range(400))
    token = "A" * 950
    doc = ParsedDocument(
        mime="text/plain", title="t", blocks=[Block("paragraph", words), Block("code", token)]
    )
    chunks = chunk(doc, target=300, overlap=40)
    check_invariants(doc, chunks, 300, 40)
    vocabulary = set(words.split())
    for c in chunks:
        if c.kind == "paragraph":
            assert set(c.text.split()) <= vocabulary  # never cut inside a word
    token_chunks = [c for c in chunks if c.kind == "code"]
    assert "".join(c.text for c in token_chunks) == token
    assert [len(c.text) for c in token_chunks] == [300, 300, 300, 50]


def test_heading_before_a_long_block_is_attached_to_its_first_piece() -> None:
    doc = ParsedDocument(
        mime="text/plain",
        title="t",
        blocks=[
            Block("heading", "§ 9 Haftung"),
            Block("paragraph", GERMAN * 4, section="§ 9 Haftung"),
        ],
    )
    chunks = chunk(doc, target=500, overlap=100)
    check_invariants(doc, chunks, 500, 100)
    assert chunks[0].text.startswith("§ 9 Haftung\n\nDer Lieferant haftet")
    assert chunks[0].kind == "paragraph" and chunks[0].section == "§ 9 Haftung"


def test_offsets_skip_blank_blocks_and_trim_whitespace() -> None:
    blocks = [
        Block("paragraph", "  Erster Absatz.  "),
        Block("paragraph", "   "),
        Block("paragraph", ""),
        Block("heading", "\nZweiter Teil\n"),
        Block("paragraph", "Zweiter Absatz."),
    ]
    doc = ParsedDocument(mime="text/plain", title="t", blocks=blocks)
    chunks = chunk(doc)
    check_invariants(doc, chunks, 1200, 150)
    assert [c.text for c in chunks] == ["Erster Absatz.", "Zweiter Teil\n\n\nZweiter Absatz."]
    assert chunks[1].char_start == doc.text.index("Zweiter Teil")
