"""Format handlers on real files generated in the test (PDF, DOCX, XLSX, CSV, JSON, HTML, Markdown, text)."""

from __future__ import annotations

import io
import json

import docx
import openpyxl
import pytest
from reportlab.lib.pagesizes import A4
from reportlab.pdfgen import canvas

from kontor.servers.ingest import detect
from kontor.servers.ingest.handlers import parse
from kontor.servers.ingest.handlers.csv_tsv import parse_decimal
from kontor.settings import Limits

LIMITS = Limits()


def make_pdf(pages: int, title: str = "Rahmenvertrag") -> bytes:
    """A PDF with a heading and two paragraphs per page (reportlab canvas, real text layer)."""
    buf = io.BytesIO()
    c = canvas.Canvas(buf, pagesize=A4)
    c.setTitle(title)
    for number in range(1, pages + 1):
        y = 780
        c.setFont("Helvetica-Bold", 14)
        c.drawString(72, y, f"Abschnitt {number}")
        y -= 30
        c.setFont("Helvetica", 10)
        for para in (1, 2):
            lines = [f"Absatz {para} auf Seite {number}: Lieferung und Zahlung der Waren erfolgen gemaess",
                     "den vereinbarten Bedingungen des Rahmenvertrags zwischen den Parteien, die hiermit",
                     f"ausdruecklich bestaetigt werden (Ende {para}/{number})."]
            for line in lines:
                c.drawString(72, y, line)
                y -= 14
            y -= 14
        c.showPage()
    c.save()
    return buf.getvalue()


def test_pdf_paragraphs_with_page_numbers() -> None:
    doc = parse(make_pdf(3), "vertrag.pdf", LIMITS)
    assert doc.mime == detect.PDF
    assert doc.pages == 3
    assert doc.title == "Rahmenvertrag"
    assert {b.page for b in doc.blocks} == {1, 2, 3}
    for number in (1, 2, 3):
        texts = [b.text for b in doc.blocks if b.page == number]
        assert texts[0] == f"Abschnitt {number}"
        # Each paragraph (three text lines) comes back as one block, on its own page.
        assert any(t.startswith(f"Absatz 1 auf Seite {number}:") and t.endswith(f"(Ende 1/{number}).")
                   for t in texts), texts
        assert any(t.startswith(f"Absatz 2 auf Seite {number}:") for t in texts)
    assert all(b.kind == "paragraph" for b in doc.blocks)


def make_docx() -> bytes:
    d = docx.Document()
    d.core_properties.title = "Lieferantenhandbuch"
    d.add_heading("Einleitung", level=1)
    d.add_paragraph("Dieses Handbuch regelt die Zusammenarbeit.")
    d.add_heading("Qualität", level=2)
    d.add_paragraph("Erstmusterprüfung", style="List Bullet")
    d.add_paragraph("Wareneingangskontrolle", style="List Bullet")
    d.add_paragraph("Danach folgt Text.")
    table = d.add_table(rows=3, cols=3)
    for i, row in enumerate([["Artikel", "Menge", "Preis"], ["Schraube M6", "100", "4,50 €"],
                             ["Mutter M6", "200", ""]]):
        for j, value in enumerate(row):
            table.cell(i, j).text = value
    d.add_heading("Anhang", level=1)
    d.add_paragraph("Ende.")
    buf = io.BytesIO()
    d.save(buf)
    return buf.getvalue()


def test_docx_headings_sections_lists_tables() -> None:
    doc = parse(make_docx(), "handbuch.docx", LIMITS)
    assert doc.mime == detect.DOCX
    assert doc.title == "Lieferantenhandbuch"
    kinds = [(b.kind, b.text) for b in doc.blocks]
    assert kinds[0] == ("heading", "Einleitung")
    headings = [b for b in doc.blocks if b.kind == "heading"]
    assert [(h.text, h.level, h.section) for h in headings] == [
        ("Einleitung", 1, "Einleitung"),
        ("Qualität", 2, "Einleitung > Qualität"),
        ("Anhang", 1, "Anhang"),
    ]
    lists = [b for b in doc.blocks if b.kind == "list"]
    assert len(lists) == 1
    assert lists[0].text == "- Erstmusterprüfung\n- Wareneingangskontrolle"
    assert lists[0].section == "Einleitung > Qualität"
    tables = [b for b in doc.blocks if b.kind == "table"]
    assert len(tables) == 1
    assert tables[0].text == ("Artikel: Schraube M6 | Menge: 100 | Preis: 4,50 €\n"
                              "Artikel: Mutter M6 | Menge: 200")
    last = doc.blocks[-1]
    assert (last.kind, last.text, last.section) == ("paragraph", "Ende.", "Anhang")


def make_xlsx(rows: int = 3) -> bytes:
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = "Preise"
    ws.append(["Artikel", "Preis", "Datum"])
    for i in range(rows):
        ws.append([f"Teil {i}", 1.5 + i, None])
    ws2 = wb.create_sheet("Leer")
    del ws2
    ws3 = wb.create_sheet("Lager")
    ws3.append(["Ort", "Menge"])
    ws3.append(["Köln", 12])
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()


def test_xlsx_sheets_as_tables() -> None:
    doc = parse(make_xlsx(), "preise.xlsx", LIMITS)
    assert doc.mime == detect.XLSX
    assert [b.sheet for b in doc.blocks] == ["Preise", "Lager"]
    assert all(b.kind == "table" for b in doc.blocks)
    assert doc.blocks[0].text.split("\n") == [
        "Artikel: Teil 0 | Preis: 1.5", "Artikel: Teil 1 | Preis: 2.5", "Artikel: Teil 2 | Preis: 3.5"]
    assert doc.blocks[1].text == "Ort: Köln | Menge: 12"


def test_xlsx_is_chunked_into_several_blocks() -> None:
    doc = parse(make_xlsx(rows=120), "gross.xlsx", LIMITS)
    preise = [b for b in doc.blocks if b.sheet == "Preise"]
    assert len(preise) == 3  # 50 rows per block
    assert sum(b.text.count("\n") + 1 for b in preise) == 120


GERMAN_CSV = (
    "Artikelnummer;Bezeichnung;Preis;Gewicht\n"
    "1001;Schraube Edelstahl größe M6;1.234,56;0,5\n"
    "1002;Mutter für Außengewinde;0,99 €;1,25\n"
    "1003;Unterlegscheibe ß;12,00;2\n"
).encode("cp1252")


def test_csv_german_cp1252_semicolon_decimal_comma() -> None:
    doc = parse(GERMAN_CSV, "export.csv", LIMITS)
    assert doc.mime == detect.CSV
    assert doc.metadata["encoding"] == "cp1252"
    assert doc.metadata["delimiter"] == ";"
    assert doc.metadata["rows"] == 3
    rows = doc.blocks[0].text.split("\n")
    assert rows[0] == ("Artikelnummer: 1001 | Bezeichnung: Schraube Edelstahl größe M6 | Preis: 1.234,56 | "
                       "Gewicht: 0,5")
    assert "Mutter für Außengewinde" in rows[1] and "Preis: 0,99 €" in rows[1]
    assert "ß" in rows[2]
    assert doc.metadata["decimal_comma_columns"] == ["Preis", "Gewicht"]
    assert "Artikelnummer" in doc.metadata["numeric_columns"]
    assert parse_decimal("1.234,56") == pytest.approx(1234.56)
    assert parse_decimal("0,99 €") == pytest.approx(0.99)
    assert parse_decimal("Schraube") is None


def test_tsv_and_comma_csv() -> None:
    tsv = parse(b"name\tqty\nBolt\t3\nNut\t4\n", "x.tsv", LIMITS)
    assert tsv.metadata["delimiter"] == "\t"
    assert tsv.blocks[0].text == "name: Bolt | qty: 3\nname: Nut | qty: 4"
    quoted = parse(b'id,text\n1,"a, b"\n2,c\n', "x.csv", LIMITS)
    assert quoted.blocks[0].text == "id: 1 | text: a, b\nid: 2 | text: c"


def test_json_records_flattened() -> None:
    data = json.dumps([
        {"id": 1, "kunde": {"name": "Müller GmbH", "ort": "Köln"}, "tags": ["a", "b"]},
        {"id": 2, "kunde": {"name": "Schmidt AG"}, "positionen": [{"sku": "X1", "menge": 2}]},
    ]).encode()
    doc = parse(data, "kunden.json", LIMITS)
    assert doc.mime == detect.JSON
    assert [b.kind for b in doc.blocks] == ["record", "record"]
    assert doc.blocks[0].text == "id: 1\nkunde.name: Müller GmbH\nkunde.ort: Köln\ntags: a, b"
    assert doc.blocks[1].text == ("id: 2\nkunde.name: Schmidt AG\npositionen[0].sku: X1\n"
                                  "positionen[0].menge: 2")


def test_json_object_with_item_list() -> None:
    data = json.dumps({"title": "Export", "items": [{"a": 1}, {"a": 2}], "count": 2}).encode()
    doc = parse(data, "export.json", LIMITS)
    assert doc.title == "Export"
    assert [b.text for b in doc.blocks] == ["title: Export", "a: 1", "a: 2", "count: 2"]


def test_jsonl() -> None:
    doc = parse(b'{"id": 1, "x": {"y": true}}\n\n{"id": 2, "x": null}\n', "log.jsonl", LIMITS)
    assert doc.mime == detect.NDJSON
    assert [b.text for b in doc.blocks] == ["id: 1\nx.y: true", "id: 2\nx: null"]
    assert doc.metadata["records"] == 2


HTML_PAGE = """<!DOCTYPE html>
<html><head><title>Produktseite</title><style>body{color:red}</style>
<script>alert('x')</script></head>
<body><nav><a href="/">Home</a> | <a href="/kontakt">Kontakt</a></nav>
<h1>Klemmen</h1><p>Reihenklemmen für die <b>Hutschiene</b>.</p>
<h2>Vorteile</h2><ul><li>Schnell</li><li>Sicher<ul><li>geprüft</li></ul></li></ul>
<table><tr><th>Typ</th><th>Querschnitt</th></tr><tr><td>WDU 2.5</td><td>2,5 mm²</td></tr></table>
<div>Loser Text im Div.</div>
<pre>code   block</pre>
</body></html>"""


def test_html() -> None:
    doc = parse(HTML_PAGE.encode(), "seite.html", LIMITS)
    assert doc.mime == detect.HTML
    assert doc.title == "Produktseite"
    text = doc.text
    assert "alert" not in text and "color:red" not in text and "Kontakt" not in text
    got = [(b.kind, b.text, b.section) for b in doc.blocks]
    assert got == [
        ("heading", "Klemmen", "Klemmen"),
        ("paragraph", "Reihenklemmen für die Hutschiene.", "Klemmen"),
        ("heading", "Vorteile", "Klemmen > Vorteile"),
        ("list", "- Schnell\n- Sicher\n  - geprüft", "Klemmen > Vorteile"),
        ("table", "Typ: WDU 2.5 | Querschnitt: 2,5 mm²", "Klemmen > Vorteile"),
        ("paragraph", "Loser Text im Div.", "Klemmen > Vorteile"),
        ("code", "code   block", "Klemmen > Vorteile"),
    ]


MARKDOWN = """---
title: Betriebsanleitung
version: 2
---

# Montage

Die Klemme wird auf die Hutschiene
aufgerastet.

## Werkzeug

- Schraubendreher
- Abisolierzange
  mit Längenanschlag

```bash
make install
```

| Größe | Wert |
|-------|-----:|
| Breite | 5 mm |
| Höhe | 42 mm |

# Wartung
Keine.
"""


def test_markdown() -> None:
    doc = parse(MARKDOWN.encode(), "anleitung.md", LIMITS)
    assert doc.mime == detect.MARKDOWN
    assert doc.title == "Betriebsanleitung"
    assert doc.metadata["front_matter"] == {"title": "Betriebsanleitung", "version": "2"}
    got = [(b.kind, b.text, b.section, b.level) for b in doc.blocks]
    assert got == [
        ("heading", "Montage", "Montage", 1),
        ("paragraph", "Die Klemme wird auf die Hutschiene\naufgerastet.", "Montage", None),
        ("heading", "Werkzeug", "Montage > Werkzeug", 2),
        ("list", "- Schraubendreher\n- Abisolierzange mit Längenanschlag", "Montage > Werkzeug", None),
        ("code", "make install", "Montage > Werkzeug", None),
        ("table", "Größe: Breite | Wert: 5 mm\nGröße: Höhe | Wert: 42 mm", "Montage > Werkzeug", None),
        ("heading", "Wartung", "Wartung", 1),
        ("paragraph", "Keine.", "Wartung", None),
    ]


def test_plain_text_cp1252() -> None:
    text = "Sehr geehrte Damen und Herren,\n\nanbei die Preise für Öl und Maß.\nGrüße\n\n\nEnde"
    data = text.encode("cp1252")
    doc = parse(data, "brief.txt", LIMITS)
    assert doc.mime == detect.TEXT
    assert [b.text for b in doc.blocks] == [
        "Sehr geehrte Damen und Herren,", "anbei die Preise für Öl und Maß.\nGrüße", "Ende"]
    assert doc.metadata["encoding"] == "cp1252"


def test_plain_text_utf8_bom() -> None:
    doc = parse("\ufeffÄrger mit der Straße\r\n\r\nZweiter Absatz".encode(), "x.txt", LIMITS)
    assert [b.text for b in doc.blocks] == ["Ärger mit der Straße", "Zweiter Absatz"]


def test_generic_xml_paragraphs_with_paths() -> None:
    xml = b"""<?xml version="1.0"?>
<rechnungen><rechnung nr="1"><kunde>M\xc3\xbcller</kunde><betrag waehrung="EUR">10,00</betrag></rechnung>
<rechnung nr="2"><kunde>Schmidt</kunde></rechnung></rechnungen>"""
    doc = parse(xml, "r.xml", LIMITS)
    assert doc.mime == detect.XML
    assert [(b.text, b.section) for b in doc.blocks] == [
        ("kunde: Müller\nbetrag (waehrung=EUR): 10,00", "rechnungen > rechnung"),
        ("kunde: Schmidt", "rechnungen > rechnung"),
    ]
