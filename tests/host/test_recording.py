"""Recording the chat in the tenant's lakehouse, through the real gateway and the REAL first-party
lakehouse and ingest servers (gateway-issued internal tokens).

The agent answers in the no-model mode (retrieved passages), :func:`record_turn` records the turn,
the user lists it, rates it and deletes it; a second user sees and changes none of it; a token
without ``lakehouse:interactions`` has no recording tools at all.
"""

from __future__ import annotations

import base64
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from mcp.shared.exceptions import MCPError

from kontor.host.agent import Agent, AnswerComplete, ToolCallFinished
from kontor.host.approvals import ApprovalPolicy, InMemoryApprovalStore
from kontor.host.mcp_session import McpSession
from kontor.host.recording import (
    RECORD_TOOL,
    RECORDING_TOOLS,
    RecordingUnavailable,
    delete_recorded,
    list_recorded,
    record_feedback,
    record_turn,
)
from tests.gateway.mesh import Mesh, mesh
from tests.host.conftest import ScriptedUser, user_session
from tests.servers_util import free_port, serve_command, server_env, stop, wait_healthy

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"), pytest.mark.slow]

TENANT = "acme"
RECORDING = ["lakehouse:read", "lakehouse:interactions"]
QUESTION = "Wann erfolgt die Lieferung der Schrauben M8?"
DOCUMENT = (
    "# Rahmenvertrag Schraubenlieferung\n\n"
    "## Lieferfristen\n\n"
    "Die Lieferung der Sechskantschrauben M8 erfolgt innerhalb von 14 Werktagen nach Bestellung.\n"
)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    root = tmp_path_factory.mktemp("recording-mesh")
    with mesh(root) as m:
        ports = {"lakehouse": free_port(), "ingest": free_port()}
        urls = {name: f"http://127.0.0.1:{port}/mcp" for name, port in ports.items()}
        m.run(m.setup_tenant(TENANT, urls))
        procs: list[subprocess.Popen[bytes]] = []
        try:
            for name, url in urls.items():
                env = server_env(root, "globex", KONTOR_AUTH_JWKS_URL=m.settings.internal_jwks_url,
                                 KONTOR_AUTH_ISSUER=m.settings.internal_issuer, KONTOR_AUTH_AUDIENCE=url)
                procs.append(subprocess.Popen(serve_command(name, "--http", f"127.0.0.1:{ports[name]}"), env=env,
                                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
            m.start_gateway()
            for proc, port in zip(procs, ports.values(), strict=True):
                wait_healthy(f"http://127.0.0.1:{port}/health", proc, 120)
            yield m
        finally:
            for proc in procs:
                stop(proc)


def session(gateway: Mesh, subject: str, scopes: list[str]) -> McpSession:
    token = gateway.token(TENANT, subject=subject, scopes=scopes)
    return McpSession(gateway.url(TENANT), token, gateway_origin=gateway.origin, default_timeout_s=120)


async def answer(mcp: Any) -> tuple[AnswerComplete, list[Any]]:
    agent = Agent(None, mcp, ApprovalPolicy(InMemoryApprovalStore(), TENANT, "user-1"), ScriptedUser())
    events = [event async for event in agent.run([], QUESTION)]
    done = events[-1]
    assert isinstance(done, AnswerComplete) and done.mode == "retrieval" and done.citations
    return done, events


async def test_a_turn_is_recorded_listed_rated_and_deleted_by_its_user_only(gateway: Mesh) -> None:
    async with user_session(gateway, TENANT, ["ingest:read", "ingest:write"]) as uploader:
        upload = await uploader.call_tool("ingest__ingest_upload", {
            "name": "rahmenvertrag.md", "content_base64": base64.b64encode(DOCUMENT.encode()).decode()})
        assert not upload.is_error and upload.structured_content["ok"] == 1, upload.content

    async with session(gateway, "anna", RECORDING) as anna:
        done, events = await answer(anna)
        assert [e.tool for e in events if isinstance(e, ToolCallFinished)] == ["lakehouse__search"]
        interaction = await record_turn(anna, question=QUESTION, answer_event=done, tool_events=events,
                                        conversation_id="conv-1", message_id="msg-1")
        assert interaction
        # a retry of the same message (the web layer lost the answer) records nothing new
        assert await record_turn(anna, question=QUESTION, answer_event=done, tool_events=events,
                                 conversation_id="conv-1", message_id="msg-1") == interaction

        page = await list_recorded(anna)
        assert page.total == 1 and page.next_cursor is None
        item = page.interactions[0]
        assert item["id"] == interaction and item["question"] == QUESTION and item["answer"] == done.text
        assert item["tools"] == ["lakehouse__search"] and (item["conversation_id"], item["message_id"]) == (
            "conv-1", "msg-1")
        assert item["citations"][0]["document_id"] == done.citations[0].document_id
        assert item["citations"][0]["number"] == 1 and "text" not in item["citations"][0]
        assert item["feedback"] is None

        assert await record_feedback(anna, interaction, -1, "Es sind 10 Werktage.") is True
        item = (await list_recorded(anna)).interactions[0]
        assert (item["feedback"], item["comment"]) == (-1, "Es sind 10 Werktage.")

    async with session(gateway, "bert", RECORDING) as bert:  # another user of the same tenant
        assert (await list_recorded(bert)).total == 0
        assert await record_feedback(bert, interaction, 1, "overwrite") is False
        assert await delete_recorded(bert, [interaction]) == 0
        assert await delete_recorded(bert, "all") == 0
        sql = await bert.call_tool("lakehouse__query_table", {"sql": "SELECT count(*) FROM interactions"})
        assert sql.structured_content["rows"] == [[0]]  # not even through SQL

    async with session(gateway, "anna", RECORDING) as anna:
        item = (await list_recorded(anna)).interactions[0]
        assert (item["id"], item["feedback"], item["comment"]) == (interaction, -1, "Es sind 10 Werktage.")
        assert await delete_recorded(anna, [interaction]) == 1
        assert (await list_recorded(anna)).total == 0
        assert await record_feedback(anna, interaction, 1) is False  # gone


async def test_a_token_without_the_interactions_scope_cannot_record(gateway: Mesh) -> None:
    async with session(gateway, "carla", ["lakehouse:read", "lakehouse:write"]) as carla:
        names = {t.name for t in await carla.list_tools()}
        assert "lakehouse__search" in names and not names & RECORDING_TOOLS
        done, events = await answer(carla)
        assert await record_turn(carla, question=QUESTION, answer_event=done, tool_events=events) is None
        assert await record_feedback(carla, "abc", 1) is False
        with pytest.raises(RecordingUnavailable):
            await list_recorded(carla)
        with pytest.raises(RecordingUnavailable):
            await delete_recorded(carla, "all")
        with pytest.raises(MCPError):  # the gateway refuses the call (403 insufficient_scope), nothing runs
            await carla.call_tool(RECORD_TOOL, {"question": "q", "answer": "a", "tools": []})

    async with session(gateway, "carla", ["lakehouse:interactions"]) as only:  # recording needs no read/write
        names = {t.name for t in await only.list_tools()}
        assert names == RECORDING_TOOLS
        result = await only.call_tool(RECORD_TOOL, {"question": "Nur aufzeichnen", "answer": "a", "tools": []})
        assert not result.is_error, result.content
        page = await list_recorded(only)  # the refused call above recorded nothing
        assert [i["question"] for i in page.interactions] == ["Nur aufzeichnen"]
        assert await delete_recorded(only, "all") == 1
