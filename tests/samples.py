"""Small real files built in the tests: good ones of each kind and the classic bad ones."""

from __future__ import annotations

import io
import random
import zipfile
from email.message import EmailMessage
from pathlib import Path


def pdf_bytes(pages: list[str]) -> bytes:
    from reportlab.lib.pagesizes import A4
    from reportlab.pdfgen import canvas

    buf = io.BytesIO()
    c = canvas.Canvas(buf, pagesize=A4)
    for text in pages:
        y = 800
        for line in text.split("\n"):
            c.drawString(60, y, line)
            y -= 16
        c.showPage()
    c.save()
    return buf.getvalue()


def cp1252_csv() -> bytes:
    rows = [
        "Artikelnummer;Bezeichnung;Preis;Währung",
        "1SDA066799R1;Leistungsschalter Größe 3;1.234,56;€",
        "WDU-2.5;Durchgangsklemme grün;0,89;€",
        "3RV2011-1AA10;Motorschutzschalter für Drehstrommotoren;45,10;€",
    ]
    return ("\r\n".join(rows) + "\r\n").encode("cp1252")


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<lolz>&lol9;</lolz>
"""

XXE = b"""<?xml version="1.0"?>
<!DOCTYPE data [<!ENTITY secret SYSTEM "file:///etc/passwd">]>
<data>&secret;</data>
"""


def zip_bomb(megabytes: int = 20) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        z.writestr("zeros.txt", b"\0" * (megabytes * 1024 * 1024))
    return buf.getvalue()


def eml_with_attachment(pdf: bytes) -> bytes:
    msg = EmailMessage()
    msg["From"] = "einkauf@example.de"
    msg["To"] = "vertrieb@example.de"
    msg["Subject"] = "Angebot Leistungsschalter"
    msg.set_content("Guten Tag,\n\nanbei unser Angebot für die Leistungsschalter.\n\nMit freundlichen Grüßen")
    msg.add_attachment(pdf, maintype="application", subtype="pdf", filename="angebot.pdf")
    return bytes(msg)


def random_bytes(n: int = 4096, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


def write_mixed_folder(folder: Path) -> dict[str, str]:
    """Good and bad files side by side. Returns name -> expected outcome ("ok" or "failed")."""
    folder.mkdir(parents=True, exist_ok=True)
    pdf = pdf_bytes(["Rahmenvertrag Seite eins\nDer Lieferant haftet nach BGB.",
                     "Seite zwei\nKündigung mit 3 Monaten Frist."])
    files = {
        "vertrag.pdf": (pdf, "ok"),
        "preise.csv": (cp1252_csv(), "ok"),
        "notiz.md": ("# Notiz\n\nEdelstahlschraube M8 für den Schaltschrank.\n".encode(), "ok"),
        "mail.eml": (eml_with_attachment(pdf), "ok"),
        "kaputt.pdf": (pdf[: len(pdf) // 2], "failed"),
        "leer.pdf": (b"", "failed"),
        "lol.xml": (BILLION_LAUGHS, "failed"),
        "xxe.xml": (XXE, "failed"),
        "bomb.zip": (zip_bomb(), "failed"),
        "rauschen.bin": (random_bytes(), "failed"),
    }
    for name, (data, _) in files.items():
        (folder / name).write_bytes(data)
    return {name: outcome for name, (_, outcome) in files.items()}


def text_corpus(folder: Path, n: int, seed: int = 7, words: tuple[int, int] = (20, 60),
                paragraphs: tuple[int, int] = (2, 5)) -> list[Path]:
    """``n`` small German text documents with some repeated vocabulary (short ones embed fast)."""
    rng = random.Random(seed)
    vocabulary = ("Leistungsschalter Schütz Klemme Kabel Vertrag Kündigung Haftung Steuer Bilanz Lieferung "
             "Edelstahl Schraube Motorschutz Schaltschrank Spannung Angebot Rechnung Frist Gewährleistung").split()
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        paras = []
        for _ in range(rng.randint(*paragraphs)):
            paras.append(" ".join(rng.choice(vocabulary) for _ in range(rng.randint(*words))) + ".")
        path = folder / f"doc{i:04d}.md"
        path.write_text(f"# Dokument {i}\n\n" + "\n\n".join(paras) + "\n", encoding="utf-8")
        paths.append(path)
    return paths
