"""Fixture "everything" MCP server for the official conformance suite's server scenarios.

Implements every tool, resource, prompt and utility the pinned ``@modelcontextprotocol/conformance``
server scenarios call by name, built on the low-level ``mcp.server.lowlevel.Server`` so every wire shape
(JSON Schema 2020-12 keywords, legacy ``enumNames``, multi-select elicitation) is exactly what the suite
inspects. Names are fixed by the suite: tools ``test_*`` and ``json_schema_2020_12_tool``, prompts
``test_*``, resources ``test://static-text``, ``test://static-binary``, ``test://watched-resource`` and the
template ``test://template/{id}/data``.

Run it: ``python tests/conformance/everything_server.py --port P`` (Streamable HTTP on 127.0.0.1,
path ``/mcp``, ``/health`` for readiness, DNS-rebinding protection as ``kontor.serving`` does).
Import it: ``build_server()`` returns the ``Server``; ``build_app(host, port)`` the Starlette app.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import re
import struct
import warnings
import wave
import zlib
from collections import deque
from typing import Any

import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.streamable_http import EventCallback, EventMessage, EventStore
from mcp.shared.exceptions import MCPDeprecationWarning, MCPError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from kontor.serving import transport_security

SERVER_NAME = "everything"
MCP_PATH = "/mcp"
SSE_RETRY_MS = 100  # retry hint in SSE priming events (SEP-1699), short so reconnecting clients are quick

LOG_LEVELS: tuple[str, ...] = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")


# -- test media (generated with the standard library, so no binary blobs live in the repository) -------------------


def _png_1x1_red() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)  # 1x1, 8-bit RGB
    pixels = zlib.compress(b"\x00\xff\x00\x00")  # filter byte + one red pixel
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def _wav_silence() -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(b"\x00\x00" * 80)  # 10 ms of silence
    return buf.getvalue()


PNG_BYTES = _png_1x1_red()
PNG_B64 = base64.b64encode(PNG_BYTES).decode()
WAV_B64 = base64.b64encode(_wav_silence()).decode()


# -- SSE resumability (SEP-1699) -----------------------------------------------------------------------------------


class InMemoryEventStore(EventStore):
    """Bounded in-memory event store so streams can be resumed with ``Last-Event-ID``.

    Event ids are global; the SDK names a stream after the JSON-RPC request id, which is only unique
    within a session - good enough for a test fixture, not for a multi-tenant server.
    """

    def __init__(self, max_events: int = 10_000) -> None:
        self._events: deque[tuple[str, int, types.JSONRPCMessage | None]] = deque(maxlen=max_events)
        self._next_id = 0

    async def store_event(self, stream_id: str, message: types.JSONRPCMessage | None) -> str:
        self._next_id += 1
        self._events.append((stream_id, self._next_id, message))
        return str(self._next_id)

    async def replay_events_after(self, last_event_id: str, send_callback: EventCallback) -> str | None:
        try:
            last = int(last_event_id)
        except ValueError:
            return None
        stream = next((s for s, eid, _ in self._events if eid == last), None)
        if stream is None:
            return None
        for s, eid, message in list(self._events):
            if s == stream and eid > last and message is not None:  # priming events carry no message
                await send_callback(EventMessage(message, str(eid)))
        return stream


# -- per-session state ---------------------------------------------------------------------------------------------


class _State:
    """Log level and resource subscriptions, per MCP session (keyed by the ``Mcp-Session-Id`` header)."""

    def __init__(self) -> None:
        self.log_level: dict[str, str] = {}
        self.subscriptions: dict[str, set[str]] = {}


def _session_key(ctx: ServerRequestContext[Any, Any]) -> str:
    headers = getattr(ctx.request, "headers", None)
    return (headers.get("mcp-session-id") if headers is not None else None) or "-"


# -- tools ---------------------------------------------------------------------------------------------------------

_NO_ARGS: dict[str, Any] = {"type": "object", "properties": {}}

JSON_SCHEMA_2020_12_TOOL = "json_schema_2020_12_tool"

TOOLS: list[types.Tool] = [
    types.Tool(name="test_simple_text", description="Returns simple text content", input_schema=_NO_ARGS),
    types.Tool(name="test_image_content", description="Returns a 1x1 PNG image", input_schema=_NO_ARGS),
    types.Tool(name="test_audio_content", description="Returns a short WAV clip", input_schema=_NO_ARGS),
    types.Tool(name="test_embedded_resource", description="Returns an embedded text resource", input_schema=_NO_ARGS),
    types.Tool(name="test_multiple_content_types", description="Returns text, image and resource content",
               input_schema=_NO_ARGS),
    types.Tool(name="test_tool_with_logging", description="Sends three info log notifications while running",
               input_schema=_NO_ARGS),
    types.Tool(name="test_tool_with_progress", description="Reports progress 0, 50 and 100 of 100",
               input_schema=_NO_ARGS),
    types.Tool(name="test_error_handling", description="Always fails with isError: true", input_schema=_NO_ARGS),
    types.Tool(name="test_sampling", description="Asks the client for an LLM completion (sampling/createMessage)",
               input_schema={"type": "object", "properties": {"prompt": {"type": "string", "description":
                             "The prompt to send to the LLM"}}, "required": ["prompt"]}),
    types.Tool(name="test_elicitation", description="Asks the client for user input (elicitation/create)",
               input_schema={"type": "object", "properties": {"message": {"type": "string", "description":
                             "The message to show the user"}}, "required": ["message"]}),
    types.Tool(name="test_elicitation_sep1034_defaults",
               description="Elicitation with default values for every primitive type (SEP-1034)",
               input_schema=_NO_ARGS),
    types.Tool(name="test_elicitation_sep1330_enums", description="Elicitation with all five enum variants (SEP-1330)",
               input_schema=_NO_ARGS),
    types.Tool(name="test_reconnection", description="Closes its SSE stream mid-call; the result arrives on resume "
               "(SEP-1699)", input_schema=_NO_ARGS),
    types.Tool(name=JSON_SCHEMA_2020_12_TOOL, description="Tool with JSON Schema 2020-12 features",
               input_schema={
                   "$schema": "https://json-schema.org/draft/2020-12/schema",
                   "type": "object",
                   "$defs": {"address": {"type": "object", "properties": {"street": {"type": "string"},
                                                                          "city": {"type": "string"}}}},
                   "properties": {"name": {"type": "string"}, "address": {"$ref": "#/$defs/address"}},
                   "additionalProperties": False,
               }),
]

SEP1034_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "description": "User name", "default": "John Doe"},
        "age": {"type": "integer", "description": "User age", "default": 30},
        "score": {"type": "number", "description": "User score", "default": 95.5},
        "status": {"type": "string", "description": "User status", "enum": ["active", "inactive", "pending"],
                   "default": "active"},
        "verified": {"type": "boolean", "description": "Verification status", "default": True},
    },
}

SEP1330_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "untitledSingle": {"type": "string", "description": "Untitled single-select",
                           "enum": ["option1", "option2", "option3"]},
        "titledSingle": {"type": "string", "description": "Titled single-select", "oneOf": [
            {"const": "value1", "title": "First Option"},
            {"const": "value2", "title": "Second Option"},
            {"const": "value3", "title": "Third Option"},
        ]},
        "legacyEnum": {"type": "string", "description": "Legacy titled enum (deprecated enumNames)",
                       "enum": ["opt1", "opt2", "opt3"], "enumNames": ["Option One", "Option Two", "Option Three"]},
        "untitledMulti": {"type": "array", "description": "Untitled multi-select",
                          "items": {"type": "string", "enum": ["option1", "option2", "option3"]}},
        "titledMulti": {"type": "array", "description": "Titled multi-select", "items": {"anyOf": [
            {"const": "value1", "title": "First Choice"},
            {"const": "value2", "title": "Second Choice"},
            {"const": "value3", "title": "Third Choice"},
        ]}},
    },
}

ELICITATION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "username": {"type": "string", "description": "User's response"},
        "email": {"type": "string", "description": "User's email address"},
    },
    "required": ["username", "email"],
}


def _text(text: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)])


# -- resources and prompts -----------------------------------------------------------------------------------------

STATIC_TEXT = "This is the content of the static text resource."
WATCHED_URI = "test://watched-resource"
TEMPLATE = "test://template/{id}/data"
_TEMPLATE_RE = re.compile(r"^test://template/(?P<id>[^/]+)/data$")

RESOURCES: list[types.Resource] = [
    types.Resource(uri="test://static-text", name="static-text", description="A static text resource",
                   mime_type="text/plain"),
    types.Resource(uri="test://static-binary", name="static-binary", description="A static binary resource (PNG)",
                   mime_type="image/png"),
    types.Resource(uri=WATCHED_URI, name="watched-resource", description="A resource clients can subscribe to",
                   mime_type="text/plain"),
]

RESOURCE_TEMPLATES: list[types.ResourceTemplate] = [
    types.ResourceTemplate(uri_template=TEMPLATE, name="template-data", mime_type="application/json",
                           description="Resource template with parameter substitution"),
]

PROMPTS: list[types.Prompt] = [
    types.Prompt(name="test_simple_prompt", description="A simple prompt without arguments"),
    types.Prompt(name="test_prompt_with_arguments", description="A prompt with two required arguments", arguments=[
        types.PromptArgument(name="arg1", description="First test argument", required=True),
        types.PromptArgument(name="arg2", description="Second test argument", required=True),
    ]),
    types.Prompt(name="test_prompt_with_embedded_resource", description="A prompt embedding a resource", arguments=[
        types.PromptArgument(name="resourceUri", description="URI of the resource to embed", required=True),
    ]),
    types.Prompt(name="test_prompt_with_image", description="A prompt with image content"),
]

COMPLETIONS: dict[str, list[str]] = {
    "arg1": ["paris", "park", "party", "test", "testing"],
    "arg2": ["alpha", "beta", "gamma"],
    "id": ["1", "42", "123"],
}


def _user(content: Any) -> types.PromptMessage:
    return types.PromptMessage(role="user", content=content)


# -- the server ----------------------------------------------------------------------------------------------------


def build_server() -> Server[Any]:
    """The low-level MCP server with every handler the conformance server scenarios exercise."""
    state = _State()

    async def log(ctx: ServerRequestContext[Any, Any], level: str, message: str) -> None:
        threshold = state.log_level.get(_session_key(ctx), "debug")
        if LOG_LEVELS.index(level) < LOG_LEVELS.index(threshold):
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MCPDeprecationWarning)
            await ctx.session.send_log_message(level, message, logger=SERVER_NAME,  # type: ignore[arg-type]
                                               related_request_id=ctx.request_id)

    async def list_tools(ctx: ServerRequestContext[Any, Any], params: Any) -> types.ListToolsResult:
        return types.ListToolsResult(tools=TOOLS)

    async def call_tool(ctx: ServerRequestContext[Any, Any],
                        params: types.CallToolRequestParams) -> types.CallToolResult:
        args = params.arguments or {}
        match params.name:
            case "test_simple_text":
                return _text("This is a simple text response for testing.")
            case "test_image_content":
                return types.CallToolResult(content=[types.ImageContent(type="image", data=PNG_B64,
                                                                        mime_type="image/png")])
            case "test_audio_content":
                return types.CallToolResult(content=[types.AudioContent(type="audio", data=WAV_B64,
                                                                        mime_type="audio/wav")])
            case "test_embedded_resource":
                return types.CallToolResult(content=[types.EmbeddedResource(
                    type="resource", resource=types.TextResourceContents(
                        uri="test://embedded-resource", mime_type="text/plain",
                        text="This is an embedded resource content."))])
            case "test_multiple_content_types":
                return types.CallToolResult(content=[
                    types.TextContent(type="text", text="Multiple content types test:"),
                    types.ImageContent(type="image", data=PNG_B64, mime_type="image/png"),
                    types.EmbeddedResource(type="resource", resource=types.TextResourceContents(
                        uri="test://mixed-content-resource", mime_type="application/json",
                        text=json.dumps({"test": "data", "value": 123}))),
                ])
            case "test_tool_with_logging":
                await log(ctx, "info", "Tool execution started")
                await asyncio.sleep(0.05)
                await log(ctx, "info", "Tool processing data")
                await asyncio.sleep(0.05)
                await log(ctx, "info", "Tool execution completed")
                return _text("Tool with logging executed successfully")
            case "test_tool_with_progress":
                for step in (0, 50, 100):
                    if step:
                        await asyncio.sleep(0.05)
                    await ctx.session.report_progress(step, 100, f"Completed step {step} of 100")
                return _text("Tool with progress executed successfully")
            case "test_error_handling":
                return types.CallToolResult(is_error=True, content=[types.TextContent(
                    type="text", text="This tool intentionally returns an error for testing")])
            case "test_sampling":
                return await _sampling(ctx, str(args.get("prompt", "")))
            case "test_elicitation":
                return await _elicit(ctx, str(args.get("message", "Please provide your information")),
                                     ELICITATION_SCHEMA, "User response")
            case "test_elicitation_sep1034_defaults":
                return await _elicit(ctx, "Please provide user information", SEP1034_SCHEMA, "Elicitation completed")
            case "test_elicitation_sep1330_enums":
                return await _elicit(ctx, "Please select values using different enum schema types", SEP1330_SCHEMA,
                                     "Elicitation completed")
            case "test_reconnection":
                # An event with an id first, so the client has a Last-Event-ID to resume from; then drop the
                # stream (a no-op for clients below 2025-11-25, which cannot resume) and answer after the resume.
                await log(ctx, "info", "Before disconnect")
                if ctx.close_sse_stream is not None:
                    await ctx.close_sse_stream()
                    await asyncio.sleep(0.3)
                await log(ctx, "info", "After reconnect")
                return _text("Reconnection test completed")
            case name if name == JSON_SCHEMA_2020_12_TOOL:
                return _text(f"Received: {json.dumps(args, sort_keys=True)}")
        raise MCPError(code=types.INVALID_PARAMS, message=f"Unknown tool: {params.name}")

    async def list_resources(ctx: ServerRequestContext[Any, Any], params: Any) -> types.ListResourcesResult:
        return types.ListResourcesResult(resources=RESOURCES)

    async def list_templates(ctx: ServerRequestContext[Any, Any], params: Any) -> types.ListResourceTemplatesResult:
        return types.ListResourceTemplatesResult(resource_templates=RESOURCE_TEMPLATES)

    async def read_resource(ctx: ServerRequestContext[Any, Any],
                            params: types.ReadResourceRequestParams) -> types.ReadResourceResult:
        uri = str(params.uri)
        content: types.TextResourceContents | types.BlobResourceContents
        if uri == "test://static-text":
            content = types.TextResourceContents(uri=uri, mime_type="text/plain", text=STATIC_TEXT)
        elif uri == "test://static-binary":
            content = types.BlobResourceContents(uri=uri, mime_type="image/png", blob=PNG_B64)
        elif uri == WATCHED_URI:
            content = types.TextResourceContents(uri=uri, mime_type="text/plain", text="Watched resource content")
        elif m := _TEMPLATE_RE.match(uri):
            ident = m["id"]
            content = types.TextResourceContents(uri=uri, mime_type="application/json", text=json.dumps(
                {"id": ident, "templateTest": True, "data": f"Data for ID: {ident}"}))
        else:
            raise MCPError(code=types.INVALID_PARAMS, message=f"Resource not found: {uri}", data={"uri": uri})
        return types.ReadResourceResult(contents=[content])

    async def subscribe(ctx: ServerRequestContext[Any, Any], params: types.SubscribeRequestParams) -> types.EmptyResult:
        state.subscriptions.setdefault(_session_key(ctx), set()).add(str(params.uri))
        return types.EmptyResult()

    async def unsubscribe(ctx: ServerRequestContext[Any, Any],
                          params: types.UnsubscribeRequestParams) -> types.EmptyResult:
        state.subscriptions.get(_session_key(ctx), set()).discard(str(params.uri))
        return types.EmptyResult()

    async def list_prompts(ctx: ServerRequestContext[Any, Any], params: Any) -> types.ListPromptsResult:
        return types.ListPromptsResult(prompts=PROMPTS)

    async def get_prompt(ctx: ServerRequestContext[Any, Any],
                         params: types.GetPromptRequestParams) -> types.GetPromptResult:
        args = params.arguments or {}
        match params.name:
            case "test_simple_prompt":
                messages = [_user(types.TextContent(type="text", text="This is a simple prompt for testing."))]
            case "test_prompt_with_arguments":
                missing = [a for a in ("arg1", "arg2") if a not in args]
                if missing:
                    raise MCPError(code=types.INVALID_PARAMS, message=f"Missing required arguments: {missing}")
                messages = [_user(types.TextContent(
                    type="text", text=f"Prompt with arguments: arg1='{args['arg1']}', arg2='{args['arg2']}'"))]
            case "test_prompt_with_embedded_resource":
                if "resourceUri" not in args:
                    raise MCPError(code=types.INVALID_PARAMS, message="Missing required argument: resourceUri")
                messages = [
                    _user(types.EmbeddedResource(type="resource", resource=types.TextResourceContents(
                        uri=args["resourceUri"], mime_type="text/plain",
                        text="Embedded resource content for testing."))),
                    _user(types.TextContent(type="text", text="Please process the embedded resource above.")),
                ]
            case "test_prompt_with_image":
                messages = [
                    _user(types.ImageContent(type="image", data=PNG_B64, mime_type="image/png")),
                    _user(types.TextContent(type="text", text="Please analyze the image above.")),
                ]
            case _:
                raise MCPError(code=types.INVALID_PARAMS, message=f"Unknown prompt: {params.name}")
        return types.GetPromptResult(messages=messages)

    async def complete(ctx: ServerRequestContext[Any, Any],
                       params: types.CompleteRequestParams) -> types.CompleteResult:
        prefix = params.argument.value.lower()
        values = [v for v in COMPLETIONS.get(params.argument.name, []) if v.startswith(prefix)]
        return types.CompleteResult(completion=types.Completion(values=values, total=len(values), has_more=False))

    async def set_level(ctx: ServerRequestContext[Any, Any], params: types.SetLevelRequestParams) -> types.EmptyResult:
        state.log_level[_session_key(ctx)] = params.level
        return types.EmptyResult()

    with warnings.catch_warnings():  # logging/setLevel is deprecated only from protocol 2026-07-28 on
        warnings.simplefilter("ignore", MCPDeprecationWarning)
        return Server(
            SERVER_NAME,
            version="1.0.0",
            instructions="Fixture server for the MCP conformance suite's server scenarios.",
            on_list_tools=list_tools,
            on_call_tool=call_tool,
            on_list_resources=list_resources,
            on_list_resource_templates=list_templates,
            on_read_resource=read_resource,
            on_subscribe_resource=subscribe,
            on_unsubscribe_resource=unsubscribe,
            on_list_prompts=list_prompts,
            on_get_prompt=get_prompt,
            on_completion=complete,
            on_set_logging_level=set_level,
        )


async def _sampling(ctx: ServerRequestContext[Any, Any], prompt: str) -> types.CallToolResult:
    caps = ctx.session.client_capabilities
    if caps is None or caps.sampling is None:
        return types.CallToolResult(is_error=True, content=[types.TextContent(
            type="text", text="The client does not support sampling")])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MCPDeprecationWarning)
        result = await ctx.session.create_message(
            messages=[types.SamplingMessage(role="user", content=types.TextContent(type="text", text=prompt))],
            max_tokens=100, related_request_id=ctx.request_id)
    reply = result.content.text if isinstance(result.content, types.TextContent) else str(result.content)
    return _text(f"LLM response: {reply}")


async def _elicit(ctx: ServerRequestContext[Any, Any], message: str, schema: dict[str, Any],
                  label: str) -> types.CallToolResult:
    caps = ctx.session.client_capabilities
    if caps is None or caps.elicitation is None:
        return types.CallToolResult(is_error=True, content=[types.TextContent(
            type="text", text="The client does not support elicitation")])
    result = await ctx.session.elicit_form(message, schema, related_request_id=ctx.request_id)
    content = json.dumps(result.content or {}, sort_keys=True)
    return _text(f"{label}: action={result.action}, content={content}")


class RequireBearer:
    """ASGI middleware: every HTTP request except ``/health`` must carry ``Authorization: Bearer <token>``.

    Lets tests prove a proxy in front of the fixture really adds the header (the gateway requires one).
    """

    def __init__(self, app: Any, token: str) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] != "/health":
            if dict(scope["headers"]).get(b"authorization") != self.expected:
                body = b'{"error":"invalid_token"}'
                await send({"type": "http.response.start", "status": 401, "headers": [
                    (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", b'Bearer error="invalid_token"')]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def build_app(host: str = "127.0.0.1", port: int = 0, server: Server[Any] | None = None,
              bearer_token: str | None = None) -> Any:
    """Streamable HTTP app at ``/mcp`` (resumable SSE, DNS-rebinding protection) plus ``/health``.

    With ``bearer_token``, every request but ``/health`` must carry it (401 otherwise).
    """
    server = server or build_server()

    async def health(_: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "server": SERVER_NAME})

    app: Starlette = server.streamable_http_app(
        streamable_http_path=MCP_PATH,
        event_store=InMemoryEventStore(),
        retry_interval=SSE_RETRY_MS,
        transport_security=transport_security(host, port),
        host=host,
        custom_starlette_routes=[Route("/health", health, methods=["GET"])],
    )
    return RequireBearer(app, bearer_token) if bearer_token else app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log-level", default="warning")
    parser.add_argument("--bearer-token", default=None, help="require this bearer token on every MCP request")
    args = parser.parse_args(argv)

    import uvicorn

    uvicorn.run(build_app(args.host, args.port, bearer_token=args.bearer_token), host=args.host, port=args.port,
                log_level=args.log_level)


if __name__ == "__main__":
    main()
