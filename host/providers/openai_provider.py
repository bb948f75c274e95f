"""Any OpenAI-compatible chat-completions endpoint (``openai`` SDK): vLLM first, also OpenAI
itself and Ollama.

Wire format, in short: ``messages`` with roles ``system`` / ``user`` / ``assistant`` (its
``tool_calls`` carry ``function.arguments`` as a JSON *string*) / ``tool`` (``tool_call_id``);
``tools`` as ``{"type": "function", "function": {name, description, parameters, strict?}}``.
The stream is SSE of ``chat.completion.chunk`` objects ending with ``data: [DONE]``. A tool
call arrives in pieces: the first delta for an ``index`` has the ``id`` and ``function.name``,
later ones ``function.arguments`` fragments, and the pieces of several calls may interleave.
``finish_reason`` closes the choice; with ``stream_options.include_usage`` a last chunk with
no choices carries the usage.

The model name in requests is the tenant's promoted LoRA adapter when one is configured
(``ModelSettings.lora_adapter``; vLLM serves each adapter under its own model name).
"""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import openai
from pydantic import SecretStr

from kontor.host.providers.base import (
    AssistantMessage,
    Event,
    Finish,
    FinishReason,
    Message,
    ProviderError,
    ProviderProtocolError,
    RetryPolicy,
    StreamingProvider,
    SystemMessage,
    TextDelta,
    ToolCallComplete,
    ToolCallDelta,
    ToolCallStarted,
    ToolDefinition,
    ToolResultMessage,
    Usage,
    UserMessage,
    complete_tool_call,
    error_from_response,
    map_sdk_exception,
    shared_ssl_context,
)
from kontor.host.providers.config import ModelSettings

__all__ = ["OpenAIProvider", "strict_schema", "to_openai_messages", "to_openai_tools"]

# Sent as the key when none is configured: vLLM and Ollama without --api-key ignore it, and the
# SDK would otherwise take OPENAI_API_KEY from the host's environment (another tenant's key).
NO_KEY = "EMPTY"

_FINISH_REASONS: dict[str, FinishReason] = {
    "stop": "end_turn",
    "eos": "end_turn",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "length": "max_tokens",
    "content_filter": "stop",
}


def strict_schema(schema: dict[str, Any]) -> dict[str, Any] | None:
    """A copy of ``schema`` that OpenAI's strict mode accepts, or None when it cannot be made so.

    Strict mode wants every object closed (``additionalProperties: false``) with every property
    required; an optional property becomes required but nullable, and the model sends ``null``
    for it (see :func:`drop_nulls`). Free-form objects (no ``properties``, or
    ``additionalProperties`` allowed) have no strict form: such a tool is sent non-strict.
    """
    out = copy.deepcopy(schema)
    return out if _make_strict(out, top=True) else None


def _make_strict(node: Any, *, top: bool = False) -> bool:
    if not isinstance(node, dict):
        return True
    for key in ("anyOf", "oneOf", "allOf"):
        if not all(_make_strict(sub) for sub in node.get(key, [])):
            return False
    for key in ("$defs", "definitions"):
        if not all(_make_strict(sub) for sub in node.get(key, {}).values()):
            return False
    if "items" in node and not _make_strict(node["items"]):
        return False
    types = node.get("type")
    is_object = types == "object" or (isinstance(types, list) and "object" in types)
    if not is_object:
        return True
    if node.get("additionalProperties") not in (None, False) or "patternProperties" in node:
        return False
    if "properties" not in node and not top:
        return False
    properties: dict[str, Any] = node.setdefault("properties", {})
    required = set(node.get("required", []))
    for name, prop in properties.items():
        if not _make_strict(prop):
            return False
        if name not in required:
            properties[name] = _nullable(prop)
    node["required"] = list(properties)
    node["additionalProperties"] = False
    return True


def _nullable(prop: Any) -> Any:
    if not isinstance(prop, dict):
        return prop
    types = prop.get("type")
    if isinstance(types, str):
        return prop if types == "null" else {**prop, "type": [types, "null"]}
    if isinstance(types, list):
        return prop if "null" in types else {**prop, "type": [*types, "null"]}
    return {"anyOf": [prop, {"type": "null"}]}


def optional_properties(schema: dict[str, Any]) -> frozenset[str]:
    """The top-level properties a schema does not require."""
    properties = schema.get("properties") or {}
    return frozenset(properties) - frozenset(schema.get("required") or [])


def drop_nulls(arguments: dict[str, Any], optional: frozenset[str]) -> dict[str, Any]:
    """Arguments without the ``null`` values strict mode made the model send for optional
    properties, so the MCP server sees them omitted (as its schema says they may be)."""
    return {k: v for k, v in arguments.items() if not (v is None and k in optional)}


def to_openai_tools(tools: Sequence[ToolDefinition], *, strict: bool = False) -> list[dict[str, Any]]:
    out = []
    for tool in tools:
        function: dict[str, Any] = {"name": tool.name, "description": tool.description,
                                    "parameters": tool.input_schema}
        if strict and (schema := strict_schema(tool.input_schema)) is not None:
            function["parameters"] = schema
            function["strict"] = True
        out.append({"type": "function", "function": function})
    return out


def to_openai_messages(messages: Sequence[Message]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for message in messages:
        if isinstance(message, SystemMessage):
            out.append({"role": "system", "content": message.text})
        elif isinstance(message, UserMessage):
            out.append({"role": "user", "content": message.text})
        elif isinstance(message, AssistantMessage):
            item: dict[str, Any] = {"role": "assistant", "content": message.text or None}
            if message.tool_calls:
                item["tool_calls"] = [
                    {"id": c.id, "type": "function",
                     "function": {"name": c.name, "arguments": json.dumps(c.arguments, ensure_ascii=False)}}
                    for c in message.tool_calls
                ]
            elif not message.text:
                item["content"] = ""
            out.append(item)
        elif isinstance(message, ToolResultMessage):
            content = message.content
            if message.is_error and not content.startswith("Error:"):
                content = f"Error: {content}"
            out.append({"role": "tool", "tool_call_id": message.tool_call_id, "content": content})
        else:  # pragma: no cover - the Message union is closed
            raise TypeError(f"not a message: {message!r}")
    return out


@dataclass
class _Call:
    index: int
    id: str = ""
    name: str = ""
    started: bool = False
    fragments: list[str] = field(default_factory=list)


class OpenAIProvider(StreamingProvider):
    """An OpenAI-compatible endpoint, streamed. The SDK's own retries are off (see
    :class:`~.base.RetryPolicy`)."""

    name = "openai"

    def __init__(
        self,
        *,
        model: str,
        base_url: str = "https://api.openai.com/v1",
        api_key: str | SecretStr | None = None,
        strict_tools: bool = False,
        stream_usage: bool = True,
        max_tokens_param: str = "max_tokens",
        max_tokens: int = 4096,
        temperature: float | None = None,
        connect_timeout_s: float = 10.0,
        read_timeout_s: float = 120.0,
        retry: RetryPolicy | None = None,
        http_client: Any = None,
    ) -> None:
        key = api_key.get_secret_value() if isinstance(api_key, SecretStr) else api_key
        super().__init__(model=model, base_url=base_url, max_tokens=max_tokens, temperature=temperature,
                         retry=retry or RetryPolicy(), secret=key)
        self.strict_tools = strict_tools
        self.stream_usage = stream_usage
        self.max_tokens_param = max_tokens_param
        self._owns_http_client = http_client is None
        if http_client is None:
            http_client = openai.DefaultAsyncHttpxClient(verify=shared_ssl_context())
        self._client = openai.AsyncOpenAI(
            api_key=key or NO_KEY,
            base_url=base_url,
            # not the host's OPENAI_ORG_ID / OPENAI_PROJECT_ID: the settings are the tenant's
            default_headers={"OpenAI-Organization": openai.omit, "OpenAI-Project": openai.omit},  # type: ignore[dict-item]
            max_retries=0,
            http_client=http_client,  # a pool shared by the caller (who closes it), or our own
            timeout=openai.Timeout(read_timeout_s, connect=connect_timeout_s),
        )

    @classmethod
    def from_settings(cls, settings: ModelSettings, *, api_key: SecretStr | None,
                      http_client: Any = None) -> OpenAIProvider:
        return cls(
            model=settings.effective_model, base_url=settings.effective_base_url, api_key=api_key,
            strict_tools=settings.strict_tools, stream_usage=settings.stream_usage,
            max_tokens_param=settings.max_tokens_param, max_tokens=settings.max_tokens,
            temperature=settings.temperature, connect_timeout_s=settings.connect_timeout_s,
            read_timeout_s=settings.read_timeout_s, retry=settings.retry_policy(), http_client=http_client,
        )

    async def aclose(self) -> None:
        if self._owns_http_client:
            await self._client.close()

    def _request(self, messages: Sequence[Message], tools: Sequence[ToolDefinition], *, model: str,
                 max_tokens: int, temperature: float | None, stop_sequences: Sequence[str] | None) -> dict[str, Any]:
        request: dict[str, Any] = {"model": model, "messages": to_openai_messages(messages), "stream": True,
                                   self.max_tokens_param: max_tokens}
        if tools:
            request["tools"] = to_openai_tools(tools, strict=self.strict_tools)
        if self.stream_usage:
            request["stream_options"] = {"include_usage": True}
        if temperature is not None:
            request["temperature"] = temperature
        if stop_sequences:
            request["stop"] = list(stop_sequences)
        return request

    async def _open(self, request: dict[str, Any]) -> Any:
        return await self._client.chat.completions.create(**request)

    def _map_error(self, exc: BaseException) -> ProviderError | None:
        return map_sdk_exception(exc, sdk=openai, provider=self.name, url=self.base_url)

    async def _events(self, reader: AsyncIterator[Any], tools: Sequence[ToolDefinition]) -> AsyncIterator[Event]:
        nullable = {}
        if self.strict_tools:
            nullable = {t.name: optional_properties(t.input_schema) for t in tools
                        if strict_schema(t.input_schema) is not None}
        calls: list[_Call] = []
        by_index: dict[int, _Call] = {}
        by_id: dict[str, _Call] = {}
        finish_reason: str | None = None
        raw_stop: object = None
        usage: Usage | None = None
        completed = False

        async for chunk in reader:
            if getattr(chunk, "object", None) == "error":  # older vLLM: the error as a bare chunk
                raise error_from_response(provider=self.name, url=self.base_url, status=None,
                                          body=chunk.model_dump(), mid_stream=True)
            if getattr(chunk, "usage", None) is not None:
                usage = Usage(input_tokens=chunk.usage.prompt_tokens or 0,
                              output_tokens=chunk.usage.completion_tokens or 0)
            for choice in chunk.choices or ():
                if (choice.index or 0) != 0:
                    continue  # we ask for one choice
                delta = choice.delta
                if delta is not None:
                    if delta.content:
                        yield TextDelta(delta.content)
                    for piece in delta.tool_calls or ():
                        call = self._call_for(piece, calls, by_index, by_id)
                        for event in self._absorb(call, piece):
                            yield event
                if choice.finish_reason and not completed:
                    finish_reason = choice.finish_reason
                    raw_stop = getattr(choice, "stop_reason", None)  # vLLM: the stop string that matched
                    completed = True
                    for call in calls:
                        for event in self._complete(call, nullable):
                            yield event

        if finish_reason is None:
            raise ProviderProtocolError(
                f"openai at {self.base_url} ended the stream before the model finished (no finish_reason)",
                provider=self.name,
            )
        if usage is not None:
            yield Usage(input_tokens=usage.input_tokens, output_tokens=usage.output_tokens)
        reason = _FINISH_REASONS.get(finish_reason, "stop")
        if reason == "end_turn" and calls:
            reason = "tool_use"  # vLLM and Ollama may say "stop" after tool calls
        elif reason == "end_turn" and isinstance(raw_stop, str):
            reason = "stop"
        yield Finish(reason=reason, raw_reason=finish_reason)

    @staticmethod
    def _call_for(piece: Any, calls: list[_Call], by_index: dict[int, _Call], by_id: dict[str, _Call]) -> _Call:
        """The call a delta belongs to: by ``index``; by ``id`` when a server leaves the index out,
        and a new call when a server reuses an index with a new id (as some Ollama versions do)."""
        piece_id = piece.id or ""
        call: _Call | None
        if piece.index is not None:
            call = by_index.get(piece.index)
            if call is not None and piece_id and call.id and piece_id != call.id:
                call = by_id.get(piece_id)
        else:
            call = by_id.get(piece_id) if piece_id else (calls[-1] if calls else None)
        if call is None:
            call = _Call(index=len(calls))
            calls.append(call)
        if piece.index is not None:
            by_index[piece.index] = call
        if piece_id:
            by_id.setdefault(piece_id, call)
        return call

    @staticmethod
    def _absorb(call: _Call, piece: Any) -> list[Event]:
        events: list[Event] = []
        if piece.id and not call.id:
            call.id = piece.id
        function = piece.function
        name = getattr(function, "name", None) if function is not None else None
        if name and not call.name:  # names arrive whole; servers that repeat it on every delta are fine
            call.name = name
        arguments = getattr(function, "arguments", None) if function is not None else None
        if arguments:
            call.fragments.append(arguments)
        if not call.started and call.name:
            call.started = True
            call.id = call.id or f"call_{uuid.uuid4().hex[:24]}"
            events.append(ToolCallStarted(id=call.id, name=call.name, index=call.index))
            if call.fragments:
                events.append(ToolCallDelta(id=call.id, index=call.index, fragment="".join(call.fragments)))
        elif call.started and arguments:
            events.append(ToolCallDelta(id=call.id, index=call.index, fragment=arguments))
        return events

    def _complete(self, call: _Call, nullable: dict[str, frozenset[str]]) -> list[Event]:
        if not call.started:
            raise ProviderProtocolError(f"openai at {self.base_url} sent a tool call without a function name",
                                        provider=self.name)
        event = complete_tool_call(call.id, call.name, call.index, "".join(call.fragments))
        if isinstance(event, ToolCallComplete) and call.name in nullable:
            event = ToolCallComplete(id=event.id, name=event.name, index=event.index,
                                     arguments=drop_nulls(event.arguments, nullable[call.name]))
        return [event]
