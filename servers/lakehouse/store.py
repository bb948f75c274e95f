"""Per-tenant lakehouse: chunks + vectors + full text in LanceDB, tables in Delta Lake.

Layout under a tenant's :class:`~kontor.paths.TenantPaths`::

    lance/chunks.lance       chunks with analysed text (fts), identifier keys (ids_text), vectors
    lance/lakehouse.json     manifest: embedding model + dim, vector-index training size
    lance/vocabulary.json    tenant vocabulary for the German decompounder
    delta/documents          one row per document (the commit marker of a write)
    delta/products           product rows extracted from catalogues
    delta/interactions       questions, answers and feedback recorded by the host (one row per
                             answer; each user sees, rates and deletes only their own rows)

Writes are batched (one Lance delete + add, one Delta transaction per table per batch) and
ordered so the ``documents`` row is written last: a crash mid-batch leaves documents without a
row, which the ingest pipeline re-does; every step deletes by ``document_id`` before it
inserts, so re-doing yields exactly the same rows.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime as dt
import decimal
import json
import logging
import math
import os
import re
import threading
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, Literal

import duckdb
import lancedb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable, write_deltalake
from deltalake import Field as DeltaField
from deltalake.exceptions import CommitFailedError
from lancedb.index import FTS, BTree, IvfSq
from lancedb.query import FullTextQuery, MatchQuery

from kontor.paths import TenantPaths
from kontor.servers.lakehouse.analysis import (
    PART_WEIGHT,
    Lexicon,
    TenantVocabulary,
    analyze,
    detect_language,
    extract_identifiers,
    file_lock,
    identifier_keys,
    query_identifier_keys,
    query_term_groups,
    vocabulary_candidates,
)
from kontor.servers.lakehouse.embeddings import EmbeddingSpec, model_languages
from kontor.servers.lakehouse.records import ChunkRecord, DocumentRecord, ProductRecord, SearchHit

log = logging.getLogger(__name__)

SearchMode = Literal["hybrid", "vector", "keyword"]
SEARCH_MODES: tuple[str, ...] = ("hybrid", "vector", "keyword")
FILTER_KEYS: tuple[str, ...] = ("domain", "document_id", "source_prefix", "kind", "mime")
K_RRF = 60
# Weight of the vector ranking for a query in a language the embedding model does not cover.
# Measured on LegalQuAD-de with the English-only default model: 0.25 -> nDCG@10 0.77, 0.1 -> 0.81,
# keyword alone 0.84; the vector ranking adds only noise there, so hybrid falls back to keyword.
FOREIGN_VECTOR_WEIGHT = float(os.environ.get("KONTOR_FOREIGN_VECTOR_WEIGHT", "0"))
MAX_K = 1000
MAX_FILTER_VALUES = 100
MAX_FILTER_CHARS = 500

VECTOR_INDEX_MIN_ROWS = 5_000  # below: exact brute-force search, fast enough and exact
VECTOR_INDEX_RETRAIN_FACTOR = 4  # retrain IVF centroids once the table grew 4x since training
VECTOR_PARTITION_ROWS = 1_000  # rows per IVF partition at training time
VECTOR_NPROBES = 20
DELTA_COMPACT_FILES = 32
MTIME_GRANULARITY_NS = 2_000_000_000  # compact a Delta table once it has this many data files

MANIFEST_FORMAT = 1
CHUNKS_TABLE = "chunks"
ModeList = list[str]
_Ranked = tuple[str, int, float]  # chunk_id, row id, score of one search
_Final = tuple[str, int, float, list[str]]  # chunk_id, row id, final score, modes that found it

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+=/-]{0,255}$")


class LakehouseError(RuntimeError):
    """Base class of lakehouse errors with messages meant for users."""


class EmbeddingMismatch(LakehouseError):
    """The tenant's vectors were made with another embedding model or dimension."""


class SqlError(ValueError):
    """A read-only SQL query that could not be answered."""


class SqlRejected(SqlError):
    """A SQL query refused before it ran (not a single read-only SELECT over tenant tables)."""


class SqlTimeout(SqlError):
    """A SQL query interrupted after its time limit."""


# -- schemas ----------------------------------------------------------------------------------

def chunk_schema(spec: EmbeddingSpec) -> pa.Schema:
    return pa.schema(
        [
            pa.field("chunk_id", pa.string(), nullable=False),
            pa.field("document_id", pa.string(), nullable=False),
            pa.field("ordinal", pa.int32()),
            pa.field("text", pa.string()),
            pa.field("source", pa.string()),
            pa.field("title", pa.string()),
            pa.field("domain", pa.string()),
            pa.field("kind", pa.string()),
            pa.field("page", pa.int32()),
            pa.field("sheet", pa.string()),
            pa.field("section", pa.string()),
            pa.field("char_start", pa.int64()),
            pa.field("char_end", pa.int64()),
            pa.field("identifiers", pa.list_(pa.string())),
            pa.field("mime", pa.string()),
            pa.field("fts", pa.string()),
            pa.field("ids_text", pa.string()),
            pa.field("vector", pa.list_(pa.float32(), spec.dim)),
        ],
        metadata={"kontor.embedding_model": spec.model, "kontor.embedding_dim": str(spec.dim)},
    )


DOCUMENTS_SCHEMA = pa.schema(
    [
        pa.field("document_id", pa.string(), nullable=False),
        pa.field("source", pa.string()),
        pa.field("title", pa.string()),
        pa.field("mime", pa.string()),
        pa.field("content_sha256", pa.string()),
        pa.field("size_bytes", pa.int64()),
        pa.field("domain", pa.string()),
        pa.field("domain_cues", pa.list_(pa.string())),
        pa.field("text", pa.string()),
        pa.field("pages", pa.int32()),
        pa.field("parent_id", pa.string()),
        pa.field("object_key", pa.string()),
        pa.field("metadata_json", pa.string()),
        pa.field("ingested_at", pa.string()),
        pa.field("chunk_count", pa.int32()),
    ]
)

PRODUCTS_SCHEMA = pa.schema(
    [
        pa.field("document_id", pa.string(), nullable=False),
        pa.field("supplier_pid", pa.string()),
        pa.field("gtin", pa.string()),
        pa.field("manufacturer_pid", pa.string()),
        pa.field("manufacturer_name", pa.string()),
        pa.field("name", pa.string()),
        pa.field("description", pa.string()),
        pa.field("classification_system", pa.string()),
        pa.field("classification_class", pa.string()),
        pa.field("features_json", pa.string()),
        pa.field("order_unit", pa.string()),
        pa.field("price", pa.float64()),
        pa.field("currency", pa.string()),
    ]
)

INTERACTIONS_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("ts", pa.timestamp("us", tz="UTC")),
        pa.field("user", pa.string()),
        pa.field("question", pa.string()),
        pa.field("answer", pa.string()),
        pa.field("tools_json", pa.string()),
        pa.field("feedback", pa.int8()),  # -1 bad, 0 neutral, +1 good, NULL none
        pa.field("comment", pa.string()),
        # Added later: tables made before get them (NULL in old rows) when a store opens them.
        pa.field("conversation_id", pa.string()),
        pa.field("message_id", pa.string()),
        pa.field("citations_json", pa.string()),
    ]
)
#: Delta table properties set on each table (and on older tables when a store opens them). The
#: interactions table keeps file statistics (min/max values, written into the transaction log)
#: only of columns that say nothing about what a user asked: a deleted question must not live on
#: in the log.
DELTA_PROPERTIES: dict[str, dict[str, str]] = {
    "interactions": {"delta.dataSkippingStatsColumns": "id,ts,feedback"},
}

# Limits of the interactions a caller may record (the MCP tools declare the same in their schemas).
MAX_QUESTION_CHARS = 20_000
MAX_ANSWER_CHARS = 100_000
MAX_COMMENT_CHARS = 2_000
MAX_USER_CHARS = 256
MAX_INTERACTION_TOOLS = 64
MAX_TOOL_NAME_CHARS = 200
MAX_TOOLS_JSON_CHARS = 64_000
MAX_CITATIONS = 50
MAX_CITATIONS_JSON_CHARS = 64_000
MAX_INTERACTIONS_PAGE = 100
MAX_DELETE_IDS = 500
MAX_CURSOR_CHARS = 512
COMMIT_RETRIES = 5
INTERACTION_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
_INTERACTION_ID = re.compile(INTERACTION_ID_PATTERN)

DELTA_SCHEMAS: dict[str, pa.Schema] = {
    "documents": DOCUMENTS_SCHEMA,
    "products": PRODUCTS_SCHEMA,
    "interactions": INTERACTIONS_SCHEMA,
}

HIT_COLUMNS = ["chunk_id", "document_id", "text", "title", "source", "page", "sheet", "section",
               "char_start", "char_end", "domain"]
LIST_COLUMNS = [f.name for f in DOCUMENTS_SCHEMA if f.name != "text"]


# -- helpers ----------------------------------------------------------------------------------

def sql_quote(value: str) -> str:
    """A SQL string literal; single quotes doubled (no backslash escapes in DataFusion/DuckDB)."""
    return "'" + value.replace("'", "''") + "'"


def _in_list(column: str, values: Sequence[str]) -> str:
    return f"{column} IN ({', '.join(sql_quote(v) for v in values)})"


def _check_document_id(value: object, what: str = "document_id") -> str:
    if not isinstance(value, str) or not _SAFE_ID.match(value):
        raise ValueError(f"{what} {value!r} is not a valid document id (1-256 letters, digits, ._:@+=/-)")
    return value


def _check_interaction_id(value: object, what: str = "interaction id") -> str:
    if not isinstance(value, str) or not _INTERACTION_ID.match(value):
        raise ValueError(f"{what} {str(value)[:80]!r} is not valid (1-128 letters, digits, ._:- ; "
                         "starting with a letter or digit)")
    return value


def _check_user(user: object) -> str:
    if not isinstance(user, str) or not user.strip() or len(user) > MAX_USER_CHARS or _CONTROL.search(user):
        raise ValueError(f"user must be a non-empty string of at most {MAX_USER_CHARS} characters "
                         "without control characters")
    return user


def _check_text(value: object, what: str, limit: int, *, required: bool = False) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string")
    if required and not value.strip():
        raise ValueError(f"{what} must not be empty")
    if len(value) > limit:
        raise ValueError(f"{what} is {len(value)} characters long; at most {limit} are allowed")
    if "\x00" in value:
        raise ValueError(f"{what} contains a NUL character")
    return value


def _limited_json(value: Any, what: str, limit: int) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    if len(text) > limit:
        raise ValueError(f"{what} take {len(text)} characters as JSON; at most {limit} are allowed")
    return text


def encode_interaction_cursor(ts: dt.datetime, interaction_id: str) -> str:
    """An opaque cursor: the page continues after the interaction at ``ts`` with ``interaction_id``."""
    raw = json.dumps({"ts": ts.isoformat(), "id": interaction_id}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_interaction_cursor(cursor: str) -> tuple[dt.datetime, str]:
    """``(ts, id)`` of a cursor from :func:`encode_interaction_cursor`; ValueError for anything else."""
    if not isinstance(cursor, str) or not cursor or len(cursor) > MAX_CURSOR_CHARS:
        raise ValueError("invalid cursor")
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        ts = dt.datetime.fromisoformat(data["ts"])
        interaction_id = _check_interaction_id(data["id"])
    except (binascii.Error, ValueError, TypeError, KeyError, UnicodeDecodeError):
        raise ValueError("invalid cursor") from None
    if ts.tzinfo is None:
        raise ValueError("invalid cursor")
    return ts.astimezone(dt.UTC), interaction_id


def _filter_values(key: str, value: object) -> list[str]:
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list | tuple) or not values:
        raise ValueError(f"filters[{key!r}] must be a string or a non-empty list of strings")
    if len(values) > MAX_FILTER_VALUES:
        raise ValueError(f"filters[{key!r}] has {len(values)} values; at most {MAX_FILTER_VALUES} are allowed")
    out: list[str] = []
    for item in values:
        if not isinstance(item, str) or not item:
            raise ValueError(f"filters[{key!r}] values must be non-empty strings, got {item!r}")
        if len(item) > MAX_FILTER_CHARS:
            raise ValueError(f"filters[{key!r}] value is longer than {MAX_FILTER_CHARS} characters")
        if _CONTROL.search(item):
            raise ValueError(f"filters[{key!r}] value contains control characters")
        out.append(item)
    return out


def build_filter(filters: dict[str, Any] | None) -> str | None:
    """A Lance where-clause from whitelisted ``filters``; values are validated and quoted.

    Keys: ``domain``, ``document_id``, ``kind``, ``mime`` (a string or a list of strings, matched
    exactly) and ``source_prefix`` (a string or a list; the chunk's source starts with it).
    """
    if not filters:
        return None
    if not isinstance(filters, dict):
        raise ValueError("filters must be an object mapping filter names to values")
    clauses: list[str] = []
    for key in sorted(filters):
        if key not in FILTER_KEYS:
            raise ValueError(f"unknown filter {key!r}; allowed filters: {', '.join(FILTER_KEYS)}")
        values = _filter_values(key, filters[key])
        if key == "source_prefix":
            parts = [f"starts_with(source, {sql_quote(v)})" for v in values]
            clauses.append(parts[0] if len(parts) == 1 else "(" + " OR ".join(parts) + ")")
        elif len(values) == 1:
            clauses.append(f"{key} = {sql_quote(values[0])}")
        else:
            clauses.append(_in_list(key, values))
    return " AND ".join(clauses)


def _jsonable(value: Any) -> Any:
    """SQL result values as JSON-friendly Python values."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, decimal.Decimal):
        return float(value) if value.is_finite() else str(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    return str(value)


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


# -- SQL guard --------------------------------------------------------------------------------

SQL_TABLES: tuple[str, ...] = tuple(DELTA_SCHEMAS)
SQL_TABLE_FUNCTIONS = frozenset({"range", "generate_series", "unnest"})
SQL_MAX_CHARS = 20_000
_FILE_FUNCTION = re.compile(r"^(read_|parquet_|delta_|iceberg_|glob$|sniff_csv$|csv_|json_|sqlite_|postgres_|"
                            r"mysql_|excel_|st_read|load_|query_table$|arrow_scan)", re.IGNORECASE)
_STATEMENT_NAMES = {
    "COPY": "COPY (reading or writing files)",
    "COPY_DATABASE": "COPY DATABASE",
    "ATTACH": "ATTACH (opening other databases)",
    "DETACH": "DETACH",
    "PRAGMA": "PRAGMA",
    "LOAD": "INSTALL/LOAD of extensions",
    "EXTENSION": "extension management",
    "SET": "SET (changing settings)",
    "VARIABLE_SET": "SET VARIABLE",
    "EXPORT": "EXPORT DATABASE",
    "CALL": "CALL",
}


def _sql_table_refs(node: Any, refs: list[dict[str, Any]], ctes: set[str]) -> None:
    if isinstance(node, dict):
        cte_map = node.get("cte_map")
        if isinstance(cte_map, dict):
            for entry in cte_map.get("map", []) or []:
                if isinstance(entry, dict) and isinstance(entry.get("key"), str):
                    ctes.add(entry["key"].lower())
        if node.get("type") in ("BASE_TABLE", "TABLE_FUNCTION", "SHOW_REF"):
            refs.append(node)
        for value in node.values():
            _sql_table_refs(value, refs, ctes)
    elif isinstance(node, list):
        for value in node:
            _sql_table_refs(value, refs, ctes)


def validate_sql(sql: str) -> str:
    """The single read-only SELECT statement in ``sql``, or :class:`SqlRejected` naming why not."""
    if not isinstance(sql, str) or not sql.strip():
        raise SqlRejected("sql is empty; send one SELECT statement")
    if len(sql) > SQL_MAX_CHARS:
        raise SqlRejected(f"sql is {len(sql)} characters long; at most {SQL_MAX_CHARS} are allowed")
    if "\x00" in sql:
        raise SqlRejected("sql contains a NUL byte")
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise SqlRejected(f"sql could not be parsed: {exc}") from None
    if len(statements) != 1:
        raise SqlRejected(f"exactly one SQL statement is allowed, got {len(statements)}")
    statement = statements[0]
    kind = statement.type.name
    if kind != "SELECT":
        what = _STATEMENT_NAMES.get(kind, kind)
        raise SqlRejected(f"only read-only SELECT queries are allowed; {what} statements are refused")
    text = statement.query.strip().rstrip(";").strip()
    scratch = duckdb.connect(":memory:")
    try:
        raw = scratch.execute("SELECT json_serialize_sql($1)", [text]).fetchone()
    finally:
        scratch.close()
    tree = json.loads(raw[0]) if raw else {"error": True}
    if tree.get("error"):
        raise SqlRejected(f"only plain SELECT queries are allowed ({tree.get('error_message', 'not a SELECT')})")
    refs: list[dict[str, Any]] = []
    ctes: set[str] = set()
    _sql_table_refs(tree, refs, ctes)
    for ref in refs:
        kind = ref.get("type")
        if kind == "TABLE_FUNCTION":
            function = ref.get("function") or {}
            name = str(function.get("function_name", "")).lower()
            if name in SQL_TABLE_FUNCTIONS and not function.get("schema") and not function.get("catalog"):
                continue
            if _FILE_FUNCTION.match(name):
                raise SqlRejected(f"reading files or external data is not allowed ({name}); "
                                  f"query the tables {', '.join(SQL_TABLES)}")
            raise SqlRejected(f"table function {name!r} is not allowed; "
                              f"allowed: {', '.join(sorted(SQL_TABLE_FUNCTIONS))}")
        if kind == "SHOW_REF":
            if ref.get("table_name"):
                raise SqlRejected(f"SHOW statements are not supported; the tables are {', '.join(SQL_TABLES)}")
            continue
        name = str(ref.get("table_name", ""))
        schema = str(ref.get("schema_name", "") or "")
        catalog = str(ref.get("catalog_name", "") or "")
        if any(ch in name for ch in "/\\") or re.search(r"\.(csv|tsv|parquet|json|jsonl|ndjson|db|duckdb|txt|"
                                                         r"xlsx|gz|zst)$", name, re.IGNORECASE) or ":" in name:
            raise SqlRejected(f"file paths are not allowed as tables ({name!r}); "
                              f"query the tables {', '.join(SQL_TABLES)}")
        if catalog or schema.lower() not in ("", "main"):
            qualified = ".".join(p for p in (catalog, schema, name) if p)
            raise SqlRejected(f"qualified table names are not allowed ({qualified})")
        if name.lower() in ctes and not schema:
            continue
        if name.lower() not in SQL_TABLES:
            raise SqlRejected(f"unknown table {name!r}; available tables: {', '.join(SQL_TABLES)}")
    return text


# -- the store --------------------------------------------------------------------------------

class LakehouseStore:
    """One tenant's lakehouse. Thread-safe; safe alongside writers in other processes."""

    def __init__(self, paths: TenantPaths, spec: EmbeddingSpec) -> None:
        if spec.dim <= 0:
            raise ValueError(f"embedding dimension must be positive, got {spec.dim}")
        self.paths = paths.ensure()
        self.spec = spec
        self._manifest_path = paths.lance / "lakehouse.json"
        self._write_lock = threading.RLock()
        recorded = self._check_manifest()
        # Freshness across processes without paying LanceDB's per-read consistency check (several
        # ms per query): a stat() of the table's _versions folder tells when another process
        # committed, and only then does the handle move to the latest version (see _table()).
        self._db = lancedb.connect(str(paths.lance))
        self._chunks = self._open_chunks()
        if not recorded:  # only once the table is known to match: a wrong spec must not be recorded
            self._update_manifest(format=MANIFEST_FORMAT, embedding={"model": spec.model, "dim": spec.dim},
                                  created_at=dt.datetime.now(dt.UTC).isoformat())
        self._versions_dir = paths.lance / f"{CHUNKS_TABLE}.lance" / "_versions"
        self._refresh_lock = threading.Lock()
        self._chunks_stamp = self._versions_stamp()
        self._vocab = TenantVocabulary(paths.lance / "vocabulary.json")
        self._delta_locks = {name: threading.Lock() for name in DELTA_SCHEMAS}
        self._delta = {name: self._open_delta(name, schema) for name, schema in DELTA_SCHEMAS.items()}
        self._doc_cache: tuple[int, dict[str, tuple[str, str | None]], dict[str, list[str]]] | None = None
        self._list_cache: tuple[int, pa.Table] | None = None
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix=f"lakehouse-{paths.tenant}")

    # -- setup -------------------------------------------------------------------------------

    def _mismatch(self, model: str, dim: int) -> EmbeddingMismatch:
        return EmbeddingMismatch(
            f"tenant {self.paths.tenant!r}: the lakehouse at {self.paths.lance} holds vectors of embedding "
            f"model {model!r} (dim {dim}), but this process uses {self.spec.model!r} (dim {self.spec.dim}). "
            f"Configure embedding_model={model!r} or re-index the tenant's documents with the new model."
        )

    def _read_manifest(self) -> dict[str, Any]:
        try:
            with open(self._manifest_path, encoding="utf-8") as handle:
                data = json.load(handle)
        except FileNotFoundError:
            return {}
        except ValueError as exc:
            raise LakehouseError(f"manifest {self._manifest_path} is damaged: {exc}") from exc
        return data if isinstance(data, dict) else {}

    def _update_manifest(self, **changes: Any) -> dict[str, Any]:
        with file_lock(self._manifest_path.with_name("lakehouse.json.lock")):
            data = self._read_manifest()
            data.update(changes)
            _write_json_atomic(self._manifest_path, data)
            return data

    def _check_manifest(self) -> bool:
        """Raise :class:`EmbeddingMismatch` if the recorded spec differs; False if none is recorded."""
        emb = self._read_manifest().get("embedding")
        if not isinstance(emb, dict):
            return False
        if emb.get("model") != self.spec.model or int(emb.get("dim", -1)) != self.spec.dim:
            raise self._mismatch(str(emb.get("model")), int(emb.get("dim", -1)))
        return True

    def _open_chunks(self) -> lancedb.table.Table:
        try:
            table = self._db.open_table(CHUNKS_TABLE)
        except ValueError:
            table = self._db.create_table(CHUNKS_TABLE, schema=chunk_schema(self.spec), exist_ok=True)
        field = table.schema.field("vector")
        meta = table.schema.metadata or {}
        model = meta.get(b"kontor.embedding_model", self.spec.model.encode()).decode()
        dim = field.type.list_size
        if dim != self.spec.dim or model != self.spec.model:
            raise self._mismatch(model, dim)
        existing = {tuple(idx.columns) for idx in table.list_indices()}
        whitespace = {"base_tokenizer": "whitespace", "lower_case": False, "stem": False,
                      "remove_stop_words": False, "ascii_folding": False, "max_token_length": None}
        with contextlib.suppress(RuntimeError, ValueError):  # a concurrent opener may create them first
            if ("fts",) not in existing:
                table.create_index("fts", config=FTS(**whitespace), replace=False)
            if ("ids_text",) not in existing:
                table.create_index("ids_text", config=FTS(**whitespace), replace=False)
            if ("document_id",) not in existing:
                table.create_index("document_id", config=BTree(), replace=False)
        return table

    def _open_delta(self, name: str, schema: pa.Schema) -> DeltaTable:
        path = self.paths.delta_table(name)
        properties = DELTA_PROPERTIES.get(name)
        if not DeltaTable.is_deltatable(str(path)):
            with contextlib.suppress(Exception):  # another process may have created it meanwhile
                DeltaTable.create(str(path), schema, mode="ignore", name=name, configuration=properties)
        table = DeltaTable(str(path))
        have = set(table.schema().to_arrow().names)
        missing = [f for f in schema if f.name not in have]
        configuration = table.metadata().configuration or {}
        if missing or any(configuration.get(k) != v for k, v in (properties or {}).items()):
            # A table made by an older version: add the new (nullable) columns and the properties,
            # once, under a lock shared with other processes opening the same table.
            with file_lock(path.with_name(f"{name}.lock")):
                table.update_incremental()
                have = set(table.schema().to_arrow().names)
                missing = [f for f in schema if f.name not in have]
                if missing:
                    table.alter.add_columns([DeltaField.from_arrow(f) for f in missing])
                if properties and any((table.metadata().configuration or {}).get(k) != v
                                      for k, v in properties.items()):
                    table.alter.set_table_properties(properties, raise_if_not_exists=False)
                table = DeltaTable(str(path))
        return table

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _versions_stamp(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self._versions_dir)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_ino)

    def _table(self) -> lancedb.table.Table:
        """The chunks table at its latest committed version, whoever committed it.

        Refreshes when the _versions folder changed, and always while its mtime is younger than
        the coarsest file-system timestamp granularity (two commits in one tick look the same).
        """
        stamp = self._versions_stamp()
        if stamp is None or stamp != self._chunks_stamp or time.time_ns() - stamp[0] < MTIME_GRANULARITY_NS:
            with self._refresh_lock:
                self._chunks.checkout_latest()
                self._chunks_stamp = stamp
        return self._chunks

    # -- delta access ------------------------------------------------------------------------

    def _delta_version(self, name: str) -> int:
        with self._delta_locks[name]:
            table = self._delta[name]
            table.update_incremental()
            return table.version()

    def _delta_dataset(self, name: str) -> tuple[int, Any]:
        with self._delta_locks[name]:
            table = self._delta[name]
            table.update_incremental()
            return table.version(), table.to_pyarrow_dataset()

    def _doc_index(self) -> tuple[dict[str, tuple[str, str | None]], dict[str, list[str]]]:
        version = self._delta_version("documents")
        cached = self._doc_cache
        if cached is not None and cached[0] == version:
            return cached[1], cached[2]
        _, dataset = self._delta_dataset("documents")
        table = dataset.to_table(columns=["document_id", "content_sha256", "parent_id"])
        hashes: dict[str, tuple[str, str | None]] = {}
        children: dict[str, list[str]] = {}
        for doc_id, sha, parent in zip(table.column(0).to_pylist(), table.column(1).to_pylist(),
                                       table.column(2).to_pylist(), strict=True):
            hashes[doc_id] = (sha, parent)
            if parent:
                children.setdefault(parent, []).append(doc_id)
        for ids in children.values():
            ids.sort()
        self._doc_cache = (version, hashes, children)
        return hashes, children

    # -- reads -------------------------------------------------------------------------------

    def document_hash(self, document_id: str) -> str | None:
        """Stored ``content_sha256`` of a document, or None if it has no committed row."""
        entry = self._doc_index()[0].get(document_id)
        return entry[0] if entry else None

    def children_of(self, parent_id: str) -> list[str]:
        """Ids of documents extracted from ``parent_id`` (e-mail attachments, archive members)."""
        return list(self._doc_index()[1].get(parent_id, ()))

    def get_document(self, document_id: str) -> DocumentRecord | None:
        if not isinstance(document_id, str) or not document_id:
            raise ValueError("document_id must be a non-empty string")
        _, dataset = self._delta_dataset("documents")
        # No pushed-down filter: pyarrow cannot compare the dataset's string type with the
        # string_view columns delta-rs writes. Locate the row by its id column, then take it.
        ids = dataset.to_table(columns=["document_id"]).column(0).cast(pa.string())
        position = pc.index(ids, pa.scalar(document_id, pa.string())).as_py()
        if position < 0:
            return None
        return _document_from_row(dataset.take([position]).to_pylist()[0])

    def list_documents(self, offset: int = 0, limit: int = 50, domain: str | None = None
                       ) -> tuple[list[dict[str, Any]], int]:
        """A page of documents (newest first, without text) and the total matching ``domain``."""
        if offset < 0:
            raise ValueError(f"offset must be >= 0, got {offset}")
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        version, dataset = self._delta_dataset("documents")
        cached = self._list_cache
        if cached is None or cached[0] != version:
            table = dataset.to_table(columns=LIST_COLUMNS)
            if table.num_rows:
                table = table.sort_by([("ingested_at", "descending"), ("document_id", "ascending")])
            self._list_cache = cached = (version, table)
        table = cached[1]
        if domain is not None:
            table = table.filter(pc.equal(table.column("domain").cast(pa.string()), pa.scalar(domain, pa.string())))
        total = table.num_rows
        rows = table.slice(offset, limit).to_pylist() if offset < total else []
        for row in rows:
            row["metadata"] = json.loads(row.pop("metadata_json") or "{}")
        return rows, total

    # -- writes ------------------------------------------------------------------------------

    def _validate_batch(self, batch: Sequence[tuple[DocumentRecord, list[ChunkRecord], np.ndarray,
                                                    list[ProductRecord]]]) -> list[np.ndarray]:
        seen_docs: set[str] = set()
        seen_chunks: set[str] = set()
        vectors_out: list[np.ndarray] = []
        for item in batch:
            if not isinstance(item, tuple | list) or len(item) != 4:
                raise ValueError("each batch item must be (DocumentRecord, chunks, vectors, products)")
            doc, chunks, vectors, products = item
            doc_id = _check_document_id(doc.document_id)
            if doc_id in seen_docs:
                raise ValueError(f"document {doc_id!r} appears twice in one batch")
            seen_docs.add(doc_id)
            array = np.asarray(vectors, dtype=np.float32)
            if len(chunks) == 0 and array.size == 0:
                array = np.zeros((0, self.spec.dim), dtype=np.float32)
            if array.ndim != 2 or array.shape != (len(chunks), self.spec.dim):
                raise ValueError(
                    f"document {doc_id!r}: vectors have shape {tuple(array.shape)}, expected "
                    f"({len(chunks)}, {self.spec.dim}) for {len(chunks)} chunks of model {self.spec.model!r}"
                )
            if not np.isfinite(array).all():
                raise ValueError(f"document {doc_id!r}: vectors contain NaN or infinite values")
            for chunk in chunks:
                if chunk.document_id != doc_id:
                    raise ValueError(f"chunk {chunk.chunk_id!r} belongs to {chunk.document_id!r}, not {doc_id!r}")
                if chunk.chunk_id in seen_chunks:
                    raise ValueError(f"chunk id {chunk.chunk_id!r} appears twice in one batch")
                seen_chunks.add(chunk.chunk_id)
            for product in products:
                if product.document_id != doc_id:
                    raise ValueError(f"product {product.supplier_pid!r} belongs to {product.document_id!r}, "
                                     f"not {doc_id!r}")
            vectors_out.append(array)
        return vectors_out

    def write_documents(
        self,
        batch: Sequence[tuple[DocumentRecord, list[ChunkRecord], np.ndarray, list[ProductRecord]]],
    ) -> None:
        """Write (or replace) documents with their chunks, vectors and products, batched.

        Order per batch: Lance chunks (delete by document_id, add), Delta products (one
        replace-where transaction), Delta documents last (one replace-where transaction).
        """
        if not batch:
            return
        vectors = self._validate_batch(batch)
        counts = vocabulary_candidates("\n".join(
            part for doc, chunks, _, _ in batch for part in (doc.title, *(c.text for c in chunks))
        ))
        lexicon = self._vocab.add(counts)
        chunk_table = self._chunk_table(batch, vectors, lexicon)
        product_table = pa.Table.from_pylist(
            [asdict(p) for _, _, _, products in batch for p in products], schema=PRODUCTS_SCHEMA
        )
        doc_table = pa.Table.from_pylist(
            [_document_row(doc, len(chunks)) for doc, chunks, _, _ in batch], schema=DOCUMENTS_SCHEMA
        )
        ids = [doc.document_id for doc, _, _, _ in batch]
        predicate = _in_list("document_id", ids)
        with self._write_lock:
            table = self._table()
            table.delete(predicate)
            if chunk_table.num_rows:
                table.add(chunk_table)
            self._replace_where("products", product_table, predicate)
            self._replace_where("documents", doc_table, predicate)

    def _replace_where(self, name: str, data: pa.Table, predicate: str) -> None:
        with self._delta_locks[name]:
            table = self._delta[name]
            table.update_incremental()
            write_deltalake(table, data, mode="overwrite", predicate=predicate)

    def _chunk_table(self, batch: Sequence[tuple[DocumentRecord, list[ChunkRecord], np.ndarray,
                                                 list[ProductRecord]]],
                     vectors: list[np.ndarray], lexicon: Lexicon) -> pa.Table:
        columns: dict[str, list[Any]] = {f.name: [] for f in chunk_schema(self.spec) if f.name != "vector"}
        for doc, chunks, _, _ in batch:
            for chunk in chunks:
                row = asdict(chunk)
                for key, value in row.items():
                    columns[key].append(value)
                columns["mime"].append(doc.mime)
                searchable = "\n".join(p for p in (chunk.title, chunk.section or "", chunk.text) if p)
                columns["fts"].append(analyze(searchable, lexicon))
                found = extract_identifiers(f"{chunk.title}\n{chunk.text}")
                columns["ids_text"].append(" ".join(identifier_keys([*chunk.identifiers, *found])))
        flat = np.concatenate(vectors).reshape(-1) if vectors else np.zeros(0, dtype=np.float32)
        arrays = [pa.array(columns[f.name], type=f.type) for f in chunk_schema(self.spec) if f.name != "vector"]
        arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(flat, type=pa.float32()), self.spec.dim))
        return pa.Table.from_arrays(arrays, schema=chunk_schema(self.spec))

    def delete_documents(self, ids: Sequence[str]) -> None:
        """Delete documents with their chunks and products (the documents row goes first)."""
        ids = [_check_document_id(i) for i in ids]
        if not ids:
            return
        predicate = _in_list("document_id", ids)
        with self._write_lock:
            for name in ("documents", "products"):
                with self._delta_locks[name]:
                    table = self._delta[name]
                    table.update_incremental()
                    table.delete(predicate)
                if name == "documents":
                    self._table().delete(predicate)

    def record_interaction(
        self,
        question: str,
        answer: str,
        *,
        user: str | None = None,
        tools: Sequence[str | dict[str, Any]] | None = None,
        feedback: int | None = None,
        comment: str | None = None,
        interaction_id: str | None = None,
        ts: dt.datetime | None = None,
        conversation_id: str | None = None,
        message_id: str | None = None,
        citations: Sequence[dict[str, Any]] | None = None,
    ) -> str:
        """Append one question/answer (with the tools used, cited passages and optional feedback); returns its id.

        With ``user`` and ``message_id`` the call is idempotent: when that user already recorded that
        message, nothing is written and the existing id is returned (a retried request after a lost
        answer does not duplicate the row). See :meth:`record_interaction_once` for whether it was new.
        """
        return self.record_interaction_once(
            question, answer, user=user, tools=tools, feedback=feedback, comment=comment,
            interaction_id=interaction_id, ts=ts, conversation_id=conversation_id, message_id=message_id,
            citations=citations)[0]

    def record_interaction_once(
        self,
        question: str,
        answer: str,
        *,
        user: str | None = None,
        tools: Sequence[str | dict[str, Any]] | None = None,
        feedback: int | None = None,
        comment: str | None = None,
        interaction_id: str | None = None,
        ts: dt.datetime | None = None,
        conversation_id: str | None = None,
        message_id: str | None = None,
        citations: Sequence[dict[str, Any]] | None = None,
    ) -> tuple[str, bool, dt.datetime]:
        """:meth:`record_interaction`, returning ``(id, created, ts)`` (``created`` false: already recorded)."""
        if feedback is not None and (isinstance(feedback, bool) or feedback not in (-1, 0, 1)):
            raise ValueError(f"feedback must be -1, 0, 1 or None, got {feedback!r}")
        _check_text(question, "question", MAX_QUESTION_CHARS, required=True)
        _check_text(answer, "answer", MAX_ANSWER_CHARS)
        if user is not None:
            _check_user(user)
        if comment is not None:
            _check_text(comment, "comment", MAX_COMMENT_CHARS)
        for value, what in ((interaction_id, "interaction id"), (conversation_id, "conversation_id"),
                            (message_id, "message_id")):
            if value is not None:
                _check_interaction_id(value, what)
        tool_list = list(tools or [])
        if len(tool_list) > MAX_INTERACTION_TOOLS:
            raise ValueError(f"{len(tool_list)} tools given; at most {MAX_INTERACTION_TOOLS} are allowed")
        for tool in tool_list:
            if isinstance(tool, str):
                _check_text(tool, "tool name", MAX_TOOL_NAME_CHARS, required=True)
            elif not isinstance(tool, dict):
                raise ValueError("each tool must be a tool name or an object describing the call")
        cited = list(citations or [])
        if len(cited) > MAX_CITATIONS:
            raise ValueError(f"{len(cited)} citations given; at most {MAX_CITATIONS} are allowed")
        if any(not isinstance(c, dict) for c in cited):
            raise ValueError("each citation must be an object")
        when = ts or dt.datetime.now(dt.UTC)
        if when.tzinfo is None:
            raise ValueError("ts must be timezone-aware")
        when = when.astimezone(dt.UTC)
        row = {
            "id": interaction_id or uuid.uuid4().hex,
            "ts": when,
            "user": user,
            "question": question,
            "answer": answer,
            "tools_json": _limited_json(tool_list, "tools", MAX_TOOLS_JSON_CHARS),
            "feedback": feedback,
            "comment": comment,
            "conversation_id": conversation_id,
            "message_id": message_id,
            "citations_json": _limited_json(cited, "citations", MAX_CITATIONS_JSON_CHARS) if cited else None,
        }
        with self._interactions_write():
            table = self._delta["interactions"]
            if user is not None and message_id is not None:
                found = self._interaction_rows(
                    'SELECT id, ts FROM interactions WHERE "user" = $user AND message_id = $message '
                    "ORDER BY ts LIMIT 1", {"user": user, "message": message_id})
                if found.num_rows:
                    first = found.to_pylist()[0]
                    return str(first["id"]), False, first["ts"]
            write_deltalake(table, pa.Table.from_pylist([row], schema=INTERACTIONS_SCHEMA), mode="append")
        return str(row["id"]), True, when

    @contextlib.contextmanager
    def _interactions_write(self) -> Any:
        """Exclusive writing of the interactions table: this process's threads and other processes."""
        with self._delta_locks["interactions"], file_lock(
                self.paths.delta_table("interactions").with_name("interactions.lock")):
            self._delta["interactions"].update_incremental()
            yield

    def _interaction_rows(self, sql: str, params: dict[str, Any]) -> pa.Table:
        """``sql`` (ours, parameterised) over the latest interactions table, as Arrow."""
        table = self._delta["interactions"]
        con = duckdb.connect(":memory:")
        try:
            con.execute("SET threads = 1")
            con.register("interactions", table.to_pyarrow_dataset())
            return con.sql(sql, params=params).to_arrow_table()
        finally:
            con.close()

    def _commit(self, action: Any) -> Any:
        """Run a Delta update/delete, retrying when a concurrent commit made it conflict."""
        for attempt in range(COMMIT_RETRIES):
            try:
                return action()
            except CommitFailedError:
                if attempt == COMMIT_RETRIES - 1:
                    raise LakehouseError("the interactions table is busy; try again") from None
                time.sleep(0.05 * (attempt + 1))
                self._delta["interactions"].update_incremental()
        return None

    def list_interactions(self, user: str, limit: int = 20, cursor: str | None = None
                          ) -> tuple[list[dict[str, Any]], int, str | None]:
        """A page of ``user``'s interactions, newest first: ``(rows, total of the user's rows, next cursor)``.

        Rows carry ``tools`` and ``citations`` decoded from their JSON columns and ``ts`` as ISO text.
        """
        _check_user(user)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_INTERACTIONS_PAGE:
            raise ValueError(f"limit must be an integer between 1 and {MAX_INTERACTIONS_PAGE}, got {limit!r}")
        params: dict[str, Any] = {"user": user, "n": limit + 1}
        after = ""
        if cursor is not None:
            ts, last_id = decode_interaction_cursor(cursor)
            params.update(ts=ts, last=last_id)
            after = " AND (ts < $ts OR (ts = $ts AND id < $last))"
        with self._delta_locks["interactions"]:
            self._delta["interactions"].update_incremental()
            total = self._interaction_rows('SELECT count(*) AS n FROM interactions WHERE "user" = $user',
                                           {"user": user}).column(0)[0].as_py()
            page = self._interaction_rows(
                'SELECT * FROM interactions WHERE "user" = $user' + after + " ORDER BY ts DESC, id DESC LIMIT $n",
                params)
        rows = page.to_pylist()
        more = len(rows) > limit
        rows = rows[:limit]
        out = []
        for row in rows:
            when = row["ts"]
            out.append({
                "id": row["id"], "ts": when.isoformat() if when is not None else None, "question": row["question"],
                "answer": row["answer"], "tools": json.loads(row.get("tools_json") or "[]"),
                "citations": json.loads(row.get("citations_json") or "[]"), "feedback": row["feedback"],
                "comment": row["comment"], "conversation_id": row.get("conversation_id"),
                "message_id": row.get("message_id"),
            })
        next_cursor = encode_interaction_cursor(rows[-1]["ts"], rows[-1]["id"]) if more and rows else None
        return out, int(total or 0), next_cursor

    def set_interaction_feedback(self, user: str, interaction_id: str, feedback: int | None,
                                 comment: str | None = None) -> bool:
        """Set feedback and comment of ``user``'s interaction (one Delta update); False when ``user`` has none
        with that id (another user's id looks exactly like an unknown one)."""
        _check_user(user)
        _check_interaction_id(interaction_id)
        if feedback is not None and (isinstance(feedback, bool) or feedback not in (-1, 0, 1)):
            raise ValueError(f"feedback must be -1, 0, 1 or None, got {feedback!r}")
        if comment is not None:
            _check_text(comment, "comment", MAX_COMMENT_CHARS)
        updates = {"feedback": "NULL" if feedback is None else f"CAST({int(feedback)} AS TINYINT)",
                   "comment": "NULL" if comment is None else sql_quote(comment)}
        predicate = f'id = {sql_quote(interaction_id)} AND "user" = {sql_quote(user)}'
        with self._interactions_write():
            table = self._delta["interactions"]
            metrics = self._commit(lambda: table.update(updates=updates, predicate=predicate))
        return int((metrics or {}).get("num_updated_rows", 0)) > 0

    def delete_interactions(self, user: str, ids: Sequence[str] | None = None) -> int:
        """Delete ``user``'s interactions with these ``ids`` (None: all of them); returns how many went.

        Ids of other users' rows are ignored. Afterwards the files of older table versions are
        vacuumed, so the deleted text is gone from disk, not only from the current version.
        """
        _check_user(user)
        predicate = f'"user" = {sql_quote(user)}'
        if ids is not None:
            if isinstance(ids, str):
                raise ValueError("ids must be a list of interaction ids, not one string")
            wanted = sorted({_check_interaction_id(i) for i in ids})
            if len(wanted) > MAX_DELETE_IDS:
                raise ValueError(f"{len(wanted)} ids given; at most {MAX_DELETE_IDS} per call are allowed")
            if not wanted:
                return 0
            predicate += " AND " + _in_list("id", wanted)
        with self._interactions_write():
            table = self._delta["interactions"]
            metrics = self._commit(lambda: table.delete(predicate))
            deleted = int((metrics or {}).get("num_deleted_rows", 0))
            if deleted:
                self._vacuum_interactions()
        return deleted

    def _vacuum_interactions(self) -> None:
        table = self._delta["interactions"]
        try:
            table.vacuum(retention_hours=0, enforce_retention_duration=False, dry_run=False)
        except Exception as exc:  # the rows are deleted either way; the next deletion vacuums again
            log.warning("vacuum of the interactions table failed: %s", exc)

    # -- maintenance -------------------------------------------------------------------------

    def _index_by_column(self) -> dict[str, Any]:
        return {idx.columns[0]: idx for idx in self._table().list_indices() if len(idx.columns) == 1}

    def optimize(self) -> dict[str, Any]:
        """Refresh indexes incrementally; cheap enough to call after every ingest batch.

        * FTS (whitespace tokenizer over pre-analysed terms) on ``fts`` and ``ids_text`` and a
          BTree on ``document_id`` exist from creation; ``table.optimize()`` folds new rows in
          and compacts small fragments.
        * A cosine IVF_SQ vector index is trained once the table has ``VECTOR_INDEX_MIN_ROWS``
          rows and retrained when it has grown ``VECTOR_INDEX_RETRAIN_FACTOR``-fold since.
        * Delta tables are compacted once they have many small files.
        """
        done: dict[str, Any] = {"vector_index": None, "compacted": []}
        with self._write_lock:
            table = self._table()
            rows = table.count_rows()
            indexes = self._index_by_column()
            trained = int((self._read_manifest().get("vector_index") or {}).get("trained_rows", 0))
            has_vector = "vector" in indexes
            if rows >= VECTOR_INDEX_MIN_ROWS and (
                not has_vector or rows >= VECTOR_INDEX_RETRAIN_FACTOR * max(trained, 1)
            ):
                partitions = max(1, rows // VECTOR_PARTITION_ROWS)
                table.create_index("vector", config=IvfSq(distance_type="cosine", num_partitions=partitions),
                                   replace=True)
                self._update_manifest(vector_index={"type": "IVF_SQ", "trained_rows": rows,
                                                    "partitions": partitions})
                done["vector_index"] = {"trained_rows": rows, "partitions": partitions}
            table.optimize()
            for name in DELTA_SCHEMAS:
                with self._delta_locks[name]:
                    delta = self._delta[name]
                    delta.update_incremental()
                    if len(delta.file_uris()) >= DELTA_COMPACT_FILES:
                        delta.optimize.compact()
                        done["compacted"].append(name)
        return done

    def stats(self) -> dict[str, Any]:
        """Row counts, documents per domain, index coverage, embedding model and table versions."""
        table = self._table()
        chunk_rows = table.count_rows()
        indexes = self._index_by_column()
        coverage: dict[str, Any] = {}
        for column, label in (("fts", "keyword"), ("ids_text", "identifier"), ("vector", "vector")):
            idx = indexes.get(column)
            if idx is None:
                coverage[label] = {"indexed": 0, "unindexed": chunk_rows, "index": None,
                                   "note": "exact search (no index yet)" if column == "vector" else None}
                continue
            indexed = int(idx.num_indexed_rows or 0)
            unindexed = int(idx.num_unindexed_rows or 0)
            coverage[label] = {"indexed": indexed, "unindexed": unindexed, "index": idx.index_type,
                               "fraction": round(indexed / (indexed + unindexed), 4) if indexed + unindexed else 1.0}
        tables: dict[str, Any] = {CHUNKS_TABLE: {"rows": chunk_rows, "version": table.version}}
        for name in DELTA_SCHEMAS:
            version, dataset = self._delta_dataset(name)
            tables[name] = {"rows": dataset.count_rows(), "version": version}
        _, dataset = self._delta_dataset("documents")
        domains = dataset.to_table(columns=["domain"]).column("domain")
        per_domain = {str(row["values"]): int(row["counts"]) for row in pc.value_counts(domains).to_pylist()}
        return {
            "tenant": self.paths.tenant,
            "embedding": {"model": self.spec.model, "dim": self.spec.dim},
            "tables": tables,
            "documents_per_domain": dict(sorted(per_domain.items())),
            "index_coverage": coverage,
            "vocabulary_words": len(self._vocab.counts()),
        }

    # -- SQL ---------------------------------------------------------------------------------

    def query_sql(self, sql: str, max_rows: int = 1000, timeout_s: float = 10.0, *,
                  interactions_user: str | None = None) -> dict[str, Any]:
        """Run one read-only SELECT over this tenant's Delta tables with DuckDB.

        A fresh in-memory DuckDB sees only this tenant's ``documents``, ``products`` and
        ``interactions`` (Arrow datasets read through deltalake); file, network and extension
        access are switched off and the configuration is locked before the query runs.
        With ``interactions_user``, ``interactions`` holds only that user's rows (a view; the
        query cannot name anything else). Returns ``columns``, ``rows`` (at most ``max_rows``),
        ``row_count`` and ``truncated``.
        """
        if interactions_user is not None:
            _check_user(interactions_user)
        if not isinstance(max_rows, int) or max_rows < 1:
            raise ValueError(f"max_rows must be a positive integer, got {max_rows!r}")
        if not timeout_s or timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s!r}")
        statement = validate_sql(sql)
        con = duckdb.connect(":memory:")
        timer: threading.Timer | None = None
        try:
            for name in SQL_TABLES:
                _, dataset = self._delta_dataset(name)
                if name == "interactions" and interactions_user is not None:
                    # validate_sql admits only the names in SQL_TABLES, so the query cannot reach the
                    # unfiltered rows under their internal name.
                    con.register("__kontor_all_interactions", dataset)
                    con.execute('CREATE VIEW interactions AS SELECT * FROM __kontor_all_interactions '
                                f'WHERE "user" = {sql_quote(interactions_user)}')
                else:
                    con.register(name, dataset)
            for setting in ("SET python_enable_replacements = false",
                            "SET autoinstall_known_extensions = false",
                            "SET autoload_known_extensions = false",
                            "SET allow_community_extensions = false",
                            "SET enable_external_access = false",
                            f"SET threads = {max(1, min(4, os.cpu_count() or 1))}",
                            "SET memory_limit = '2GB'",
                            "SET lock_configuration = true"):
                con.execute(setting)
            timer = threading.Timer(timeout_s, con.interrupt)
            timer.daemon = True
            timer.start()
            try:
                # Arrow, not DB-API tuples: no pytz needed for TIMESTAMPTZ, one copy less.
                result = con.sql(f"SELECT * FROM ({statement}) AS q LIMIT {max_rows + 1}").to_arrow_table()
            except duckdb.InterruptException:
                raise SqlTimeout(f"query exceeded the time limit of {timeout_s:g} s and was stopped") from None
            except duckdb.PermissionException as exc:
                raise SqlRejected(f"query tried to access something outside the tenant's tables: {exc}") from None
            except duckdb.Error as exc:
                if timer is not None and not timer.is_alive() and "interrupt" in str(exc).lower():
                    raise SqlTimeout(f"query exceeded the time limit of {timeout_s:g} s and was stopped") from None
                raise SqlError(f"query failed: {exc}") from None
        finally:
            if timer is not None:
                timer.cancel()
            con.close()
        truncated = result.num_rows > max_rows
        result = result.slice(0, max_rows)
        values = [[_jsonable(v) for v in column.to_pylist()] for column in result.columns]
        rows = [list(row) for row in zip(*values, strict=True)] if values else []
        return {
            "columns": list(result.column_names),
            "rows": rows,
            "row_count": len(rows),
            "truncated": truncated,
        }

    # -- search ------------------------------------------------------------------------------

    def lexicon(self) -> Lexicon:
        """This tenant's decompounding lexicon (seed + vocabulary), reloaded when it changes."""
        return self._vocab.lexicon()

    def _vector_rows(self, table: Any, vector: np.ndarray, limit: int, where: str | None) -> list[_Ranked]:
        query = (table.search(vector, vector_column_name="vector", query_type="vector")
                 .distance_type("cosine").nprobes(VECTOR_NPROBES).limit(limit)
                 .select(["chunk_id", "_distance"]).with_row_id(True))
        if where:
            query = query.where(where, prefilter=True)
        result = query.to_arrow()
        return [(cid, rid, 1.0 - dist) for cid, rid, dist in zip(
            result.column("chunk_id").to_pylist(), result.column("_rowid").to_pylist(),
            result.column("_distance").to_pylist(), strict=True)]

    def _text_rows(self, table: Any, terms: FullTextQuery, limit: int, where: str | None) -> list[_Ranked]:
        query = (table.search(terms, query_type="fts")
                 .limit(limit).select(["chunk_id", "_score"]).with_row_id(True))
        if where:
            query = query.where(where, prefilter=True)
        result = query.to_arrow()
        return list(zip(result.column("chunk_id").to_pylist(), result.column("_rowid").to_pylist(),
                        result.column("_score").to_pylist(), strict=True))

    def _fetch(self, table: Any, ranked: list[tuple[str, int]]) -> dict[str, dict[str, Any]]:
        """Display columns of the final hits only, by row id; verified by chunk_id.

        Row ids move when another thread refreshes the shared handle to a compacted version
        between the searches and this take; those few rows are then looked up by chunk_id.
        """
        if not ranked:
            return {}
        try:
            rows = table.take_row_ids([rid for _, rid in ranked]).select(HIT_COLUMNS).to_arrow().to_pylist()
        except (RuntimeError, ValueError, OSError):
            rows = []
        found = {row["chunk_id"]: row for row in rows}
        missing = [cid for cid, _ in ranked if cid not in found]
        if missing:
            query = table.search().where(_in_list("chunk_id", missing)).select(HIT_COLUMNS).limit(len(missing))
            for row in query.to_arrow().to_pylist():
                found[row["chunk_id"]] = row
        return found

    def vector_weight(self, query: str) -> float:
        """Weight of the vector ranking in hybrid fusion for this query.

        Full weight when the embedding model covers the query's language (or its languages are
        unknown); FOREIGN_VECTOR_WEIGHT when it does not, e.g. German questions against the
        English-only default model, whose rankings of German text are close to noise.
        """
        languages = model_languages(self.spec.model)
        if languages is None:
            return 1.0
        language = detect_language(query)
        return 1.0 if language is None or language in languages else FOREIGN_VECTOR_WEIGHT

    def search(
        self,
        query: str,
        query_vector: np.ndarray | None,
        k: int = 10,
        mode: SearchMode = "hybrid",
        filters: dict[str, Any] | None = None,
    ) -> list[SearchHit]:
        """Search chunks. ``vector``: cosine similarity; ``keyword``: BM25 over analysed German
        terms; ``hybrid``: reciprocal-rank fusion (k=60) of both. In keyword and hybrid modes,
        chunks whose identifiers (GTIN, SKU, ETIM/ECLASS ...) match the query come first.
        """
        if mode not in SEARCH_MODES:
            raise ValueError(f"mode must be one of {', '.join(SEARCH_MODES)}, got {mode!r}")
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= MAX_K:
            raise ValueError(f"k must be an integer between 1 and {MAX_K}, got {k!r}")
        if not isinstance(query, str):
            raise ValueError("query must be a string")
        where = build_filter(filters)
        vector: np.ndarray | None = None
        vector_weight = self.vector_weight(query) if mode == "hybrid" else 1.0
        if mode in ("vector", "hybrid"):
            if query_vector is None:
                raise ValueError(f"query_vector is required for mode {mode!r}")
            vector = np.asarray(query_vector, dtype=np.float32).reshape(-1)
            if vector.shape[0] != self.spec.dim:
                raise ValueError(f"query_vector has dimension {vector.shape[0]}, expected {self.spec.dim} "
                                 f"(embedding model {self.spec.model!r})")
            if not np.isfinite(vector).all():
                raise ValueError("query_vector contains NaN or infinite values")
        elif not query.strip():
            raise ValueError("query must not be empty for keyword search")
        table = self._table()
        limit = max(50, 3 * k)
        jobs: dict[str, Any] = {}
        if vector is not None:
            jobs["vector"] = self._pool.submit(self._vector_rows, table, vector, limit, where)
        if mode in ("keyword", "hybrid"):
            # Whole-word terms and compound-part terms run as two BM25 searches (one Lance boolean
            # query with a boost is several times slower) and are summed, parts at PART_WEIGHT.
            whole, parts = query_term_groups(query, self._vocab.lexicon())
            if whole:
                jobs["keyword"] = self._pool.submit(self._text_rows, table, MatchQuery(" ".join(whole), "fts"),
                                                    limit, where)
            if parts:
                jobs["parts"] = self._pool.submit(self._text_rows, table, MatchQuery(" ".join(parts), "fts"),
                                                  limit, where)
            keys = query_identifier_keys(query)
            if keys:
                jobs["identifier"] = self._pool.submit(self._text_rows, table, MatchQuery(" ".join(keys), "ids_text"),
                                                       limit, where)
        results: dict[str, list[_Ranked]] = {name: job.result() for name, job in jobs.items()}
        if "parts" in results:
            results["keyword"] = _weighted_sum(results.get("keyword", []), results.pop("parts"), PART_WEIGHT,
                                               limit)
        if mode == "vector":
            ranked = [(cid, rid, score, ["vector"]) for cid, rid, score in results["vector"][:k]]
        elif mode == "keyword":
            ranked = _keyword_order(results.get("identifier", []), results.get("keyword", []), k)
        elif vector_weight <= 0.0:
            # The model cannot rank this query's language: keyword order, vector hits only fill up.
            ranked = _keyword_then_fill(_keyword_order(results.get("identifier", []), results.get("keyword", []), k),
                                        results.get("vector", []), k)
        else:
            ranked = _fuse(results, k, {"vector": vector_weight})
        rows = self._fetch(table, [(cid, rid) for cid, rid, _, _ in ranked])
        return [_hit(rows[cid], score, matched) for cid, _, score, matched in ranked if cid in rows]


# -- result assembly --------------------------------------------------------------------------

def _hit(row: dict[str, Any], score: float, matched: ModeList) -> SearchHit:
    return SearchHit(
        chunk_id=row["chunk_id"], document_id=row["document_id"], text=row["text"] or "", score=score,
        title=row["title"] or "", source=row["source"] or "", page=row["page"], sheet=row["sheet"],
        section=row["section"], char_start=int(row["char_start"] or 0), char_end=int(row["char_end"] or 0),
        domain=row["domain"] or "", matched=matched,
    )


def _weighted_sum(main: list[_Ranked], extra: list[_Ranked], weight: float, limit: int) -> list[_Ranked]:
    """``main`` scores plus ``weight`` times ``extra`` scores, per chunk, best ``limit`` first."""
    combined: dict[str, list[Any]] = {cid: [rid, score] for cid, rid, score in main}
    for cid, rid, score in extra:
        entry = combined.setdefault(cid, [rid, 0.0])
        entry[1] += weight * score
    order = sorted(combined.items(), key=lambda item: (-item[1][1], item[0]))[:limit]
    return [(cid, rid, score) for cid, (rid, score) in order]


def _keyword_order(id_rows: list[_Ranked], kw_rows: list[_Ranked], k: int) -> list[_Final]:
    """Identifier matches first (by their BM25 on identifiers), then BM25 over the analysed text."""
    order: dict[str, _Final] = {}
    for cid, rid, score in id_rows:
        order.setdefault(cid, (cid, rid, float(score), ["identifier"]))
    for cid, rid, score in kw_rows:
        if cid in order:
            order[cid][3].append("keyword")
        else:
            order[cid] = (cid, rid, float(score), ["keyword"])
    return list(order.values())[:k]


def _keyword_then_fill(keyword: list[_Final], vector: list[_Ranked], k: int) -> list[_Final]:
    """Keyword results in their order, then vector-only results; scores are 1/(60+rank) like RRF."""
    seen = {cid: i for i, (cid, _, _, _) in enumerate(keyword)}
    merged: list[tuple[str, int, list[str]]] = [(cid, rid, matched) for cid, rid, _, matched in keyword]
    for cid, rid, _ in vector:
        if cid in seen:
            merged[seen[cid]][2].append("vector")
        elif len(merged) < k:
            seen[cid] = len(merged)
            merged.append((cid, rid, ["vector"]))
    return [(cid, rid, 1.0 / (K_RRF + rank), matched) for rank, (cid, rid, matched) in enumerate(merged[:k], 1)]


def _fuse(results: dict[str, list[_Ranked]], k: int, weights: dict[str, float] | None = None) -> list[_Final]:
    """Weighted reciprocal-rank fusion (k=60); identifier matches are ordered before everything else."""
    scores: dict[str, float] = {}
    matched: dict[str, list[str]] = {}
    row_ids: dict[str, int] = {}
    for name in ("identifier", "vector", "keyword"):
        weight = (weights or {}).get(name, 1.0)
        for rank, (cid, rid, _) in enumerate(results.get(name, []), start=1):
            row_ids.setdefault(cid, rid)
            scores[cid] = scores.get(cid, 0.0) + weight / (K_RRF + rank)
            matched.setdefault(cid, []).append(name)
    order = sorted(scores, key=lambda cid: ("identifier" not in matched[cid], -scores[cid], cid))
    return [(cid, row_ids[cid], scores[cid], matched[cid]) for cid in order[:k]]


def _document_row(doc: DocumentRecord, chunk_count: int) -> dict[str, Any]:
    row = {f.name: getattr(doc, f.name) for f in fields(DocumentRecord) if f.name != "metadata"}
    row["metadata_json"] = json.dumps(doc.metadata or {}, ensure_ascii=False, sort_keys=True, default=str)
    row["chunk_count"] = chunk_count
    row["domain_cues"] = list(doc.domain_cues or [])
    return row


def _document_from_row(row: dict[str, Any]) -> DocumentRecord:
    values = {f.name: row.get(f.name) for f in fields(DocumentRecord) if f.name != "metadata"}
    values["metadata"] = json.loads(row.get("metadata_json") or "{}")
    values["domain_cues"] = list(values.get("domain_cues") or [])
    values["ingested_at"] = values.get("ingested_at") or ""
    return DocumentRecord(**values)
