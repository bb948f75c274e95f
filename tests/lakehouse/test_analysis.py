"""German-aware analysis: folding, stemming, compound splitting, vocabulary, identifiers."""

from __future__ import annotations

from pathlib import Path

import pytest

from kontor.servers.lakehouse.analysis import (
    Lexicon,
    TenantVocabulary,
    analyze,
    analyze_query,
    extract_identifiers,
    fold,
    gtin_check_digit,
    gtin_valid,
    identifier_key,
    index_terms,
    query_identifier_keys,
    query_terms,
    tokenize,
    vocabulary_candidates,
)

VALID_GTIN = "401234567890" + gtin_check_digit("401234567890")


def terms(text: str, lexicon: Lexicon | None = None) -> set[str]:
    return set(index_terms(text, lexicon))


def finds(indexed: str, query: str, lexicon: Lexicon | None = None) -> set[str]:
    """Terms a query shares with an indexed text (what BM25 would match on)."""
    return terms(indexed, lexicon) & set(query_terms(query, lexicon))


# -- folding, tokens, stemming ------------------------------------------------------------------

@pytest.mark.parametrize(("raw", "folded"), [
    ("Müller", "mueller"),
    ("Mueller", "mueller"),
    ("MÜLLER", "mueller"),
    ("Straße", "strasse"),
    ("Größe", "groesse"),
    ("Café crème", "cafe creme"),
    ("Øresund Łódź", "oresund lodz"),
])
def test_fold(raw: str, folded: str) -> None:
    assert fold(raw) == folded


def test_umlaut_and_ae_spellings_analyse_the_same() -> None:
    assert analyze("Müller") == analyze("Mueller") == analyze("MUELLER")
    assert analyze("Prüfung der Gebäude") == analyze("Pruefung der Gebaeude")


def test_stemming_matches_inflected_forms() -> None:
    assert analyze("Schrauben") == analyze("Schraube")
    assert analyze("Verträge") == analyze("Vertrag")
    assert analyze("Rechnungen") == analyze("Rechnung")


def test_stop_words_are_dropped() -> None:
    assert analyze("der die das und oder the and of") == ""
    assert analyze("Die Schraube und der Dübel") == analyze("Schraube Dübel")


def test_tokenize_hyphenated_words_and_numbers() -> None:
    tokens = tokenize("Edelstahl-Schraube M8 3RV2011-1AA10")
    assert "edelstahl" in tokens and "schraube" in tokens and "edelstahlschraube" in tokens
    assert "m8" in tokens and "3rv2011" in tokens and "1aa10" in tokens


def test_analyze_query_deduplicates() -> None:
    assert analyze_query("Schraube Schrauben schraube") == "schraub"
    assert analyze("Schraube Schrauben") == "schraub schraub"  # the index side keeps term frequency


# -- decompounding -------------------------------------------------------------------------------

def test_compound_index_side_finds_separate_words() -> None:
    # index "Edelstahlschraube", query "Schraube Edelstahl"
    assert {"schraub", "edelstahl"} <= finds("Edelstahlschraube M8", "Schraube Edelstahl")


def test_separate_words_index_side_finds_compound_query() -> None:
    # index "Schraube aus Edelstahl", query "Edelstahlschraube"
    assert {"schraub", "edelstahl"} <= finds("Schraube aus Edelstahl", "Edelstahlschraube")
    assert {"schraub", "edelstahl"} <= finds("Schrauben aus Edelstahl", "Edelstahlschrauben")


@pytest.mark.parametrize(("word", "segments"), [
    ("edelstahlschraube", ["edelstahl", "schraube"]),
    ("vertragsstrafe", ["vertrag", "strafe"]),  # linking -s-
    ("schraubenmutter", ["schraube", "mutter"]),  # linking -n-
    ("lieferantenbewertung", ["lieferant", "bewertung"]),  # linking -en-
    ("kabelkanal", ["kabel", "kanal"]),
    ("haftungsausschluss", ["haftung", "ausschluss"]),
])
def test_split_with_linking_elements(word: str, segments: list[str]) -> None:
    parts = Lexicon.seed().split(word)
    assert parts is not None
    assert [segment for segment, _ in parts] == segments


def test_nested_compounds_emit_parts_of_parts() -> None:
    found = terms("Umsatzsteuererklärung")
    assert {"umsatz", "steu", "erklar"} <= found
    assert {"edel", "stahl", "schraub"} <= terms("Edelstahlschraube")


def test_words_that_are_not_compounds_stay_whole() -> None:
    for word in ("Verwaltung", "Vertrag", "Gesellschaft", "Verkauf", "Bestellung"):
        assert analyze(word).split() == [analyze(word).split()[0]], word


def test_unknown_modifier_still_yields_the_head_word() -> None:
    assert "schraub" in terms("Spaxschraube")


def test_tenant_words_extend_the_lexicon() -> None:
    seed = Lexicon.seed()
    assert "zapfenlager" not in seed and "zapfen" not in seed
    assert "zapf" not in terms("Zapfenlager", seed)
    tenant = seed.with_words(["Zapfen"])
    assert {"zapf", "lag"} <= terms("Zapfenlager", tenant)
    assert "zapf" in finds("Zapfenlager", "Zapfen", tenant)


# -- tenant vocabulary -------------------------------------------------------------------------------

def test_vocabulary_candidates_are_capitalised_nouns() -> None:
    counts = vocabulary_candidates("Der Zapfen sitzt im Lager. Zapfen und Lager werden geprüft, sagt Herr Maier.")
    assert counts["zapfen"] == 2 and counts["lager"] == 2
    assert "werden" not in counts and "der" not in counts


def test_vocabulary_is_persisted_and_reloaded(tmp_path: Path) -> None:
    path = tmp_path / "vocabulary.json"
    writer = TenantVocabulary(path, check_interval=0)
    reader = TenantVocabulary(path, check_interval=0)
    assert "zapf" not in terms("Zapfenlager", reader.lexicon())
    writer.add({"zapfen": 1})
    assert "zapf" not in terms("Zapfenlager", reader.lexicon())  # seen once: not trusted yet
    writer.add({"zapfen": 1})
    assert "zapf" in terms("Zapfenlager", reader.lexicon())  # reloaded after the file changed
    assert TenantVocabulary(path).counts()["zapfen"] == 2


def test_damaged_vocabulary_file_degrades_to_seed(tmp_path: Path) -> None:
    path = tmp_path / "vocabulary.json"
    path.write_text("{not json", encoding="utf-8")
    vocab = TenantVocabulary(path)
    assert vocab.counts() == {}
    assert "schraub" in terms("Edelstahlschraube", vocab.lexicon())


# -- identifiers ------------------------------------------------------------------------------------

def test_gtin_checksum() -> None:
    assert gtin_valid(VALID_GTIN)
    bad = VALID_GTIN[:-1] + str((int(VALID_GTIN[-1]) + 1) % 10)
    assert not gtin_valid(bad)
    assert gtin_valid("96385074")  # GTIN-8
    assert gtin_valid("036000291452")  # UPC-A / GTIN-12
    assert gtin_valid("0" + VALID_GTIN)  # GTIN-14


def test_extract_gtin_rejects_bad_checksum() -> None:
    bad = VALID_GTIN[:-1] + str((int(VALID_GTIN[-1]) + 1) % 10)
    found = extract_identifiers(f"EAN {VALID_GTIN}, alte EAN {bad}")
    assert VALID_GTIN in found
    assert bad not in found


def test_extract_etim_eclass_and_part_numbers() -> None:
    text = ("ETIM-Klasse ec000123, Merkmal EF000001, Wert EV000045; ECLASS 27-14-11-20 bzw. 27141120. "
            "Leistungsschalter 1SDA066799R1, Motorschutz 3RV2011-1AA10, Reihenklemme WDU 2.5 grau.")
    found = extract_identifiers(text)
    for expected in ("EC000123", "EF000001", "EV000045", "27-14-11-20", "27141120", "1SDA066799R1",
                     "3RV2011-1AA10", "WDU2.5"):
        assert expected in found, expected


def test_measurements_dates_and_prices_are_not_identifiers() -> None:
    found = extract_identifiers("230V 50Hz 10mm 2,5kg am 15.01.2024 für EUR 25.00 auf Seite 12, Nr 5")
    assert found == []


def test_identifier_keys_normalise_spacing_and_case() -> None:
    assert identifier_key("3RV2011-1AA10") == "3RV20111AA10"
    assert identifier_key("WDU 2.5") == identifier_key("wdu2.5") == "WDU25"
    assert identifier_key("27-14-11-20") == identifier_key("27141120")
    assert identifier_key("3RV2011-1AA10") in query_identifier_keys("3rv2011 1aa10")
    assert "WDU25" in query_identifier_keys("klemme wdu 2.5")
    assert VALID_GTIN in query_identifier_keys(f"Artikel {VALID_GTIN}")
    assert query_identifier_keys("Schrauben aus Edelstahl") == []
