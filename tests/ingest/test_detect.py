"""Content type detection: by content, the name only as a tie-breaker between text formats."""

from __future__ import annotations

import io
import json
import random
import zipfile
from email.message import EmailMessage

import docx
import openpyxl
import pytest
from reportlab.pdfgen import canvas

from kontor.servers.ingest import detect
from kontor.servers.ingest.detect import detect_type
from kontor.servers.ingest.model import CorruptFile


def _pdf() -> bytes:
    buf = io.BytesIO()
    c = canvas.Canvas(buf)
    c.drawString(72, 720, "Hallo PDF")
    c.showPage()
    c.save()
    return buf.getvalue()


def _docx() -> bytes:
    d = docx.Document()
    d.add_paragraph("Text")
    buf = io.BytesIO()
    d.save(buf)
    return buf.getvalue()


def _xlsx() -> bytes:
    wb = openpyxl.Workbook()
    wb.active.append(["a", "b"])
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_empty_file_is_corrupt() -> None:
    with pytest.raises(CorruptFile, match="empty"):
        detect_type(b"", "leer.pdf")


def test_pdf_by_magic_not_by_name() -> None:
    data = _pdf()
    assert detect_type(data, "scan.bin") == detect.PDF
    assert detect_type(data, "noname") == detect.PDF


def test_pdf_name_with_other_content_is_not_pdf() -> None:
    assert detect_type(b"Dies ist kein PDF, nur Text.\n", "rechnung.pdf") == detect.TEXT
    assert detect_type(b"<html><body><p>x</p></body></html>", "rechnung.pdf") == detect.HTML
    assert detect_type(random.Random(1).randbytes(4096), "rechnung.pdf") == detect.OCTET


def test_office_and_zip() -> None:
    assert detect_type(_docx(), "x.zip") == detect.DOCX
    assert detect_type(_xlsx(), "x.docx") == detect.XLSX
    assert detect_type(_zip({"a.txt": b"hi"}), "x.xlsx") == detect.ZIP
    assert detect_type(b"PK\x03\x04garbage", "broken.zip") == detect.ZIP  # the handler reports the damage


def test_email_by_headers() -> None:
    msg = EmailMessage()
    msg["From"] = "a@example.com"
    msg["To"] = "b@example.com"
    msg["Subject"] = "Angebot"
    msg.set_content("Hallo")
    assert detect_type(msg.as_bytes(), "mail.dat") == detect.EML
    assert detect_type(b"Subject: Hallo\n\nText", "nachricht.eml") == detect.EML
    # A memo with one "Title:"-style line is not an e-mail.
    assert detect_type(b"Title: Notizen\n\nText", "notiz") == detect.TEXT


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"<!DOCTYPE html><html><head><title>t</title></head><body></body></html>", detect.HTML),
        (b"  <div><p>Fragment</p></div>", detect.HTML),
        (b'<?xml version="1.0"?><html xmlns="http://www.w3.org/1999/xhtml"><body/></html>', detect.HTML),
        (b'<?xml version="1.0" encoding="UTF-8"?><rechnung><betrag>1</betrag></rechnung>', detect.XML),
        (b"<BMECAT version=\"1.2\"><HEADER/></BMECAT>", detect.BMECAT),
        (b'<?xml version="1.0"?>\n<!-- export -->\n<!DOCTYPE BMECAT SYSTEM "bmecat_2005.dtd">\n'
         b'<BMECAT xmlns="http://www.bmecat.org/bmecat/2005" version="2005"/>', detect.BMECAT),
        (b'<bme:BMECAT xmlns:bme="http://www.bmecat.org/bmecat/1.2"/>', detect.BMECAT),
        (b'<?xml version="1.0"?><BMECATALOG/>', detect.XML),
    ],
)
def test_markup(data: bytes, expected: str) -> None:
    assert detect_type(data, "file") == expected


def test_json_and_jsonl() -> None:
    assert detect_type(json.dumps({"a": [1, 2]}, indent=2).encode(), "x.txt") == detect.JSON
    assert detect_type(b"[1, 2, 3]", "x") == detect.JSON
    lines = b'{"id": 1, "name": "a"}\n{"id": 2, "name": "b"}\n'
    assert detect_type(lines, "export.txt") == detect.NDJSON
    assert detect_type(b'{"id": 1}\n', "one.jsonl") == detect.NDJSON
    assert detect_type(b"[Entwurf] nicht json", "x") == detect.TEXT


def test_delimited_text() -> None:
    german = "Artikel;Preis;Größe\nSchraube;1,50;groß\nMutter;0,20;klein\n".encode("cp1252")
    assert detect_type(german, "export") == detect.CSV
    assert detect_type(b"a\tb\tc\n1\t2\t3\n4\t5\t6\n", "x") == detect.CSV
    assert detect_type(b"id,name\n1,a\n2,b\n", "x") == detect.CSV
    prose = (b"Wir freuen uns, Ihnen mitzuteilen, dass die Lieferung, wie besprochen, morgen erfolgt.\n"
             b"Bitte pruefen Sie, ob alles, was bestellt wurde, auch vollstaendig angekommen ist.\n")
    assert detect_type(prose, "brief") == detect.TEXT


def test_markdown_and_name_tie_break() -> None:
    md = b"# Titel\n\nEin Absatz mit [Link](http://example.com).\n\n## Teil\n\n- a\n- b\n"
    assert detect_type(md, "readme") == detect.MARKDOWN
    assert detect_type(b"Nur ein Satz.\n", "notes.md") == detect.MARKDOWN
    assert detect_type(b"Nur ein Satz.\n", "notes.txt") == detect.TEXT
    assert detect_type(b"a;b\n", "one.csv") == detect.CSV
    table = b"| Name | Wert |\n|------|------|\n| a | 1 |\n"
    assert detect_type(table, "t") == detect.MARKDOWN


def test_utf16_text_with_bom() -> None:
    data = "\ufeffHallo Welt äöü\nZweite Zeile\n".encode("utf-16-le")
    assert detect_type(data, "x") == detect.TEXT


def test_binary() -> None:
    assert detect_type(random.Random(1).randbytes(10_000), "data.txt") == detect.OCTET
    assert detect_type(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(504), "alt.doc") == detect.OLE


def test_known_binary_is_named() -> None:
    pytest.importorskip("filetype")
    png = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(20)
    assert detect_type(png, "bild.txt") == "image/png"
