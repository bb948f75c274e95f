"""Claude through the Anthropic Messages API (``anthropic`` SDK), streamed, with native tool use.

Wire format, in short: the request has a top-level ``system`` prompt, ``messages`` of
alternating ``user``/``assistant`` turns whose content is a list of blocks (``text``,
``tool_use`` in assistant turns, ``tool_result`` with ``is_error`` in user turns), and
``tools`` as ``{name, description, input_schema}``. The stream is SSE: ``message_start``
(input usage), per content block ``content_block_start`` / ``content_block_delta``
(``text_delta`` or ``input_json_delta`` with a ``partial_json`` fragment) /
``content_block_stop``, then ``message_delta`` (``stop_reason``, output usage) and
``message_stop``; ``ping`` any time, ``error`` (e.g. ``overloaded_error``) any time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import anthropic
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
    map_sdk_exception,
    shared_ssl_context,
)
from kontor.host.providers.config import ModelSettings

__all__ = ["AnthropicProvider", "to_anthropic_messages", "to_anthropic_tools"]

_STOP_REASONS: dict[str, FinishReason] = {
    "end_turn": "end_turn",
    "tool_use": "tool_use",
    "max_tokens": "max_tokens",
    "model_context_window_exceeded": "max_tokens",
    "stop_sequence": "stop",
    "refusal": "stop",
    "pause_turn": "stop",
}


def to_anthropic_tools(tools: Sequence[ToolDefinition]) -> list[dict[str, Any]]:
    return [{"name": t.name, "description": t.description, "input_schema": t.input_schema} for t in tools]


def to_anthropic_messages(messages: Sequence[Message]) -> tuple[str | None, list[dict[str, Any]]]:
    """The ``system`` prompt and the ``messages`` list.

    System messages, wherever they are, are joined into the top-level prompt. Tool results
    become ``tool_result`` blocks of a user turn; consecutive user-side messages (the results of
    one assistant turn, then maybe the next question) are merged into one turn, results first,
    as the API requires the results to open the turn that follows the ``tool_use`` blocks.
    """
    system: list[str] = []
    turns: list[dict[str, Any]] = []

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        if not blocks:
            return
        if turns and turns[-1]["role"] == role:
            if role == "user" and blocks[0]["type"] == "tool_result":
                # results go before any text already in this user turn
                previous = turns[-1]["content"]
                results = [b for b in previous if b["type"] == "tool_result"]
                others = [b for b in previous if b["type"] != "tool_result"]
                turns[-1]["content"] = [*results, *blocks, *others]
            else:
                turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})

    for message in messages:
        if isinstance(message, SystemMessage):
            if message.text.strip():
                system.append(message.text)
        elif isinstance(message, UserMessage):
            add("user", [{"type": "text", "text": message.text}] if message.text else [])
        elif isinstance(message, AssistantMessage):
            blocks: list[dict[str, Any]] = []
            if message.text:
                blocks.append({"type": "text", "text": message.text})
            blocks.extend(
                {"type": "tool_use", "id": c.id, "name": c.name, "input": c.arguments} for c in message.tool_calls
            )
            add("assistant", blocks)
        elif isinstance(message, ToolResultMessage):
            block: dict[str, Any] = {"type": "tool_result", "tool_use_id": message.tool_call_id,
                                     "content": message.content}
            if message.is_error:
                block["is_error"] = True
            add("user", [block])
        else:  # pragma: no cover - the Message union is closed
            raise TypeError(f"not a message: {message!r}")
    return ("\n\n".join(system) or None), turns


@dataclass
class _ToolBlock:
    id: str
    name: str
    index: int
    initial: dict[str, Any] = field(default_factory=dict)
    fragments: list[str] = field(default_factory=list)


class AnthropicProvider(StreamingProvider):
    """Claude, streamed. ``max_retries`` of the SDK is always 0: retries are ours (see
    :class:`~.base.RetryPolicy`), so a rate limit surfaces with its ``retry_after``."""

    name = "anthropic"

    def __init__(
        self,
        *,
        api_key: str | SecretStr,
        model: str,
        base_url: str = "https://api.anthropic.com",
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
        self._owns_http_client = http_client is None
        if http_client is None:
            http_client = anthropic.DefaultAsyncHttpxClient(verify=shared_ssl_context())
        self._client = anthropic.AsyncAnthropic(
            api_key=key,
            base_url=base_url,
            max_retries=0,
            http_client=http_client,  # a pool shared by the caller (who closes it), or our own
            timeout=anthropic.Timeout(read_timeout_s, connect=connect_timeout_s),
        )

    @classmethod
    def from_settings(cls, settings: ModelSettings, *, api_key: SecretStr,
                      http_client: Any = None) -> AnthropicProvider:
        return cls(
            api_key=api_key, model=settings.effective_model, base_url=settings.effective_base_url,
            max_tokens=settings.max_tokens, temperature=settings.temperature,
            connect_timeout_s=settings.connect_timeout_s, read_timeout_s=settings.read_timeout_s,
            retry=settings.retry_policy(), http_client=http_client,
        )

    async def aclose(self) -> None:
        if self._owns_http_client:
            await self._client.close()

    def _request(self, messages: Sequence[Message], tools: Sequence[ToolDefinition], *, model: str,
                 max_tokens: int, temperature: float | None, stop_sequences: Sequence[str] | None) -> dict[str, Any]:
        system, turns = to_anthropic_messages(messages)
        request: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "messages": turns, "stream": True}
        if system:
            request["system"] = system
        if tools:
            request["tools"] = to_anthropic_tools(tools)
        # No ``temperature``: the Messages API version this SDK speaks (anthropic>=2) has no sampling
        # parameters any more, so the setting only applies to OpenAI-compatible endpoints.
        if stop_sequences:
            request["stop_sequences"] = list(stop_sequences)
        return request

    async def _open(self, request: dict[str, Any]) -> Any:
        return await self._client.messages.create(**request)

    def _map_error(self, exc: BaseException) -> ProviderError | None:
        return map_sdk_exception(exc, sdk=anthropic, provider=self.name, url=self.base_url)

    async def _events(self, reader: AsyncIterator[Any], tools: Sequence[ToolDefinition]) -> AsyncIterator[Event]:
        blocks: dict[int, _ToolBlock] = {}
        calls = 0
        input_tokens = output_tokens = 0
        stop_reason: str | None = None
        saw_usage = False
        async for event in reader:
            kind = getattr(event, "type", None)
            if kind == "message_start":
                usage = getattr(event.message, "usage", None)
                if usage is not None:
                    saw_usage = True
                    input_tokens = _input_tokens(usage)
                    output_tokens = getattr(usage, "output_tokens", 0) or 0
            elif kind == "content_block_start":
                block = event.content_block
                if block.type == "tool_use":
                    initial = block.input if isinstance(block.input, dict) else {}
                    blocks[event.index] = _ToolBlock(id=block.id, name=block.name, index=calls, initial=initial)
                    calls += 1
                    yield ToolCallStarted(id=block.id, name=block.name, index=blocks[event.index].index)
                elif block.type == "text" and getattr(block, "text", ""):
                    yield TextDelta(block.text)
            elif kind == "content_block_delta":
                delta = event.delta
                if delta.type == "text_delta":
                    if delta.text:
                        yield TextDelta(delta.text)
                elif delta.type == "input_json_delta":
                    tool = blocks.get(event.index)
                    if tool is None:
                        raise ProviderProtocolError(
                            f"anthropic sent tool-call arguments for block {event.index}, which is no tool call",
                            provider=self.name,
                        )
                    if delta.partial_json:
                        tool.fragments.append(delta.partial_json)
                        yield ToolCallDelta(id=tool.id, index=tool.index, fragment=delta.partial_json)
                # thinking, signature and citation deltas are not part of the neutral model
            elif kind == "content_block_stop":
                tool = blocks.pop(event.index, None)
                if tool is not None:
                    raw = "".join(tool.fragments)
                    if not raw.strip() and tool.initial:  # no fragments: the start block's input stands
                        yield ToolCallComplete(id=tool.id, name=tool.name, index=tool.index,
                                               arguments=dict(tool.initial))
                    else:
                        yield complete_tool_call(tool.id, tool.name, tool.index, raw)
            elif kind == "message_delta":
                stop_reason = event.delta.stop_reason or stop_reason
                usage = getattr(event, "usage", None)
                if usage is not None:
                    saw_usage = True
                    output_tokens = getattr(usage, "output_tokens", None) or output_tokens
                    if getattr(usage, "input_tokens", None) is not None:
                        input_tokens = max(input_tokens, _input_tokens(usage))
            elif kind == "message_stop":
                break
        if stop_reason is None:
            raise ProviderProtocolError(
                f"anthropic at {self.base_url} ended the stream before the model finished (no stop_reason)",
                provider=self.name,
            )
        if saw_usage:
            yield Usage(input_tokens=input_tokens, output_tokens=output_tokens)
        yield Finish(reason=_STOP_REASONS.get(stop_reason, "stop"), raw_reason=stop_reason)


def _input_tokens(usage: Any) -> int:
    return sum(getattr(usage, name, None) or 0
               for name in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"))

