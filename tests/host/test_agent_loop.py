"""The agent loop end to end: fake model servers (real Anthropic / OpenAI wire formats) and the
real gateway in front of the fixture upstream (tests/gateway/upstream_fixture.py), with a
recording proxy between the gateway and the upstream to see what really reached the upstream."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx2
import mcp_types as types
import pytest
from pydantic import SecretStr

from kontor.host.agent import (
    Agent,
    AgentConfig,
    AnswerComplete,
    ApprovalDecided,
    ApprovalNeeded,
    ElicitationAnswer,
    Notice,
    TextDelta,
    ToolCallFinished,
    ToolCallStarted,
    ToolProgress,
    Usage,
)
from kontor.host.approvals import ApprovalPolicy, InMemoryApprovalStore
from kontor.host.mcp_session import GatewayAuth, GatewayAuthError, GatewayOriginError, McpSession
from kontor.host.providers import (
    AssistantMessage,
    ModelSettings,
    Provider,
    RetryPolicy,
    ToolResultMessage,
    UserMessage,
    provider_from_settings,
)
from kontor.host.providers.anthropic_provider import AnthropicProvider
from tests.gateway.mesh import Mesh, mesh
from tests.host.conftest import RecordingProxy, ScriptedUser, user_session
from tests.host.fakes import FakeServer, anthropic_turn, openai_turn, sse_reply

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

TENANT = "acme"
SCOPES = ["fix:read", "fix:write"]


@dataclass
class Env:
    gw: Mesh
    proxy: RecordingProxy


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("agent-mesh")
    with mesh(root, KONTOR_GATEWAY_TOOL_CALL_TIMEOUT_S="60") as m:
        upstream = m.start_upstream("fix")
        proxy = RecordingProxy(urlsplit(upstream).port or 0).start()
        try:
            m.run(m.setup_tenant(TENANT, {"fix": proxy.url()}))
            m.start_gateway()
            yield Env(m, proxy)
        finally:
            proxy.stop()


def anthropic(server: FakeServer) -> AnthropicProvider:
    return AnthropicProvider(api_key=SecretStr("sk-ant-test"), model="claude-test", base_url=server.url,
                             max_tokens=512, read_timeout_s=10, retry=RetryPolicy(max_retries=0))


def tool_use(*calls: tuple[str, str, dict[str, Any] | str], **kw: Any) -> Any:
    """An Anthropic turn with tool calls (arguments as a dict, or raw text for broken JSON)."""
    tools = [(cid, name, [args if isinstance(args, str) else json.dumps(args)]) for cid, name, args in calls]
    return sse_reply(anthropic_turn(tools=tools, stop_reason="tool_use", **kw))


def answer(*texts: str, **kw: Any) -> Any:
    return sse_reply(anthropic_turn(texts=list(texts), **kw))


def tool_results(request: Any) -> dict[str, dict[str, Any]]:
    """The tool_result blocks of an Anthropic request, by tool_use id."""
    out = {}
    for message in request.json["messages"]:
        if message["role"] == "user" and isinstance(message["content"], list):
            for block in message["content"]:
                if block.get("type") == "tool_result":
                    out[block["tool_use_id"]] = block
    return out


def result_text(block: dict[str, Any]) -> str:
    content = block["content"]
    return content if isinstance(content, str) else "".join(part.get("text", "") for part in content)


async def run(agent: Agent, question: str, *, history: Any = (), stop: asyncio.Event | None = None) -> list[Any]:
    return [event async for event in agent.run(list(history), question, stop=stop)]


def of(events: list[Any], kind: type) -> list[Any]:
    return [e for e in events if isinstance(e, kind)]


def make_agent(provider: Provider | None, session: McpSession, user: ScriptedUser, *,
               store: InMemoryApprovalStore | None = None, **config: Any) -> Agent:
    policy = ApprovalPolicy(store or InMemoryApprovalStore(), TENANT, "user-1")
    return Agent(provider, session, policy, user, AgentConfig(**config))


# -- the loop ----------------------------------------------------------------------------------


async def test_two_tool_calls_of_one_step_run_concurrently_then_the_model_answers(env: Env, server: FakeServer):
    """OpenAI-compatible wire format (vLLM): one step with two slow calls, progress from both."""
    server.script(
        sse_reply(openai_turn(tools=[("c1", "fix__slow", ['{"steps": 4, ', '"delay_s": 0.25}']),
                                     ("c2", "fix__slow", ['{"steps": 4, "delay_s": 0.25}'])],
                              finish_reason="tool_calls",
                              usage={"prompt_tokens": 50, "completion_tokens": 20, "total_tokens": 70})),
        sse_reply(openai_turn(texts=["Both ", "are done."],
                              usage={"prompt_tokens": 90, "completion_tokens": 5, "total_tokens": 95})))
    provider = provider_from_settings(ModelSettings(provider="openai", base_url=f"{server.url}/v1", model="m",
                                                    api_key=SecretStr("k"), max_retries=0))
    assert provider is not None
    try:
        async with user_session(env.gw, TENANT, SCOPES) as mcp:
            events = await run(make_agent(provider, mcp, ScriptedUser()), "Run both jobs")
    finally:
        await provider.aclose()

    kinds = [type(e).__name__ for e in events]
    started = [kinds.index("ToolCallStarted"), len(kinds) - 1 - kinds[::-1].index("ToolCallStarted")]
    assert max(started) < kinds.index("ToolCallFinished"), kinds  # both started before either finished
    finished = of(events, ToolCallFinished)
    assert {(f.call_id, f.status) for f in finished} == {("c1", "ok"), ("c2", "ok")}
    assert all(0.9 < f.duration_s < 3 for f in finished)
    progress = of(events, ToolProgress)
    assert {p.call_id for p in progress} == {"c1", "c2"} and any(p.total == 4 for p in progress)
    # concurrent: the two ~1 s calls overlap (the first finished after the second started)
    first_finish = kinds.index("ToolCallFinished")
    assert first_finish > max(started)

    second = server.requests[1].json["messages"]
    results = {m["tool_call_id"]: m["content"] for m in second if m["role"] == "tool"}
    assert results == {"c1": "done after 4 steps", "c2": "done after 4 steps"}
    assert [t["function"]["name"] for t in server.requests[0].json["tools"]].count("fix__slow") == 1

    done = events[-1]
    assert isinstance(done, AnswerComplete) and not done.partial and done.stop_reason == "end_turn"
    assert done.text == "Both are done." and "".join(e.text for e in of(events, TextDelta)) == done.text
    assert (done.input_tokens, done.output_tokens, done.steps) == (140, 25, 2)
    assert [type(m) for m in done.messages] == [UserMessage, AssistantMessage, ToolResultMessage, ToolResultMessage,
                                                AssistantMessage]
    assert of(events, Usage)[-1].turn_input_tokens == 140
    json.dumps([e.to_dict() for e in events])  # every event is JSON-ready for the web layer


async def test_a_write_tool_waits_for_approval_and_always_is_remembered(env: Env, server: FakeServer):
    note = f"note-{uuid.uuid4().hex}"
    server.script(tool_use(("w1", "fix__write_note", {"text": note})), answer("Stored."),
                  tool_use(("w2", "fix__write_note", {"text": note + "-again"})), answer("Stored again."),
                  tool_use(("w3", "fix__write_note", {"text": note + "-third"})), answer("Third."))
    store = InMemoryApprovalStore()
    user = ScriptedUser(approvals=["always", "allow_once"])
    provider = anthropic(server)
    async with user_session(env.gw, TENANT, SCOPES) as mcp:
        agent = make_agent(provider, mcp, user, store=store)
        events = await run(agent, "Store a note")
        kinds = [type(e).__name__ for e in events]
        assert kinds.index("ToolCallStarted") < kinds.index("ApprovalNeeded") < kinds.index("ApprovalDecided") \
            < kinds.index("ToolCallFinished")
        needed = of(events, ApprovalNeeded)[0]
        assert (needed.call_id, needed.tool, needed.arguments) == ("w1", "fix__write_note", {"text": note})
        assert needed.destructive and needed.can_remember
        assert of(events, ApprovalDecided)[0].decision == "always"
        assert of(events, ToolCallFinished)[0].status == "ok"
        assert result_text(tool_results(server.requests[1])["w1"]) == f"stored: {note}"
        assert env.proxy.wait_for(note.encode())  # it reached the upstream; the gateway audited the decision
        call = next(m["params"] for m in env.proxy.messages()
                    if m.get("method") == "tools/call" and m["params"].get("arguments") == {"text": note})
        assert "io.kontor/approval" not in (call.get("_meta") or {})  # the host's bookkeeping stays at the gateway
        assert await store.list_user_decisions(TENANT, "user-1") == {"fix__write_note": "always"}

        # "always": the next call runs without asking
        events = await run(agent, "Again")
        assert not of(events, ApprovalNeeded) and of(events, ToolCallFinished)[0].status == "ok"
        assert len(user.asked) == 1

        # the admin sets the tool to always-ask: asked again, and "always" cannot be remembered now
        await store.set_admin_rule(TENANT, "fix__write_note", "always_ask")
        events = await run(agent, "Third")
        needed = of(events, ApprovalNeeded)
        assert len(needed) == 1 and not needed[0].can_remember and "administrator" in needed[0].reason
        assert of(events, ToolCallFinished)[0].status == "ok"
    await provider.aclose()


async def test_a_denied_call_goes_back_as_an_error_and_never_reaches_the_upstream(env: Env, server: FakeServer):
    note = f"denied-{uuid.uuid4().hex}"
    server.script(tool_use(("d1", "fix__write_note", {"text": note}), ("e1", "fix__echo", {"text": "read"})),
                  answer("Okay, I did not store it."))
    user = ScriptedUser(approvals=["deny"])
    provider = anthropic(server)
    async with user_session(env.gw, TENANT, SCOPES) as mcp:
        events = await run(make_agent(provider, mcp, user), "Store a note")
    await provider.aclose()
    finished = {f.call_id: f for f in of(events, ToolCallFinished)}
    assert finished["d1"].status == "denied" and finished["e1"].status == "ok"  # the read-only one ran unasked
    assert [a[0] for a in user.asked] == ["fix__write_note"]
    results = tool_results(server.requests[1])
    assert results["d1"]["is_error"] is True and "the user denied this call" in result_text(results["d1"]).lower()
    assert result_text(results["e1"]) == "read" and "is_error" not in results["e1"]
    await asyncio.sleep(0.3)
    calls = [m["params"] for m in env.proxy.messages() if m.get("method") == "tools/call"]
    assert {"name": "echo", "arguments": {"text": "read"}}.items() <= next(
        c for c in calls if c.get("arguments") == {"text": "read"}).items()  # the proxy sees what the upstream gets
    assert note.encode() not in env.proxy.sent  # ... and the upstream never saw the denied call
    assert events[-1].text == "Okay, I did not store it." and not events[-1].partial


async def test_a_blocked_tool_is_hidden_from_the_model_and_refused_if_called(env: Env, server: FakeServer):
    note = f"blocked-{uuid.uuid4().hex}"
    store = InMemoryApprovalStore()
    await store.set_admin_rule(TENANT, "fix__write_note", "blocked")
    server.script(tool_use(("b1", "fix__write_note", {"text": note})), answer("Not allowed."))
    user = ScriptedUser(approvals=["allow_once"])
    provider = anthropic(server)
    async with user_session(env.gw, TENANT, SCOPES) as mcp:
        events = await run(make_agent(provider, mcp, user, store=store), "Store")
    await provider.aclose()
    offered = {t["name"] for t in server.requests[0].json["tools"]}
    assert "fix__echo" in offered and "fix__write_note" not in offered
    assert of(events, ToolCallFinished)[0].status == "denied" and not user.asked
    assert "blocked" in result_text(tool_results(server.requests[1])["b1"])
    assert note.encode() not in env.proxy.sent


async def test_elicitation_is_answered_with_the_users_form(env: Env, server: FakeServer):
    server.script(tool_use(("f1", "fix__confirm", {})), answer("Confirmed."))
    user = ScriptedUser(form=ElicitationAnswer.accept({"ok": True}))
    provider = anthropic(server)
    async with user_session(env.gw, TENANT, SCOPES) as mcp:
        events = await run(make_agent(provider, mcp, user), "Go ahead?")
    await provider.aclose()
    assert user.forms == [("Proceed?", {"type": "object", "properties": {"ok": {"type": "boolean"}},
                                        "required": ["ok"]})]
    assert result_text(tool_results(server.requests[1])["f1"]) == "user answered accept {'ok': True}"
    assert events[-1].text == "Confirmed."


async def test_sampling_is_answered_by_the_tenants_model_after_approval(env: Env, server: FakeServer):
    server.script(tool_use(("s1", "fix__ask_model", {"question": "Capital of France?"}), input_tokens=10,
                           output_tokens=5),
                  answer("Paris", input_tokens=7, output_tokens=2),  # the sampling request
                  answer("The server's model said Paris.", input_tokens=30, output_tokens=6))
    user = ScriptedUser()
    provider = anthropic(server)
    async with user_session(env.gw, TENANT, SCOPES) as mcp:
        events = await run(make_agent(provider, mcp, user), "Ask the server")

        # declined: the server gets a clear refusal, which the tool reports
        server.script(tool_use(("s2", "fix__ask_model", {"question": "again"})), answer("It was refused."))
        declined = await run(make_agent(provider, mcp, ScriptedUser(allow_sampling=False)), "Again")
    await provider.aclose()
    assert [r.messages for r in user.sampling] == [(("user", "Capital of France?"),)]
    sampling_request = server.requests[1].json
    assert sampling_request["messages"] == [{"role": "user", "content": "Capital of France?"}] or \
        sampling_request["messages"][0]["content"][0]["text"] == "Capital of France?"
    assert "tools" not in sampling_request and sampling_request["max_tokens"] == 20
    assert result_text(tool_results(server.requests[2])["s1"]) == "model said: Paris"
    usage = of(events, Usage)
    assert [u.source for u in usage] == ["model", "sampling", "model"]
    assert events[-1].input_tokens == 47 and events[-1].output_tokens == 13
    refused = of(declined, ToolCallFinished)[0]
    assert refused.status == "error" and "declined" in (refused.error or "")


async def test_stop_mid_tool_cancels_upstream_and_keeps_the_partial_answer(env: Env, server: FakeServer):
    server.script(tool_use(("h1", "fix__hang", {"seconds": 121}), texts=["Waiting for the slow system…"]))
    stop = asyncio.Event()
    provider = anthropic(server)
    async with user_session(env.gw, TENANT, SCOPES) as mcp:
        agent = make_agent(provider, mcp, ScriptedUser())
        events: list[Any] = []
        stopped_at = 0.0
        async for event in agent.run([], "Call the slow system", stop=stop):
            events.append(event)
            if isinstance(event, ToolCallStarted):
                await asyncio.sleep(0.5)
                stopped_at = time.monotonic()
                stop.set()
        took = time.monotonic() - stopped_at
    await provider.aclose()
    assert took < 2.5, took
    finished = of(events, ToolCallFinished)
    assert [(f.call_id, f.status) for f in finished] == [("h1", "cancelled")]
    done = events[-1]
    assert isinstance(done, AnswerComplete) and done.partial and done.stop_reason == "cancelled"
    assert done.text == "Waiting for the slow system…"
    assert isinstance(done.messages[-1], ToolResultMessage) and done.messages[-1].is_error
    assert of(events, Notice)[-1].kind == "cancelled"
    assert len(server.requests) == 1  # the model was not asked again
    assert env.proxy.cancelled("tools/call", lambda p: p == {**p, "name": "hang", "arguments": {"seconds": 121}}), \
        "the upstream got no notifications/cancelled for the call"


async def test_stop_while_the_model_streams_closes_the_stream(env: Env, server: FakeServer):
    chunks = anthropic_turn(texts=["Die Antwort ", "lautet"], stop=False, stop_reason=None)
    server.script(sse_reply(chunks, hang=True))
    stop = asyncio.Event()
    provider = anthropic(server)
    async with user_session(env.gw, TENANT, SCOPES) as mcp:
        events = []
        async for event in make_agent(provider, mcp, ScriptedUser()).run([], "Frage", stop=stop):
            events.append(event)
            if isinstance(event, TextDelta) and event.text == "lautet":
                stop.set()
    await provider.aclose()
    await asyncio.wait_for(server.disconnected.wait(), 5)
    done = events[-1]
    assert done.partial and done.stop_reason == "cancelled" and done.text == "Die Antwort lautet"
    assert isinstance(done.messages[-1], AssistantMessage) and done.messages[-1].text == "Die Antwort lautet"


async def test_a_tool_that_exceeds_its_timeout_is_cancelled_and_reported(env: Env, server: FakeServer):
    server.script(tool_use(("t1", "fix__hang", {"seconds": 122})), answer("It timed out."))
    provider = anthropic(server)
    async with user_session(env.gw, TENANT, SCOPES) as mcp:
        events = await run(make_agent(provider, mcp, ScriptedUser(), tool_timeouts={"fix__hang": 1.0}), "Hang")
    await provider.aclose()
    finished = of(events, ToolCallFinished)[0]
    assert finished.status == "timeout" and 0.9 < finished.duration_s < 2.5
    result = tool_results(server.requests[1])["t1"]
    assert result["is_error"] and "1 s" in result_text(result)
    assert events[-1].text == "It timed out." and not events[-1].partial
    assert env.proxy.cancelled("tools/call", lambda p: p.get("arguments") == {"seconds": 122})


async def test_the_step_limit_stops_a_model_that_keeps_calling_tools(env: Env, server: FakeServer):
    server.script(tool_use(("a", "fix__echo", {"text": "1"})), tool_use(("b", "fix__echo", {"text": "2"})),
                  tool_use(("c", "fix__echo", {"text": "3"})))
    provider = anthropic(server)
    async with user_session(env.gw, TENANT, SCOPES) as mcp:
        events = await run(make_agent(provider, mcp, ScriptedUser(), max_steps=2), "Loop")
    await provider.aclose()
    assert len(server.requests) == 2
    assert [f.call_id for f in of(events, ToolCallFinished)] == ["a"]  # the second step's call was not run
    done = events[-1]
    assert done.partial and done.stop_reason == "step_limit" and "2 steps" in (done.notice or "")
    last = done.messages[-1]
    assert isinstance(last, ToolResultMessage) and last.tool_call_id == "b" and last.is_error  # history stays valid


async def test_the_token_budget_stops_the_turn_with_a_clear_message(env: Env, server: FakeServer):
    # 60 + 30 = 90 of 100 used; the next call would take at least 90 more: not made.
    server.script(tool_use(("a", "fix__echo", {"text": "1"}), input_tokens=60, output_tokens=30),
                  answer("never sent"))
    provider = anthropic(server)
    async with user_session(env.gw, TENANT, SCOPES) as mcp:
        events = await run(make_agent(provider, mcp, ScriptedUser(), token_budget=100), "Budget")
        assert len(server.requests) == 1
        done = events[-1]
        assert done.partial and done.stop_reason == "token_budget"
        assert "90 tokens" in done.notice and "budget of 100" in done.notice
        assert of(events, Notice)[-1].kind == "token_budget"

        # A call that by itself uses the budget up: its tool calls are not run.
        server.replies.clear()
        server.script(tool_use(("b", "fix__echo", {"text": "2"}), input_tokens=70, output_tokens=40))
        events = await run(make_agent(provider, mcp, ScriptedUser(), token_budget=100), "Budget")
        assert not of(events, ToolCallFinished) and events[-1].stop_reason == "token_budget"
        assert events[-1].messages[-1].is_error
    await provider.aclose()


async def test_invalid_arguments_go_back_to_the_model_which_corrects_itself(env: Env, server: FakeServer):
    server.script(tool_use(("bad", "fix__echo", '{"text": "unterminated')),
                  tool_use(("good", "fix__echo", {"text": "fixed"})), answer("fixed"))
    provider = anthropic(server)
    async with user_session(env.gw, TENANT, SCOPES) as mcp:
        events = await run(make_agent(provider, mcp, ScriptedUser()), "Echo")
    await provider.aclose()
    statuses = [(f.call_id, f.status) for f in of(events, ToolCallFinished)]
    assert statuses == [("bad", "error"), ("good", "ok")]
    bad = tool_results(server.requests[1])["bad"]
    assert bad["is_error"] and "not valid JSON" in result_text(bad)
    assert result_text(tool_results(server.requests[2])["good"]) == "fixed"
    assert events[-1].text == "fixed" and not events[-1].partial


async def test_an_unknown_tool_and_a_failing_model_are_reported(env: Env, server: FakeServer):
    server.script(tool_use(("x", "fix__nope", {})), answer("ok"))
    provider = anthropic(server)
    async with user_session(env.gw, TENANT, SCOPES) as mcp:
        events = await run(make_agent(provider, mcp, ScriptedUser()), "Nope")
        assert of(events, ToolCallFinished)[0].status == "error"
        assert "no tool named" in result_text(tool_results(server.requests[1])["x"])

        server.replies.clear()  # the next request gets the fake's unscripted HTTP 500
        events = await run(make_agent(provider, mcp, ScriptedUser()), "Fail")
    await provider.aclose()
    assert events[-1].partial and events[-1].stop_reason == "error"
    assert any(e.type == "error" for e in events)


# -- the MCP session -----------------------------------------------------------------------


async def test_session_lists_all_tools_once_until_the_list_changes(env: Env):
    async with user_session(env.gw, TENANT, ["fix:read"]) as mcp:
        tools = {t.name: t for t in await mcp.list_tools()}
        assert "fix__echo" in tools and "fix__write_note" not in tools  # read scope: no writing tools
        assert tools["fix__echo"].read_only and not tools["fix__echo"].destructive
        await mcp.list_tools()
        assert mcp.tool_listings == 1
        await mcp._on_message(types.ToolListChangedNotification())
        await mcp.list_tools()
        assert mcp.tool_listings == 2 and mcp.tools_version == 1

        resources = await mcp.list_resources()
        assert any(r.uri.startswith("fixture://readme") or "readme" in r.uri for r in resources)
        readme = next(r.uri for r in resources if "readme" in r.uri)
        assert (await mcp.read_resource(readme)).contents[0].text == "fixture readme"
        prompts = await mcp.list_prompts()
        greet = next(p.name for p in prompts if p.name.endswith("greet"))
        prompt = await mcp.get_prompt(greet, {"name": "Ada"})
        assert "Ada" in prompt.messages[0].content.text
    async with user_session(env.gw, TENANT, SCOPES) as mcp:
        write = await mcp.tool("fix__write_note")
        assert write is not None and not write.read_only and write.destructive


async def test_the_token_is_only_ever_sent_to_the_gateway(env: Env):
    with pytest.raises(GatewayOriginError):
        McpSession("http://127.0.0.1:9/t/acme/mcp", "tok", gateway_origin=env.gw.origin)
    with pytest.raises(GatewayOriginError):
        McpSession(env.gw.url(TENANT).replace("http://", "ftp://"), "tok")

    seen: list[httpx2.Request] = []
    transport = httpx2.MockTransport(lambda request: seen.append(request) or httpx2.Response(200))
    async with httpx2.AsyncClient(auth=GatewayAuth(env.gw.origin, "secret-token"), transport=transport) as http:
        await http.get(f"{env.gw.origin}/t/acme/mcp")
        with pytest.raises(GatewayOriginError):
            await http.get("http://evil.example/steal")
        with pytest.raises(GatewayOriginError):  # same host, other port: another origin
            await http.get(env.gw.origin.rsplit(":", 1)[0] + ":1/")
    assert [r.headers.get("authorization") for r in seen] == ["Bearer secret-token"]

    # A token source (the web layer refreshes tokens) is asked before every request; a refused token is named.
    asked = []

    async def current_token() -> str:
        asked.append(1)
        return env.gw.token(TENANT, scopes=["fix:read"])

    async with McpSession(env.gw.url(TENANT), current_token, gateway_origin=env.gw.origin) as mcp:
        assert (await mcp.call_tool("fix__echo", {"text": "hi"})).content[0].text == "hi"
    assert len(asked) >= 3  # initialize, initialized, the call (and more)
    with pytest.raises(GatewayAuthError, match="rejected the user's access token"):
        async with McpSession(env.gw.url(TENANT), "not-a-token", gateway_origin=env.gw.origin):
            pass


async def test_time_the_user_takes_to_fill_in_a_form_does_not_count_against_the_tool_timeout(env: Env,
                                                                                           server: FakeServer):
    class SlowUser(ScriptedUser):
        async def elicit(self, message: str, schema: Any) -> ElicitationAnswer:
            await asyncio.sleep(1.2)
            return await super().elicit(message, schema)

    server.script(tool_use(("f1", "fix__confirm", {})), answer("Done."))
    provider = anthropic(server)
    async with user_session(env.gw, TENANT, SCOPES) as mcp:
        events = await run(make_agent(provider, mcp, SlowUser(form=ElicitationAnswer.decline()),
                                      tool_timeouts={"fix__confirm": 0.8}), "Confirm")
    await provider.aclose()
    finished = of(events, ToolCallFinished)[0]
    assert finished.status == "ok" and finished.duration_s > 1.2
    assert result_text(tool_results(server.requests[1])["f1"]).startswith("user answered decline")


async def test_sampling_without_a_model_is_refused_clearly(env: Env):
    from kontor.host.agent import _Turn

    async with user_session(env.gw, TENANT, SCOPES) as mcp:
        turn = _Turn(make_agent(None, mcp, ScriptedUser()), asyncio.Event())
        params = types.CreateMessageRequestParams(
            messages=[types.SamplingMessage(role="user", content=types.TextContent(type="text", text="hi"))],
            max_tokens=10)
        refused = await turn.on_sampling(params)
    assert isinstance(refused, types.ErrorData) and "No language model is configured" in refused.message


# -- pieces ------------------------------------------------------------------------------------


async def test_approval_rules():
    from kontor.host.mcp_session import ToolInfo

    store = InMemoryApprovalStore()
    policy = ApprovalPolicy(store, TENANT, "u")
    reader = ToolInfo("lake__search", read_only_hint=True)
    writer = ToolInfo("lake__write")  # no hints: needs approval
    destroyer = ToolInfo("lake__drop", read_only_hint=True, destructive_hint=True)  # contradictory: ask
    assert (await policy.check(reader)).action == "allow"
    assert (await policy.check(writer)).action == "ask"
    assert (await policy.check(destroyer)).action == "ask" and destroyer.destructive
    await policy.record(writer, "allow_once")
    assert (await policy.check(writer)).action == "ask"  # allow_once is not remembered
    await policy.record(writer, "always")
    assert (await policy.check(writer)).action == "allow"
    assert (await ApprovalPolicy(store, TENANT, "someone-else").check(writer)).action == "ask"  # per user
    await store.set_admin_rule(TENANT, "lake__*", "always_ask")
    verdict = await policy.check(reader)
    assert verdict.action == "ask" and not verdict.remember  # the server-wide admin rule wins
    await store.set_admin_rule(TENANT, "lake__search", "blocked")
    assert (await policy.check(reader)).action == "blocked"  # the exact name wins over the server rule
    assert await policy.blocked(["lake__search", "lake__write", "other__x"]) == {"lake__search"}
    await policy.forget("lake__write")
    assert await policy.remembered() == {}


def test_citations_from_structured_or_text_content():
    from kontor.host.citations import CitationIndex, extract_citations, render_for_model

    hit = {"text": "Passage", "score": 0.5, "chunk_id": "d1:0",
           "citation": {"document_id": "d1", "title": "Vertrag", "source": "v.pdf", "page": 3, "sheet": None,
                        "section": "§ 4", "char_start": 10, "char_end": 17}}
    structured = extract_citations("lakehouse__search", {"results": [hit, {"text": "no document"}]})
    from_text = extract_citations("lakehouse__search", None, [json.dumps({"results": [hit]})])
    assert structured == from_text and len(structured) == 1
    assert structured[0].location == "p. 3, § 4"
    assert extract_citations("x", {"result": "plain"}, ["not json"]) == []
    index = CitationIndex()
    numbered, new = index.add(structured)
    again, new_again = index.add(structured)
    assert numbered[0].number == again[0].number == 1 and len(new) == 1 and not new_again
    assert render_for_model(numbered).endswith("[1] Vertrag (p. 3, § 4) (score 0.5)\nPassage")
