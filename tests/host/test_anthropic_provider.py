"""The Anthropic adapter against a local fake that speaks the Messages API's SSE format."""

from __future__ import annotations

import asyncio
import json
import time
import traceback
from collections.abc import AsyncIterator
from typing import Any

import pytest

from kontor.host.providers import (
    AssistantMessage,
    AuthenticationFailed,
    BadRequest,
    Finish,
    Overloaded,
    ProviderConnectionError,
    ProviderProtocolError,
    ProviderTimeout,
    RateLimited,
    RetryPolicy,
    ServerError,
    SystemMessage,
    TextDelta,
    ToolCall,
    ToolCallComplete,
    ToolCallDelta,
    ToolCallStarted,
    ToolDefinition,
    ToolResultMessage,
    Usage,
    UserMessage,
    collect,
)
from kontor.host.providers.anthropic_provider import AnthropicProvider
from tests.host.fakes import (
    FakeServer,
    anthropic_error_body,
    anthropic_event,
    anthropic_turn,
    fragments,
    free_port,
    json_reply,
    mid_character_cuts,
    sse_reply,
)

KEY = "sk-ant-test-0123456789"
SEARCH = ToolDefinition(
    name="lakehouse__search",
    description="Search the tenant's documents.",
    input_schema={"type": "object", "properties": {"query": {"type": "string"}, "k": {"type": "integer"}},
                  "required": ["query"]},
)
ASK = [SystemMessage(text="Answer in German."), UserMessage(text="Wie groß ist die Straße?")]


@pytest.fixture
async def provider(server: FakeServer) -> AsyncIterator[AnthropicProvider]:
    p = AnthropicProvider(api_key=KEY, model="claude-test", base_url=server.url, max_tokens=512,
                          read_timeout_s=5, retry=RetryPolicy(max_retries=0))
    yield p
    await p.aclose()


async def events_of(provider: AnthropicProvider, messages: Any = ASK, tools: Any = (SEARCH,), **kw: Any) -> list[Any]:
    return [e async for e in provider.stream(messages, tools, **kw)]


async def test_text_streams_in_order_with_usage_and_request_shape(server: FakeServer, provider: AnthropicProvider):
    server.script(sse_reply(anthropic_turn(texts=["Die ", "Straße ", "ist lang."], input_tokens=30,
                                           output_tokens=7)))
    events = await events_of(provider, temperature=0.2, stop_sequences=["END"])

    assert events == [TextDelta("Die "), TextDelta("Straße "), TextDelta("ist lang."),
                      Usage(input_tokens=30, output_tokens=7), Finish(reason="end_turn", raw_reason="end_turn")]
    [request] = server.requests
    assert (request.method, request.path) == ("POST", "/v1/messages")
    assert KEY in request.headers.get("x-api-key", "") + request.headers.get("authorization", "")
    assert request.headers["anthropic-version"]
    assert request.json == {
        "model": "claude-test", "max_tokens": 512, "stream": True, "stop_sequences": ["END"],  # no temperature
        "system": "Answer in German.",  # top level, not a message
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Wie groß ist die Straße?"}]}],
        "tools": [{"name": "lakehouse__search", "description": "Search the tenant's documents.",
                   "input_schema": SEARCH.input_schema}],
    }


async def test_tool_arguments_split_inside_escapes_and_multibyte_characters(server: FakeServer,
                                                                            provider: AnthropicProvider):
    # The JSON text of the arguments, with \u escapes, cut every 3 characters: the cuts fall inside
    # "\u00f6" and friends. The text deltas carry raw UTF-8 and the HTTP body goes out in pieces
    # that end in the middle of every multibyte character.
    raw = '{"query": "Gr\\u00f6\\u00dfe der Stra\\u00dfe \\u2013 \\ud83d\\ude80", "k": 5}'
    parts = fragments(raw, 3)
    assert any(p.endswith(("\\u", "\\u0", "\\u00")) for p in parts)
    turn = anthropic_turn(texts=["Ich suche nach „Größe“ 🚀"], tools=[("toolu_01", "lakehouse__search", parts)],
                          stop_reason="tool_use")
    cuts = mid_character_cuts(b"".join(turn))
    server.script(sse_reply(turn, cut_at=cuts, delay=0.0005))
    events = await events_of(provider)

    started = [e for e in events if isinstance(e, ToolCallStarted)]
    deltas = [e for e in events if isinstance(e, ToolCallDelta)]
    [complete] = [e for e in events if isinstance(e, ToolCallComplete)]
    assert started == [ToolCallStarted(id="toolu_01", name="lakehouse__search", index=0)]
    assert "".join(d.fragment for d in deltas) == raw and len(deltas) == len(parts)
    assert complete.arguments == {"query": "Größe der Straße – 🚀", "k": 5}
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "Ich suche nach „Größe“ 🚀"
    assert events[-1] == Finish(reason="tool_use", raw_reason="tool_use")
    assert server.pieces_sent == len(cuts) + 1 > 20  # the body really went out in small pieces


async def test_two_tool_calls_and_one_without_arguments_in_one_turn(server: FakeServer, provider: AnthropicProvider):
    server.script(sse_reply(anthropic_turn(
        texts=["Zwei Suchen."],
        tools=[("toolu_a", "lakehouse__search", ['{"query": ', '"ETIM"}']),
               ("toolu_b", "lakehouse__search", ['{"query": "CTAX", ', '"k": 2}']),
               ("toolu_c", "etim__version", [])],
        stop_reason="tool_use")))
    result = await collect(provider.stream(ASK, [SEARCH]))

    assert [(c.id, c.index, c.arguments) for c in result.tool_calls] == [
        ("toolu_a", 0, {"query": "ETIM"}), ("toolu_b", 1, {"query": "CTAX", "k": 2}), ("toolu_c", 2, {})]
    assert result.text == "Zwei Suchen."
    assert result.finish == Finish(reason="tool_use", raw_reason="tool_use")
    assert result.to_message() == AssistantMessage(text="Zwei Suchen.", tool_calls=(
        ToolCall(id="toolu_a", name="lakehouse__search", arguments={"query": "ETIM"}),
        ToolCall(id="toolu_b", name="lakehouse__search", arguments={"query": "CTAX", "k": 2}),
        ToolCall(id="toolu_c", name="etim__version", arguments={})))


async def test_invalid_json_arguments_give_a_clear_event_and_the_turn_goes_on(server: FakeServer,
                                                                               provider: AnthropicProvider):
    server.script(sse_reply(anthropic_turn(
        tools=[("toolu_bad", "lakehouse__search", ['{"query": "x",', ' "k": }']),
               ("toolu_list", "lakehouse__search", ["[1, 2]"]),
               ("toolu_ok", "lakehouse__search", ['{"query": "y"}'])],
        stop_reason="tool_use")))
    result = await collect(provider.stream(ASK, [SEARCH]))

    bad, not_object = result.invalid_tool_calls
    assert (bad.id, bad.raw_arguments) == ("toolu_bad", '{"query": "x", "k": }')
    assert "not valid JSON" in bad.error and "character" in bad.error
    assert "must be a JSON object" in not_object.error
    assert [c.id for c in result.tool_calls] == ["toolu_ok"]
    assert result.finish is not None and result.finish.reason == "tool_use"
    # the history keeps all three calls in order; the invalid ones with empty arguments
    assert [(c.id, c.arguments) for c in result.to_message().tool_calls] == [
        ("toolu_bad", {}), ("toolu_list", {}), ("toolu_ok", {"query": "y"})]


async def test_history_with_tool_results_is_serialised_in_the_right_place(server: FakeServer,
                                                                          provider: AnthropicProvider):
    history = [
        SystemMessage(text="Du bist Kontor."),
        UserMessage(text="Suche ETIM und CTAX."),
        AssistantMessage(text="Ich suche.", tool_calls=(
            ToolCall(id="toolu_a", name="lakehouse__search", arguments={"query": "ETIM"}),
            ToolCall(id="toolu_b", name="lakehouse__search", arguments={"query": "CTAX"}))),
        ToolResultMessage(tool_call_id="toolu_a", content="3 Treffer", name="lakehouse__search"),
        ToolResultMessage(tool_call_id="toolu_b", content="Zeitüberschreitung", is_error=True),
        SystemMessage(text="Zitiere Quellen."),
        UserMessage(text="Und?"),
    ]
    server.script(sse_reply(anthropic_turn(texts=["Fertig."])))
    await events_of(provider, history)

    body = server.requests[0].json
    assert body["system"] == "Du bist Kontor.\n\nZitiere Quellen."
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Suche ETIM und CTAX."}]},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Ich suche."},
            {"type": "tool_use", "id": "toolu_a", "name": "lakehouse__search", "input": {"query": "ETIM"}},
            {"type": "tool_use", "id": "toolu_b", "name": "lakehouse__search", "input": {"query": "CTAX"}}]},
        {"role": "user", "content": [  # all results of that turn open the next user turn
            {"type": "tool_result", "tool_use_id": "toolu_a", "content": "3 Treffer"},
            {"type": "tool_result", "tool_use_id": "toolu_b", "content": "Zeitüberschreitung", "is_error": True},
            {"type": "text", "text": "Und?"}]},
    ]


async def test_rate_limit_surfaces_with_the_servers_delay(server: FakeServer, provider: AnthropicProvider):
    server.script(json_reply(429, anthropic_error_body("rate_limit_error", "Number of request tokens exceeded"),
                             {"retry-after": "7"}))
    with pytest.raises(RateLimited) as caught:
        await events_of(provider)
    assert caught.value.retry_after == 7
    assert caught.value.status_code == 429
    assert "Number of request tokens exceeded" in str(caught.value) and "retry after 7 s" in str(caught.value)
    assert len(server.requests) == 1  # no hidden SDK retry


async def test_short_rate_limit_is_retried_long_one_is_not_waited_out(server: FakeServer):
    provider = AnthropicProvider(api_key=KEY, model="claude-test", base_url=server.url,
                                 retry=RetryPolicy(max_retries=2, max_wait_s=5))
    try:
        server.script(json_reply(429, anthropic_error_body("rate_limit_error", "slow down"), {"retry-after-ms": "50"}),
                      sse_reply(anthropic_turn(texts=["ok"])))
        result = await collect(provider.stream(ASK))
        assert result.text == "ok" and len(server.requests) == 2

        server.script(json_reply(429, anthropic_error_body("rate_limit_error", "slow down"), {"retry-after": "30"}))
        started = time.monotonic()
        with pytest.raises(RateLimited) as caught:
            await collect(provider.stream(ASK))
        assert caught.value.retry_after == 30 and time.monotonic() - started < 2
        assert len(server.requests) == 3
    finally:
        await provider.aclose()


async def test_authentication_failure_never_echoes_the_key(server: FakeServer, provider: AnthropicProvider):
    server.script(json_reply(401, anthropic_error_body("authentication_error", f"invalid x-api-key {KEY}")))
    with pytest.raises(AuthenticationFailed) as caught:
        await events_of(provider)
    assert "invalid x-api-key ***" in str(caught.value)
    assert KEY not in "".join(traceback.format_exception(caught.value))  # nor in a logged traceback
    assert KEY not in repr(provider)


async def test_bad_request_carries_the_servers_message(server: FakeServer, provider: AnthropicProvider):
    message = "messages.1.content.0: tool_use ids must be unique"
    server.script(json_reply(400, anthropic_error_body("invalid_request_error", message)))
    with pytest.raises(BadRequest) as caught:
        await events_of(provider)
    assert caught.value.server_message == message
    assert message in str(caught.value) and "HTTP 400" in str(caught.value)


@pytest.mark.parametrize(("status", "kind", "error"), [
    (500, "api_error", ServerError), (529, "overloaded_error", Overloaded), (503, "api_error", Overloaded)])
async def test_server_errors(server: FakeServer, provider: AnthropicProvider, status: int, kind: str, error: type):
    server.script(json_reply(status, anthropic_error_body(kind, "Internal trouble")))
    with pytest.raises(error) as caught:
        await events_of(provider)
    assert caught.value.status_code == status and "Internal trouble" in str(caught.value)
    assert caught.value.retryable


async def test_connection_refused():
    url = f"http://127.0.0.1:{free_port()}"
    provider = AnthropicProvider(api_key=KEY, model="claude-test", base_url=url, retry=RetryPolicy(max_retries=0))
    try:
        with pytest.raises(ProviderConnectionError) as caught:
            await events_of(provider)
        assert url in str(caught.value) and "refused" in str(caught.value).lower()
    finally:
        await provider.aclose()


async def test_error_event_mid_stream_after_some_text(server: FakeServer, provider: AnthropicProvider):
    turn = anthropic_turn(texts=["Teil", "weise"], stop_reason=None, stop=False)
    turn = turn[:-1]  # the text block never closes
    turn.append(anthropic_event("error", anthropic_error_body("overloaded_error", "Overloaded")))
    server.script(sse_reply(turn))
    seen: list[Any] = []
    with pytest.raises(Overloaded) as caught:
        async for event in provider.stream(ASK):
            seen.append(event)
    assert seen == [TextDelta("Teil"), TextDelta("weise")]  # the partial answer reached the caller first
    assert "mid-stream" in str(caught.value) and "Overloaded" in str(caught.value)


async def test_stream_that_ends_without_a_stop_reason_is_an_error(server: FakeServer, provider: AnthropicProvider):
    server.script(sse_reply(anthropic_turn(texts=["abge"], stop_reason=None, stop=False)))
    with pytest.raises(ProviderProtocolError, match="before the model finished"):
        await events_of(provider)


async def test_connection_dropped_mid_stream(server: FakeServer, provider: AnthropicProvider):
    server.script(sse_reply(anthropic_turn(texts=["abge"], stop_reason=None, stop=False), abort=True))
    with pytest.raises(ProviderConnectionError):
        await events_of(provider)


async def test_read_timeout_mid_stream(server: FakeServer):
    provider = AnthropicProvider(api_key=KEY, model="claude-test", base_url=server.url, read_timeout_s=0.3,
                                 retry=RetryPolicy(max_retries=0))
    server.script(sse_reply(anthropic_turn(texts=["Hallo"], stop_reason=None, stop=False), hang=True))
    try:
        with pytest.raises(ProviderTimeout, match="did not answer in time"):
            await events_of(provider)
    finally:
        await provider.aclose()


def _endless_turn() -> list[bytes]:
    return anthropic_turn(texts=["eins ", "zwei "], stop_reason=None, stop=False)[:-1]


async def test_closing_the_iterator_closes_the_http_response(server: FakeServer, provider: AnthropicProvider):
    server.script(sse_reply(_endless_turn(), hang=True))
    stream = provider.stream(ASK)
    assert await anext(stream) == TextDelta("eins ")
    await stream.aclose()
    await asyncio.wait_for(server.disconnected.wait(), 2)


async def test_cancel_event_ends_with_a_cancelled_finish_and_closes_the_response(server: FakeServer,
                                                                                   provider: AnthropicProvider):
    server.script(sse_reply(_endless_turn(), hang=True))
    cancel = asyncio.Event()
    events = []
    async for event in provider.stream(ASK, cancel=cancel):
        events.append(event)
        if len(events) == 2:
            asyncio.get_running_loop().call_later(0.05, cancel.set)  # while the read is blocked
    assert events == [TextDelta("eins "), TextDelta("zwei "),
                      Finish(reason="stop", raw_reason="cancelled", cancelled=True)]
    await asyncio.wait_for(server.disconnected.wait(), 2)


async def test_cancelling_the_consuming_task_closes_the_response(server: FakeServer, provider: AnthropicProvider):
    server.script(sse_reply(_endless_turn(), hang=True))
    got_text = asyncio.Event()

    async def consume() -> None:
        async for _ in provider.stream(ASK):
            got_text.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(got_text.wait(), 2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(server.disconnected.wait(), 2)


async def test_model_override_and_ping_only_stream_parts(server: FakeServer, provider: AnthropicProvider):
    server.script(sse_reply(anthropic_turn(texts=["x"], stop_reason="max_tokens")))
    events = await events_of(provider, model="claude-other", max_tokens=3)
    assert events[-1] == Finish(reason="max_tokens", raw_reason="max_tokens")
    body = server.requests[0].json
    assert (body["model"], body["max_tokens"]) == ("claude-other", 3)
    assert "tools" in body and json.dumps(body)  # round-trips
