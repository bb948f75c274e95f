"""LakehouseStore: writes, replacement, deletion, search modes, filters, tenants, indexes."""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pytest
from deltalake import DeltaTable

from kontor.servers.lakehouse import store as store_module
from kontor.servers.lakehouse.analysis import gtin_check_digit
from kontor.servers.lakehouse.embeddings import Embedder, EmbeddingSpec
from kontor.servers.lakehouse.store import EmbeddingMismatch, LakehouseStore, build_filter

from .conftest import Batch, doc_id, embed_batches, make_document

GTIN = "401234567890" + gtin_check_digit("401234567890")
StoreFactory = Callable[[str, EmbeddingSpec], LakehouseStore]
QVec = Callable[[str], np.ndarray]


def corpus(spec: EmbeddingSpec) -> list[Batch]:
    return [
        make_document(spec, "edelstahl", [
            "Edelstahlschraube DIN 933, Sechskant, M8 x 20, rostfrei A2.",
            "Verpackungseinheit 100 Stück im Karton.",
        ], title="Schrauben-Katalog", domain="product", source="catalog/schrauben.xml", mime="application/xml",
            products=[{"supplier_pid": "S-100", "name": "Edelstahlschraube M8", "price": 0.12}]),
        make_document(spec, "gtin", [
            f"Motorschutzschalter 3RV2011-1AA10, GTIN {GTIN}, Einstellbereich 1,1 bis 1,6 A.",
        ], title="Datenblatt Motorschutz", domain="product", source="catalog/datenblatt.pdf", mime="application/pdf",
            products=[{"supplier_pid": "3RV2011-1AA10", "gtin": GTIN, "name": "Motorschutzschalter", "price": 49.9}]),
        make_document(spec, "vertrag", [
            "Der Kaufvertrag enthält einen Haftungsausschluss für leichte Fahrlässigkeit.",
            "Die Gewährleistungsfrist beträgt zwölf Monate ab Übergabe der Ware.",
        ], title="Kaufvertrag Müller GmbH", domain="legal", source="contracts/kaufvertrag.pdf",
            mime="application/pdf"),
        make_document(spec, "ust", [
            "Die Umsatzsteuer-Voranmeldung ist bis zum zehnten Tag nach Ablauf des Voranmeldungszeitraums "
            "beim Finanzamt einzureichen.",
        ], title="Merkblatt Umsatzsteuer", domain="tax", source="tax/ust.pdf", mime="application/pdf"),
        make_document(spec, "cafeteria", [
            "The cafeteria on the ground floor serves lunch from 11:30 to 14:00 on weekdays.",
        ], title="Facility notes", domain="general", source="intranet/facility.html", mime="text/html"),
        make_document(spec, "separate", [
            "Wir liefern jede Schraube aus Edelstahl auch einzeln.",
        ], title="Lieferhinweis", domain="product", source="catalog/hinweis.txt"),
    ]


@pytest.fixture(scope="module")
def documents(embedder: Embedder) -> list[Batch]:
    return embed_batches(embedder, corpus(embedder.spec))


@pytest.fixture
def filled(store_factory: StoreFactory, embedder: Embedder, documents: list[Batch]) -> LakehouseStore:
    store = store_factory("acme", embedder.spec)
    store.write_documents(documents)
    return store


def ids(hits: list) -> list[str]:
    return [h.document_id for h in hits]


def chunk_rows(store: LakehouseStore) -> list[dict]:
    table = store._chunks.to_arrow().drop_columns(["vector"])
    return sorted(table.to_pylist(), key=lambda r: r["chunk_id"])


def delta_rows(store: LakehouseStore, name: str) -> list[dict]:
    rows = DeltaTable(str(store.paths.delta_table(name))).to_pyarrow_table().to_pylist()
    return sorted(rows, key=lambda r: json.dumps(r, sort_keys=True, default=str))


# -- writes ---------------------------------------------------------------------------------------

def test_write_and_read_back(filled: LakehouseStore, documents: list[Batch]) -> None:
    original = documents[2][0]
    assert filled.get_document(original.document_id) == original
    assert filled.document_hash(original.document_id) == original.content_sha256
    assert filled.document_hash(doc_id("missing")) is None
    assert filled.get_document(doc_id("missing")) is None
    rows, total = filled.list_documents(0, 50)
    assert total == 6 and len(rows) == 6 and "text" not in rows[0]
    legal, legal_total = filled.list_documents(0, 50, domain="legal")
    assert legal_total == 1 and legal[0]["document_id"] == original.document_id
    assert legal[0]["chunk_count"] == 2 and legal[0]["metadata"] == {"name": "vertrag"}
    page, _ = filled.list_documents(4, 50)
    assert len(page) == 2


def test_children_of(store_factory: StoreFactory) -> None:
    spec = EmbeddingSpec("fake", 16)
    store = store_factory("acme", spec)
    mail = make_document(spec, "mail", ["Angebot anbei."])
    attachments = [make_document(spec, f"att{i}", [f"Anhang {i}"], parent_id=mail[0].document_id) for i in range(2)]
    store.write_documents([mail, *attachments])
    assert store.children_of(mail[0].document_id) == sorted(a[0].document_id for a in attachments)
    assert store.children_of(attachments[0][0].document_id) == []


def test_replace_document(filled: LakehouseStore, embedder: Embedder) -> None:
    new = make_document(embedder, "edelstahl", ["Neue Fassung: nur noch Holzschrauben."], title="Schrauben-Katalog",
                        domain="product", products=[])
    filled.write_documents([new])
    did = new[0].document_id
    assert [r["chunk_id"] for r in chunk_rows(filled) if r["document_id"] == did] == [f"{did}:0"]
    assert not [r for r in delta_rows(filled, "products") if r["document_id"] == did]
    assert filled.get_document(did).text == "Neue Fassung: nur noch Holzschrauben."
    assert filled.list_documents(0, 50)[1] == 6


def test_rewriting_gives_identical_rows(filled: LakehouseStore, documents: list[Batch]) -> None:
    before = (chunk_rows(filled), delta_rows(filled, "documents"), delta_rows(filled, "products"))
    vectors_before = filled._chunks.to_arrow().sort_by("chunk_id").column("vector")
    filled.write_documents(documents)  # the ingest pipeline re-doing a batch after a crash
    assert (chunk_rows(filled), delta_rows(filled, "documents"), delta_rows(filled, "products")) == before
    assert filled._chunks.to_arrow().sort_by("chunk_id").column("vector").equals(vectors_before)


def test_delete_documents(filled: LakehouseStore, qvec: QVec) -> None:
    gone = doc_id("gtin")
    filled.delete_documents([gone])
    assert filled.get_document(gone) is None and filled.document_hash(gone) is None
    assert all(r["document_id"] != gone for r in chunk_rows(filled))
    assert all(r["document_id"] != gone for r in delta_rows(filled, "products"))
    hits = filled.search(GTIN, qvec(GTIN), k=10)
    assert gone not in ids(hits)


def test_invalid_batch_writes_nothing(store_factory: StoreFactory) -> None:
    spec = EmbeddingSpec("fake", 16)
    store = store_factory("acme", spec)
    doc, chunks, vectors, products = make_document(spec, "a", ["eins", "zwei"])
    with pytest.raises(ValueError, match=r"vectors have shape \(1, 16\), expected \(2, 16\)"):
        store.write_documents([(doc, chunks, vectors[:1], products)])
    bad = vectors.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        store.write_documents([(doc, chunks, bad, products)])
    other = make_document(spec, "b", ["drei"])
    with pytest.raises(ValueError, match="belongs to"):
        store.write_documents([(doc, other[1], other[2], products)])
    assert store.stats()["tables"]["chunks"]["rows"] == 0
    assert store.list_documents()[1] == 0


def test_record_interaction(store_factory: StoreFactory) -> None:
    store = store_factory("acme", EmbeddingSpec("fake", 16))
    iid = store.record_interaction("Wie lange gilt die Gewährleistung?", "Zwölf Monate.", user="anna",
                                   tools=[{"name": "search", "arguments": {"query": "Gewährleistung"}}], feedback=1)
    result = store.query_sql("SELECT id, user, feedback, tools_json FROM interactions", 10, 5)
    tools = [{"name": "search", "arguments": {"query": "Gewährleistung"}}]
    assert result["rows"] == [[iid, "anna", 1, json.dumps(tools, ensure_ascii=False)]]
    with pytest.raises(ValueError, match="feedback"):
        store.record_interaction("q", "a", feedback=5)


# -- embedding spec ---------------------------------------------------------------------------------

def test_embedding_mismatch_names_both_models(store_factory: StoreFactory) -> None:
    store_factory("acme", EmbeddingSpec("all-MiniLM-L6-v2", 384)).close()
    with pytest.raises(EmbeddingMismatch) as info:
        store_factory("acme", EmbeddingSpec("multilingual-e5-large", 1024))
    message = str(info.value)
    assert "all-MiniLM-L6-v2" in message and "384" in message
    assert "multilingual-e5-large" in message and "1024" in message
    with pytest.raises(EmbeddingMismatch, match="dim 384"):
        store_factory("acme", EmbeddingSpec("all-MiniLM-L6-v2", 768))
    store_factory("acme", EmbeddingSpec("all-MiniLM-L6-v2", 384))  # the recorded spec still opens


def test_embedding_mismatch_without_manifest(store_factory: StoreFactory) -> None:
    store_factory("acme", EmbeddingSpec("model-a", 16)).close()
    manifest = store_factory("acme", EmbeddingSpec("model-a", 16)).paths.lance / "lakehouse.json"
    manifest.unlink()  # an older layout or a lost file: the table schema still records the spec
    with pytest.raises(EmbeddingMismatch, match="'model-a' \\(dim 16\\).*'model-b' \\(dim 32\\)"):
        store_factory("acme", EmbeddingSpec("model-b", 32))
    assert not manifest.exists()  # the wrong spec was not recorded
    store_factory("acme", EmbeddingSpec("model-a", 16))
    assert json.loads(manifest.read_text())["embedding"] == {"model": "model-a", "dim": 16}


def test_stale_row_ids_fall_back_to_chunk_ids(filled: LakehouseStore) -> None:
    table = filled._table()
    wanted = f"{doc_id('ust')}:0"
    rows = filled._fetch(table, [(wanted, 0), (wanted, 10**12)])  # row ids from an older version
    assert rows[wanted]["document_id"] == doc_id("ust")


def test_query_vector_dimension_is_checked(filled: LakehouseStore) -> None:
    with pytest.raises(ValueError, match="dimension 3, expected 384"):
        filled.search("Schraube", np.ones(3, dtype=np.float32), mode="vector")
    with pytest.raises(ValueError, match="query_vector is required"):
        filled.search("Schraube", None, mode="hybrid")


# -- search ---------------------------------------------------------------------------------------

def test_keyword_search_handles_compounds_both_ways(filled: LakehouseStore) -> None:
    hits = filled.search("Edelstahlschraube", None, k=5, mode="keyword")
    assert ids(hits[:2]) == [doc_id("edelstahl"), doc_id("separate")]  # the query's own word ranks first
    hits = filled.search("Schraube Edelstahl", None, k=5, mode="keyword")
    assert set(ids(hits[:2])) == {doc_id("edelstahl"), doc_id("separate")}
    assert all(h.matched == ["keyword"] for h in hits)
    assert hits[0].score > 0


def test_keyword_search_folds_umlauts_and_stems(filled: LakehouseStore) -> None:
    assert ids(filled.search("mueller", None, k=3, mode="keyword"))[0] == doc_id("vertrag")
    assert ids(filled.search("Gewährleistungsfristen", None, k=3, mode="keyword"))[0] == doc_id("vertrag")
    assert ids(filled.search("umsatzsteuer voranmeldung", None, k=3, mode="keyword"))[0] == doc_id("ust")


def test_identifier_matches_rank_first(filled: LakehouseStore, qvec: QVec) -> None:
    for mode in ("hybrid", "keyword"):
        for query in (f"Produkt mit EAN {GTIN} Schraube Edelstahl", "3rv2011 1aa10 Edelstahlschraube"):
            vector = qvec(query) if mode == "hybrid" else None
            hits = filled.search(query, vector, k=5, mode=mode)
            assert hits[0].document_id == doc_id("gtin"), (mode, query)
            assert "identifier" in hits[0].matched
            assert all("identifier" not in h.matched for h in hits[1:])


def test_modes_differ_on_a_small_corpus(filled: LakehouseStore, qvec: QVec) -> None:
    query = "where can I get something to eat at midday"
    vector = qvec(query)
    semantic = filled.search(query, vector, k=3, mode="vector")
    assert semantic[0].document_id == doc_id("cafeteria")
    assert semantic[0].matched == ["vector"] and 0 < semantic[0].score <= 1
    assert filled.search(query, None, k=3, mode="keyword") == []  # no shared terms
    hybrid = filled.search(query, vector, k=3, mode="hybrid")
    assert hybrid[0].document_id == doc_id("cafeteria")
    assert hybrid[0].score == pytest.approx(1 / 61)  # RRF of rank 1 in the vector list only

    query = "Haftungsausschluss Kaufvertrag"
    hybrid = filled.search(query, qvec(query), k=6, mode="hybrid")
    assert hybrid[0].document_id == doc_id("vertrag")
    assert set(hybrid[0].matched) == {"vector", "keyword"}
    assert hybrid[0].score == pytest.approx(2 / 61)
    scores = [h.score for h in hybrid]
    assert scores == sorted(scores, reverse=True)
    citation = hybrid[0].citation()
    assert citation["source"] == "contracts/kaufvertrag.pdf" and citation["page"] == 1
    text = filled.get_document(doc_id("vertrag")).text
    assert text[citation["char_start"]:citation["char_end"]] == hybrid[0].text


def test_filters(filled: LakehouseStore, qvec: QVec) -> None:
    vector = qvec("Schraube")
    assert set(ids(filled.search("Schraube", vector, k=10, filters={"domain": "legal"}))) == {doc_id("vertrag")}
    assert set(ids(filled.search("Schraube", vector, k=10, filters={"domain": ["legal", "tax"]}))) == {
        doc_id("vertrag"), doc_id("ust")}
    assert set(ids(filled.search("Schraube", vector, k=10, filters={"source_prefix": "catalog/"}))) == {
        doc_id("edelstahl"), doc_id("gtin"), doc_id("separate")}
    assert set(ids(filled.search("Schraube", vector, k=10, filters={"mime": "application/xml"}))) == {
        doc_id("edelstahl")}
    assert set(ids(filled.search("Schraube", vector, k=10, filters={
        "document_id": [doc_id("ust")], "kind": "paragraph"}))) == {doc_id("ust")}


@pytest.mark.parametrize("value", ["x' OR '1'='1", "legal' OR domain <> '", "legal\\' OR 1=1 --", "'); DROP"])
def test_filter_values_cannot_inject(filled: LakehouseStore, qvec: QVec, value: str) -> None:
    vector = qvec("Schraube")
    for key in ("domain", "source_prefix", "document_id", "kind"):
        assert filled.search("Schraube", vector, k=10, filters={key: value}) == []
    assert filled.stats()["tables"]["chunks"]["rows"] == 8


def test_filter_validation() -> None:
    with pytest.raises(ValueError, match="unknown filter 'text'"):
        build_filter({"text": "x"})
    with pytest.raises(ValueError, match="control characters"):
        build_filter({"domain": "legal\x00"})
    with pytest.raises(ValueError, match="non-empty list"):
        build_filter({"domain": []})
    with pytest.raises(ValueError, match="non-empty strings"):
        build_filter({"kind": [1]})
    assert build_filter({"domain": "a'b"}) == "domain = 'a''b'"
    assert build_filter(None) is None


def test_search_argument_validation(filled: LakehouseStore) -> None:
    with pytest.raises(ValueError, match="mode must be one of"):
        filled.search("x", None, mode="fuzzy")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="k must be"):
        filled.search("x", None, k=0, mode="keyword")
    with pytest.raises(ValueError, match="must not be empty"):
        filled.search("  ", None, mode="keyword")


# -- tenants, freshness ----------------------------------------------------------------------------

def test_tenant_isolation(store_factory: StoreFactory, embedder: Embedder, documents: list[Batch], qvec: QVec
                          ) -> None:
    acme = store_factory("acme", embedder.spec)
    beta = store_factory("beta", embedder.spec)
    acme.write_documents(documents[:3])
    secret = make_document(embedder, "beta-secret", [
        f"Edelstahlschraube Sonderanfertigung 3RV2011-1AA10 GTIN {GTIN} Haftungsausschluss Kaufvertrag."])
    beta.write_documents([secret])
    beta_chunks = {c.chunk_id for c in secret[1]}
    for query in ("Edelstahlschraube", GTIN, "3RV2011-1AA10", "Haftungsausschluss Kaufvertrag"):
        for mode in ("hybrid", "vector", "keyword"):
            vector = qvec(query) if mode != "keyword" else None
            hits = acme.search(query, vector, k=50, mode=mode)
            assert not beta_chunks & {h.chunk_id for h in hits}
            assert not beta_chunks.isdisjoint({h.chunk_id for h in beta.search(query, vector, k=50, mode=mode)})
    assert acme.get_document(secret[0].document_id) is None
    assert secret[0].document_id not in {r["document_id"] for r in acme.list_documents(0, 200)[0]}
    assert acme.query_sql("SELECT count(*) FROM documents", 10, 5)["rows"] == [[3]]
    assert acme.stats()["tables"]["documents"]["rows"] == 3


def test_reads_see_writes_from_another_store_instance(store_factory: StoreFactory) -> None:
    spec = EmbeddingSpec("fake", 16)
    reader = store_factory("acme", spec)
    writer = store_factory("acme", spec)  # stands in for the ingest server's process
    assert reader.search("Zapfenlager", None, mode="keyword") == []
    first = make_document(spec, "zapfen", ["Der Zapfen passt. Jeder Zapfen ist gehärtet."])
    writer.write_documents([first])
    assert ids(reader.search("Zapfen", None, mode="keyword")) == [first[0].document_id]
    assert reader.document_hash(first[0].document_id) == first[0].content_sha256
    second = make_document(spec, "lager", ["Das Zapfenlager ist geschmiert."])
    writer.write_documents([second])  # the vocabulary now knows "Zapfen": the compound splits
    assert set(ids(reader.search("Zapfen", None, mode="keyword"))) == {first[0].document_id, second[0].document_id}
    assert (reader.paths.lance / "vocabulary.json").exists()


# -- indexes and stats --------------------------------------------------------------------------------

def test_stats_and_index_coverage(filled: LakehouseStore) -> None:
    stats = filled.stats()
    assert stats["tenant"] == "acme"
    assert stats["embedding"] == {"model": "all-MiniLM-L6-v2", "dim": 384}
    assert stats["tables"]["chunks"]["rows"] == 8
    assert stats["tables"]["documents"]["rows"] == 6 and stats["tables"]["products"]["rows"] == 2
    assert stats["documents_per_domain"] == {"general": 1, "legal": 1, "product": 3, "tax": 1}
    assert stats["index_coverage"]["keyword"]["unindexed"] == 8
    assert stats["index_coverage"]["vector"]["index"] is None  # small table: exact search
    filled.optimize()
    stats = filled.stats()
    assert stats["index_coverage"]["keyword"] == {"indexed": 8, "unindexed": 0, "index": "FTS", "fraction": 1.0}
    assert stats["index_coverage"]["identifier"]["fraction"] == 1.0
    assert stats["tables"]["chunks"]["version"] > 1


def test_vector_index_is_built_once_large_enough(store_factory: StoreFactory, monkeypatch: pytest.MonkeyPatch
                                                 ) -> None:
    monkeypatch.setattr(store_module, "VECTOR_INDEX_MIN_ROWS", 300)
    monkeypatch.setattr(store_module, "VECTOR_PARTITION_ROWS", 100)
    spec = EmbeddingSpec("fake", 16)
    store = store_factory("acme", spec)
    batch = [make_document(spec, f"d{i}", [f"Absatz {j} von Dokument {i}" for j in range(20)]) for i in range(16)]
    store.write_documents(batch[:8])
    assert store.optimize()["vector_index"] is None  # 160 rows: brute force
    store.write_documents(batch[8:])
    done = store.optimize()
    assert done["vector_index"] == {"trained_rows": 320, "partitions": 3}
    coverage = store.stats()["index_coverage"]["vector"]
    assert coverage["index"] == "IvfSq" and coverage["fraction"] == 1.0
    target = batch[11]
    hits = store.search("", target[2][4], k=1, mode="vector")
    assert hits[0].chunk_id == target[1][4].chunk_id and hits[0].score == pytest.approx(1.0, abs=0.02)
    assert store.optimize()["vector_index"] is None  # not retrained until the table grows 4x
    manifest = json.loads((store.paths.lance / "lakehouse.json").read_text())
    assert manifest["embedding"] == {"model": "fake", "dim": 16}
    assert manifest["vector_index"]["trained_rows"] == 320


def test_chunk_table_schema(filled: LakehouseStore) -> None:
    schema = filled._chunks.schema
    assert schema.field("vector").type == pa.list_(pa.float32(), 384)
    assert schema.field("identifiers").type == pa.list_(pa.string())
    row = next(r for r in chunk_rows(filled) if r["document_id"] == doc_id("gtin"))
    assert "3RV2011-1AA10" in row["identifiers"] and GTIN in row["identifiers"]
    assert set(row["ids_text"].split()) >= {"3RV20111AA10", GTIN}
    assert "schalt" in row["fts"].split()
