"""The OpenAI-compatible adapter (vLLM, OpenAI, Ollama) against a local fake that speaks the
chat-completions ``chat.completion.chunk`` SSE format."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from kontor.host.providers import (
    AssistantMessage,
    AuthenticationFailed,
    BadRequest,
    Finish,
    ModelSettings,
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
    provider_from_settings,
)
from kontor.host.providers.openai_provider import OpenAIProvider
from tests.host.fakes import (
    OPENAI_DONE,
    FakeServer,
    fragments,
    free_port,
    json_reply,
    mid_character_cuts,
    openai_chunk,
    openai_data,
    openai_turn,
    sse_reply,
    tool_delta,
)

SEARCH = ToolDefinition(
    name="lakehouse__search",
    description="Search the tenant's documents.",
    input_schema={"type": "object", "properties": {"query": {"type": "string"}, "k": {"type": "integer"}},
                  "required": ["query"]},
)
ASK = [SystemMessage(text="Antworte auf Deutsch."), UserMessage(text="Was kostet Schraube M8?")]
USAGE = {"prompt_tokens": 31, "completion_tokens": 9, "total_tokens": 40}


def make(server: FakeServer, **kw: Any) -> OpenAIProvider:
    options: dict[str, Any] = {"model": "Qwen/Qwen2.5-7B-Instruct", "base_url": f"{server.url}/v1",
                               "max_tokens": 256, "read_timeout_s": 5, "retry": RetryPolicy(max_retries=0)}
    return OpenAIProvider(**{**options, **kw})


@pytest.fixture
async def provider(server: FakeServer) -> AsyncIterator[OpenAIProvider]:
    p = make(server)
    yield p
    await p.aclose()


async def events_of(provider: Any, messages: Any = ASK, tools: Any = (SEARCH,), **kw: Any) -> list[Any]:
    return [e async for e in provider.stream(messages, tools, **kw)]


async def test_text_streams_with_usage_and_request_shape(server: FakeServer, provider: OpenAIProvider,
                                                         monkeypatch: pytest.MonkeyPatch):
    # the host's own OpenAI environment must not leak into a tenant's request
    monkeypatch.setenv("OPENAI_API_KEY", "sk-host-environment-key")
    monkeypatch.setenv("OPENAI_ORG_ID", "org-host")
    monkeypatch.setenv("OPENAI_PROJECT_ID", "proj-host")
    await provider.aclose()
    provider = make(server)
    server.script(sse_reply(openai_turn(texts=["Die ", "Schraube ", "kostet 0,12 €."], usage=USAGE)))
    try:
        events = await events_of(provider, temperature=0.1, stop_sequences=["###"])
    finally:
        await provider.aclose()

    assert events == [TextDelta("Die "), TextDelta("Schraube "), TextDelta("kostet 0,12 €."),
                      Usage(input_tokens=31, output_tokens=9), Finish(reason="end_turn", raw_reason="stop")]
    [request] = server.requests
    assert (request.method, request.path) == ("POST", "/v1/chat/completions")
    assert request.headers["authorization"] == "Bearer EMPTY"  # no key configured: vLLM's convention
    assert "openai-organization" not in request.headers and "openai-project" not in request.headers
    assert request.json == {
        "model": "Qwen/Qwen2.5-7B-Instruct", "stream": True, "max_tokens": 256, "temperature": 0.1, "stop": ["###"],
        "stream_options": {"include_usage": True},
        "messages": [{"role": "system", "content": "Antworte auf Deutsch."},  # system first, in the list
                     {"role": "user", "content": "Was kostet Schraube M8?"}],
        "tools": [{"type": "function", "function": {"name": "lakehouse__search",
                                                    "description": "Search the tenant's documents.",
                                                    "parameters": SEARCH.input_schema}}],
    }


async def test_one_tool_call_split_across_many_chunks(server: FakeServer, provider: OpenAIProvider):
    # vLLM sends the arguments with raw UTF-8 (ensure_ascii=False); OpenAI sends \u escapes. Both,
    # cut every 2 characters (so inside "\u00f6"), and the HTTP body cut inside every multibyte character.
    raw = '{"query": "Größe \\u00fcber Stra\\u00dfe 🚀", "k": 3}'
    parts = fragments(raw, 2)
    turn = openai_turn(tools=[("chatcmpl-tool-1", "lakehouse__search", parts)], finish_reason="tool_calls",
                       usage=USAGE)
    cuts = mid_character_cuts(b"".join(turn))
    server.script(sse_reply(turn, cut_at=cuts, delay=0.0005))
    events = await events_of(provider)

    assert events[0] == ToolCallStarted(id="chatcmpl-tool-1", name="lakehouse__search", index=0)
    assert "".join(e.fragment for e in events if isinstance(e, ToolCallDelta)) == raw
    [complete] = [e for e in events if isinstance(e, ToolCallComplete)]
    assert complete.arguments == {"query": "Größe über Straße 🚀", "k": 3}
    assert server.pieces_sent == len(cuts) + 1 > 20
    assert events[-2:] == [Usage(input_tokens=31, output_tokens=9), Finish(reason="tool_use", raw_reason="tool_calls")]


async def test_two_tool_calls_interleaved_by_index(server: FakeServer, provider: OpenAIProvider):
    a = fragments('{"query": "ETIM Klasse EC000123"}', 4)
    b = fragments('{"query": "Umsatzsteuer", "k": 2}', 3)
    chunks = [openai_chunk({"role": "assistant", "content": None}),
              openai_chunk(tool_delta(0, call_id="call_a", name="lakehouse__search")),
              openai_chunk(tool_delta(1, call_id="call_b", name="ctax__lookup"))]
    for i in range(max(len(a), len(b))):  # fragments of both calls alternate
        if i < len(b):
            chunks.append(openai_chunk(tool_delta(1, arguments=b[i])))
        if i < len(a):
            chunks.append(openai_chunk(tool_delta(0, arguments=a[i])))
    chunks += [openai_chunk({}, "tool_calls"), OPENAI_DONE]
    server.script(sse_reply(chunks))
    result = await collect(provider.stream(ASK, [SEARCH]))

    assert [(c.id, c.name, c.index, c.arguments) for c in result.tool_calls] == [
        ("call_a", "lakehouse__search", 0, {"query": "ETIM Klasse EC000123"}),
        ("call_b", "ctax__lookup", 1, {"query": "Umsatzsteuer", "k": 2})]
    assert result.finish == Finish(reason="tool_use", raw_reason="tool_calls")
    assert result.usage is None  # this server sent none


async def test_whole_call_in_one_chunk_and_finish_stop_after_tools(server: FakeServer, provider: OpenAIProvider):
    # Ollama style: each call complete in one delta, a reused index with a new id, and
    # finish_reason "stop" even though the model called tools.
    chunks = [openai_chunk(tool_delta(0, call_id="call_1", name="lakehouse__search", arguments='{"query": "a"}')),
              openai_chunk(tool_delta(0, call_id="call_2", name="lakehouse__search", arguments='{"query": "b"}')),
              openai_chunk({}, "stop"), OPENAI_DONE]
    server.script(sse_reply(chunks))
    result = await collect(provider.stream(ASK, [SEARCH]))
    assert [(c.id, c.index, c.arguments) for c in result.tool_calls] == [
        ("call_1", 0, {"query": "a"}), ("call_2", 1, {"query": "b"})]
    assert result.finish == Finish(reason="tool_use", raw_reason="stop")


async def test_invalid_json_arguments_give_a_clear_event(server: FakeServer, provider: OpenAIProvider):
    server.script(sse_reply(openai_turn(tools=[("call_x", "lakehouse__search", ['{"query": ', '"unterminated'])],
                                        finish_reason="tool_calls")))
    result = await collect(provider.stream(ASK, [SEARCH]))
    [invalid] = result.invalid_tool_calls
    assert (invalid.id, invalid.name, invalid.raw_arguments) == ("call_x", "lakehouse__search",
                                                                 '{"query": "unterminated')
    assert "not valid JSON" in invalid.error
    assert result.tool_calls == [] and result.finish is not None and result.finish.reason == "tool_use"


async def test_history_with_tool_results_is_serialised_in_the_right_place(server: FakeServer,
                                                                          provider: OpenAIProvider):
    history = [
        SystemMessage(text="Du bist Kontor."),
        UserMessage(text="Suche."),
        AssistantMessage(text="", tool_calls=(
            ToolCall(id="call_a", name="lakehouse__search", arguments={"query": "Größe"}),
            ToolCall(id="call_b", name="lakehouse__search", arguments={}))),
        ToolResultMessage(tool_call_id="call_a", content="3 Treffer"),
        ToolResultMessage(tool_call_id="call_b", content="query fehlt", is_error=True),
        UserMessage(text="Und?"),
    ]
    server.script(sse_reply(openai_turn(texts=["ok"])))
    await events_of(provider, history)

    assert server.requests[0].json["messages"] == [
        {"role": "system", "content": "Du bist Kontor."},
        {"role": "user", "content": "Suche."},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_a", "type": "function", "function": {"name": "lakehouse__search",
                                                              "arguments": '{"query": "Größe"}'}},
            {"id": "call_b", "type": "function", "function": {"name": "lakehouse__search", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_a", "content": "3 Treffer"},
        {"role": "tool", "tool_call_id": "call_b", "content": "Error: query fehlt"},  # no is_error in this API
        {"role": "user", "content": "Und?"},
    ]


async def test_strict_schemas_and_nulls_for_optional_arguments(server: FakeServer):
    free_form = ToolDefinition(name="law__annotate", description="Free-form notes.",
                               input_schema={"type": "object", "additionalProperties": True})
    provider = make(server, strict_tools=True, stream_usage=False)
    server.script(sse_reply(openai_turn(tools=[("call_s", "lakehouse__search", ['{"query": "x", "k": null}'])],
                                        finish_reason="tool_calls")))
    try:
        result = await collect(provider.stream(ASK, [SEARCH, free_form]))
    finally:
        await provider.aclose()

    body = server.requests[0].json
    assert "stream_options" not in body
    strict, loose = body["tools"]
    assert strict["function"]["strict"] is True
    assert strict["function"]["parameters"] == {
        "type": "object", "additionalProperties": False, "required": ["query", "k"],
        "properties": {"query": {"type": "string"}, "k": {"type": ["integer", "null"]}}}
    assert "strict" not in loose["function"]  # no strict form exists for a free-form object
    assert loose["function"]["parameters"] == free_form.input_schema
    assert result.tool_calls[0].arguments == {"query": "x"}  # the optional k the model sent as null is left out


async def test_lora_adapter_replaces_the_model_name(server: FakeServer):
    settings = ModelSettings(provider="openai", base_url=f"{server.url}/v1", model="Qwen/Qwen2.5-7B-Instruct",
                             lora_adapter="tenant-acme-v3", max_retries=0, max_tokens_param="max_completion_tokens")
    provider = provider_from_settings(settings)
    assert isinstance(provider, OpenAIProvider) and provider.model == "tenant-acme-v3"
    server.script(sse_reply(openai_turn(texts=["ok"])))
    try:
        await collect(provider.stream(ASK))
    finally:
        await provider.aclose()
    body = server.requests[0].json
    assert body["model"] == "tenant-acme-v3" and body["max_completion_tokens"] == 4096 and "tools" not in body


async def test_api_key_from_the_named_environment_variable(server: FakeServer, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("ACME_VLLM_KEY", "sk-tenant-acme")
    provider = provider_from_settings({"provider": "openai", "base_url": f"{server.url}/v1", "model": "m",
                                       "api_key_env": "ACME_VLLM_KEY", "max_retries": 0})
    assert provider is not None
    server.script(sse_reply(openai_turn(texts=["ok"])))
    try:
        await collect(provider.stream(ASK))
    finally:
        await provider.aclose()
    assert server.requests[0].headers["authorization"] == "Bearer sk-tenant-acme"
    assert "sk-tenant-acme" not in repr(provider)


@pytest.mark.parametrize("headers", [{"retry-after": "12"}, {"retry-after-ms": "12000"}])
async def test_rate_limit_surfaces_with_the_servers_delay(server: FakeServer, provider: OpenAIProvider,
                                                          headers: dict[str, str]):
    server.script(json_reply(429, {"error": {"message": "Rate limit reached for requests", "type": "requests",
                                             "code": "rate_limit_exceeded"}}, headers))
    with pytest.raises(RateLimited) as caught:
        await events_of(provider)
    assert caught.value.retry_after == 12 and "Rate limit reached" in str(caught.value)
    assert len(server.requests) == 1


async def test_authentication_failure(server: FakeServer):
    provider = make(server, api_key="sk-wrong-key-123")
    server.script(json_reply(401, {"error": {"message": "Incorrect API key provided: sk-wrong-key-123.",
                                             "type": "invalid_request_error", "code": "invalid_api_key"}}))
    try:
        with pytest.raises(AuthenticationFailed) as caught:
            await events_of(provider)
    finally:
        await provider.aclose()
    assert "Incorrect API key provided: ***" in str(caught.value) and "sk-wrong-key-123" not in str(caught.value)


@pytest.mark.parametrize("body", [
    {"error": {"message": "This model's maximum context length is 8192 tokens.", "type": "BadRequestError",
               "param": None, "code": 400}},  # vLLM (newer)
    {"object": "error", "message": "This model's maximum context length is 8192 tokens.", "type": "BadRequestError",
     "param": None, "code": 400},  # vLLM (older)
])
async def test_bad_request_carries_the_servers_message(server: FakeServer, provider: OpenAIProvider, body: Any):
    server.script(json_reply(400, body))
    with pytest.raises(BadRequest) as caught:
        await events_of(provider)
    assert caught.value.server_message == "This model's maximum context length is 8192 tokens."


async def test_model_not_found_is_a_bad_request(server: FakeServer, provider: OpenAIProvider):
    server.script(json_reply(404, {"error": {"message": "The model `tenant-x` does not exist.", "type": "NotFoundError",
                                             "code": 404}}))
    with pytest.raises(BadRequest, match="does not exist"):
        await events_of(provider)


@pytest.mark.parametrize(("status", "error"), [(500, ServerError), (503, Overloaded), (502, ServerError)])
async def test_server_errors(server: FakeServer, provider: OpenAIProvider, status: int, error: type):
    server.script(json_reply(status, {"error": {"message": "engine dead", "type": "InternalServerError"}}))
    with pytest.raises(error, match="engine dead"):
        await events_of(provider)


async def test_plain_text_error_body(server: FakeServer, provider: OpenAIProvider):
    from tests.host.fakes import Reply

    server.script(Reply(status=502, body=b"Bad Gateway", headers={"content-type": "text/plain"}))
    with pytest.raises(ServerError, match="Bad Gateway"):
        await events_of(provider)


async def test_connection_refused():
    url = f"http://127.0.0.1:{free_port()}/v1"
    provider = OpenAIProvider(model="m", base_url=url, retry=RetryPolicy(max_retries=0))
    try:
        with pytest.raises(ProviderConnectionError, match="Connection refused") as caught:
            await events_of(provider)
        assert url in str(caught.value)
    finally:
        await provider.aclose()


async def test_retries_a_refused_connection_then_gives_up(caplog: pytest.LogCaptureFixture):
    provider = OpenAIProvider(model="m", base_url=f"http://127.0.0.1:{free_port()}/v1",
                              retry=RetryPolicy(max_retries=2, initial_backoff_s=0.01))
    caplog.set_level(logging.INFO, logger="kontor.host.providers.base")
    try:
        with pytest.raises(ProviderConnectionError):
            await events_of(provider)
    finally:
        await provider.aclose()
    assert [r.getMessage().split(";")[-1].split(" in ")[0] for r in caplog.records] == [" retry 1", " retry 2"]


async def test_cancel_while_waiting_for_the_response_headers(server: FakeServer, provider: OpenAIProvider):
    server.script(sse_reply(openai_turn(texts=["late"]), stall_before_headers=5))
    cancel = asyncio.Event()
    asyncio.get_running_loop().call_later(0.05, cancel.set)
    started = time.monotonic()
    events = await events_of(provider, cancel=cancel)
    assert events == [Finish(reason="stop", raw_reason="cancelled", cancelled=True)]
    assert time.monotonic() - started < 1 and len(server.requests) == 1


async def test_timeout_waiting_for_the_response(server: FakeServer):
    provider = make(server, read_timeout_s=0.3)
    server.script(sse_reply(openai_turn(texts=["late"]), stall_before_headers=1.5))
    try:
        with pytest.raises(ProviderTimeout):
            await events_of(provider)
    finally:
        await provider.aclose()


@pytest.mark.parametrize(("payload", "error"), [
    ({"error": {"message": "CUDA out of memory", "type": "InternalServerError", "code": 500}}, ServerError),
    ({"object": "error", "message": "prompt too long", "type": "BadRequestError", "code": 400}, BadRequest),
    ({"error": {"message": "slow down", "type": "rate_limit_error"}}, RateLimited),
])
async def test_error_mid_stream_after_some_text(server: FakeServer, provider: OpenAIProvider, payload: Any,
                                                error: type):
    server.script(sse_reply([openai_chunk({"role": "assistant", "content": "Teil"}), openai_chunk({"content": "weise"}),
                             openai_data(payload), OPENAI_DONE]))
    seen: list[Any] = []
    with pytest.raises(error) as caught:
        async for event in provider.stream(ASK):
            seen.append(event)
    assert seen == [TextDelta("Teil"), TextDelta("weise")]
    assert "mid-stream" in str(caught.value)


async def test_stream_without_finish_reason_is_an_error(server: FakeServer, provider: OpenAIProvider):
    server.script(sse_reply(openai_turn(texts=["abge"], finish_reason=None, done=False)))
    with pytest.raises(ProviderProtocolError, match="before the model finished"):
        await events_of(provider)


async def test_finish_reasons(server: FakeServer, provider: OpenAIProvider):
    server.script(sse_reply(openai_turn(texts=["abgeschn"], finish_reason="length")),
                  sse_reply([openai_chunk({"content": "x"}), openai_chunk({}, "stop", extra={"stop_reason": "###"}),
                             OPENAI_DONE]))
    assert (await collect(provider.stream(ASK))).finish == Finish(reason="max_tokens", raw_reason="length")
    assert (await collect(provider.stream(ASK))).finish == Finish(reason="stop", raw_reason="stop")


async def test_closing_the_iterator_closes_the_http_response(server: FakeServer, provider: OpenAIProvider):
    server.script(sse_reply(openai_turn(texts=["eins ", "zwei "], finish_reason=None, done=False), hang=True))
    stream = provider.stream(ASK)
    assert await anext(stream) == TextDelta("eins ")
    await stream.aclose()
    await asyncio.wait_for(server.disconnected.wait(), 2)


async def test_cancel_event_while_waiting_for_the_next_chunk(server: FakeServer, provider: OpenAIProvider):
    server.script(sse_reply(openai_turn(texts=["eins "], finish_reason=None, done=False), hang=True))
    cancel = asyncio.Event()
    events = []
    async for event in provider.stream(ASK, cancel=cancel):
        events.append(event)
        asyncio.get_running_loop().call_later(0.05, cancel.set)
    assert events == [TextDelta("eins "), Finish(reason="stop", raw_reason="cancelled", cancelled=True)]
    await asyncio.wait_for(server.disconnected.wait(), 2)


async def test_a_cancel_event_that_is_never_set_changes_nothing(server: FakeServer, provider: OpenAIProvider):
    call = ("call_1", "lakehouse__search", ['{"query":', '"q"}'])
    server.script(sse_reply(openai_turn(texts=["a", "b"], tools=[call], finish_reason="tool_calls", usage=USAGE)))
    result = await collect(provider.stream(ASK, [SEARCH], cancel=asyncio.Event()))
    assert result.text == "ab" and result.tool_calls[0].arguments == {"query": "q"}
    assert result.usage == Usage(input_tokens=31, output_tokens=9)
    assert result.finish == Finish(reason="tool_use", raw_reason="tool_calls")


async def test_cancel_set_before_the_request_sends_nothing(server: FakeServer, provider: OpenAIProvider):
    cancel = asyncio.Event()
    cancel.set()
    assert await events_of(provider, cancel=cancel) == [Finish(reason="stop", raw_reason="cancelled", cancelled=True)]
    assert server.requests == []


async def test_request_json_is_valid_for_every_message_kind(server: FakeServer, provider: OpenAIProvider):
    server.script(sse_reply(openai_turn(texts=["ok"])))
    await events_of(provider, [UserMessage(text="a"), AssistantMessage(text=""), UserMessage(text="b")], ())
    assert server.requests[0].json["messages"][1] == {"role": "assistant", "content": ""}
    assert json.loads(server.requests[0].body)


async def test_a_shared_http_client_is_used_and_left_open(server: FakeServer):
    import httpx2

    sent: list[str] = []

    async def count(request: httpx2.Request) -> None:
        sent.append(str(request.url))

    async with httpx2.AsyncClient(event_hooks={"request": [count]}) as shared:
        provider = provider_from_settings({"provider": "openai", "base_url": f"{server.url}/v1", "model": "m",
                                           "max_retries": 0}, http_client=shared)
        assert provider is not None
        server.script(sse_reply(openai_turn(texts=["ok"])))
        assert (await collect(provider.stream(ASK))).text == "ok"
        await provider.aclose()
        assert sent == [f"{server.url}/v1/chat/completions"]  # the request went through the shared pool
        assert not shared.is_closed  # the caller's pool, the caller's to close
