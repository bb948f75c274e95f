"""Shadowing and typosquatting of tool and server names: exact, case, separators, homoglyphs, edit distance."""

from __future__ import annotations

import pytest

from kontor.registry.checks.shadowing import RULES, check_shadowing, classify, edit_threshold

FIRST_PARTY = {
    "lakehouse": ["search", "get_document", "list_documents", "query_table", "stats"],
    "ingest": ["ingest_files", "ingest_upload", "job_status", "cancel_job"],
}
CATALOG = {"io.github.bob/weather": ["get_forecast", "get_alerts", "search"]}


def one(tool: str, **kw) -> list:
    return check_shadowing(tools=[tool], first_party_tools=FIRST_PARTY, catalog_tools=CATALOG, **kw)


def by_rule(findings: list) -> dict[str, list]:
    out: dict[str, list] = {}
    for f in findings:
        out.setdefault(f.rule, []).append(f)
    return out


@pytest.mark.parametrize(("a", "b", "kind"), [
    ("search", "search", "exact"),
    ("Search", "search", "case"),
    ("GET_DOCUMENT", "get_document", "case"),
    ("get-document", "get_document", "separator"),
    ("getDocument", "get_document", "separator"),
    ("get.document", "get_document", "separator"),
    ("sеarch", "search", "homoglyph"),  # Cyrillic е
    ("gеt_dосumеnt", "get_document", "homoglyph"),  # several Cyrillic letters
    ("ingest_fi1es", "ingest_files", "homoglyph"),  # digit one for l
    ("ｓｅａｒｃｈ", "search", "homoglyph"),  # full-width
    ("get_documnet", "get_document", "edit"),  # transposition
    ("ingest_file", "ingest_files", "edit"),
    ("list_document", "list_documents", "edit"),
])
def test_classify(a: str, b: str, kind: str) -> None:
    match = classify(a, b)
    assert match is not None and match.kind == kind


@pytest.mark.parametrize(("a", "b"), [("stat", "stats"), ("search", "research"), ("get_forecast", "get_alerts"),
                                      ("job_status", "job_state")])
def test_unrelated_or_short_names_do_not_match(a: str, b: str) -> None:
    assert classify(a, b) is None


def test_edit_threshold_grows_with_length() -> None:
    assert [edit_threshold(n) for n in (3, 4, 5, 9, 10, 30)] == [0, 0, 1, 1, 2, 2]


def test_exact_first_party_tool_name() -> None:
    [f] = one("query_table")
    assert (f.rule, f.severity, f.tool, f.field) == ("shadowing.first-party-tool", "high", "query_table", "name")
    assert f.evidence["kind"] == "exact" and f.evidence["owner"] == "lakehouse"
    assert (f.span.start, f.span.end, f.span.excerpt) == (0, 11, "query_table")


def test_gateway_qualified_first_party_name() -> None:
    [f] = one("lakehouse__search")
    assert f.rule == "shadowing.first-party-tool" and f.evidence["match"] == "lakehouse__search"
    [f] = one("Lakehouse-Search")
    assert f.rule == "shadowing.first-party-tool" and f.evidence["kind"] == "separator"


def test_case_variant_of_first_party_tool() -> None:
    [f] = one("Get_Document")
    assert (f.rule, f.severity, f.evidence["kind"]) == ("shadowing.first-party-tool", "high", "case")


def test_separator_variant_of_first_party_tool() -> None:
    [f] = one("ingest-files")
    assert (f.rule, f.evidence["kind"]) == ("shadowing.first-party-tool", "separator")


def test_homoglyph_of_first_party_tool_is_critical() -> None:
    name = "j\u043eb_status"  # Cyrillic о
    found = by_rule(one(name))
    [f] = found["shadowing.homoglyph"]
    assert f.severity == "critical" and f.evidence["match"] == "job_status"
    [c] = found["shadowing.confusable-characters"]
    assert "U+043E" in c.message


def test_latin_a_replaced_by_cyrillic_a() -> None:
    name = "c\u0430ncel_job"  # Cyrillic а (U+0430) for Latin a
    found = by_rule(one(name))
    assert found["shadowing.homoglyph"][0].evidence["match"] == "cancel_job"
    assert found["shadowing.homoglyph"][0].evidence["skeleton"] == "canceljob"


def test_edit_distance_to_first_party_tool() -> None:
    [f] = one("ingest_flies")
    assert (f.rule, f.severity, f.evidence["distance"]) == ("shadowing.first-party-tool-near", "medium", 1)


def test_catalog_tools() -> None:
    assert [(f.rule, f.severity) for f in one("get_forecast")] == [("shadowing.catalog-tool", "low")]
    assert [(f.rule, f.severity) for f in one("Get-Alerts")] == [("shadowing.catalog-tool-lookalike", "medium")]
    assert [(f.rule, f.severity) for f in one("get_forcast")] == [("shadowing.catalog-tool-near", "low")]
    # the catalog entry being the submission itself (an earlier version) is not a collision
    assert one("get_forecast", server_name="io.github.bob/weather") == []


def test_unrelated_tool_names_are_clean() -> None:
    assert one("convert_currency") == []


def test_collisions_inside_the_submission() -> None:
    findings = check_shadowing(tools=[{"name": "read_note"}, {"name": "Read-Note"}, {"name": "write_note"}])
    assert [(f.rule, f.tool) for f in findings] == [("shadowing.self-collision", "read_note")]


def test_server_name_against_first_party_servers() -> None:
    [f] = check_shadowing(server_name="io.github.mallory/lakehouse", first_party_tools=FIRST_PARTY)
    assert (f.rule, f.severity, f.tool, f.field) == ("shadowing.first-party-server", "high", None, "server.name")
    [f] = check_shadowing(server_name="io.github.mallory/lakehuose", first_party_tools=FIRST_PARTY)
    assert f.rule == "shadowing.first-party-server-near"


def test_server_name_typosquatting_catalog_entries() -> None:
    catalog = ["io.github.modelcontextprotocol/filesystem", "com.example/weather"]
    [f] = check_shadowing(server_name="io.github.modelcontextprotoco1/filesystem", catalog_servers=catalog)
    assert (f.rule, f.severity) == ("shadowing.homoglyph", "critical")
    [f] = check_shadowing(server_name="io.github.modelcontextprotocl/filesystem", catalog_servers=catalog)
    assert (f.rule, f.severity) == ("shadowing.catalog-server-near", "high")
    [f] = check_shadowing(server_name="com.ex-ample/weather", catalog_servers=catalog)
    assert (f.rule, f.severity) == ("shadowing.catalog-server-lookalike", "high")
    # namespaces compare case-insensitively: com.Example is the publisher of com.example itself
    assert check_shadowing(server_name="com.Example/Weather", catalog_servers=catalog) == []
    [f] = check_shadowing(server_name="io.github.ann/weather", catalog_servers=catalog)
    assert (f.rule, f.severity) == ("shadowing.catalog-server-same-name", "low")


def test_own_namespace_and_same_server_are_not_typosquats() -> None:
    catalog = ["com.example/weather", "com.example/weather-v1"]
    assert check_shadowing(server_name="com.example/weather-v2", catalog_servers=catalog) == []
    assert check_shadowing(server_name="com.example/weather", catalog_servers=catalog) == []


def test_every_rule_is_documented() -> None:
    findings = [
        *one("search"), *one("get_forcast"), *one("Get-Alerts"), *one("sеarch"), *one("ingest_flies"),
        *check_shadowing(server_name="io.github.x/lakehouse", first_party_tools=FIRST_PARTY),
    ]
    for f in findings:
        assert f.rule in RULES and RULES[f.rule][0] == f.severity
