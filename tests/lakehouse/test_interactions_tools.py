"""Recorded interactions: the store's per-user methods and the lakehouse's four interactions tools.

Each user records, sees, rates and deletes only their own rows; the user is always the verified
token's subject (here: the claims the SDK's bearer middleware would put into the request context),
never an argument. Every input is bounded.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake
from mcp import Client
from mcp.server.auth.middleware.auth_context import auth_context_var
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.mcpserver import MCPServer

from kontor.auth import StaticJwks
from kontor.paths import TenantPaths
from kontor.servers.lakehouse.embeddings import Embedder, EmbeddingSpec
from kontor.servers.lakehouse.server import INTERACTION_TOOLS, build_server
from kontor.servers.lakehouse.store import (
    MAX_ANSWER_CHARS,
    MAX_DELETE_IDS,
    MAX_INTERACTIONS_PAGE,
    MAX_QUESTION_CHARS,
    LakehouseStore,
)
from kontor.settings import Settings
from kontor.tenancy import tenant_context

SPEC = EmbeddingSpec("fake-model", 8)
AUDIENCE = "http://127.0.0.1:8711/mcp"


# -- the store ---------------------------------------------------------------------------------


@pytest.fixture
def store(store_factory: Any) -> LakehouseStore:
    return store_factory("acme", SPEC)


def test_each_user_lists_only_their_own_rows_newest_first_in_pages(store: LakehouseStore) -> None:
    base = dt.datetime(2025, 3, 1, 12, tzinfo=dt.UTC)
    ids = [store.record_interaction(f"Frage {i}", f"Antwort {i}", user="anna", ts=base + dt.timedelta(minutes=i),
                                    tools=["lakehouse__search"]) for i in range(5)]
    same_ts = store.record_interaction("Gleichzeitig", "x", user="anna", ts=base + dt.timedelta(minutes=4))
    store.record_interaction("Bobs Frage", "Bobs Antwort", user="bob", ts=base)

    seen: list[str] = []
    cursor = None
    for _ in range(10):
        rows, total, cursor = store.list_interactions("anna", 2, cursor)
        assert total == 6
        seen += [r["id"] for r in rows]
        if cursor is None:
            break
    # newest first; two rows with one timestamp are ordered by id, and paging loses none of them
    assert sorted(seen) == sorted([*ids, same_ts]) and len(seen) == 6
    assert seen[2:] == ids[3::-1]
    assert {seen[0], seen[1]} == {ids[4], same_ts}
    rows, total, _ = store.list_interactions("bob", 10)
    assert total == 1 and [r["question"] for r in rows] == ["Bobs Frage"]
    assert store.list_interactions("carla", 10) == ([], 0, None)
    oldest = store.list_interactions("anna", 1, store.list_interactions("anna", 5)[2])[0][0]
    assert oldest["id"] == ids[0] and oldest["tools"] == ["lakehouse__search"]
    assert oldest["ts"] == "2025-03-01T12:00:00+00:00"


def test_feedback_changes_only_the_users_own_row(store: LakehouseStore) -> None:
    mine = store.record_interaction("Wie lange gilt die Gewährleistung?", "Zwölf Monate.", user="anna")
    theirs = store.record_interaction("Was kostet M8?", "0,10 EUR", user="bob")
    assert store.set_interaction_feedback("anna", mine, -1, "falsch, es sind 24 Monate; 'Gewähr'") is True
    assert store.set_interaction_feedback("anna", theirs, 1, "hijack") is False  # looks like an unknown id
    assert store.set_interaction_feedback("anna", "nosuchid", 1) is False
    (row,), _, _ = store.list_interactions("anna", 10)
    assert (row["feedback"], row["comment"]) == (-1, "falsch, es sind 24 Monate; 'Gewähr'")
    (bobs,), _, _ = store.list_interactions("bob", 10)
    assert (bobs["feedback"], bobs["comment"]) == (None, None)
    assert store.set_interaction_feedback("anna", mine, 1) is True  # replaces, clears the comment
    (row,), _, _ = store.list_interactions("anna", 10)
    assert (row["feedback"], row["comment"]) == (1, None)
    with pytest.raises(ValueError, match="feedback"):
        store.set_interaction_feedback("anna", mine, 2)
    with pytest.raises(ValueError, match="comment"):
        store.set_interaction_feedback("anna", mine, 1, "x" * 2001)
    with pytest.raises(ValueError, match="not valid"):
        store.set_interaction_feedback("anna", "id' OR '1'='1", 1)


def test_delete_removes_only_the_users_rows_and_vacuums_the_old_files(store: LakehouseStore) -> None:
    a1 = store.record_interaction("Geheime Frage eins", "a", user="anna")
    a2 = store.record_interaction("Geheime Frage zwei", "b", user="anna")
    a3 = store.record_interaction("Frage drei", "c", user="anna")
    b1 = store.record_interaction("Bobs Frage", "d", user="bob")
    assert store.delete_interactions("anna", [b1]) == 0  # another user's id is ignored
    assert store.delete_interactions("anna", [a1, a2, "unknown"]) == 2
    assert [r["id"] for r in store.list_interactions("anna", 10)[0]] == [a3]
    assert store.delete_interactions("anna", []) == 0
    assert store.delete_interactions("anna") == 1
    assert store.list_interactions("anna", 10)[1] == 0
    assert [r["id"] for r in store.list_interactions("bob", 10)[0]] == [b1]
    # the deleted text is gone from disk, not only from the current version, and never was in the log
    folder = store.paths.delta_table("interactions")
    data = b"".join(p.read_bytes() for p in folder.rglob("*") if p.is_file())
    assert b"Geheime Frage" not in data and b"Bobs Frage" in data
    with pytest.raises(ValueError, match=str(MAX_DELETE_IDS)):
        store.delete_interactions("anna", [f"id{i}" for i in range(MAX_DELETE_IDS + 1)])
    with pytest.raises(ValueError, match="not one string"):
        store.delete_interactions("anna", "abc")  # type: ignore[arg-type]


def test_recording_the_same_message_twice_writes_one_row(store: LakehouseStore) -> None:
    first = store.record_interaction_once("Frage", "Antwort", user="anna", conversation_id="c1", message_id="m1",
                                          citations=[{"document_id": "d1", "page": 3}], tools=["lakehouse__search"])
    again = store.record_interaction_once("Frage", "Antwort", user="anna", conversation_id="c1", message_id="m1")
    other_user = store.record_interaction_once("Frage", "Antwort", user="bob", message_id="m1")
    assert first[1] is True and again[1] is False and again[0] == first[0] and again[2] == first[2]
    assert other_user[1] is True and other_user[0] != first[0]
    (row,), total, _ = store.list_interactions("anna", 10)
    assert total == 1 and row["citations"] == [{"document_id": "d1", "page": 3}]
    assert (row["conversation_id"], row["message_id"], row["tools"]) == ("c1", "m1", ["lakehouse__search"])


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"question": ""}, "question must not be empty"),
    ({"question": "x" * (MAX_QUESTION_CHARS + 1)}, "question is"),
    ({"answer": "x" * (MAX_ANSWER_CHARS + 1)}, "answer is"),
    ({"tools": ["t"] * 65}, "tools given"),
    ({"tools": ["x" * 201]}, "tool name"),
    ({"citations": [{"document_id": "d"}] * 51}, "citations given"),
    ({"citations": [{"document_id": "d", "text": "x" * 70_000}]}, "citations take"),
    ({"user": ""}, "user must be"),
    ({"user": "x" * 257}, "user must be"),
    ({"message_id": "bad id"}, "message_id"),
    ({"conversation_id": "x" * 129}, "conversation_id"),
    ({"feedback": 3}, "feedback"),
    ({"question": "a\x00b"}, "NUL"),
])
def test_bad_recordings_are_refused_and_write_nothing(store: LakehouseStore, kwargs: dict[str, Any],
                                                      message: str) -> None:
    args = {"question": "Frage", "answer": "Antwort", "user": "anna", **kwargs}
    question, answer = args.pop("question"), args.pop("answer")
    with pytest.raises(ValueError, match=message):
        store.record_interaction(question, answer, **args)
    assert store.query_sql("SELECT count(*) FROM interactions", 5, 5)["rows"] == [[0]]


def test_list_limits_and_bad_cursors(store: LakehouseStore) -> None:
    store.record_interaction("Frage", "Antwort", user="anna")
    for limit in (0, MAX_INTERACTIONS_PAGE + 1, True):
        with pytest.raises(ValueError, match="limit"):
            store.list_interactions("anna", limit)
    for cursor in ("", "nonsense", "x" * 600, "eyJ0cyI6IDF9"):
        with pytest.raises(ValueError, match="invalid cursor"):
            store.list_interactions("anna", 5, cursor)


def test_sql_shows_a_user_only_their_interactions(store: LakehouseStore) -> None:
    store.record_interaction("Annas Frage", "a", user="anna")
    store.record_interaction("Bobs Frage", "b", user="bob")
    mine = store.query_sql('SELECT "user", question FROM interactions', 10, 5, interactions_user="anna")
    assert mine["rows"] == [["anna", "Annas Frage"]]
    assert store.query_sql("SELECT count(*) FROM interactions", 10, 5)["rows"] == [[2]]  # unrestricted: all
    for sql in ("SELECT * FROM __kontor_all_interactions", "SELECT * FROM main.__kontor_all_interactions"):
        with pytest.raises(ValueError, match="__kontor_all_interactions"):
            store.query_sql(sql, 10, 5, interactions_user="anna")


def test_a_table_from_before_gets_the_new_columns(tmp_path: Path) -> None:
    old_schema = pa.schema([pa.field("id", pa.string(), nullable=False), pa.field("ts", pa.timestamp("us", tz="UTC")),
                            pa.field("user", pa.string()), pa.field("question", pa.string()),
                            pa.field("answer", pa.string()), pa.field("tools_json", pa.string()),
                            pa.field("feedback", pa.int8()), pa.field("comment", pa.string())])
    paths = TenantPaths(tmp_path, "acme").ensure()
    path = str(paths.delta_table("interactions"))
    DeltaTable.create(path, old_schema, name="interactions")
    write_deltalake(path, pa.Table.from_pylist([{"id": "old1", "ts": dt.datetime(2024, 1, 1, tzinfo=dt.UTC),
                                                 "user": "anna", "question": "Alt", "answer": "Antwort",
                                                 "tools_json": "[]", "feedback": 1, "comment": None}],
                                               schema=old_schema), mode="append")
    store = LakehouseStore(paths, SPEC)
    try:
        store.record_interaction("Neu", "Antwort", user="anna", message_id="m1")
        rows, total, _ = store.list_interactions("anna", 10)
        assert total == 2 and [(r["id"] == "old1", r["message_id"]) for r in rows] == [(False, "m1"), (True, None)]
        assert DeltaTable(path).metadata().configuration["delta.dataSkippingStatsColumns"] == "id,ts,feedback"
    finally:
        store.close()


# -- the tools ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tool_server(tmp_path_factory: pytest.TempPathFactory, embedder: Embedder) -> Iterator[MCPServer]:
    settings = Settings(data_root=tmp_path_factory.mktemp("interactions"), auth_jwks_url="http://127.0.0.1:9/jwks",
                        auth_issuer="http://127.0.0.1:9/internal", auth_audience=AUDIENCE)
    yield build_server(settings, jwks=StaticJwks({"keys": []}))


@contextlib.asynccontextmanager
async def as_user(server: MCPServer, subject: str, tenant: str = "acme") -> AsyncIterator[Client]:
    """A client whose requests carry the verified internal token of ``subject`` (as behind the gateway)."""
    claims = {"sub": subject, "tenant": tenant, "scope": "lakehouse:read lakehouse:write",
              "exp": int(time.time()) + 600, "iat": int(time.time()), "aud": AUDIENCE}
    token = AccessToken(token="t", client_id="host", scopes=[], expires_at=claims["exp"], resource=AUDIENCE,
                        subject=subject, claims=claims)
    reset = auth_context_var.set(AuthenticatedUser(token))
    try:
        async with Client(server) as client:  # the server's tasks inherit the request context set here
            yield client
    finally:
        auth_context_var.reset(reset)


async def call(client: Client, tool: str, args: dict[str, Any]) -> Any:
    result = await client.call_tool(tool, args)
    assert not result.is_error, result.content
    return result.structured_content


async def error(client: Client, tool: str, args: dict[str, Any]) -> str:
    result = await client.call_tool(tool, args)
    assert result.is_error, result.structured_content
    return result.content[0].text


async def test_the_tools_declare_their_scope_and_bounded_inputs(tool_server: MCPServer) -> None:
    async with as_user(tool_server, "anna") as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
    assert set(INTERACTION_TOOLS) <= set(tools)
    for name in INTERACTION_TOOLS:
        assert tools[name].meta == {"io.kontor/scope": "interactions"}, name
        properties = set(tools[name].input_schema.get("properties", {}))
        assert not properties & {"user", "subject", "tenant", "user_id"}, name  # never an argument
    assert tools["list_my_interactions"].annotations.read_only_hint is True
    assert tools["record_interaction"].annotations.read_only_hint is False
    assert tools["delete_my_interactions"].annotations.destructive_hint is True
    record = tools["record_interaction"].input_schema
    assert record["properties"]["question"]["maxLength"] == MAX_QUESTION_CHARS
    assert record["properties"]["tools"]["maxItems"] == 64
    assert set(record["required"]) == {"question", "answer", "tools"}
    assert all(tools[t].meta is None for t in ("search", "query_table"))  # the others keep read/write


async def test_standalone_there_are_no_interactions_tools(tmp_path: Path) -> None:
    with tenant_context("acme"):
        async with Client(build_server(Settings(data_root=tmp_path))) as client:
            names = {t.name for t in (await client.list_tools()).tools}
    assert not names & set(INTERACTION_TOOLS)


async def test_users_record_list_rate_and_delete_only_their_own(tool_server: MCPServer) -> None:
    async with as_user(tool_server, "anna") as anna:
        recorded = await call(anna, "record_interaction", {
            "question": "Wann wird geliefert?", "answer": "In 14 Werktagen [1].", "tools": ["lakehouse__search"],
            "citations": [{"document_id": "doc1", "title": "Rahmenvertrag", "char_start": 0, "char_end": 40,
                           "number": 1, "text": "dropped: the passage text is not stored"}],
            "conversation_id": "conv-1", "message_id": "msg-1"})
        assert recorded["created"] is True and recorded["ts"].endswith("+00:00")
        again = await call(anna, "record_interaction", {"question": "Wann wird geliefert?", "answer": "x",
                                                        "tools": [], "conversation_id": "conv-1",
                                                        "message_id": "msg-1"})
        assert again == {**recorded, "created": False}
        rated = await call(anna, "set_interaction_feedback", {"interaction_id": recorded["id"], "feedback": 1,
                                                              "comment": "passt"})
        assert rated == {"id": recorded["id"], "feedback": 1, "comment": "passt"}
        page = await call(anna, "list_my_interactions", {})
        assert page["total"] == 1 and page["next_cursor"] is None
        item = page["interactions"][0]
        assert (item["question"], item["feedback"], item["comment"], item["tools"]) == (
            "Wann wird geliefert?", 1, "passt", ["lakehouse__search"])
        assert item["citations"] == [{"document_id": "doc1", "title": "Rahmenvertrag", "char_start": 0,
                                      "char_end": 40, "number": 1}]
        sql = await call(anna, "query_table", {"sql": 'SELECT "user", question FROM interactions'})
        assert sql["rows"] == [["anna", "Wann wird geliefert?"]]

    async with as_user(tool_server, "bob") as bob:
        assert (await call(bob, "list_my_interactions", {}))["total"] == 0
        assert (await call(bob, "query_table", {"sql": "SELECT count(*) FROM interactions"}))["rows"] == [[0]]
        assert "no interaction" in await error(bob, "set_interaction_feedback",
                                               {"interaction_id": recorded["id"], "feedback": -1})
        assert await call(bob, "delete_my_interactions", {"ids": [recorded["id"]]}) == {"deleted": 0}
        assert await call(bob, "delete_my_interactions", {"all": True}) == {"deleted": 0}
        bobs = await call(bob, "record_interaction", {"question": "Bobs Frage", "answer": "b", "tools": []})

    async with as_user(tool_server, "anna") as anna:
        page = await call(anna, "list_my_interactions", {"limit": 10})
        assert [i["id"] for i in page["interactions"]] == [recorded["id"]]  # bob's row is not anna's
        assert page["interactions"][0]["feedback"] == 1  # bob could not change it
        assert await call(anna, "delete_my_interactions", {"ids": [recorded["id"], bobs["id"]]}) == {"deleted": 1}
        assert (await call(anna, "list_my_interactions", {}))["total"] == 0

    async with as_user(tool_server, "bob") as bob:
        assert (await call(bob, "list_my_interactions", {}))["total"] == 1
        assert await call(bob, "delete_my_interactions", {"all": True}) == {"deleted": 1}


async def test_a_user_argument_is_ignored_the_row_is_the_callers(tool_server: MCPServer) -> None:
    async with as_user(tool_server, "carla") as carla:
        sent = await call(carla, "record_interaction", {"question": "Von Carla", "answer": "a", "tools": [],
                                                        "user": "mallory"})
        assert [i["id"] for i in (await call(carla, "list_my_interactions", {}))["interactions"]] == [sent["id"]]
    async with as_user(tool_server, "mallory") as mallory:
        assert (await call(mallory, "list_my_interactions", {}))["total"] == 0


async def test_the_same_subject_in_another_tenant_is_another_table(tool_server: MCPServer) -> None:
    async with as_user(tool_server, "anna", tenant="globex") as anna:
        await call(anna, "record_interaction", {"question": "Globex-Frage", "answer": "a", "tools": []})
    async with as_user(tool_server, "anna", tenant="acme") as anna:
        page = await call(anna, "list_my_interactions", {})
        assert "Globex-Frage" not in [i["question"] for i in page["interactions"]]


@pytest.mark.parametrize(("tool", "args", "needle"), [
    ("record_interaction", {"question": "", "answer": "a", "tools": []}, "question"),
    ("record_interaction", {"question": "   ", "answer": "a", "tools": []}, "blank"),
    ("record_interaction", {"question": "q" * (MAX_QUESTION_CHARS + 1), "answer": "a", "tools": []}, "question"),
    ("record_interaction", {"question": "q", "answer": "a", "tools": ["t"] * 65}, "tools"),
    ("record_interaction", {"question": "q", "answer": "a", "tools": [], "citations": [{"title": "no id"}]},
     "document_id"),
    ("record_interaction", {"question": "q", "answer": "a", "tools": [], "message_id": "a b"}, "message_id"),
    ("record_interaction", {"question": "q", "answer": "a"}, "tools"),
    ("set_interaction_feedback", {"interaction_id": "x", "feedback": 2}, "feedback"),
    ("set_interaction_feedback", {"interaction_id": "x", "feedback": 1, "comment": "c" * 2001}, "comment"),
    ("list_my_interactions", {"limit": MAX_INTERACTIONS_PAGE + 1}, "limit"),
    ("list_my_interactions", {"cursor": "garbage"}, "invalid cursor"),
    ("delete_my_interactions", {}, "either ids"),
    ("delete_my_interactions", {"ids": ["a"], "all": True}, "either ids"),
    ("delete_my_interactions", {"ids": ["a"] * (MAX_DELETE_IDS + 1)}, "ids"),
    ("delete_my_interactions", {"ids": ["x' OR '1'='1"]}, "ids"),
])
async def test_bad_arguments_are_clear_errors(tool_server: MCPServer, tool: str, args: dict[str, Any],
                                              needle: str) -> None:
    async with as_user(tool_server, "anna") as client:
        assert needle in await error(client, tool, args)
