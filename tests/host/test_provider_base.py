"""The provider-neutral pieces: messages, tool definitions, argument parsing, strict schemas,
error mapping and the retry policy."""

from __future__ import annotations

import email.utils
import time

import mcp.types
import pytest
from pydantic import TypeAdapter

from kontor.host.providers import (
    AssistantMessage,
    AuthenticationFailed,
    BadRequest,
    Message,
    Overloaded,
    ProviderTimeout,
    RateLimited,
    RetryPolicy,
    ServerError,
    SystemMessage,
    ToolCall,
    ToolDefinition,
    ToolResultMessage,
    UserMessage,
    parse_tool_arguments,
)
from kontor.host.providers.base import error_from_response, parse_retry_after, safe_url
from kontor.host.providers.openai_provider import drop_nulls, optional_properties, strict_schema


def test_messages_round_trip_through_json_for_the_conversation_store():
    history = [SystemMessage(text="s"), UserMessage(text="u"),
               AssistantMessage(text="a", tool_calls=(ToolCall(id="1", name="t", arguments={"x": [1]}),)),
               ToolResultMessage(tool_call_id="1", content="r", is_error=True)]
    adapter = TypeAdapter(list[Message])
    assert adapter.validate_json(adapter.dump_json(history)) == history


def test_tool_definition_from_mcp_tools():
    schema = {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}
    tool = mcp.types.Tool(name="lakehouse__search", description="Search.", input_schema=schema)
    assert ToolDefinition.from_mcp(tool) == ToolDefinition(name="lakehouse__search", description="Search.",
                                                           input_schema=schema)
    wire = {"name": "etim__classes", "inputSchema": {"type": "object"}}  # as tools/list sends it
    assert ToolDefinition.from_mcp(wire) == ToolDefinition(
        name="etim__classes", description="", input_schema={"type": "object", "properties": {}})


@pytest.mark.parametrize(("raw", "expected"), [
    ("", {}), ("  ", {}), ("{}", {}), ('{"a": "\\u00fc"}', {"a": "ü"}),
    ('{"a": {"b": [1, null]}}', {"a": {"b": [1, None]}}),
])
def test_parse_tool_arguments(raw, expected):
    assert parse_tool_arguments(raw) == expected


@pytest.mark.parametrize(("raw", "message"), [
    ('{"a": ', "not valid JSON"), ("[1]", "must be a JSON object, not list"), ('"x"', "not str"),
    ('{"a": 1} {"b": 2}', "not valid JSON (Extra data at character 9)"),  # two objects glued together
])
def test_parse_tool_arguments_rejects(raw, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_tool_arguments(raw)


def test_strict_schema_closes_every_object_and_makes_optional_nullable():
    schema = {
        "type": "object",
        "properties": {
            "query": {"type": "string"},
            "filters": {"type": "object", "properties": {"year": {"type": "integer"}, "tags": {
                "type": "array", "items": {"type": "object", "properties": {"name": {"type": "string"}},
                                           "required": ["name"]}}}},
            "mode": {"enum": ["fast", "exact"]},
        },
        "required": ["query"],
    }
    strict = strict_schema(schema)
    assert strict == {
        "type": "object", "additionalProperties": False, "required": ["query", "filters", "mode"],
        "properties": {
            "query": {"type": "string"},
            "filters": {"type": ["object", "null"], "additionalProperties": False, "required": ["year", "tags"],
                        "properties": {"year": {"type": ["integer", "null"]}, "tags": {
                            "type": ["array", "null"], "items": {
                                "type": "object", "additionalProperties": False, "required": ["name"],
                                "properties": {"name": {"type": "string"}}}}}},
            "mode": {"anyOf": [{"enum": ["fast", "exact"]}, {"type": "null"}]},
        },
    }
    assert "additionalProperties" not in schema  # the tool's own schema is untouched
    assert optional_properties(schema) == {"filters", "mode"}
    assert drop_nulls({"query": "q", "filters": None, "mode": "fast"}, optional_properties(schema)) == {
        "query": "q", "mode": "fast"}


@pytest.mark.parametrize("schema", [
    {"type": "object", "additionalProperties": True},
    {"type": "object", "properties": {"meta": {"type": "object"}}},  # a free-form nested object
    {"type": "object", "properties": {"m": {"type": "object", "additionalProperties": {"type": "string"}}}},
])
def test_schemas_without_a_strict_form(schema):
    assert strict_schema(schema) is None


def test_error_mapping_by_status_and_by_error_type():
    url = "https://user:pw@api.example.com/v1?key=secret"
    assert safe_url(url) == "https://api.example.com/v1"

    def err(status, body, **kw):
        return error_from_response(provider="p", url=url, status=status, body=body, **kw)

    assert isinstance(err(429, {}), RateLimited)
    assert isinstance(err(401, {}), AuthenticationFailed) and isinstance(err(403, {}), AuthenticationFailed)
    assert isinstance(err(400, "plain text"), BadRequest) and err(400, "plain text").server_message == "plain text"
    assert isinstance(err(422, {}), BadRequest)
    assert isinstance(err(408, {}), ProviderTimeout)
    assert type(err(500, {})) is ServerError and isinstance(err(529, {}), Overloaded)
    # a 500 whose body says overloaded is overloaded
    assert isinstance(err(500, {"error": {"type": "overloaded_error", "message": "busy"}}), Overloaded)
    # error events inside a 200 stream: the type decides
    for kind, cls in [("rate_limit_error", RateLimited), ("authentication_error", AuthenticationFailed),
                      ("invalid_request_error", BadRequest), ("api_error", ServerError),
                      ("overloaded_error", Overloaded)]:
        assert isinstance(err(200, {"type": "error", "error": {"type": kind, "message": "m"}}, mid_stream=True), cls)
    assert "secret" not in str(err(500, {})) and "pw" not in str(err(500, {}))


def test_retry_after_forms():
    assert parse_retry_after({"retry-after": "3"}) == 3
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    date = email.utils.formatdate(time.time() + 60, usegmt=True)
    assert 55 <= parse_retry_after({"retry-after": date}) <= 61
    assert parse_retry_after({"retry-after": "soon"}) is None and parse_retry_after({}) is None


def test_retry_policy():
    policy = RetryPolicy(max_retries=2, max_wait_s=5, initial_backoff_s=1)
    assert policy.delay(1, RateLimited("x", retry_after=3)) == 3
    assert policy.delay(1, RateLimited("x", retry_after=60)) is None  # reported, not waited out
    assert policy.delay(3, RateLimited("x", retry_after=1)) is None  # retries used up
    assert policy.delay(1, BadRequest("x")) is None and policy.delay(1, AuthenticationFailed("x")) is None
    assert 0.75 <= policy.delay(1, ServerError("x")) <= 1 and 1.5 <= policy.delay(2, Overloaded("x")) <= 2
