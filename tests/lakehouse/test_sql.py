"""Read-only SQL over a tenant's Delta tables: what runs, what is refused, limits."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from kontor.servers.lakehouse.embeddings import EmbeddingSpec
from kontor.servers.lakehouse.store import LakehouseStore, SqlRejected, SqlTimeout

from .conftest import doc_id, make_document

SPEC = EmbeddingSpec("fake", 16)
StoreFactory = Callable[[str, EmbeddingSpec], LakehouseStore]


@pytest.fixture
def stores(store_factory: StoreFactory) -> tuple[LakehouseStore, LakehouseStore]:
    acme = store_factory("acme", SPEC)
    acme.write_documents([
        make_document(SPEC, "katalog", ["Schrauben", "Muttern"], domain="product", products=[
            {"supplier_pid": "S-1", "name": "Schraube M8", "price": 0.10},
            {"supplier_pid": "S-2", "name": "Schraube M10", "price": 0.20},
            {"supplier_pid": "S-3", "name": "Mutter M8", "price": 0.05},
        ]),
        make_document(SPEC, "vertrag", ["Kaufvertrag"], domain="legal"),
        make_document(SPEC, "ust", ["Umsatzsteuer"], domain="tax"),
    ])
    acme.record_interaction("Was kostet die Schraube M8?", "0,10 EUR", user="anna", feedback=1)
    beta = store_factory("beta", SPEC)
    beta.write_documents([make_document(SPEC, "geheim", ["Geheime Preisliste"], domain="product",
                                        products=[{"supplier_pid": "B-1", "name": "Geheimprodukt"}])])
    return acme, beta


def run(store: LakehouseStore, sql: str, max_rows: int = 100, timeout_s: float = 10.0) -> dict:
    return store.query_sql(sql, max_rows, timeout_s)


# -- allowed queries ------------------------------------------------------------------------------

def test_join_and_aggregate(stores: tuple[LakehouseStore, LakehouseStore]) -> None:
    acme, _ = stores
    result = run(acme, """
        SELECT d.domain, count(DISTINCT d.document_id) AS docs, count(p.supplier_pid) AS products,
               round(sum(p.price), 2) AS total
        FROM documents d LEFT JOIN products p USING (document_id)
        GROUP BY d.domain ORDER BY d.domain
    """)
    assert result["columns"] == ["domain", "docs", "products", "total"]
    assert result["rows"] == [["legal", 1, 0, None], ["product", 1, 3, 0.35], ["tax", 1, 0, None]]
    assert result["row_count"] == 3 and result["truncated"] is False


def test_cte_window_and_interactions(stores: tuple[LakehouseStore, LakehouseStore]) -> None:
    acme, _ = stores
    result = run(acme, """
        WITH ranked AS (SELECT name, price, row_number() OVER (ORDER BY price DESC) AS r FROM products)
        SELECT name FROM ranked WHERE r = 1
    """)
    assert result["rows"] == [["Schraube M10"]]
    interactions = run(acme, "SELECT user, feedback, ts FROM interactions")
    assert interactions["rows"][0][:2] == ["anna", 1]
    assert interactions["rows"][0][2].endswith("+00:00")  # timestamps come back as ISO strings
    assert run(acme, "describe products")["rows"][0][0] == "document_id"
    assert run(acme, "FROM documents SELECT count(*);")["rows"] == [[3]]


def test_row_limit_truncates(stores: tuple[LakehouseStore, LakehouseStore]) -> None:
    acme, _ = stores
    result = run(acme, "SELECT * FROM range(50) ORDER BY range", max_rows=10)
    assert result["row_count"] == 10 and result["truncated"] is True
    assert [r[0] for r in result["rows"]] == list(range(10))
    exact = run(acme, "SELECT * FROM range(10)", max_rows=10)
    assert exact["row_count"] == 10 and exact["truncated"] is False


def test_slow_query_is_interrupted(stores: tuple[LakehouseStore, LakehouseStore]) -> None:
    acme, _ = stores
    started = time.monotonic()
    with pytest.raises(SqlTimeout, match="time limit of 0.5 s"):
        run(acme, "SELECT sum(a.range * b.range) FROM range(100000000) a, range(100000000) b", timeout_s=0.5)
    assert time.monotonic() - started < 5
    assert run(acme, "SELECT 1 AS ok")["rows"] == [[1]]  # the store is still usable


# -- refusals -------------------------------------------------------------------------------------

REFUSED = [
    ("SELECT * FROM read_csv('/etc/passwd')", "reading files"),
    ("SELECT * FROM read_csv_auto('/etc/passwd')", "reading files"),
    ("SELECT * FROM '/etc/passwd'", "file paths are not allowed"),
    ("SELECT * FROM read_text('/etc/passwd')", "reading files"),
    ("SELECT * FROM glob('/etc/*')", "reading files"),
    ("ATTACH '/tmp/other.duckdb' AS other", "ATTACH"),
    ("COPY documents TO '/tmp/leak.csv'", "COPY"),
    ("COPY (SELECT * FROM documents) TO 'leak.parquet' (FORMAT parquet)", "COPY"),
    ("SELECT 1; DROP TABLE documents", "exactly one SQL statement"),
    ("SELECT * FROM documents; SELECT * FROM products", "exactly one SQL statement"),
    ("PRAGMA database_list", "PRAGMA"),
    ("INSTALL httpfs", "INSTALL/LOAD"),
    ("LOAD httpfs", "INSTALL/LOAD"),
    ("SET enable_external_access = true", "SET"),
    ("CREATE TABLE x AS SELECT 1", "CREATE"),
    ("DELETE FROM documents", "DELETE"),
    ("UPDATE products SET price = 0", "UPDATE"),
    ("DROP TABLE documents", "DROP"),
    ("SELECT * FROM duckdb_settings()", "table function 'duckdb_settings' is not allowed"),
    ("SELECT * FROM secrets", "unknown table 'secrets'"),
    ("SELECT * FROM other.main.documents", "qualified table names"),
    ("SHOW TABLES", "SHOW statements"),
    ("SELEC * FROM documents", "could not be parsed"),
    ("", "empty"),
]


@pytest.mark.parametrize(("sql", "reason"), REFUSED)
def test_refused(stores: tuple[LakehouseStore, LakehouseStore], sql: str, reason: str) -> None:
    acme, _ = stores
    with pytest.raises(SqlRejected, match=reason):
        run(acme, sql)


def test_other_tenant_is_unreachable(stores: tuple[LakehouseStore, LakehouseStore], tmp_path: Path) -> None:
    acme, beta = stores
    beta_delta = beta.paths.delta_table("documents")
    for sql in (f"SELECT * FROM delta_scan('{beta_delta}')",
                f"SELECT * FROM read_parquet('{beta_delta}/*.parquet')",
                f"SELECT * FROM '{beta_delta}/*.parquet'",
                f"SELECT * FROM parquet_scan('{beta.paths.delta}/products/*.parquet')"):
        with pytest.raises(SqlRejected):
            run(acme, sql)
    # Even through a subquery or a CTE the guard sees the file access.
    with pytest.raises(SqlRejected, match="reading files"):
        run(acme, f"WITH x AS (SELECT * FROM read_parquet('{beta_delta}/*.parquet')) SELECT count(*) FROM x")
    with pytest.raises(SqlRejected, match="file paths"):
        run(acme, f"SELECT (SELECT count(*) FROM '{beta_delta}/*.parquet') AS n")
    # What the tenant sees is only its own data.
    ids = {row[0] for row in run(acme, "SELECT document_id FROM documents")["rows"]}
    assert ids == {doc_id("katalog"), doc_id("vertrag"), doc_id("ust")}
    assert run(acme, "SELECT count(*) FROM products WHERE supplier_pid = 'B-1'")["rows"] == [[0]]
    assert not (tmp_path / "leak.csv").exists()


def test_external_access_is_off_even_if_the_guard_were_bypassed(stores: tuple[LakehouseStore, LakehouseStore],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    acme, _ = stores
    from kontor.servers.lakehouse import store as store_module

    monkeypatch.setattr(store_module, "validate_sql", lambda sql: sql)  # defence in depth: DuckDB itself refuses
    with pytest.raises(SqlRejected, match="outside the tenant"):
        run(acme, "SELECT * FROM read_csv('/etc/passwd')")
    assert run(acme, "SELECT current_setting('enable_external_access') AS on")["rows"] == [[False]]
