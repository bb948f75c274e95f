"""E-mail and ZIP handlers: attachments and members become children; archive limits and nesting."""

from __future__ import annotations

import io
import zipfile
from email.message import EmailMessage

import pytest
from reportlab.pdfgen import canvas

from kontor.servers.ingest import detect
from kontor.servers.ingest.handlers import parse
from kontor.servers.ingest.model import (
    CorruptFile,
    IngestError,
    LimitExceeded,
    ParsedDocument,
    UnsafeContent,
)
from kontor.settings import Limits

LIMITS = Limits()


def small_pdf(pages: int = 2) -> bytes:
    buf = io.BytesIO()
    c = canvas.Canvas(buf)
    for number in range(1, pages + 1):
        c.drawString(72, 720, f"Angebot Seite {number}")
        c.showPage()
    c.save()
    return buf.getvalue()


def make_zip(members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def ingest_tree(data: bytes, name: str, limits: Limits, depth: int = 0) -> list[ParsedDocument]:
    """What the pipeline does: parse, then parse every child one level deeper."""
    doc = parse(data, name, limits, depth)
    out = [doc]
    for child in doc.children:
        out.extend(ingest_tree(child.data, child.name, limits, depth + 1))
    return out


def make_email(pdf: bytes) -> bytes:
    msg = EmailMessage()
    msg["From"] = "Einkauf Müller <einkauf@mueller.example>"
    msg["To"] = "vertrieb@kontor.example"
    msg["Subject"] = "Angebot Reihenklemmen"
    msg["Date"] = "Mon, 06 Jan 2025 10:00:00 +0100"
    msg.set_content("Guten Tag,\n\nanbei unser Angebot.\n\nMit freundlichen Grüßen\nMüller")
    msg.add_alternative("<html><body><p>Guten Tag,</p><p>anbei unser Angebot.</p></body></html>",
                        subtype="html")
    msg.add_attachment(pdf, maintype="application", subtype="pdf", filename="angebot.pdf")
    return msg.as_bytes()


def test_email_headers_body_and_pdf_attachment() -> None:
    pdf = small_pdf()
    doc = parse(make_email(pdf), "mail.eml", LIMITS)
    assert doc.mime == detect.EML
    assert doc.title == "Angebot Reihenklemmen"
    assert doc.metadata["from"] == "Einkauf Müller <einkauf@mueller.example>"
    assert doc.metadata["to"] == "vertrieb@kontor.example"
    assert doc.metadata["date"].startswith("Mon, 06 Jan 2025")
    assert [b.text for b in doc.blocks] == [
        "Guten Tag,", "anbei unser Angebot.", "Mit freundlichen Grüßen\nMüller"]
    assert [(c.name, c.data) for c in doc.children] == [("angebot.pdf", pdf)]  # not the HTML alternative
    child = parse(doc.children[0].data, doc.children[0].name, LIMITS, depth=1)
    assert child.mime == detect.PDF and child.pages == 2
    assert child.metadata["depth"] == 1


def test_email_html_only_and_attached_message() -> None:
    inner = EmailMessage()
    inner["From"] = "a@example.com"
    inner["Subject"] = "Weitergeleitet"
    inner.set_content("Innerer Text")
    inner.add_attachment(b"x;y\n1;2\n", maintype="text", subtype="csv", filename="innen.csv")
    outer = EmailMessage()
    outer["From"] = "b@example.com"
    outer["To"] = "c@example.com"
    outer["Subject"] = "FW: Weitergeleitet"
    outer.set_content("<h1>Hallo</h1><p>siehe Anhang</p>", subtype="html")
    outer.add_attachment(inner)
    outer.add_attachment(b"a,b\n1,2\n", maintype="text", subtype="csv", filename="..\\..\\liste.csv")
    doc = parse(outer.as_bytes(), "fw.eml", LIMITS)
    assert [(b.kind, b.text) for b in doc.blocks] == [("heading", "Hallo"), ("paragraph", "siehe Anhang")]
    names = [c.name for c in doc.children]
    assert names == ["attachment-1.eml", "liste.csv"]  # path parts of attachment names are dropped
    forwarded = parse(doc.children[0].data, names[0], LIMITS, depth=1)
    assert forwarded.mime == detect.EML and forwarded.title == "Weitergeleitet"
    assert [c.name for c in forwarded.children] == ["innen.csv"]


def test_zip_members_become_children_and_nested_zip() -> None:
    inner = make_zip({"innen.txt": b"Innerer Text"})
    data = make_zip({
        "docs/": b"",
        "docs/readme.md": b"# Hallo\n\nWelt",
        "__MACOSX/docs/._readme.md": b"\x00\x05\x16\x07",
        "nested.zip": inner,
    })
    doc = parse(data, "paket.zip", LIMITS)
    assert doc.mime == detect.ZIP
    assert [c.name for c in doc.children] == ["docs/readme.md", "nested.zip"]
    assert doc.metadata["skipped"] == [{"name": "__MACOSX/docs/._readme.md", "reason": "macOS metadata"}]
    tree = ingest_tree(data, "paket.zip", LIMITS)
    assert [d.mime for d in tree] == [detect.ZIP, detect.MARKDOWN, detect.ZIP, detect.TEXT]
    assert tree[-1].blocks[0].text == "Innerer Text"
    assert tree[-1].metadata["depth"] == 2


def test_nesting_deeper_than_limit() -> None:
    data = b"ganz innen"
    for level in range(4):
        data = make_zip({f"ebene{level}.zip" if level else "innen.txt": data})
    # zip(depth 0) > zip(1) > zip(2) > zip(3) > txt(4)
    with pytest.raises(LimitExceeded, match="nested 4 levels deep"):
        ingest_tree(data, "tief.zip", Limits(max_nesting_depth=3))
    assert len(ingest_tree(data, "tief.zip", Limits(max_nesting_depth=4))) == 5


def test_zip_bomb_ratio() -> None:
    bomb = make_zip({"zeros.bin": bytes(4 * 1024 * 1024)})
    assert len(bomb) < 20_000  # ~1000:1
    with pytest.raises(LimitExceeded, match="expands .*:1"):
        parse(bomb, "bomb.zip", LIMITS)


def test_zip_total_size_and_member_count_limits() -> None:
    data = make_zip({f"f{i}.txt": b"x" * 3000 for i in range(5)})
    with pytest.raises(LimitExceeded, match="members"):
        parse(data, "viele.zip", Limits(max_archive_members=3))
    with pytest.raises(LimitExceeded, match="would expand to 15000 bytes"):
        parse(data, "gross.zip", Limits(max_archive_total_bytes=10_000))


def _patch_sizes(data: bytes, fake_size: int) -> bytes:
    """Make the headers lie: declare ``fake_size`` uncompressed bytes for the (single) member."""
    buf = bytearray(data)
    local = buf.find(b"PK\x03\x04")
    buf[local + 22 : local + 26] = fake_size.to_bytes(4, "little")
    central = buf.find(b"PK\x01\x02")
    buf[central + 24 : central + 28] = fake_size.to_bytes(4, "little")
    return bytes(buf)


def test_zip_lying_header_cannot_expand_past_declared_size() -> None:
    honest = make_zip({"daten.txt": b"A" * 2_000_000})
    lying = _patch_sizes(honest, 100)
    with pytest.raises(CorruptFile, match="daten.txt"):
        parse(lying, "luege.zip", LIMITS)


def _set_encrypted_flag(data: bytes, member_index: int) -> bytes:
    buf = bytearray(data)
    pos = -1
    for _ in range(member_index + 1):
        pos = buf.find(b"PK\x03\x04", pos + 1)
    buf[pos + 6] |= 0x1
    pos = -1
    for _ in range(member_index + 1):
        pos = buf.find(b"PK\x01\x02", pos + 1)
    buf[pos + 8] |= 0x1
    return bytes(buf)


def test_encrypted_members_are_skipped_with_reason() -> None:
    data = _set_encrypted_flag(make_zip({"offen.txt": b"lesbar", "geheim.txt": b"geheim"},
                                        zipfile.ZIP_STORED), 1)
    doc = parse(data, "teil.zip", LIMITS)
    assert [c.name for c in doc.children] == ["offen.txt"]
    assert doc.metadata["skipped"] == [
        {"name": "geheim.txt", "reason": "encrypted (password-protected) member"}]


def test_fully_encrypted_archive_is_corrupt() -> None:
    data = _set_encrypted_flag(make_zip({"geheim.txt": b"geheim"}, zipfile.ZIP_STORED), 0)
    with pytest.raises(CorruptFile, match="password-protected"):
        parse(data, "geheim.zip", LIMITS)


@pytest.mark.parametrize("member", ["../evil.txt", "a/../../evil.txt", "/etc/cron.d/evil", "C:\\evil.txt",
                                    "..\\evil.txt"])
def test_zip_slip_names_are_unsafe(member: str) -> None:
    data = make_zip({"ok.txt": b"ok", member: b"boom"})
    with pytest.raises(UnsafeContent, match="evil"):
        parse(data, "slip.zip", LIMITS)


def test_broken_zip_is_corrupt() -> None:
    with pytest.raises(CorruptFile, match="ZIP"):
        parse(b"PK\x03\x04" + bytes(100), "kaputt.zip", LIMITS)
    with pytest.raises(IngestError):
        parse(make_zip({"a.txt": b"x" * 1000})[:60], "halb.zip", LIMITS)
