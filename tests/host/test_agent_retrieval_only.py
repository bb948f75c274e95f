"""No model configured: the host says so and answers with retrieved passages, through the real
gateway and the REAL first-party lakehouse and ingest servers (gateway-issued internal tokens).

One small text document is ingested through ``ingest__ingest_upload`` first; the question is
then answered by ``lakehouse__search`` alone, with citations naming the document and passage.
"""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kontor.host.agent import (
    Agent,
    AnswerComplete,
    ApprovalNeeded,
    CitationFound,
    Notice,
    TextDelta,
    ToolCallFinished,
    ToolCallStarted,
)
from kontor.host.approvals import ApprovalPolicy, InMemoryApprovalStore
from kontor.host.providers import AssistantMessage, UserMessage
from tests.gateway.mesh import Mesh, mesh
from tests.host.conftest import ScriptedUser, user_session
from tests.servers_util import free_port, serve_command, server_env, stop, wait_healthy

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"), pytest.mark.slow]

TENANT = "acme"
DOCUMENT = (
    "# Rahmenvertrag Schraubenlieferung\n\n"
    "## Lieferfristen\n\n"
    "Die Lieferung der Sechskantschrauben M8 erfolgt innerhalb von 14 Werktagen nach Bestellung. "
    "Bei Verzug zahlt der Lieferant eine Vertragsstrafe von 0,5 Prozent je Woche.\n\n"
    "## Zahlung\n\n"
    "Rechnungen sind innerhalb von 30 Tagen ohne Abzug zu zahlen.\n"
)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    root = tmp_path_factory.mktemp("retrieval-mesh")
    with mesh(root) as m:
        ports = {"lakehouse": free_port(), "ingest": free_port()}
        urls = {name: f"http://127.0.0.1:{port}/mcp" for name, port in ports.items()}
        m.run(m.setup_tenant(TENANT, urls))
        procs: list[subprocess.Popen[bytes]] = []
        try:
            # Servers and gateway start at once (the servers fetch the gateway's JWKS only at their first request).
            for name, url in urls.items():
                env = server_env(root, "globex",  # a configured tenant must not matter behind the gateway
                                 KONTOR_AUTH_JWKS_URL=m.settings.internal_jwks_url,
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


async def run(agent: Agent, question: str) -> list[Any]:
    return [event async for event in agent.run([], question)]


def no_model_agent(session: Any, user: ScriptedUser) -> Agent:
    return Agent(None, session, ApprovalPolicy(InMemoryApprovalStore(), TENANT, "user-1"), user)


async def test_without_a_model_the_host_answers_with_retrieved_passages(gateway: Mesh, tmp_path: Path):
    scopes = ["lakehouse:read", "ingest:read", "ingest:write"]
    async with user_session(gateway, TENANT, scopes, default_timeout_s=120) as mcp:
        upload = await mcp.call_tool("ingest__ingest_upload", {
            "name": "rahmenvertrag.md", "content_base64": base64.b64encode(DOCUMENT.encode()).decode()})
        assert not upload.is_error, upload.content
        assert upload.structured_content["ok"] == 1, upload.structured_content

        user = ScriptedUser()
        events = await run(no_model_agent(mcp, user), "Wann erfolgt die Lieferung der Schrauben M8?")

    notice = events[0]
    assert isinstance(notice, Notice) and notice.kind == "no_model" and "No language model" in notice.message
    started = [e for e in events if isinstance(e, ToolCallStarted)]
    assert [(s.tool, s.arguments["query"]) for s in started] == [
        ("lakehouse__search", "Wann erfolgt die Lieferung der Schrauben M8?")]
    assert [f.status for f in events if isinstance(f, ToolCallFinished)] == ["ok"]
    assert not [e for e in events if isinstance(e, ApprovalNeeded)] and not user.asked  # a read-only tool

    found = [e for e in events if isinstance(e, CitationFound)]
    assert found and all(e.label == "retrieved passage" for e in found)
    best = found[0].citation
    assert best.number == 1 and best.document_id and best.title and best.tool == "lakehouse__search"
    assert "14 Werktagen" in best.text and best.score is not None
    assert best.source == "rahmenvertrag.md" and best.title == "Rahmenvertrag Schraubenlieferung"
    assert best.section == "Rahmenvertrag Schraubenlieferung > Lieferfristen" and best.location == best.section
    assert best.char_start is not None and best.char_end is not None and best.char_end > best.char_start

    done = events[-1]
    assert isinstance(done, AnswerComplete)
    assert done.mode == "retrieval" and done.stop_reason == "no_model" and not done.partial
    assert done.text.startswith("No language model is configured") and "not a generated answer" in done.text
    assert "Retrieved passages" in done.text and "[1]" in done.text and "14 Werktagen" in done.text
    assert [c.document_id for c in done.citations] == [e.citation.document_id for e in found]
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == done.text
    assert [type(m) for m in done.messages] == [UserMessage, AssistantMessage]
    assert done.to_dict()["citations"][0]["text"] == best.text  # JSON-ready for the web page


async def test_without_a_model_and_without_search_the_host_says_so_plainly(gateway: Mesh):
    async with user_session(gateway, TENANT, ["ingest:read"]) as mcp:  # no lakehouse scope: no search tool
        events = await run(no_model_agent(mcp, ScriptedUser()), "Wann kommt die Lieferung?")
    assert not [e for e in events if isinstance(e, ToolCallStarted)]
    done = events[-1]
    assert isinstance(done, AnswerComplete) and done.mode == "retrieval" and not done.citations
    assert "No language model is configured" in done.text and "lakehouse__search" in done.text


async def test_with_a_model_the_answer_cites_what_the_real_lakehouse_found(gateway: Mesh, server: Any) -> None:
    """A model (the fake Anthropic server) asks for lakehouse__search; the real lakehouse answers
    through the gateway; the model's answer comes with citations of the retrieved passages."""
    from tests.host.test_agent_loop import answer, anthropic, tool_results, tool_use

    scopes = ["lakehouse:read", "ingest:read", "ingest:write"]
    async with user_session(gateway, TENANT, scopes, default_timeout_s=120) as mcp:
        upload = await mcp.call_tool("ingest__ingest_upload", {
            "name": "lieferung.md", "content_base64": base64.b64encode(DOCUMENT.encode()).decode()})
        assert not upload.is_error, upload.content
        server.script(tool_use(("s1", "lakehouse__search", {"query": "Lieferfrist Sechskantschrauben M8"})),
                      answer("Die Lieferung erfolgt innerhalb von 14 Werktagen [1]."))
        agent = Agent(anthropic(server), mcp, ApprovalPolicy(InMemoryApprovalStore(), TENANT, "user-1"),
                      ScriptedUser())
        events = await run(agent, "Wie lange dauert die Lieferung der Schrauben M8?")
    finished = [e for e in events if isinstance(e, ToolCallFinished)]
    assert [(f.tool, f.status) for f in finished] == [("lakehouse__search", "ok")]
    sent_back = tool_results(server.requests[1])["s1"]  # the search result went back to the model
    assert "14 Werktagen" in json.dumps(sent_back, ensure_ascii=False)
    found = [e for e in events if isinstance(e, CitationFound)]
    assert found and found[0].label == "source" and "14 Werktagen" in found[0].citation.text
    done = events[-1]
    assert isinstance(done, AnswerComplete) and done.mode == "generated" and not done.partial
    assert done.text == "Die Lieferung erfolgt innerhalb von 14 Werktagen [1]."
    assert done.citations and done.citations[0].document_id == found[0].citation.document_id
