"""The agent loop: one user turn, from the question to the answer, as a stream of events.

::

    agent = Agent(provider, mcp, ApprovalPolicy(store, tenant, user), interaction)
    async for event in agent.run(history, "Was kostet Schraube M8?", stop=stop_event):
        ...  # the web layer streams each event to the browser (``event.to_dict()`` is JSON-ready)

The turn: the conversation history plus the new user message go to the model together with
the user's tools (from the gateway, without those the admin blocked); the model answers with
text and/or tool calls; the calls of one model step run concurrently; their results go back
to the model; and so on until the model answers without calling a tool. Bounded by a step limit
(model calls per turn), a per-turn token budget (input + output tokens of every model call,
sampling included), and per-tool timeouts. The user's Stop (``stop``, an ``asyncio.Event``)
cancels the model stream and the tool calls in flight (the MCP session sends
``notifications/cancelled``, which the gateway passes upstream); the text so far is kept and the
answer marked partial.

Events, in the order a turn produces them (see each class)::

    (TextDelta | ToolCallStarted | ApprovalNeeded | ApprovalDecided | ToolProgress | ToolCallFinished
     | Citation | Usage | Notice | Error)*  AnswerComplete

:class:`AnswerComplete` is always the last event, also after an error or Stop; its
``messages`` are this turn's messages (the user's first), to append to the history.

Approval (:mod:`kontor.host.approvals`): a call that needs it yields :class:`ApprovalNeeded`
and waits for :meth:`UserInteraction.ask_approval`; a denied or blocked call is answered to the
model with an error result and never reaches the gateway. Invalid tool-call arguments, unknown
tools, timeouts and failures also go back to the model as error results, so it can correct
itself. Elicitation requests of servers go to :meth:`UserInteraction.elicit`; sampling requests
are answered with the tenant's model after :meth:`UserInteraction.approve_sampling`.

Without a model (``provider=None``) the host says so plainly and runs ``lakehouse__search`` for
the question, answering with the best passages as citations, labelled as retrieved passages.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Literal, Protocol, TypeAlias, TypeVar, runtime_checkable

import mcp_types as types
from mcp.shared.exceptions import MCPError
from pydantic import BaseModel

from kontor.host.approvals import ApprovalDecision, ApprovalPolicy, Verdict
from kontor.host.citations import Citation, CitationIndex, extract_citations, render_for_model
from kontor.host.mcp_session import McpSession, McpSessionError, ToolCallTimeout, ToolInfo
from kontor.host.providers import (
    AssistantMessage,
    Finish,
    Message,
    Provider,
    ProviderError,
    SystemMessage,
    ToolCallComplete,
    ToolCallInvalid,
    ToolResultMessage,
    UserMessage,
)
from kontor.host.providers import TextDelta as ProviderTextDelta
from kontor.host.providers import Usage as ProviderUsage

#: ``_meta`` key with the user's decision on a call; the gateway audits it (and runs no refused call).
APPROVAL_META = "io.kontor/approval"
log = logging.getLogger(__name__)

__all__ = [
    "Agent",
    "AgentConfig",
    "AgentEvent",
    "AnswerComplete",
    "ApprovalDecided",
    "ApprovalNeeded",
    "CitationFound",
    "DEFAULT_SYSTEM_PROMPT",
    "ElicitationAnswer",
    "Error",
    "Notice",
    "SamplingRequest",
    "TextDelta",
    "ToolCallFinished",
    "ToolCallStarted",
    "ToolProgress",
    "Usage",
    "UserInteraction",
    "run_turn",
]

T = TypeVar("T")

DEFAULT_SYSTEM_PROMPT = (
    "You are Kontor, the assistant of a company's knowledge base. Use the tools to look things up "
    "instead of guessing; several independent tool calls may be made at once. When you use passages "
    "from a search, cite them with their numbers like [1] or [2][3]. Tools that change data need the "
    "user's approval: if the user denies a call, do not try it again unless asked. Answer in the "
    "language of the question."
)

ToolStatus: TypeAlias = Literal["ok", "error", "denied", "timeout", "cancelled"]
StopReason: TypeAlias = Literal["end_turn", "max_tokens", "stop", "cancelled", "step_limit", "token_budget",
                                "error", "no_model"]


# --------------------------------------------------------------------------------------------
# What the web layer implements


@dataclass(frozen=True)
class ElicitationAnswer:
    """The user's answer to a server's form: ``accept`` with ``content`` (the form's values),
    ``decline`` (explicitly no) or ``cancel`` (dismissed)."""

    action: Literal["accept", "decline", "cancel"]
    content: Mapping[str, Any] | None = None

    @classmethod
    def accept(cls, content: Mapping[str, Any]) -> ElicitationAnswer:
        return cls("accept", dict(content))

    @classmethod
    def decline(cls) -> ElicitationAnswer:
        return cls("decline")

    @classmethod
    def cancel(cls) -> ElicitationAnswer:
        return cls("cancel")


@dataclass(frozen=True)
class SamplingRequest:
    """A server asks the tenant's model for a completion (shown to the user for approval)."""

    messages: tuple[tuple[str, str], ...]  # (role, text)
    system_prompt: str | None
    max_tokens: int
    temperature: float | None = None
    model_hint: str | None = None

    @classmethod
    def from_params(cls, params: types.CreateMessageRequestParams) -> SamplingRequest:
        hints = params.model_preferences.hints if params.model_preferences is not None else None
        return cls(messages=tuple((m.role, _sampling_text(m)) for m in params.messages),
                   system_prompt=params.system_prompt, max_tokens=params.max_tokens,
                   temperature=params.temperature, model_hint=(hints[0].name if hints else None))


@runtime_checkable
class UserInteraction(Protocol):
    """The user's side of a turn; the web layer implements it (each method waits for the user).

    Every method may be cancelled (the user pressed Stop, the turn ended); an implementation
    should then withdraw the question it shows.
    """

    async def ask_approval(self, tool: ToolInfo, arguments: Mapping[str, Any], *, call_id: str,
                           reason: str) -> ApprovalDecision:
        """May this call run? ``allow_once``, ``always`` (this tool, from now on) or ``deny``.
        ``call_id`` is the id of the :class:`ApprovalNeeded` event shown for it."""
        ...

    async def elicit(self, message: str, schema: Mapping[str, Any]) -> ElicitationAnswer:
        """A server asks the user to fill in a form generated from ``schema`` (flat JSON schema)."""
        ...

    async def approve_sampling(self, request: SamplingRequest) -> bool:
        """May the tenant's model answer this server's sampling request?"""
        ...


# --------------------------------------------------------------------------------------------
# Events


class _Event:
    type: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        """The event as JSON-ready data, with its ``type``."""
        return {"type": self.type, **_jsonable(asdict(self))}  # type: ignore[call-overload]


@dataclass(frozen=True)
class TextDelta(_Event):
    """A piece of the answer's text."""

    type: ClassVar[str] = "text_delta"
    text: str


@dataclass(frozen=True)
class ToolCallStarted(_Event):
    """The loop took up a tool call of the model (approval, if needed, comes next)."""

    type: ClassVar[str] = "tool_call_started"
    call_id: str
    tool: str
    arguments: Mapping[str, Any]
    title: str | None = None


@dataclass(frozen=True)
class ApprovalNeeded(_Event):
    """The call waits for the user's decision (:meth:`UserInteraction.ask_approval`)."""

    type: ClassVar[str] = "approval_needed"
    call_id: str
    tool: str
    arguments: Mapping[str, Any]
    reason: str
    destructive: bool
    can_remember: bool  # false when the admin set the tool to always-ask ("always" counts once)


@dataclass(frozen=True)
class ApprovalDecided(_Event):
    type: ClassVar[str] = "approval_decided"
    call_id: str
    tool: str
    decision: ApprovalDecision


@dataclass(frozen=True)
class ToolProgress(_Event):
    """A progress notification of a running call (``total`` None: unknown)."""

    type: ClassVar[str] = "tool_progress"
    call_id: str
    progress: float
    total: float | None = None
    message: str | None = None


@dataclass(frozen=True)
class ToolCallFinished(_Event):
    """A call ended. ``status``: ok, error (the tool failed, or the call was invalid or refused),
    denied (by the user or the admin; it never ran), timeout, cancelled (Stop)."""

    type: ClassVar[str] = "tool_call_finished"
    call_id: str
    tool: str
    status: ToolStatus
    duration_s: float
    preview: str = ""
    structured_content: Any = None
    error: str | None = None


@dataclass(frozen=True)
class CitationFound(_Event):
    """A passage found by a search tool, numbered as the model sees it (``[n]``)."""

    type: ClassVar[str] = "citation"
    citation: Citation
    label: str = "source"  # "retrieved passage" in the no-model mode


@dataclass(frozen=True)
class Usage(_Event):
    """Tokens of one model call (``source``: the agent's own call or a server's sampling request),
    with the turn's running totals and its budget."""

    type: ClassVar[str] = "usage"
    input_tokens: int
    output_tokens: int
    turn_input_tokens: int
    turn_output_tokens: int
    budget: int | None
    source: Literal["model", "sampling"] = "model"


@dataclass(frozen=True)
class Notice(_Event):
    """Something the user should read that is not the model's text: no model configured, the step
    limit or token budget reached, the turn stopped."""

    type: ClassVar[str] = "notice"
    kind: Literal["no_model", "step_limit", "token_budget", "cancelled", "no_tools"]
    message: str


@dataclass(frozen=True)
class Error(_Event):
    """A failure the user should see (the model endpoint failed, the gateway is unreachable)."""

    type: ClassVar[str] = "error"
    message: str
    kind: str = "error"
    retryable: bool = False


@dataclass(frozen=True)
class AnswerComplete(_Event):
    """The end of the turn (always the last event).

    ``text``: the answer as streamed. ``partial``: the turn did not finish on its own (Stop, step
    limit, token budget, error, or the model's output limit). ``mode``: ``generated`` by the model
    or ``retrieval`` (no model: the text lists retrieved passages). ``messages``: this turn's
    messages for the history, starting with the user's.
    """

    type: ClassVar[str] = "answer_complete"
    text: str
    citations: tuple[Citation, ...]
    partial: bool
    stop_reason: StopReason
    mode: Literal["generated", "retrieval"] = "generated"
    notice: str | None = None
    messages: tuple[Message, ...] = ()
    input_tokens: int = 0
    output_tokens: int = 0
    steps: int = 0


AgentEvent: TypeAlias = (TextDelta | ToolCallStarted | ApprovalNeeded | ApprovalDecided | ToolProgress
                         | ToolCallFinished | CitationFound | Usage | Notice | Error | AnswerComplete)


def _jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


# --------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class AgentConfig:
    """Limits and choices of the loop (per tenant; the defaults suit the embedded setup)."""

    max_steps: int = 8  # model calls per turn
    token_budget: int | None = 200_000  # input + output tokens per turn (None: unlimited)
    tool_timeout_s: float = 120.0  # per tool call, not counting time the user takes to answer a form
    tool_timeouts: Mapping[str, float] = field(default_factory=dict)  # per tool name
    max_tokens: int | None = None  # per model call (None: the provider's setting)
    temperature: float | None = None
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT
    max_tool_result_chars: int = 16_000  # of a result's text sent to the model
    preview_chars: int = 400
    citation_tools: frozenset[str] = frozenset({"lakehouse__search"})
    retrieval_tool: str = "lakehouse__search"
    retrieval_k: int = 5
    sampling_max_tokens: int = 1024
    cancel_grace_s: float = 5.0  # how long Stop waits for cancelled calls to wind down

    def timeout_for(self, tool: str) -> float:
        return self.tool_timeouts.get(tool, self.tool_timeout_s)


class _Stopped(Exception):
    """The user pressed Stop while the loop waited for something."""


_DONE = object()


# --------------------------------------------------------------------------------------------
# The loop


class Agent:
    """Runs turns for one user: ``provider`` (None: no model), the user's MCP ``session`` with the
    gateway, the approval ``policy`` and the web layer's ``interaction``."""

    def __init__(self, provider: Provider | None, session: McpSession, policy: ApprovalPolicy,
                 interaction: UserInteraction, config: AgentConfig | None = None) -> None:
        self.provider = provider
        self.session = session
        self.policy = policy
        self.interaction = interaction
        self.config = config or AgentConfig()

    async def run(self, history: Sequence[Message], message: str | UserMessage, *,
                  stop: asyncio.Event | None = None) -> AsyncIterator[AgentEvent]:
        """Run one turn; yields its events, :class:`AnswerComplete` last. Closing the iterator early
        abandons the turn (its model stream and tool calls are cancelled)."""
        user = message if isinstance(message, UserMessage) else UserMessage(text=message)
        turn = _Turn(self, stop or asyncio.Event())
        task = asyncio.create_task(turn.drive(list(history), user), name="kontor-agent-turn")
        try:
            while True:
                item = await turn.queue.get()
                if item is _DONE:
                    break
                yield item
            await task
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task


async def run_turn(history: Sequence[Message], message: str | UserMessage, *, provider: Provider | None,
                   session: McpSession, policy: ApprovalPolicy, interaction: UserInteraction,
                   config: AgentConfig | None = None, stop: asyncio.Event | None = None) -> AsyncIterator[AgentEvent]:
    """:meth:`Agent.run` as one function."""
    async for event in Agent(provider, session, policy, interaction, config).run(history, message, stop=stop):
        yield event


class _Turn:
    """The state of one running turn."""

    def __init__(self, agent: Agent, stop: asyncio.Event) -> None:
        self.agent = agent
        self.config = agent.config
        self.session = agent.session
        self.stop = stop
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.tools: dict[str, ToolInfo] = {}  # offered to the model
        self.blocked: dict[str, ToolInfo] = {}  # blocked by the admin: not offered, refused when called anyway
        self.citations = CitationIndex()
        self.input_tokens = 0
        self.output_tokens = 0
        self.last_call_tokens = 0  # input + output of the latest model call: the next input is at least this
        self.texts: list[str] = []  # the text of each model step
        self.steps = 0

    # -- plumbing

    def emit(self, event: AgentEvent) -> None:
        self.queue.put_nowait(event)

    @property
    def used(self) -> int:
        return self.input_tokens + self.output_tokens

    @property
    def text(self) -> str:
        return "\n\n".join(t for t in self.texts if t)

    async def until_stop(self, awaitable: Awaitable[T]) -> T:
        """``await awaitable``, or raise :class:`_Stopped` (cancelling it) when the user presses Stop."""
        task = asyncio.ensure_future(awaitable)
        waiter = asyncio.ensure_future(self.stop.wait())
        try:
            await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        if task.cancelled() or (self.stop.is_set() and not task.done()):
            raise _Stopped
        return task.result()

    def add_usage(self, usage: ProviderUsage, source: Literal["model", "sampling"]) -> None:
        self.input_tokens += usage.input_tokens
        self.output_tokens += usage.output_tokens
        if source == "model":
            self.last_call_tokens = usage.input_tokens + usage.output_tokens
        self.emit(Usage(usage.input_tokens, usage.output_tokens, self.input_tokens, self.output_tokens,
                        self.config.token_budget, source))

    def budget_message(self) -> str:
        return (f"Stopped: this question used {self.used:,} tokens ({self.input_tokens:,} input + "
                f"{self.output_tokens:,} output) of its budget of {self.config.token_budget:,}, so the "
                "agent did not continue. Ask a narrower question, or ask your administrator to raise the "
                "token budget.")

    # -- the turn

    async def drive(self, history: list[Message], user: UserMessage) -> None:
        new: list[Message] = [user]
        try:
            with self.session.handlers(elicitation=self.on_elicitation, sampling=self.on_sampling):
                if self.agent.provider is None:
                    await self.retrieval_only(user, new)
                else:
                    await self.generate(history, user, new)
        except Exception as exc:  # never end a turn without AnswerComplete
            log.exception("agent turn failed")
            self.emit(Error(f"The turn failed unexpectedly: {exc}", kind="internal"))
            self.finish(new, partial=True, stop_reason="error")
        finally:
            self.queue.put_nowait(_DONE)

    def finish(self, new: list[Message], *, partial: bool, stop_reason: StopReason, notice: str | None = None,
               mode: Literal["generated", "retrieval"] = "generated", text: str | None = None) -> None:
        self.emit(AnswerComplete(text=self.text if text is None else text, citations=tuple(self.citations.all),
                                 partial=partial, stop_reason=stop_reason, mode=mode, notice=notice,
                                 messages=tuple(new), input_tokens=self.input_tokens,
                                 output_tokens=self.output_tokens, steps=self.steps))

    async def load_tools(self) -> None:
        try:
            listed = await self.until_stop(self.session.list_tools())
        except _Stopped:
            raise
        except (McpSessionError, MCPError, OSError) as exc:
            self.emit(Error(f"The tools could not be listed through the gateway ({exc}); answering without them.",
                            kind="gateway", retryable=True))
            return
        from kontor.host.recording import RECORDING_TOOLS  # (recording imports this module's events)

        listed = [tool for tool in listed if tool.name not in RECORDING_TOOLS]  # the host's bookkeeping
        blocked = await self.agent.policy.blocked([tool.name for tool in listed])
        for tool in listed:  # the model never sees blocked tools
            (self.blocked if tool.name in blocked else self.tools)[tool.name] = tool

    async def generate(self, history: list[Message], user: UserMessage, new: list[Message]) -> None:
        config = self.config
        try:
            await self.load_tools()
        except _Stopped:
            self.emit(Notice("cancelled", "Stopped."))
            return self.finish(new, partial=True, stop_reason="cancelled", notice="Stopped.")
        prefix: list[Message] = list(history)
        if config.system_prompt and not any(isinstance(m, SystemMessage) for m in history):
            prefix.insert(0, SystemMessage(text=config.system_prompt))
        definitions = [tool.definition() for tool in self.tools.values()]
        while True:
            budget = config.token_budget
            if budget is not None and self.steps and self.used + self.last_call_tokens > budget:
                # The next call's input alone (at least the last call's input and output) would exceed it.
                message = self.budget_message()
                self.emit(Notice("token_budget", message))
                return self.finish(new, partial=True, stop_reason="token_budget", notice=message)
            self.steps += 1
            text, calls, finish, error = await self.model_step([*prefix, *new], definitions)
            ordered = sorted(calls, key=lambda c: c.index)
            if text or ordered:
                new.append(AssistantMessage(text=text, tool_calls=tuple(c.to_tool_call() for c in ordered)))
            if error is not None:
                new.extend(self.unrun(ordered, "The call was not run: the model's answer broke off."))
                self.emit(Error(f"The model failed: {error.message}", kind=type(error).__name__,
                                retryable=error.retryable))
                return self.finish(new, partial=True, stop_reason="error")
            if self.stop.is_set() or (finish is not None and finish.cancelled):
                new.extend(self.unrun(ordered, "The call was not run: the user stopped the turn."))
                self.emit(Notice("cancelled", "Stopped; the answer so far is kept."))
                return self.finish(new, partial=True, stop_reason="cancelled", notice="Stopped by the user.")
            if not ordered:
                reason = finish.reason if finish is not None else "end_turn"
                return self.finish(new, partial=reason == "max_tokens",
                                   stop_reason="end_turn" if reason == "tool_use" else reason)
            if budget is not None and self.used >= budget:
                message = self.budget_message()
                new.extend(self.unrun(ordered, "The call was not run: the turn's token budget is used up."))
                self.emit(Notice("token_budget", message))
                return self.finish(new, partial=True, stop_reason="token_budget", notice=message)
            if self.steps >= config.max_steps:
                message = (f"Stopped after {config.max_steps} steps: the model still wanted to call tools "
                           f"({', '.join(c.name for c in ordered)}). Ask again to continue, or narrow the question.")
                new.extend(self.unrun(ordered, "The call was not run: the turn's step limit was reached."))
                self.emit(Notice("step_limit", message))
                return self.finish(new, partial=True, stop_reason="step_limit", notice=message)
            new.extend(await self.run_tools(ordered))
            if self.stop.is_set():
                self.emit(Notice("cancelled", "Stopped; the answer so far is kept."))
                return self.finish(new, partial=True, stop_reason="cancelled", notice="Stopped by the user.")

    async def model_step(self, messages: list[Message], definitions: list[Any]) -> tuple[
            str, list[ToolCallComplete | ToolCallInvalid], Finish | None, ProviderError | None]:
        provider = self.agent.provider
        assert provider is not None
        parts: list[str] = []
        calls: list[ToolCallComplete | ToolCallInvalid] = []
        finish: Finish | None = None
        self.texts.append("")
        step = len(self.texts) - 1
        try:
            async for event in provider.stream(messages, definitions, max_tokens=self.config.max_tokens,
                                               temperature=self.config.temperature, cancel=self.stop):
                if isinstance(event, ProviderTextDelta):
                    if not parts and self.text.strip():
                        self.emit(TextDelta("\n\n"))  # a new paragraph after the text of an earlier step
                    parts.append(event.text)
                    self.texts[step] = "".join(parts)
                    self.emit(TextDelta(event.text))
                elif isinstance(event, ToolCallComplete | ToolCallInvalid):
                    calls.append(event)
                elif isinstance(event, ProviderUsage):
                    self.add_usage(event, "model")
                elif isinstance(event, Finish):
                    finish = event
        except ProviderError as exc:
            return "".join(parts), [], finish, exc
        return "".join(parts), calls, finish, None

    @staticmethod
    def unrun(calls: Sequence[ToolCallComplete | ToolCallInvalid], why: str) -> list[ToolResultMessage]:
        """Error results for calls that were not run (every tool call needs a result in the history)."""
        return [ToolResultMessage(tool_call_id=c.id, content=why, is_error=True, name=c.name) for c in calls]

    async def run_tools(self, calls: Sequence[ToolCallComplete | ToolCallInvalid]) -> list[ToolResultMessage]:
        """Run the calls of one step concurrently; on Stop cancel those still running."""
        tasks = [asyncio.create_task(self.execute(call), name=f"kontor-tool-{call.name}") for call in calls]
        everything = asyncio.gather(*tasks, return_exceptions=True)
        waiter = asyncio.ensure_future(self.stop.wait())
        try:
            await asyncio.wait({everything, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            if not everything.done():
                for task in tasks:
                    task.cancel()
                await asyncio.wait(tasks, timeout=self.config.cancel_grace_s)
                with contextlib.suppress(BaseException):
                    everything.cancel()
                    await everything
        results = []
        for call, task in zip(calls, tasks, strict=True):
            if task.done() and not task.cancelled() and task.exception() is None:
                results.append(task.result())
            else:
                if task.done() and not task.cancelled():
                    log.error("tool call %s failed inside the loop", call.name, exc_info=task.exception())
                results.append(ToolResultMessage(tool_call_id=call.id, name=call.name, is_error=True,
                                                 content="The user stopped this call before it finished."))
        return results

    async def record_refusal(self, tool: str, arguments: dict[str, Any], decision: str, reason: str) -> None:
        """Let the gateway audit a refused call: it records the decision and never runs the tool."""
        try:
            await self.session.call_tool(tool, arguments, timeout_s=10,
                                         meta={APPROVAL_META: {"decision": decision, "reason": reason}})
        except Exception as exc:  # the gateway answers with an error by design; anything else is logged
            if "was not run" not in str(exc):
                log.warning("could not record the %s call of %s at the gateway: %s", decision, tool, exc)

    async def execute(self, call: ToolCallComplete | ToolCallInvalid, *,
                      label: str = "source") -> ToolResultMessage:
        """One tool call: approval, the call through the gateway, its events and its result for the model."""
        arguments = call.arguments if isinstance(call, ToolCallComplete) else {}
        info = self.tools.get(call.name) or self.blocked.get(call.name)
        self.emit(ToolCallStarted(call.id, call.name, arguments, info.title if info else None))

        def refuse(status: ToolStatus, error: str, for_model: str) -> ToolResultMessage:
            self.emit(ToolCallFinished(call.id, call.name, status, 0.0, error=error))
            return ToolResultMessage(tool_call_id=call.id, content=for_model, is_error=True, name=call.name)

        if isinstance(call, ToolCallInvalid):
            return refuse("error", f"invalid arguments: {call.error}",
                          f"The call was not run: {call.error}. The arguments you sent were: "
                          f"{call.raw_arguments[:2000]!r}. Call the tool again with a JSON object that matches "
                          "its input schema.")
        if info is None:
            known = ", ".join(sorted(self.tools)[:50]) or "none"
            return refuse("error", "unknown tool", f"There is no tool named {call.name!r}. Available tools: {known}.")

        started = time.monotonic()
        try:
            verdict = await self.agent.policy.check(info)
            if verdict.action == "blocked":
                await self.record_refusal(call.name, arguments, "blocked", verdict.reason)
                return refuse("denied", verdict.reason, f"The call was not run: {verdict.reason}.")
            meta: dict[str, Any] | None = None
            if verdict.action == "ask":
                decision = await self.ask(call, info, arguments, verdict)
                if decision == "deny":
                    await self.record_refusal(call.name, arguments, "denied", verdict.reason)
                    return refuse("denied", "the user denied this call",
                                  f"The user denied this call of {call.name}; it was not run. Do not call it "
                                  "again unless the user asks you to.")
                meta = {APPROVAL_META: {"decision": decision, "reason": verdict.reason}}

            async def progress(value: float, total: float | None, message: str | None) -> None:
                self.emit(ToolProgress(call.id, value, total, message))

            started = time.monotonic()
            result = await self.session.call_tool(call.name, arguments, timeout_s=self.config.timeout_for(call.name),
                                                  on_progress=progress, meta=meta)
        except asyncio.CancelledError:
            self.emit(ToolCallFinished(call.id, call.name, "cancelled", time.monotonic() - started,
                                       error="stopped by the user"))
            raise
        except ToolCallTimeout as exc:
            self.emit(ToolCallFinished(call.id, call.name, "timeout", time.monotonic() - started, error=str(exc)))
            return ToolResultMessage(tool_call_id=call.id, is_error=True, name=call.name,
                                     content=f"The call timed out: {exc}.")
        except MCPError as exc:
            self.emit(ToolCallFinished(call.id, call.name, "error", time.monotonic() - started, error=exc.message))
            return ToolResultMessage(tool_call_id=call.id, is_error=True, name=call.name,
                                     content=f"The gateway could not run the call: {exc.message}")
        except (McpSessionError, OSError) as exc:
            self.emit(ToolCallFinished(call.id, call.name, "error", time.monotonic() - started, error=str(exc)))
            return ToolResultMessage(tool_call_id=call.id, is_error=True, name=call.name,
                                     content=f"The call failed: {exc}")
        duration = time.monotonic() - started
        texts = _texts(result.content)
        text = "\n".join(texts) if texts else (
            json.dumps(result.structured_content, ensure_ascii=False, default=str)
            if result.structured_content is not None else "")
        if not result.is_error and call.name in self.config.citation_tools:
            found = extract_citations(call.name, result.structured_content, texts)
            numbered, fresh = self.citations.add(found)
            for citation in fresh:
                self.emit(CitationFound(citation, label))
            text = render_for_model(numbered)
        preview = text if len(text) <= self.config.preview_chars else text[:self.config.preview_chars] + " …"
        self.emit(ToolCallFinished(call.id, call.name, "error" if result.is_error else "ok", duration, preview,
                                   result.structured_content, error=preview if result.is_error else None))
        limit = self.config.max_tool_result_chars
        if len(text) > limit:
            text = text[:limit] + f"\n… [{len(text) - limit:,} more characters cut]"
        return ToolResultMessage(tool_call_id=call.id, content=text or "(no output)", is_error=result.is_error,
                                 name=call.name)

    async def ask(self, call: ToolCallComplete, info: ToolInfo, arguments: Mapping[str, Any],
                  verdict: Verdict) -> ApprovalDecision:
        self.emit(ApprovalNeeded(call.id, call.name, arguments, verdict.reason, info.destructive, verdict.remember))
        try:
            decision = await self.agent.interaction.ask_approval(info, arguments, call_id=call.id,
                                                                  reason=verdict.reason)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("asking for approval of %s failed; treated as denied", call.name)
            decision = "deny"
        if decision not in ("allow_once", "always", "deny"):
            log.warning("approval answer %r for %s is not allow_once/always/deny; treated as denied", decision,
                        call.name)
            decision = "deny"
        self.emit(ApprovalDecided(call.id, call.name, decision))
        await self.agent.policy.record(info, decision, verdict)
        return decision

    # -- no model: retrieved passages

    async def retrieval_only(self, user: UserMessage, new: list[Message]) -> None:
        tool = self.config.retrieval_tool
        plain = ("No language model is configured for this workspace, so this is not a generated answer.")
        try:
            await self.load_tools()
        except _Stopped:
            return self.finish(new, partial=True, stop_reason="cancelled", notice="Stopped by the user.",
                               mode="retrieval", text="")
        if tool not in self.tools:
            message = f"{plain} The document search ({tool}) is not available to you either, so there is nothing " \
                      "to show. Ask your administrator to configure a model or to give you access to the search."
            self.emit(Notice("no_model", message))
            self.emit(TextDelta(message))
            new.append(AssistantMessage(text=message))
            return self.finish(new, partial=False, stop_reason="no_model", notice=message, mode="retrieval",
                               text=message)
        self.emit(Notice("no_model", f"{plain} Showing the passages from your documents that best match the "
                                     "question (retrieved passages)."))
        call = ToolCallComplete(id="retrieval-1", name=tool, index=0,
                                arguments={"query": user.text[:2000], "k": self.config.retrieval_k})
        task = asyncio.ensure_future(self.execute(call, label="retrieved passage"))
        try:
            result = await self.until_stop(task)
        except _Stopped:
            return self.finish(new, partial=True, stop_reason="cancelled", notice="Stopped by the user.",
                               mode="retrieval", text="")
        passages = self.citations.all
        if result.is_error:
            body = f"The search failed: {result.content}"
        elif not passages:
            body = "The search found no passages for this question."
        else:
            lines = ["Retrieved passages (best match first):"]
            for c in passages:
                snippet = " ".join(c.text.split())
                snippet = snippet if len(snippet) <= 400 else snippet[:400] + " …"
                lines.append(f"{c.label()}: {snippet}")
            body = "\n\n".join(lines)
        text = f"{plain}\n\n{body}"
        self.emit(TextDelta(text))
        new.append(AssistantMessage(text=text))
        self.finish(new, partial=False, stop_reason="no_model", notice=plain, mode="retrieval", text=text)

    # -- server-to-client requests during this turn

    async def on_elicitation(self, params: types.ElicitRequestParams) -> types.ElicitResult | types.ErrorData:
        if isinstance(params, types.ElicitRequestURLParams):
            log.info("declined a URL-mode elicitation (%s): the host shows forms only", params.url)
            return types.ElicitResult(action="decline")
        try:
            answer = await self.until_stop(self.agent.interaction.elicit(params.message,
                                                                         dict(params.requested_schema)))
        except _Stopped:
            return types.ElicitResult(action="cancel")
        if answer.action == "accept":
            return types.ElicitResult(action="accept", content=dict(answer.content or {}))
        return types.ElicitResult(action=answer.action)

    async def on_sampling(self, params: types.CreateMessageRequestParams
                          ) -> types.CreateMessageResult | types.ErrorData:
        provider = self.agent.provider
        if provider is None:
            return types.ErrorData(code=types.INVALID_REQUEST, message=(
                "No language model is configured for this workspace, so the host cannot answer sampling requests."))
        budget = self.config.token_budget
        if budget is not None and self.used >= budget:
            return types.ErrorData(code=types.INVALID_REQUEST,
                                   message="The token budget of this turn is used up; sampling refused.")
        request = SamplingRequest.from_params(params)
        try:
            approved = await self.until_stop(self.agent.interaction.approve_sampling(request))
        except _Stopped:
            return types.ErrorData(code=-1, message="The user stopped the turn.")
        if not approved:
            return types.ErrorData(code=-1, message="The user declined the sampling request.")
        messages: list[Message] = [SystemMessage(text=params.system_prompt)] if params.system_prompt else []
        for role, text in request.messages:
            messages.append(UserMessage(text=text) if role == "user" else AssistantMessage(text=text))
        parts: list[str] = []
        finish: Finish | None = None
        try:
            async for event in provider.stream(messages, (), max_tokens=min(params.max_tokens,
                                                                             self.config.sampling_max_tokens),
                                               temperature=params.temperature,
                                               stop_sequences=params.stop_sequences, cancel=self.stop):
                if isinstance(event, ProviderTextDelta):
                    parts.append(event.text)
                elif isinstance(event, ProviderUsage):
                    self.add_usage(event, "sampling")
                elif isinstance(event, Finish):
                    finish = event
        except ProviderError as exc:
            return types.ErrorData(code=types.INTERNAL_ERROR, message=f"The model failed: {exc.message}")
        if finish is not None and finish.cancelled:
            return types.ErrorData(code=-1, message="The user stopped the turn.")
        stop_reason = {"end_turn": "endTurn", "max_tokens": "maxTokens", "stop": "stopSequence"}.get(
            finish.reason if finish is not None else "end_turn", "endTurn")
        return types.CreateMessageResult(role="assistant", content=types.TextContent(type="text", text="".join(parts)),
                                         model=provider.model, stop_reason=stop_reason)


def _texts(content: Sequence[Any]) -> list[str]:
    """The text of MCP content blocks for the model (placeholders for what is not text)."""
    out = []
    for block in content:
        if isinstance(block, types.TextContent):
            out.append(block.text)
        elif isinstance(block, types.EmbeddedResource):
            resource = block.resource
            out.append(resource.text if isinstance(resource, types.TextResourceContents)
                       else f"[binary resource {resource.uri}]")
        elif isinstance(block, types.ResourceLink):
            out.append(f"[resource {block.uri}{': ' + block.name if block.name else ''}]")
        elif isinstance(block, types.ImageContent):
            out.append(f"[image ({block.mime_type}) not shown to the model]")
        elif isinstance(block, types.AudioContent):
            out.append(f"[audio ({block.mime_type}) not shown to the model]")
    return out


def _sampling_text(message: types.SamplingMessage) -> str:
    parts = []
    for block in message.content_as_list:
        if isinstance(block, types.TextContent):
            parts.append(block.text)
        else:
            parts.append(f"[{getattr(block, 'type', 'content')} omitted]")
    return "\n".join(parts)
