"""A running turn of the web chat, and the user's side of it (:class:`WebInteraction`).

A :class:`Turn` buffers the events of one agent turn in order (``seq`` 1, 2, …), so any number
of event streams (a reloaded page, a second tab) can follow it from any point
(``Last-Event-ID``). Questions for the user — approvals, elicitation forms, sampling requests —
are pending futures of the turn, resolved by the web layer's POST handlers
(:meth:`Turn.answer`); a Stop or the end of the turn withdraws them.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kontor.host.agent import ElicitationAnswer, SamplingRequest
from kontor.host.approvals import ApprovalDecision
from kontor.host.mcp_session import ToolInfo
from kontor.host.store import Owner

__all__ = ["AnswerRefused", "Turn", "TurnEvent", "WebInteraction"]

MAX_EVENTS = 20_000  # a runaway turn cannot hold unbounded memory: later text deltas are merged


class AnswerRefused(Exception):
    """An answer for a question that is not (or no longer) pending."""


@dataclass
class TurnEvent:
    seq: int
    type: str
    data: dict[str, Any]


@dataclass
class Turn:
    """One turn of one conversation of one owner, in memory while it runs (and a while after)."""

    owner: Owner
    conversation_id: uuid.UUID
    message_id: uuid.UUID  # the assistant message this turn fills in
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    events: list[TurnEvent] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    done: bool = False
    answered: bool = False  # answer_complete is out (and stored): the conversation may take the next question
    finished_at: float | None = None
    task: asyncio.Task[Any] | None = None
    _pending: dict[tuple[str, str], asyncio.Future[Any]] = field(default_factory=dict)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def emit(self, type_: str, data: Mapping[str, Any]) -> TurnEvent:
        if len(self.events) >= MAX_EVENTS and type_ == "text_delta" and self.events[-1].type == "text_delta":
            last = self.events[-1]
            last.data = {**last.data, "text": last.data.get("text", "") + str(data.get("text", ""))}
            event = last
        else:
            event = TurnEvent(len(self.events) + 1, type_, {"type": type_, **data})
            self.events.append(event)
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        return event

    def finish(self) -> None:
        self.done = True
        self.finished_at = time.monotonic()
        for future in self._pending.values():
            if not future.done():
                future.cancel()
        self._pending.clear()
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def wait_events(self, after: int, wait_s: float) -> list[TurnEvent]:
        """The events after ``after`` (seq); waits up to ``wait_s`` for new ones (empty: none came)."""
        while True:
            if len(self.events) > after:
                return self.events[after:]
            if self.done:
                return []
            changed = self._changed
            try:
                await asyncio.wait_for(changed.wait(), wait_s)
            except TimeoutError:
                return []

    # -- questions for the user

    def expect(self, kind: str, key: str) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[(kind, key)] = future
        return future

    def withdraw(self, kind: str, key: str) -> None:
        future = self._pending.pop((kind, key), None)
        if future is not None and not future.done():
            future.cancel()

    def pending(self, kind: str, key: str) -> bool:
        future = self._pending.get((kind, key))
        return future is not None and not future.done()

    def answer(self, kind: str, key: str, value: Any) -> None:
        future = self._pending.get((kind, key))
        if future is None or future.done():
            raise AnswerRefused(f"no {kind} {key!r} is waiting for an answer")
        future.set_result(value)


class WebInteraction:
    """:class:`~kontor.host.agent.UserInteraction` through the browser: each question waits for
    the POST that answers it (or for Stop, which cancels it)."""

    def __init__(self, turn: Turn) -> None:
        self.turn = turn

    async def ask_approval(self, tool: ToolInfo, arguments: Mapping[str, Any], *, call_id: str,
                           reason: str) -> ApprovalDecision:
        # The agent has just emitted ApprovalNeeded (with call_id) for the page to show.
        future = self.turn.expect("approval", call_id)
        try:
            return await future
        finally:
            self.turn.withdraw("approval", call_id)

    async def elicit(self, message: str, schema: Mapping[str, Any]) -> ElicitationAnswer:
        key = uuid.uuid4().hex
        future = self.turn.expect("elicitation", key)
        self.turn.emit("elicitation", {"id": key, "message": message, "schema": dict(schema)})
        action = "cancel"
        try:
            answer: ElicitationAnswer = await future
            action = answer.action
            return answer
        finally:
            self.turn.withdraw("elicitation", key)
            self.turn.emit("elicitation_closed", {"id": key, "action": action})

    async def approve_sampling(self, request: SamplingRequest) -> bool:
        key = uuid.uuid4().hex
        future = self.turn.expect("sampling", key)
        self.turn.emit("sampling_request", {
            "id": key, "messages": [{"role": role, "text": text} for role, text in request.messages],
            "system_prompt": request.system_prompt, "max_tokens": request.max_tokens})
        approved = False
        try:
            approved = bool(await future)
            return approved
        finally:
            self.turn.withdraw("sampling", key)
            self.turn.emit("sampling_closed", {"id": key, "approved": approved})
