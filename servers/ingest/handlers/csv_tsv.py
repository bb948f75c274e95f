"""CSV/TSV handler: encoding and delimiter sniffing (German ';' exports in cp1252 included), table Blocks.

Decimal commas ("1.234,56") stay as they are in the text, and the columns holding them are reported in
``metadata["decimal_comma_columns"]`` so later steps can convert them.
"""

from __future__ import annotations

import csv
import io
import re
import sys
from collections.abc import Iterator

from kontor.servers.ingest.detect import CSV, sniff_delimiter
from kontor.servers.ingest.handlers.common import decode_text, header_names, table_blocks
from kontor.servers.ingest.model import CorruptFile, LimitExceeded, ParsedDocument
from kontor.settings import Limits

DECIMAL_COMMA = re.compile(r"^[+-]?(?:\d{1,3}(?:\.\d{3})+|\d+),\d+(?:\s?(?:€|EUR|%))?$")
DECIMAL_POINT = re.compile(r"^[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)\.\d+$")
INTEGER = re.compile(r"^[+-]?\d+$")

_FIELD_LIMIT = 10 * 1024 * 1024
csv.field_size_limit(min(sys.maxsize, _FIELD_LIMIT))


def parse_decimal(text: str) -> float | None:
    """'1.234,56' / '1,5 €' → 1234.56 / 1.5; None when the text is not a decimal-comma number."""
    value = text.strip()
    if not DECIMAL_COMMA.match(value):
        return None
    value = re.sub(r"\s?(?:€|EUR|%)$", "", value).replace(".", "").replace(",", ".")
    try:
        return float(value)
    except ValueError:
        return None


def _choose_delimiter(text: str, name: str) -> str:
    lines = [ln for ln in text.split("\n", 200)[:200] if ln.strip()]
    if len(lines) > 1:
        lines = lines[:-1] if len(lines) == 200 else lines
    found = sniff_delimiter(lines)
    if found:
        return found[0]
    if name.lower().endswith((".tsv", ".tab")):
        return "\t"
    first = lines[0] if lines else ""
    return max((";", "\t", ","), key=first.count) if first else ","


def parse(data: bytes, name: str, limits: Limits) -> ParsedDocument:
    """Parse delimited text: the first row is the header row."""
    text, encoding = decode_text(data)
    delimiter = _choose_delimiter(text, name)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)

    kinds: dict[int, set[str]] = {}
    rows_seen = 0

    def rows() -> Iterator[list[str]]:
        nonlocal rows_seen
        try:
            for row in reader:
                if not any(cell.strip() for cell in row):
                    continue
                rows_seen += 1
                if rows_seen > limits.max_rows + 1:  # + the header row
                    raise LimitExceeded(f"CSV has more than {limits.max_rows} rows (limit max_rows)")
                cells = [cell.strip() for cell in row]
                for i, cell in enumerate(cells):
                    if not cell:
                        continue
                    if DECIMAL_COMMA.match(cell) and not INTEGER.match(cell):
                        kinds.setdefault(i, set()).add("comma")
                    elif DECIMAL_POINT.match(cell) or INTEGER.match(cell):
                        kinds.setdefault(i, set()).add("number")
                    else:
                        kinds.setdefault(i, set()).add("text")
                yield cells
        except csv.Error as exc:
            raise CorruptFile(f"CSV cannot be parsed near row {reader.line_num}: {exc}") from exc

    it = rows()
    header: list[str] = []
    for first in it:
        header = first
        break
    if not header:
        return ParsedDocument(mime=CSV, title=name, metadata={"encoding": encoding, "rows": 0})
    headers = header_names(header, len(header))
    kinds.clear()  # the header row is not data
    blocks = table_blocks(headers, it)

    def col(i: int) -> str:
        return headers[i] if i < len(headers) else f"Spalte {i + 1}"

    decimal_comma = [col(i) for i, k in sorted(kinds.items()) if "comma" in k and "text" not in k]
    numeric = [col(i) for i, k in sorted(kinds.items()) if k and "text" not in k]
    meta = {
        "encoding": encoding,
        "delimiter": delimiter,
        "columns": headers,
        "rows": max(rows_seen - 1, 0),
        "decimal_comma_columns": decimal_comma,
        "numeric_columns": numeric,
    }
    if decimal_comma:
        meta["decimal_separator"] = ","
    return ParsedDocument(mime=CSV, title=name, blocks=blocks, metadata=meta)
