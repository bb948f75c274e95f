"""Canonical JSON and the hashes used to pin tool definitions and server instructions.

:func:`canonical_json` is the one serialisation every pin is computed over, so the same
definition always gives the same hash, whichever client, dict order or JSON library produced it:

* object keys sorted (by code point), no insignificant whitespace (``","`` and ``":"``), UTF-8
  without ``\\u`` escapes for non-ASCII characters;
* every string — values *and* keys — normalised to Unicode NFC first. NFC only merges
  sequences that are canonically equivalent (``"é"`` as one code point or as ``e`` + combining
  acute), which every renderer shows identically, so a server re-encoding the same text does
  not trip the pin. NFC deliberately keeps everything that *looks* different or hides text:
  zero-width and bidirectional control characters, tag characters and compatibility forms
  (``"ﬁ"`` vs ``"fi"``, full-width letters) all still change the hash — NFKC would fold some of
  them away, which is exactly what a poisoned description would exploit;
* numbers: integers as integers; a float with an integral value (``1.0``) written as the
  integer (``1``) as in RFC 8785 (JSON cannot tell them apart, and JavaScript-based servers
  never write ``1.0``); other floats in Python's shortest round-trip form. NaN and infinities
  are not JSON and are refused.

Two keys that become equal after NFC normalisation are refused rather than merged.
"""

from __future__ import annotations

import hashlib
import json
import math
import unicodedata
from collections.abc import Mapping
from typing import Any

__all__ = ["DEFINITION_FIELDS", "canonical_json", "definition_hash", "definition_of", "instructions_hash"]

# The parts of a tool definition a model sees or that change what a call does. ``_meta`` and
# ``icons`` are presentation/transport details and are not pinned.
DEFINITION_FIELDS = ("name", "title", "description", "inputSchema", "outputSchema", "annotations")
_MAX_SAFE_INT = 2**53


def _normalise(value: Any) -> Any:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return unicodedata.normalize("NFC", value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value!r} cannot be represented in canonical JSON")
        if value.is_integer() and abs(value) <= _MAX_SAFE_INT:
            return int(value)
        return value
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"canonical JSON needs string keys, got {key!r}")
            norm = unicodedata.normalize("NFC", key)
            if norm in out:
                raise ValueError(f"keys {key!r} and another key are equal after Unicode NFC normalisation")
            out[norm] = _normalise(item)
        return out
    if isinstance(value, list | tuple):
        return [_normalise(item) for item in value]
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def canonical_json(obj: Any) -> bytes:
    """``obj`` as canonical JSON bytes (see the module docstring for the exact rules)."""
    return json.dumps(
        _normalise(obj), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def definition_of(tool: Any) -> dict[str, Any]:
    """Exactly the pinned fields of ``tool`` (a dict, or an ``mcp.types.Tool``-like model); missing → None.

    A pydantic model is dumped with ``exclude_unset`` so that a tool parsed from the wire hashes
    like the JSON the server sent (the SDK would otherwise add ``null`` for every unset field).
    """
    if not isinstance(tool, Mapping) and hasattr(tool, "model_dump"):
        tool = tool.model_dump(by_alias=True, mode="json", exclude_unset=True)
    if not isinstance(tool, Mapping):
        raise TypeError(f"a tool definition must be a mapping, got {type(tool).__name__}")
    return {field: tool.get(field) for field in DEFINITION_FIELDS}


def definition_hash(tool: Any) -> str:
    """sha256 (hex) of the canonical JSON of the tool's name, title, description, schemas and annotations."""
    return hashlib.sha256(canonical_json(definition_of(tool))).hexdigest()


def instructions_hash(text: str | None) -> str:
    """sha256 (hex) of a server's ``instructions`` as a canonical JSON string (None → ``null``)."""
    return hashlib.sha256(canonical_json(text)).hexdigest()
