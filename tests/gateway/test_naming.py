"""Namespacing rules: length budget, character set, server names, splitting, collisions."""

from __future__ import annotations

import pytest

from kontor.gateway.naming import (
    MAX_NAME_LENGTH,
    NamingError,
    check_collisions,
    namespace_tools,
    namespaced,
    split,
    validate_server_name,
)


def test_namespaced_and_split_round_trip() -> None:
    assert namespaced("lakehouse", "search") == "lakehouse__search"
    assert split("lakehouse__search") == ("lakehouse", "search")
    # The server part never contains "_", so a tool name with "__" still splits unambiguously.
    assert split(namespaced("etim", "get__class")) == ("etim", "get__class")
    assert split(namespaced("my-server2", "Do-It_now")) == ("my-server2", "Do-It_now")


def test_length_budget_is_48_and_never_truncated() -> None:
    assert MAX_NAME_LENGTH == 48
    assert MAX_NAME_LENGTH + len("mcp__kontor__") <= 64
    fits = "t" * (48 - len("lakehouse__"))
    assert namespaced("lakehouse", fits) == f"lakehouse__{fits}"
    with pytest.raises(NamingError) as exc:
        namespaced("lakehouse", fits + "x")
    assert repr(fits + "x") in str(exc.value) and "49" in str(exc.value)


@pytest.mark.parametrize("tool", ["files.read", "read file", "lesen/ä", "ä", "tool\n", ""])
def test_invalid_tool_characters_rejected_naming_the_tool(tool: str) -> None:
    with pytest.raises(NamingError) as exc:
        namespaced("ingest", tool)
    assert repr(tool) in str(exc.value)


@pytest.mark.parametrize("server", ["", "Lakehouse", "1abc", "a_b", "a__b", "-abc", "x" * 25, "dot.ted", "ä"])
def test_invalid_server_names(server: str) -> None:
    with pytest.raises(NamingError):
        validate_server_name(server)
    with pytest.raises(NamingError):
        namespaced(server, "tool")


def test_valid_server_names() -> None:
    for server in ("a", "lakehouse", "ctax", "x" * 24, "my-server-2"):
        assert validate_server_name(server) == server


@pytest.mark.parametrize("name", ["search", "lakehouse_search", "__search", "lakehouse__", "Lake__x", "a__b.c",
                                  "x" * 49])
def test_split_rejects_non_namespaced(name: str) -> None:
    with pytest.raises(NamingError):
        split(name)


def test_namespace_tools_reports_every_invalid_name() -> None:
    assert namespace_tools("ctax", ["rate", {"name": "rules"}]) == {"ctax__rate": "rate", "ctax__rules": "rules"}
    with pytest.raises(NamingError) as exc:
        namespace_tools("ctax", ["ok", "bad.name", "y" * 60])
    assert "'bad.name'" in str(exc.value) and repr("y" * 60) in str(exc.value)


def test_collisions_all_reported() -> None:
    existing = {"lakehouse__search": "lakehouse", "lakehouse__sql": "lakehouse", "kontor__whoami": "gateway"}
    assert check_collisions(existing, "ingest", ["upload", "status"]) == []
    found = check_collisions(existing, "lakehouse", [{"name": "search"}, "SQL", "new"])
    assert len(found) == 2
    assert any("'lakehouse__search' collides with 'lakehouse__search'" in c for c in found)
    assert any("'lakehouse__SQL' differs only in letter case from 'lakehouse__sql'" in c for c in found)
    found = check_collisions(existing, "kontor", ["whoami"])
    assert found and "gateway" in found[0]


def test_collisions_within_one_server() -> None:
    found = check_collisions({}, "etim", ["classify", "Classify", "classify"])
    assert len(found) == 2 and all("within server 'etim'" in c for c in found)


def test_collision_check_refuses_invalid_names() -> None:
    with pytest.raises(NamingError, match="bad name"):
        check_collisions({}, "etim", ["bad name"])
    with pytest.raises(NamingError):
        check_collisions({}, "Bad_Server", ["x"])
