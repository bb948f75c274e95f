"""The provider-neutral model of a model call: messages, tools, streamed events and errors.

The agent loop speaks only these types; each adapter (:mod:`.anthropic_provider`,
:mod:`.openai_provider`) translates them to and from one wire format.

A turn goes in as a list of :data:`Message` plus the :class:`ToolDefinition` list; it comes
back as an async iterator of :data:`Event`, always in this order::

    (TextDelta | ToolCallStarted | ToolCallDelta | ToolCallComplete | ToolCallInvalid)*
    Usage?
    Finish

``Finish`` is the last event of every stream that was not broken off by an exception. A
stream stopped through its ``cancel`` event ends with ``Finish(reason="stop", cancelled=True)``;
a stream whose iterator is closed (``aclose()``) or whose task is cancelled ends without one.
Either way the HTTP response is closed before control returns to the caller.

Failures raise a :class:`ProviderError` subclass (never an SDK or httpx exception), with a
message that says what happened and what to do about it.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import email.utils
import functools
import importlib
import json
import logging
import os
import random
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Protocol, TypeAlias, runtime_checkable
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger(__name__)

__all__ = [
    "AssistantMessage",
    "AuthenticationFailed",
    "BadRequest",
    "Completion",
    "Event",
    "Finish",
    "FinishReason",
    "Message",
    "Overloaded",
    "Provider",
    "ProviderConfigError",
    "ProviderConnectionError",
    "ProviderError",
    "ProviderProtocolError",
    "ProviderTimeout",
    "RateLimited",
    "ServerError",
    "SystemMessage",
    "TextDelta",
    "ToolCall",
    "ToolCallComplete",
    "ToolCallDelta",
    "ToolCallInvalid",
    "ToolCallStarted",
    "ToolDefinition",
    "ToolResultMessage",
    "Usage",
    "UserMessage",
    "collect",
    "parse_tool_arguments",
]


# --------------------------------------------------------------------------------------------
# Messages


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SystemMessage(_Frozen):
    """Instructions for the model. Anthropic takes them as the top-level ``system`` prompt (several
    are joined with a blank line); OpenAI-compatible endpoints as ``role: system`` messages."""

    role: Literal["system"] = "system"
    text: str


class UserMessage(_Frozen):
    role: Literal["user"] = "user"
    text: str


class ToolCall(_Frozen):
    """A tool call the model made: ``id`` is the provider's call id, which the result refers to."""

    id: str
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)


class AssistantMessage(_Frozen):
    """A model turn from the history: its text and the tool calls it made (either may be empty)."""

    role: Literal["assistant"] = "assistant"
    text: str = ""
    tool_calls: tuple[ToolCall, ...] = ()


class ToolResultMessage(_Frozen):
    """The result of one tool call, sent back in the next request.

    ``content`` is the text the model sees (the loop renders MCP content blocks and structured
    output to text). ``is_error`` marks a failed call: Anthropic has a native flag for it; for
    OpenAI-compatible endpoints, which have none, the content is prefixed with ``Error:``.
    """

    role: Literal["tool"] = "tool"
    tool_call_id: str
    content: str
    is_error: bool = False
    name: str | None = None  # the tool's name, for readability of stored conversations


Message: TypeAlias = Annotated[
    SystemMessage | UserMessage | AssistantMessage | ToolResultMessage, Field(discriminator="role")
]


class ToolDefinition(_Frozen):
    """A tool the model may call: name, description and the JSON schema of its arguments."""

    name: str
    description: str = ""
    input_schema: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})

    @classmethod
    def from_mcp(cls, tool: Any) -> ToolDefinition:
        """From an MCP tool definition: an ``mcp.types.Tool`` or its JSON form (``inputSchema``)."""
        if isinstance(tool, Mapping):
            name = tool["name"]
            description = tool.get("description")
            schema = tool.get("inputSchema", tool.get("input_schema"))
        else:
            name = tool.name
            description = getattr(tool, "description", None)
            schema = getattr(tool, "input_schema", None)
            if schema is None:
                schema = getattr(tool, "inputSchema", None)
        schema = dict(schema) if isinstance(schema, Mapping) else {}
        schema.setdefault("type", "object")
        if schema["type"] == "object":
            schema.setdefault("properties", {})
        return cls(name=name, description=description or "", input_schema=schema)


# --------------------------------------------------------------------------------------------
# Events

FinishReason: TypeAlias = Literal["end_turn", "tool_use", "max_tokens", "stop"]


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str
    type: Literal["text_delta"] = "text_delta"


@dataclass(frozen=True, slots=True)
class ToolCallStarted:
    """The model began a tool call. ``index`` counts the tool calls of this turn from 0."""

    id: str
    name: str
    index: int
    type: Literal["tool_call_started"] = "tool_call_started"


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A fragment of a tool call's JSON arguments, as it arrived (for showing progress only)."""

    id: str
    index: int
    fragment: str
    type: Literal["tool_call_delta"] = "tool_call_delta"


@dataclass(frozen=True, slots=True)
class ToolCallComplete:
    """A tool call with its arguments assembled and parsed into a JSON object."""

    id: str
    name: str
    index: int
    arguments: dict[str, Any]
    type: Literal["tool_call_complete"] = "tool_call_complete"

    def to_tool_call(self) -> ToolCall:
        return ToolCall(id=self.id, name=self.name, arguments=self.arguments)


@dataclass(frozen=True, slots=True)
class ToolCallInvalid:
    """A tool call whose assembled arguments are not a JSON object.

    Not an exception: the turn goes on, and the loop answers the call with an error result
    (``ToolResultMessage(..., is_error=True, content=error)``) so the model can correct itself.
    ``raw_arguments`` is what the model sent; ``error`` says what is wrong with it.
    """

    id: str
    name: str
    index: int
    raw_arguments: str
    error: str
    type: Literal["tool_call_invalid"] = "tool_call_invalid"

    def to_tool_call(self) -> ToolCall:
        """The call for the history (arguments ``{}``: the provider must get a JSON object back)."""
        return ToolCall(id=self.id, name=self.name, arguments={})


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens of this model call. ``input_tokens`` includes prompt-cache reads and writes."""

    input_tokens: int
    output_tokens: int
    type: Literal["usage"] = "usage"


@dataclass(frozen=True, slots=True)
class Finish:
    """The end of the stream.

    ``reason``: ``end_turn`` (the model finished), ``tool_use`` (it waits for tool results),
    ``max_tokens`` (cut off by the token limit) or ``stop`` (a stop sequence, a refusal or
    content filter, or cancellation). ``raw_reason`` is the provider's own word for it.
    """

    reason: FinishReason
    raw_reason: str | None = None
    cancelled: bool = False
    type: Literal["finish"] = "finish"


Event: TypeAlias = TextDelta | ToolCallStarted | ToolCallDelta | ToolCallComplete | ToolCallInvalid | Usage | Finish


def parse_tool_arguments(raw: str) -> dict[str, Any]:
    """The JSON object in ``raw`` (empty or blank means no arguments). Raises ``ValueError``
    with a message fit to show the model when ``raw`` is not a JSON object."""
    if not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"the tool-call arguments are not valid JSON ({exc.msg} at character {exc.pos})") from None
    if not isinstance(value, dict):
        raise ValueError(f"the tool-call arguments must be a JSON object, not {type(value).__name__}")
    return value


def complete_tool_call(call_id: str, name: str, index: int, raw: str) -> ToolCallComplete | ToolCallInvalid:
    try:
        return ToolCallComplete(id=call_id, name=name, index=index, arguments=parse_tool_arguments(raw))
    except ValueError as exc:
        log.warning("tool call %s (%s) has invalid arguments: %s", call_id, name, exc)
        return ToolCallInvalid(id=call_id, name=name, index=index, raw_arguments=raw, error=str(exc))


@dataclass
class Completion:
    """A whole streamed turn, gathered by :func:`collect`."""

    text: str = ""
    tool_calls: list[ToolCallComplete] = field(default_factory=list)
    invalid_tool_calls: list[ToolCallInvalid] = field(default_factory=list)
    usage: Usage | None = None
    finish: Finish | None = None

    def to_message(self) -> AssistantMessage:
        """The assistant message for the history, tool calls (valid and invalid) in call order."""
        calls = sorted([*self.tool_calls, *self.invalid_tool_calls], key=lambda c: c.index)
        return AssistantMessage(text=self.text, tool_calls=tuple(c.to_tool_call() for c in calls))


async def collect(events: AsyncIterator[Event]) -> Completion:
    """Consume a stream into a :class:`Completion` (for callers that need no streaming)."""
    out = Completion()
    parts: list[str] = []
    async for event in events:
        if isinstance(event, TextDelta):
            parts.append(event.text)
        elif isinstance(event, ToolCallComplete):
            out.tool_calls.append(event)
        elif isinstance(event, ToolCallInvalid):
            out.invalid_tool_calls.append(event)
        elif isinstance(event, Usage):
            out.usage = event
        elif isinstance(event, Finish):
            out.finish = event
    out.text = "".join(parts)
    return out


# --------------------------------------------------------------------------------------------
# Errors


class ProviderError(Exception):
    """A model call failed. ``retryable``: the same request may succeed later."""

    retryable = False

    def __init__(self, message: str, *, provider: str = "", status_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.provider = provider
        self.status_code = status_code


class ProviderConfigError(ProviderError):
    """The tenant's model settings are incomplete or wrong (no key, no model, bad URL)."""


class RateLimited(ProviderError):
    """HTTP 429 or a rate-limit error event. ``retry_after``: seconds the server asked to wait."""

    retryable = True

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class AuthenticationFailed(ProviderError):
    """HTTP 401/403: the API key is missing, wrong, or lacks permission."""


class BadRequest(ProviderError):
    """HTTP 400/404/413/422: the provider refused this request (``server_message`` says why)."""

    def __init__(self, message: str, *, server_message: str = "", **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.server_message = server_message


class ServerError(ProviderError):
    """HTTP 5xx or an ``api_error`` event: the provider failed."""

    retryable = True


class Overloaded(ServerError):
    """HTTP 529/503 or an ``overloaded_error`` event: the provider is busy; try again later."""


class ProviderConnectionError(ProviderError):
    """The endpoint could not be reached, or the connection broke mid-stream."""

    retryable = True


class ProviderTimeout(ProviderConnectionError):
    """Connecting, or waiting for the next bytes of the stream, took longer than configured."""


class ProviderProtocolError(ProviderError):
    """The endpoint answered something that is not the expected wire format (or stopped early)."""


def safe_url(url: str) -> str:
    """``url`` without user info, query or fragment, for messages and logs."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid url>"
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def parse_retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds from ``retry-after-ms``, or ``retry-after`` as seconds or an HTTP date."""
    if not headers:
        return None
    value = headers.get("retry-after-ms")
    if value is not None:
        with contextlib.suppress(ValueError):
            return max(0.0, float(value) / 1000)
    value = headers.get("retry-after")
    if value is None:
        return None
    with contextlib.suppress(ValueError):
        return max(0.0, float(value))
    parsed = email.utils.parsedate_tz(value)
    if parsed is None:
        return None
    return max(0.0, float(email.utils.mktime_tz(parsed) - time.time()))


def server_message(body: object, fallback: str = "") -> str:
    """The human-readable message in an error body of any of the usual shapes: Anthropic's
    ``{"error": {"message"}}``, OpenAI's and Ollama's (same), vLLM's ``{"message"}``, plain text."""
    if isinstance(body, Mapping):
        error = body.get("error")
        if isinstance(error, Mapping) and isinstance(error.get("message"), str):
            return error["message"]
        if isinstance(error, str):
            return error
        if isinstance(body.get("message"), str):
            return body["message"]
        if isinstance(body.get("detail"), str):
            return body["detail"]
        return json.dumps(body, ensure_ascii=False)[:500]
    if isinstance(body, str) and body.strip():
        return body.strip()[:500]
    return fallback


def error_type(body: object) -> str | None:
    """The error's ``type`` (``overloaded_error``, ``rate_limit_error``, ...) when the body has one."""
    if isinstance(body, Mapping):
        error = body.get("error")
        if isinstance(error, Mapping) and isinstance(error.get("type"), str):
            return error["type"]
        if isinstance(body.get("type"), str) and body.get("type") != "error":
            return body["type"]
    return None


_TYPE_TO_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "overloaded_error": 529,
    "server_error": 500,
}


def _status_from_body(body: object, kind: str | None) -> int:
    """The HTTP status an error event stands for: by its type (Anthropic, OpenAI), else by its
    numeric ``code`` (vLLM sends ``{"type": "BadRequestError", "code": 400}``), else 500."""
    if kind in _TYPE_TO_STATUS:
        return _TYPE_TO_STATUS[kind]
    lowered = (kind or "").lower()
    for needle, status in (("rate", 429), ("overload", 529), ("auth", 401), ("badrequest", 400), ("invalid", 400)):
        if needle in lowered.replace("_", ""):
            return status
    error = body.get("error") if isinstance(body, Mapping) else None
    for source in (error, body):
        code = source.get("code") if isinstance(source, Mapping) else None
        with contextlib.suppress(TypeError, ValueError):
            if 400 <= int(code) <= 599:  # type: ignore[arg-type]
                return int(code)  # type: ignore[arg-type]
    return 500


def error_from_response(
    *,
    provider: str,
    url: str,
    status: int | None,
    body: object,
    headers: Mapping[str, str] | None = None,
    mid_stream: bool = False,
) -> ProviderError:
    """Our exception for an HTTP error response, or for an error event inside a 200 stream
    (``mid_stream``: then the body's error ``type`` decides, since the status says nothing)."""
    kind = error_type(body)
    effective = status if status and status >= 400 and not mid_stream else _status_from_body(body, kind)
    detail = server_message(body, fallback=f"HTTP {status}")
    where = f"{provider} at {safe_url(url)}"
    said = f"mid-stream error event ({kind or 'error'})" if mid_stream else f"HTTP {status}"
    common: dict[str, Any] = {"provider": provider, "status_code": status}
    if effective == 429:
        retry_after = parse_retry_after(headers)
        wait = f"; retry after {retry_after:g} s" if retry_after is not None else ""
        return RateLimited(f"{where} is rate limiting us ({said}): {detail}{wait}", retry_after=retry_after, **common)
    if effective in (401, 403):
        return AuthenticationFailed(
            f"{where} rejected the credentials ({said}): {detail}. Check the API key in the tenant's model settings.",
            **common,
        )
    if effective in (529, 503) or kind == "overloaded_error":
        return Overloaded(f"{where} is overloaded ({said}): {detail}. Try again in a moment.", **common)
    if effective >= 500:
        return ServerError(f"{where} failed ({said}): {detail}", **common)
    if effective == 408:
        return ProviderTimeout(f"{where} timed out ({said}): {detail}", **common)
    return BadRequest(f"{where} refused the request ({said}): {detail}", server_message=detail, **common)


def _cause(exc: BaseException) -> str:
    """The innermost transport error's text ("[Errno 111] Connection refused"), for messages."""
    seen: set[int] = set()
    current: BaseException | None = exc
    text = ""
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno:
            return os.strerror(current.errno)  # "Connection refused", not "Connect call failed"
        if str(current):
            text = str(current)
        current = current.__cause__ or current.__context__
    return text or type(exc).__name__


@functools.cache
def shared_ssl_context() -> Any:
    """One TLS context for the HTTP clients of all providers: building one loads the CA store,
    tens of milliseconds each time, and the host builds a provider per tenant."""
    import httpx2

    return httpx2.create_ssl_context()


@functools.cache
def _transport_errors() -> tuple[tuple[type[BaseException], ...], tuple[type[BaseException], ...]]:
    """Timeout and transport exception classes of the HTTP libraries the SDKs use (``httpx2`` in
    the current majors, ``httpx`` before), which their stream iterators let through."""
    timeouts: list[type[BaseException]] = []
    transport: list[type[BaseException]] = []
    for name in ("httpx2", "httpx"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        timeouts.append(module.TimeoutException)
        transport.append(module.TransportError)
    return tuple(timeouts), tuple(transport)


def map_sdk_exception(exc: BaseException, *, sdk: Any, provider: str, url: str) -> ProviderError | None:
    """Our error for an exception of the ``anthropic`` or ``openai`` SDK (both generated alike)
    or of their HTTP transport (``httpx2``, which their streams let through); None otherwise."""
    timeouts, transport = _transport_errors()
    where = f"{provider} at {safe_url(url)}"
    if isinstance(exc, sdk.APIStatusError):
        headers = exc.response.headers if exc.response is not None else None
        status = exc.status_code
        return error_from_response(provider=provider, url=url, status=status, body=exc.body, headers=headers,
                                   mid_stream=status < 400)
    if isinstance(exc, (sdk.APITimeoutError, *timeouts)):
        return ProviderTimeout(f"{where} did not answer in time ({_cause(exc)})", provider=provider)
    if isinstance(exc, (sdk.APIConnectionError, *transport)):
        return ProviderConnectionError(f"cannot reach {where}: {_cause(exc)}", provider=provider)
    if isinstance(exc, sdk.APIResponseValidationError):
        return ProviderProtocolError(f"{where} sent a response we cannot read: {exc}", provider=provider)
    if isinstance(exc, sdk.APIError):  # an error inside a 200 stream that is not a status error
        body = exc.body if isinstance(exc.body, Mapping) and "error" in exc.body else {"error": exc.body}
        return error_from_response(provider=provider, url=url, status=None, body=body, mid_stream=True)
    if isinstance(exc, json.JSONDecodeError):
        return ProviderProtocolError(f"{where} sent an event that is not JSON: {exc.msg}", provider=provider)
    return None


# --------------------------------------------------------------------------------------------
# The provider protocol and the machinery both adapters share


@runtime_checkable
class Provider(Protocol):
    """A chat model with tool use, streamed."""

    name: str  # "anthropic", "openai"

    @property
    def model(self) -> str:
        """The model name requests use when no ``model=`` is given."""
        ...

    def stream(
        self,
        messages: Sequence[Message],
        tools: Sequence[ToolDefinition] = (),
        *,
        model: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        stop_sequences: Sequence[str] | None = None,
        cancel: asyncio.Event | None = None,
    ) -> AsyncIterator[Event]:
        """Send one turn and stream the answer (an async generator; ``aclose()`` it to stop)."""
        ...

    async def aclose(self) -> None:
        """Close the HTTP connections."""
        ...


class _Cancelled(Exception):
    """The caller's cancel event was set."""


class _Reader:
    """Next item of an async iterator, or :class:`_Cancelled` as soon as ``cancel`` is set."""

    def __init__(self, source: Any, cancel: asyncio.Event | None) -> None:
        self._it = source.__aiter__()
        self._cancel = cancel
        self._waiter: asyncio.Future[Any] | None = None
        self._pending: asyncio.Future[Any] | None = None

    def __aiter__(self) -> _Reader:
        return self

    async def __anext__(self) -> Any:
        if self._cancel is None:
            return await self._it.__anext__()
        if self._cancel.is_set():
            raise _Cancelled
        if self._waiter is None:
            self._waiter = asyncio.ensure_future(self._cancel.wait())
        self._pending = asyncio.ensure_future(self._it.__anext__())
        await asyncio.wait({self._pending, self._waiter}, return_when=asyncio.FIRST_COMPLETED)
        if self._cancel.is_set():
            raise _Cancelled
        pending, self._pending = self._pending, None
        return pending.result()

    async def close(self) -> None:
        for fut in (self._pending, self._waiter):
            if fut is None:
                continue
            if not fut.done():
                fut.cancel()
            with contextlib.suppress(BaseException):  # also marks a finished read's error as seen
                await fut
        self._pending = self._waiter = None
        aclose = getattr(self._it, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(Exception):
                await aclose()


async def _open_or_cancel(opening: Any, cancel: asyncio.Event | None) -> Any:
    """Await ``opening`` (the request, until the response headers); raise :class:`_Cancelled`
    and abandon the request (closing its connection) when ``cancel`` is set first."""
    if cancel is None:
        return await opening
    request = asyncio.ensure_future(opening)
    waiter = asyncio.ensure_future(cancel.wait())
    try:
        await asyncio.wait({request, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for fut in (request, waiter):
            if not fut.done():
                fut.cancel()
                with contextlib.suppress(BaseException):
                    await fut
    if cancel.is_set():
        if not request.cancelled() and request.exception() is None:
            with contextlib.suppress(Exception):
                await request.result().close()
        raise _Cancelled
    return request.result()


async def _sleep_or_cancel(seconds: float, cancel: asyncio.Event | None) -> bool:
    """Sleep; True when ``cancel`` was set meanwhile."""
    if cancel is None:
        await asyncio.sleep(seconds)
        return False
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(cancel.wait(), seconds)
    return cancel.is_set()


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of a request that failed before anything streamed (never of a half-streamed one).

    The SDKs' own retries are switched off: they would sleep for whatever ``retry-after`` says
    (an hour, if so told) with no way to cancel. Here a wait longer than ``max_wait_s`` is not
    taken; the :class:`RateLimited` error goes to the caller with its ``retry_after`` instead.
    """

    max_retries: int = 2
    max_wait_s: float = 8.0
    initial_backoff_s: float = 0.5

    def delay(self, attempt: int, error: ProviderError) -> float | None:
        """Seconds to wait before retry number ``attempt`` (1-based), or None for no retry."""
        if attempt > self.max_retries or not error.retryable:
            return None
        if isinstance(error, RateLimited) and error.retry_after is not None:
            return error.retry_after if error.retry_after <= self.max_wait_s else None
        backoff = self.initial_backoff_s * 2 ** (attempt - 1) * (1 - 0.25 * random.random())  # noqa: S311
        return min(backoff, self.max_wait_s)


class StreamingProvider(abc.ABC):
    """What both adapters share: retries, cancellation, closing the response, error mapping."""

    name: str = ""

    def __init__(self, *, model: str, base_url: str, max_tokens: int, temperature: float | None,
                 retry: RetryPolicy, secret: str | None) -> None:
        self._model = model
        self.base_url = base_url
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.retry = retry
        self._secret = secret  # only to scrub it from error messages

    @property
    def model(self) -> str:
        return self._model

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.model!r}, base_url={safe_url(self.base_url)!r})"

    # -- per adapter

    @abc.abstractmethod
    async def _open(self, request: dict[str, Any]) -> Any:
        """Send the request; return the SDK's stream (raises SDK errors)."""

    @abc.abstractmethod
    def _events(self, reader: AsyncIterator[Any], tools: Sequence[ToolDefinition]) -> AsyncIterator[Event]:
        """Translate the SDK's stream items into our events, ending with ``Finish``."""

    @abc.abstractmethod
    def _request(self, messages: Sequence[Message], tools: Sequence[ToolDefinition], *, model: str,
                 max_tokens: int, temperature: float | None, stop_sequences: Sequence[str] | None) -> dict[str, Any]:
        """The request keyword arguments for the SDK."""

    @abc.abstractmethod
    def _map_error(self, exc: BaseException) -> ProviderError | None:
        """Our error for an SDK / transport exception, or None when it is not one of those."""

    @abc.abstractmethod
    async def aclose(self) -> None: ...

    # -- shared

    def _scrub(self, error: ProviderError) -> ProviderError:
        """Never let the key through, even where a server echoes it back in its error message."""
        if self._secret and self._secret in error.message:
            error.message = error.message.replace(self._secret, "***")
            error.args = (error.message,)
        if self._secret and isinstance(error, BadRequest):
            error.server_message = error.server_message.replace(self._secret, "***")
        return error

    def _error(self, exc: BaseException) -> ProviderError | None:
        mapped = exc if isinstance(exc, ProviderError) else self._map_error(exc)
        return None if mapped is None else self._scrub(mapped)

    async def stream(
        self,
        messages: Sequence[Message],
        tools: Sequence[ToolDefinition] = (),
        *,
        model: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        stop_sequences: Sequence[str] | None = None,
        cancel: asyncio.Event | None = None,
    ) -> AsyncIterator[Event]:
        request = self._request(
            messages, tools, model=model or self.model, max_tokens=max_tokens or self.max_tokens,
            temperature=temperature if temperature is not None else self.temperature, stop_sequences=stop_sequences,
        )
        attempt = 0
        while True:
            try:
                if cancel is not None and cancel.is_set():
                    raise _Cancelled
                sdk_stream = await _open_or_cancel(self._open(request), cancel)
                break
            except _Cancelled:
                yield Finish(reason="stop", raw_reason="cancelled", cancelled=True)
                return
            except Exception as exc:
                error = self._error(exc)
                if error is None:
                    raise
                attempt += 1
                delay = self.retry.delay(attempt, error)
                if delay is None:
                    raise error from None  # the SDK error may quote the key; ours is scrubbed
                log.info("%s: %s; retry %d in %.2f s", self.name, error.message, attempt, delay)
                if await _sleep_or_cancel(delay, cancel):
                    yield Finish(reason="stop", raw_reason="cancelled", cancelled=True)
                    return

        reader = _Reader(sdk_stream, cancel)
        try:
            async for event in self._events(reader, tools):
                yield event
        except _Cancelled:
            yield Finish(reason="stop", raw_reason="cancelled", cancelled=True)
        except Exception as exc:
            error = self._error(exc)
            if error is None:
                raise
            raise error from None  # the SDK error may quote the key; ours is scrubbed
        finally:
            await reader.close()
            with contextlib.suppress(Exception):
                await sdk_stream.close()
