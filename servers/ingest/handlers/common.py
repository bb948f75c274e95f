"""Helpers shared by the format handlers: text decoding, table rendering, section paths, zip limits."""

from __future__ import annotations

import codecs
import datetime as dt
import re
import zipfile
from collections.abc import Iterable, Sequence
from typing import Any

from charset_normalizer import from_bytes

from kontor.servers.ingest.model import Block, LimitExceeded
from kontor.settings import Limits

TABLE_ROWS_PER_BLOCK = 50
"""Rows of a table rendered into one table Block (keeps blocks chunk-sized)."""

TABLE_CHARS_PER_BLOCK = 6000

# Single-byte encodings charset-normalizer tends to report for short German texts. They all agree with
# cp1252 on the letters that matter (ä ö ü ß), and German exports are cp1252 (Excel "CSV (Trennzeichen-
# getrennt)") in practice, so cp1252 wins when it decodes the bytes cleanly.
_WESTERN_SINGLE_BYTE = {
    "cp1250", "cp1252", "cp1254", "cp1257", "latin_1", "iso8859_15", "iso8859_2", "iso8859_9",
    "iso8859_14", "iso8859_16", "mac_roman", "mac_iceland", "mac_turkish", "mac_latin2", "cp850",
    "cp437", "hp_roman8", "iso8859_3", "iso8859_4", "iso8859_10", "iso8859_13", "cp1258", "mac_croatian",
}

_SNIFF_BYTES = 256 * 1024


def _utf16_without_bom(data: bytes) -> str | None:
    sample = data[:4096]
    if len(sample) < 4:
        return None
    even_nuls = sample[0::2].count(0)
    odd_nuls = sample[1::2].count(0)
    half = len(sample) / 2
    if odd_nuls > 0.4 * half and even_nuls < 0.05 * half:
        return "utf-16-le"
    if even_nuls > 0.4 * half and odd_nuls < 0.05 * half:
        return "utf-16-be"
    return None


_WESTERN_CHARS = set("ÀÁÂÃÄÅÆÇÈÉÊËÌÍÎÏÐÑÒÓÔÕÖØÙÚÛÜÝÞßàáâãäåæçèéêëìíîïðñòóôõöøùúûüýþÿ€§°²³µ«»„“”‚‘’–—…®©™·•")


def _looks_western(sample: bytes) -> bool:
    """True when ``sample`` reads as Western European cp1252 text (German umlauts, ß, €).

    Short German exports fool statistical detectors (a few umlauts look like Shift-JIS or cp1250), so
    this check comes first: few non-ASCII characters, nearly all of them letters/symbols of German,
    French, Spanish ... text.
    """
    try:
        text = sample.decode("cp1252")
    except UnicodeDecodeError:
        return False
    high = [ch for ch in text if ord(ch) > 127]
    if not high:
        return True
    if len(high) > 0.15 * len(text):
        return False
    plausible = sum(1 for ch in high if ch in _WESTERN_CHARS)
    return plausible >= 0.9 * len(high)


def sniff_encoding(data: bytes) -> str:
    """The encoding of a text file: BOM, then strict UTF-8, then charset-normalizer (cp1252-biased)."""
    if data.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    if data.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        return "utf-32"
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    try:
        data.decode("utf-8")
        return "utf-8"
    except UnicodeDecodeError:
        pass
    utf16 = _utf16_without_bom(data)
    if utf16:
        return utf16
    if _looks_western(data[:_SNIFF_BYTES]):
        return "cp1252"
    best = from_bytes(data[:_SNIFF_BYTES]).best()
    guess = codecs.lookup(best.encoding).name.replace("-", "_") if best is not None else None
    if guess is None or guess in _WESTERN_SINGLE_BYTE or guess.startswith("mac_"):
        try:
            data.decode("cp1252")
            return "cp1252"
        except UnicodeDecodeError:
            return "latin-1" if guess is None else guess
    return best.encoding if best is not None else "latin-1"


def decode_text(data: bytes) -> tuple[str, str]:
    """Decode bytes to text; returns ``(text, encoding)``. Never raises: undecodable bytes become U+FFFD."""
    encoding = sniff_encoding(data)
    text = data.decode(encoding, errors="replace")
    if text.startswith("\ufeff"):
        text = text[1:]
    return text.replace("\r\n", "\n").replace("\r", "\n"), encoding


_WS = re.compile(r"[ \t\u00a0\u200b]+")


def clean_inline(text: str) -> str:
    """Collapse runs of whitespace (newlines included) into single spaces."""
    return " ".join(text.split())


def clean_multiline(text: str) -> str:
    """Collapse spaces per line, drop blank-line runs beyond one, strip the ends."""
    lines = [_WS.sub(" ", line).strip() for line in text.split("\n")]
    out: list[str] = []
    for line in lines:
        if not line and (not out or not out[-1]):
            continue
        out.append(line)
    return "\n".join(out).strip()


def format_cell(value: Any) -> str:
    """A spreadsheet/JSON scalar as text: integral floats without '.0', dates in ISO form."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return repr(value)
    if isinstance(value, dt.datetime):
        if value.time() == dt.time(0, 0):
            return value.date().isoformat()
        return value.isoformat(sep=" ")
    if isinstance(value, (dt.date, dt.time)):
        return value.isoformat()
    return clean_inline(str(value))


def header_names(cells: Sequence[Any], width: int) -> list[str]:
    """Header labels for ``width`` columns; blank or missing headers become 'Spalte N'."""
    names: list[str] = []
    for i in range(width):
        raw = format_cell(cells[i]) if i < len(cells) else ""
        names.append(raw or f"Spalte {i + 1}")
    return names


def render_row(headers: Sequence[str], values: Sequence[Any]) -> str:
    """One table row as 'Header: value | Header: value', empty cells left out."""
    parts: list[str] = []
    for i, value in enumerate(values):
        text = format_cell(value)
        if not text:
            continue
        header = headers[i] if i < len(headers) else f"Spalte {i + 1}"
        parts.append(f"{header}: {text}")
    return " | ".join(parts)


def table_blocks(
    headers: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    section: str | None = None,
    sheet: str | None = None,
    page: int | None = None,
) -> list[Block]:
    """Render rows into table Blocks of at most TABLE_ROWS_PER_BLOCK rows / ~TABLE_CHARS_PER_BLOCK chars."""
    blocks: list[Block] = []
    buf: list[str] = []
    size = 0
    for row in rows:
        line = render_row(headers, row)
        if not line:
            continue
        if buf and (len(buf) >= TABLE_ROWS_PER_BLOCK or size + len(line) > TABLE_CHARS_PER_BLOCK):
            blocks.append(Block(kind="table", text="\n".join(buf), section=section, sheet=sheet, page=page))
            buf, size = [], 0
        buf.append(line)
        size += len(line) + 1
    if buf:
        blocks.append(Block(kind="table", text="\n".join(buf), section=section, sheet=sheet, page=page))
    return blocks


class SectionPath:
    """The heading path above the current position ("Vertrag > § 3 Kündigung")."""

    def __init__(self) -> None:
        self._stack: list[tuple[int, str]] = []

    def push(self, level: int, title: str) -> str:
        """Enter a heading; returns the path including it."""
        while self._stack and self._stack[-1][0] >= level:
            self._stack.pop()
        self._stack.append((level, title))
        return self.path or title

    @property
    def path(self) -> str | None:
        return " > ".join(t for _, t in self._stack) or None


SMALL_ZIP_BYTES = 1024 * 1024
"""Below this total uncompressed size the expansion ratio is not checked: nothing small can be a bomb,
and small repetitive files (a CSV of zeros) legitimately compress more than 100:1."""


def check_zip_limits(zf: zipfile.ZipFile, limits: Limits, what: str = "archive") -> None:
    """Refuse a zip by its central directory before anything is decompressed."""
    infos = zf.infolist()
    if len(infos) > limits.max_archive_members:
        raise LimitExceeded(
            f"{what} has {len(infos)} members, more than the limit of {limits.max_archive_members}"
        )
    total = sum(i.file_size for i in infos)
    if total > limits.max_archive_total_bytes:
        raise LimitExceeded(
            f"{what} would expand to {total} bytes, more than the limit of "
            f"{limits.max_archive_total_bytes} bytes"
        )
    compressed = max(sum(i.compress_size for i in infos), 1)
    ratio = total / compressed
    if total > SMALL_ZIP_BYTES and ratio > limits.max_archive_ratio:
        raise LimitExceeded(
            f"{what} expands {ratio:.0f}:1 ({compressed} → {total} bytes), more than the limit of "
            f"{limits.max_archive_ratio:.0f}:1 (zip bomb?)"
        )
