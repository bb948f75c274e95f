"""Hybrid fusion trusts the vector ranking only for languages the embedding model covers."""

from __future__ import annotations

import pytest

from kontor.servers.lakehouse.analysis import detect_language
from kontor.servers.lakehouse.embeddings import model_languages
from kontor.servers.lakehouse.store import FOREIGN_VECTOR_WEIGHT
from tests.lakehouse.conftest import make_document


@pytest.mark.parametrize(("text", "language"), [
    ("Wie wurde über die Revision im Urteil entschieden?", "de"),
    ("Was besagt § 249 Abs. 1 BGB?", "de"),
    ("Which state's law governs the interpretation of the contract?", "en"),
    ("What was the termination date of the agreement?", "en"),
    ("Edelstahlschraube M8", None),
    ("4012345678901", None),
])
def test_detect_language(text: str, language: str | None):
    assert detect_language(text) == language


def test_bundled_model_is_english_only_and_overrides_apply(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("KONTOR_EMBEDDING_LANGUAGES", raising=False)
    assert model_languages("all-MiniLM-L6-v2") == frozenset({"en"})
    assert model_languages("/models/multilingual-e5-base") is None
    monkeypatch.setenv("KONTOR_EMBEDDING_LANGUAGES", "de,en")
    assert model_languages("all-MiniLM-L6-v2") == frozenset({"de", "en"})
    monkeypatch.setenv("KONTOR_EMBEDDING_LANGUAGES", "*")
    assert model_languages("all-MiniLM-L6-v2") is None


def test_german_query_against_english_model_ranks_like_keyword(store_factory, embedder, qvec):
    store = store_factory("acme", embedder.spec)
    store.write_documents([
        make_document(embedder, "vertrag", ["Die Kündigungsfrist beträgt drei Monate zum Quartalsende.",
                                            "Der Lieferant haftet nur bei Vorsatz und grober Fahrlässigkeit."]),
        make_document(embedder, "steuer", ["Der Hebesatz der Gewerbesteuer wird von der Gemeinde festgelegt."]),
        make_document(embedder, "contract", ["Either party may terminate this agreement with ninety days notice."]),
    ])
    store.optimize()
    german = "Welche Kündigungsfrist gilt für den Vertrag?"
    assert store.vector_weight(german) == FOREIGN_VECTOR_WEIGHT == 0.0
    hybrid = store.search(german, qvec(german), k=5, mode="hybrid")
    keyword = store.search(german, None, k=5, mode="keyword")
    assert keyword and [h.chunk_id for h in hybrid[: len(keyword)]] == [h.chunk_id for h in keyword]
    assert all(h.matched == ["vector"] for h in hybrid[len(keyword):]), "only vector hits fill up the tail"
    assert len(hybrid) == 4  # all chunks of the store: k=5 is filled as far as it goes

    english = "Can a party terminate the agreement with notice?"
    assert store.vector_weight(english) == 1.0
    fused = store.search(english, qvec(english), k=5, mode="hybrid")
    assert fused[0].source.endswith("contract.txt")
    assert any("vector" in h.matched for h in fused)
