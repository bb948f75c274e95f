"""Content type detection by content (magic bytes, sniffing); the file name only breaks ties between text
formats. A ``.pdf`` that holds no PDF is not a PDF."""

from __future__ import annotations

import codecs
import csv
import io
import json
import re
import zipfile
from collections import Counter
from pathlib import PurePosixPath

from kontor.servers.ingest.model import CorruptFile

PDF = "application/pdf"
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
PPTX = "application/vnd.openxmlformats-officedocument.presentationml.presentation"
ZIP = "application/zip"
EML = "message/rfc822"
HTML = "text/html"
XML = "application/xml"
BMECAT = "application/x-bmecat"
JSON = "application/json"
NDJSON = "application/x-ndjson"
CSV = "text/csv"
MARKDOWN = "text/markdown"
TEXT = "text/plain"
OCTET = "application/octet-stream"
OLE = "application/x-ole-storage"  # legacy .doc/.xls/.msg: recognised, not supported

_HEAD_BYTES = 64 * 1024
_JSON_FULL_PARSE_BYTES = 8 * 1024 * 1024

_MD_EXT = {".md", ".markdown", ".mdown", ".mkd"}
_CSV_EXT = {".csv", ".tsv", ".tab"}
_TXT_EXT = {".txt", ".text", ".log"}
_HTML_EXT = {".html", ".htm", ".xhtml"}

_HTML_ROOTS = {
    "html", "head", "body", "div", "p", "table", "span", "ul", "ol", "section", "article", "header",
    "main", "form", "meta", "link", "title", "a", "img", "br", "script", "style", "h1", "h2", "h3", "h4",
    "h5", "h6", "nav", "footer", "center", "font", "b", "i", "pre",
}

_EMAIL_HEADERS = {
    "from", "to", "cc", "bcc", "subject", "date", "message-id", "mime-version", "received", "return-path",
    "reply-to", "sender", "content-type", "content-transfer-encoding", "delivered-to", "in-reply-to",
    "references", "x-mailer", "user-agent", "dkim-signature", "authentication-results", "thread-topic",
}
_EMAIL_STRONG = {"from", "message-id", "received", "mime-version", "return-path", "delivered-to"}
_HEADER_LINE = re.compile(r"^([!-9;-~]+):[ \t]?(.*)$")

_XML_DECL = re.compile(r"<\?.*?\?>", re.S)
_COMMENT = re.compile(r"<!--.*?-->", re.S)
_NAME = re.compile(r"<([A-Za-z_][\w.\-]*(?::[A-Za-z_][\w.\-]*)?)")

_MD_HEADING = re.compile(r"^ {0,3}#{1,6}[ \t]+\S", re.M)
_MD_FENCE = re.compile(r"^ {0,3}(```|~~~)", re.M)
_MD_TABLE_SEP = re.compile(r"^[ \t]*\|?[ \t]*:?-{3,}:?[ \t]*(\|[ \t]*:?-{3,}:?[ \t]*)+\|?[ \t]*$", re.M)
_MD_LINK = re.compile(r"\[[^\]\n]+\]\([^)\s]+\)")
_MD_EMPH = re.compile(r"(\*\*|__)\S[^\n]*?\S\1")

CSV_DELIMITERS = (";", "\t", ",", "|")


def _ext(name: str) -> str:
    return PurePosixPath(name.replace("\\", "/")).suffix.lower()


def _head_text(data: bytes) -> str | None:
    """The first bytes as text, or None when they look binary."""
    head = data[:_HEAD_BYTES]
    for bom, enc in (
        (codecs.BOM_UTF8, "utf-8-sig"),
        (codecs.BOM_UTF32_LE, "utf-32-le"),
        (codecs.BOM_UTF32_BE, "utf-32-be"),
        (codecs.BOM_UTF16_LE, "utf-16-le"),
        (codecs.BOM_UTF16_BE, "utf-16-be"),
    ):
        if head.startswith(bom):
            return head[len(bom):].decode(enc.replace("-sig", ""), errors="replace")
    if len(head) >= 4:
        odd, even = head[1::2].count(0), head[0::2].count(0)
        half = len(head) / 2
        if odd > 0.4 * half and even < 0.05 * half:
            return head.decode("utf-16-le", errors="replace")
        if even > 0.4 * half and odd < 0.05 * half:
            return head.decode("utf-16-be", errors="replace")
    if b"\x00" in head:
        return None
    controls = sum(1 for b in head if b < 0x20 and b not in (0x09, 0x0A, 0x0C, 0x0D, 0x1B))
    if controls > max(1, len(head) // 200):
        return None
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start >= len(head) - 4 and len(data) > len(head):  # a character cut at the sample border
            text = head[: exc.start].decode("utf-8")
        else:
            # Not UTF-8: a single-byte text (cp1252 export) or binary. High bytes in binary are dense and
            # rarely form words; cp1252 decodes almost everything, so rely on the control-byte test above
            # plus the share of bytes >= 0x80.
            high = sum(1 for b in head if b >= 0x80)
            if high > len(head) * 0.3:
                return None
            text = head.decode("cp1252", errors="replace")
    return text


def _zip_type(data: bytes) -> str:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            names = set(zf.namelist())
            if "word/document.xml" in names:
                return DOCX
            if "xl/workbook.xml" in names:
                return XLSX
            if "ppt/presentation.xml" in names:
                return PPTX
            if "mimetype" in names and "META-INF/manifest.xml" in names:
                info = zf.getinfo("mimetype")
                if info.file_size < 200:
                    mime = zf.read(info).decode("ascii", errors="replace").strip()
                    if mime.startswith("application/vnd.oasis.opendocument"):
                        return mime
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, KeyError, NotImplementedError,
            RuntimeError, EOFError):
        pass  # a broken zip is still a zip; the archive handler reports what is wrong
    return ZIP


def _xml_root(text: str) -> tuple[bool, str, str | None]:
    """(has_xml_declaration, doctype text, root element name) of markup at the start of ``text``."""
    pos = 0
    decl = False
    doctype = ""
    n = len(text)
    while pos < n:
        while pos < n and text[pos].isspace():
            pos += 1
        if text.startswith("<?", pos):
            end = text.find("?>", pos)
            if end < 0:
                return decl, doctype, None
            decl = decl or text.startswith("<?xml", pos)
            pos = end + 2
        elif text.startswith("<!--", pos):
            end = text.find("-->", pos)
            if end < 0:
                return decl, doctype, None
            pos = end + 3
        elif text[pos : pos + 9].upper() == "<!DOCTYPE":
            bracket = text.find("[", pos)
            close = text.find(">", pos)
            if close < 0:
                return decl, text[pos:], None
            if 0 <= bracket < close:
                end = text.find("]", bracket)
                close = text.find(">", end) if end >= 0 else -1
                if close < 0:
                    return decl, text[pos:], None
            doctype = text[pos : close + 1]
            pos = close + 1
        else:
            m = _NAME.match(text, pos)
            return decl, doctype, m.group(1) if m else None
    return decl, doctype, None


def _markup_type(text: str, ext: str) -> str | None:
    decl, doctype, root = _xml_root(text)
    if root is None and not doctype:
        return None
    local = (root or "").rsplit(":", 1)[-1]
    if local.upper() == "BMECAT":
        return BMECAT
    if "html" in doctype.lower()[:20] or local.lower() == "html":
        return HTML
    if decl:
        return XML
    if ext in _HTML_EXT:
        return HTML
    if ext == ".xml":
        return XML
    if local.lower() in _HTML_ROOTS:
        return HTML
    if root and (f"</{root}" in text or text.rstrip().endswith("/>") or len(text) >= _HEAD_BYTES - 4):
        return XML
    return None  # "<Name> wrote: ..." is text that merely starts with '<'


def _json_type(data: bytes, text: str, ext: str) -> str | None:
    lines = [ln for ln in text.split("\n") if ln.strip()]
    if len(data) > _HEAD_BYTES and lines:
        lines = lines[:-1]  # the last line of the sample may be cut
    sample = lines[:50]

    def _loads(s: str) -> object | None:
        try:
            return json.loads(s)
        except ValueError:
            return None

    parsed = [isinstance(_loads(ln), (dict, list)) for ln in sample]
    # JSON Lines: the first line and most others are JSON objects/arrays each (a pretty-printed JSON
    # document has lines like "{" that are not). A few broken lines leave it JSONL: the handler reports them.
    if parsed and parsed[0]:
        if ext in {".jsonl", ".ndjson"} or (len(parsed) >= 2 and all(parsed)):
            return NDJSON
        if len(parsed) >= 3 and sum(parsed) >= 0.8 * len(parsed):
            return NDJSON
    if len(data) <= _JSON_FULL_PARSE_BYTES:
        try:
            json.loads(data.decode("utf-8-sig"))
            return JSON
        except (ValueError, UnicodeDecodeError):
            return JSON if ext == ".json" else None
    return JSON  # too big to parse here; the JSON handler reports broken content


def _looks_like_email(text: str, ext: str) -> bool:
    lines = text.split("\n", 200)
    if lines and lines[0].startswith("From ") and not lines[0].startswith("From: "):
        lines = lines[1:]  # mbox separator line
    known: set[str] = set()
    for i, line in enumerate(lines[:200]):
        line = line.rstrip("\r")
        if not line:
            break
        if line[0] in " \t" and i > 0:
            continue
        m = _HEADER_LINE.match(line)
        if not m:
            return False
        if m.group(1).lower() in _EMAIL_HEADERS:
            known.add(m.group(1).lower())
    if ext == ".eml" and known:
        return True
    return len(known) >= 3 or (len(known) >= 2 and bool(known & _EMAIL_STRONG))


def sniff_delimiter(lines: list[str]) -> tuple[str, int] | None:
    """The delimiter that splits ``lines`` into a consistent number (>= 2) of fields, with that number.

    Tries ';', tab, ',' and '|' with the csv module (so quoted delimiters do not count) and picks the one
    with the most lines agreeing on one field count; ties go to the larger field count, then to the order
    above (';' first: German exports use ';' because ',' is the decimal separator).
    """
    best: tuple[float, int, str] | None = None
    for delim in CSV_DELIMITERS:
        try:
            counts = [len(row) for row in csv.reader(lines, delimiter=delim) if row]
        except csv.Error:
            continue
        if not counts:
            continue
        mode, freq = Counter(counts).most_common(1)[0]
        if mode < 2:
            continue
        agreement = freq / len(counts)
        if agreement < 0.8:
            continue
        key = (agreement, mode, delim)
        if best is None or (key[0], key[1]) > (best[0], best[1]):
            best = key
    return (best[2], best[1]) if best else None


def _looks_like_csv(text: str, truncated: bool) -> bool:
    lines = [ln for ln in text.split("\n") if ln.strip()]
    if truncated and lines:
        lines = lines[:-1]
    lines = lines[:100]
    if len(lines) < 2:
        return False
    found = sniff_delimiter(lines)
    if not found:
        return False
    delim, width = found
    if delim in (",", "|"):
        # Prose has commas too: require short fields, as in data.
        fields = [f for row in csv.reader(lines, delimiter=delim) for f in row]
        avg = sum(len(f) for f in fields) / max(len(fields), 1)
        if avg > 40:
            return False
    return True


def _markdown_score(text: str) -> int:
    score = 2 * len(_MD_HEADING.findall(text[:20000]))
    score += len(_MD_FENCE.findall(text[:20000]))
    score += 3 * len(_MD_TABLE_SEP.findall(text[:20000]))
    score += len(_MD_LINK.findall(text[:20000]))
    score += len(_MD_EMPH.findall(text[:20000]))
    if text.startswith("---\n") and "\n---" in text[4:4000]:
        score += 2
    return score


def _binary_type(data: bytes) -> str:
    """Name a binary we do not read (image/png, ...) so the refusal says what it was; else octet-stream.

    ``filetype`` is optional: without it every such file is ``application/octet-stream``.
    """
    try:
        import filetype
    except ImportError:
        return OCTET
    return filetype.guess_mime(data[:8192]) or OCTET


def detect_type(data: bytes, name: str) -> str:
    """A MIME-ish type for ``data`` from its content. ``name`` only breaks ties between text formats.

    Raises CorruptFile for empty data. Unknown binary content gives ``application/octet-stream`` (or the
    type ``filetype`` recognises, such as ``image/png``), which the handlers refuse as unsupported.
    """
    if not data:
        raise CorruptFile("file is empty")
    ext = _ext(name)
    head = data[:1024]
    if b"%PDF-" in head:
        return PDF
    if data.startswith((b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")):
        return _zip_type(data)
    if data.startswith(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"):
        return OLE

    text = _head_text(data)
    if text is None:
        return _binary_type(data)

    stripped = text.lstrip("\ufeff \t\r\n")
    if not stripped:
        return TEXT
    truncated = len(data) > _HEAD_BYTES
    if stripped.startswith("<"):
        markup = _markup_type(stripped, ext)
        if markup:
            return markup
    if stripped[0] in "{[":
        js = _json_type(data, stripped, ext)
        if js:
            return js
    normalized = stripped.replace("\r\n", "\n")
    if _looks_like_email(normalized, ext):
        return EML
    if ext in _MD_EXT:
        return MARKDOWN
    if ext in _CSV_EXT:
        return CSV
    if ext in _TXT_EXT:
        return TEXT
    if ext in _HTML_EXT and re.search(r"<(p|div|br|h[1-6]|table)\b", normalized[:20000], re.I):
        return HTML
    if _markdown_score(normalized) >= 3:
        return MARKDOWN
    if _looks_like_csv(normalized, truncated):
        return CSV
    return TEXT
