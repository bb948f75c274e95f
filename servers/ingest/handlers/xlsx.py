"""XLSX handler (openpyxl, read-only, cached values): table Blocks per sheet chunk, row limit enforced."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from typing import Any

import openpyxl

from kontor.servers.ingest.detect import XLSX
from kontor.servers.ingest.handlers.common import check_zip_limits, format_cell, header_names, table_blocks
from kontor.servers.ingest.model import Block, CorruptFile, IngestError, LimitExceeded, ParsedDocument
from kontor.settings import Limits


def _trim(row: tuple[Any, ...]) -> list[Any]:
    values = list(row)
    while values and format_cell(values[-1]) == "":
        values.pop()
    return values


def parse(data: bytes, name: str, limits: Limits) -> ParsedDocument:
    """Parse a workbook: the first non-empty row of each sheet is its header row."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            check_zip_limits(zf, limits, "XLSX package")
        wb = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    except IngestError:
        raise
    except Exception as exc:  # openpyxl raises KeyError, ValueError, InvalidFileException, ... on bad files
        raise CorruptFile(f"XLSX workbook cannot be read: {type(exc).__name__}: {exc}") from exc

    blocks: list[Block] = []
    sheets: list[dict[str, Any]] = []
    counter = [0]
    try:
        for ws in wb.worksheets:
            declared = ws.max_row or 0
            if declared > limits.max_rows:
                raise LimitExceeded(
                    f"sheet {ws.title!r} has {declared} rows, more than the limit of {limits.max_rows}"
                )
            rows = _rows(ws, limits, counter)
            headers: list[str] = []
            for first in rows:
                headers = header_names(first, len(first))
                break
            if not headers:
                continue
            before = counter[0]
            sheet_blocks = table_blocks(headers, rows, sheet=ws.title, section=ws.title)
            blocks.extend(sheet_blocks)
            sheets.append({"name": ws.title, "columns": headers, "rows": counter[0] - before})
    except IngestError:
        raise
    except Exception as exc:
        raise CorruptFile(f"XLSX sheet cannot be read: {type(exc).__name__}: {exc}") from exc
    finally:
        wb.close()
    return ParsedDocument(mime=XLSX, title=name, blocks=blocks, metadata={"sheets": sheets})


def _rows(ws: Any, limits: Limits, counter: list[int]) -> Iterator[list[Any]]:
    """Non-empty rows of a sheet, trailing empty cells trimmed; counts every row against max_rows."""
    for raw in ws.iter_rows(values_only=True):
        counter[0] += 1
        if counter[0] > limits.max_rows:
            raise LimitExceeded(f"workbook has more than {limits.max_rows} rows (limit max_rows)")
        row = _trim(raw)
        if row:
            yield row
