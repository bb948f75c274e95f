"""JSON and JSON Lines handler: each top-level item becomes one ``record`` Block of "key.path: value"
lines."""

from __future__ import annotations

import json
from typing import Any

from kontor.servers.ingest.detect import JSON, NDJSON
from kontor.servers.ingest.handlers.common import decode_text, format_cell
from kontor.servers.ingest.model import Block, CorruptFile, LimitExceeded, ParsedDocument
from kontor.settings import Limits

MAX_DEPTH = 64
"""Deeper nesting is cut off with a marker (and Python's recursion limit is never reached)."""


def flatten(value: Any, prefix: str = "", depth: int = 0) -> list[str]:
    """Flatten JSON into readable lines: {"a": {"b": 1}, "t": ["x", "y"]} → ["a.b: 1", "t: x, y"]."""
    if depth > MAX_DEPTH:
        return [f"{prefix or '(root)'}: …(nested deeper than {MAX_DEPTH} levels)"]
    if isinstance(value, dict):
        if not value:
            return [f"{prefix}: {{}}"] if prefix else []
        lines: list[str] = []
        for key, item in value.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            lines.extend(flatten(item, path, depth + 1))
        return lines
    if isinstance(value, list):
        if not value:
            return [f"{prefix}: []"] if prefix else []
        if all(not isinstance(v, (dict, list)) for v in value):
            return [f"{prefix or '(root)'}: " + ", ".join(format_cell(v) for v in value)]
        lines = []
        for i, item in enumerate(value):
            lines.extend(flatten(item, f"{prefix}[{i}]", depth + 1))
        return lines
    text = "null" if value is None else format_cell(value)
    return [f"{prefix}: {text}" if prefix else text]


def _records(doc: Any) -> list[tuple[str, Any]]:
    """Top-level items: list elements, or object members (a member holding a list of objects is split)."""
    if isinstance(doc, list):
        return [(f"[{i}]", item) for i, item in enumerate(doc)]
    if isinstance(doc, dict):
        out: list[tuple[str, Any]] = []
        for key, value in doc.items():
            if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
                out.extend((f"{key}[{i}]", item) for i, item in enumerate(value))
            else:
                out.append((str(key), {key: value}))
        return out
    return [("", doc)]


def _block(label: str, item: Any) -> Block | None:
    text = "\n".join(flatten(item))
    if not text.strip():
        return None
    return Block(kind="record", text=text, section=label or None)


def parse(data: bytes, name: str, limits: Limits) -> ParsedDocument:
    """Parse a JSON document."""
    text, encoding = decode_text(data)
    try:
        doc = json.loads(text)
    except RecursionError as exc:
        raise CorruptFile("JSON is nested too deeply to parse") from exc
    except ValueError as exc:
        raise CorruptFile(f"JSON is not valid: {exc}") from exc
    records = _records(doc)
    if len(records) > limits.max_rows:
        raise LimitExceeded(
            f"JSON has {len(records)} top-level items, more than the limit of {limits.max_rows}"
        )
    blocks = [b for label, item in records if (b := _block(label, item)) is not None]
    title = name
    if isinstance(doc, dict):
        for key in ("title", "name", "Titel", "Name"):
            if isinstance(doc.get(key), str) and doc[key].strip():
                title = doc[key].strip()
                break
    return ParsedDocument(mime=JSON, title=title, blocks=blocks,
                          metadata={"encoding": encoding, "records": len(records)})


def parse_lines(data: bytes, name: str, limits: Limits) -> ParsedDocument:
    """Parse JSON Lines: one record per non-empty line; a line that is not JSON → CorruptFile."""
    text, encoding = decode_text(data)
    blocks: list[Block] = []
    count = 0
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        count += 1
        if count > limits.max_rows:
            raise LimitExceeded(f"JSON Lines file has more than {limits.max_rows} records (limit max_rows)")
        try:
            item = json.loads(line)
        except RecursionError as exc:
            raise CorruptFile(f"line {number} is nested too deeply to parse") from exc
        except ValueError as exc:
            raise CorruptFile(f"line {number} is not valid JSON: {exc}") from exc
        block = _block(f"line {number}", item)
        if block is not None:
            blocks.append(block)
    return ParsedDocument(mime=NDJSON, title=name, blocks=blocks,
                          metadata={"encoding": encoding, "records": count})
