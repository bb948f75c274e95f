"""Recording the chat in the tenant's lakehouse: questions, answers, tools used and feedback.

Each answered question is also written to the tenant's lakehouse ``interactions`` table, the
training data of the tenant's model, through the gateway like every other tool call: the
lakehouse tools ``record_interaction``, ``set_interaction_feedback``, ``list_my_interactions`` and
``delete_my_interactions`` need the custom scope ``lakehouse:interactions``, which every member
holds by default (see :mod:`kontor.gateway.scopes`). The user a row belongs to is the subject of
the user's token (the gateway passes it on in its internal token), never something the host says,
so a user sees, rates and deletes only what was recorded about them.

* :func:`record_turn` after a turn's :class:`~kontor.host.agent.AnswerComplete` (best run as a
  background task, so the answer's stream never waits for it). It never raises into the chat:
  failures are logged and give ``None``. A user without the tool (no scope, no lakehouse) is not
  recorded. Passing the host's ``conversation_id`` and ``message_id`` makes a retry safe (the
  lakehouse records a message once).
* :func:`record_feedback` after thumbs up/down; also never raises (False when it was not stored;
  the host's own database keeps the feedback either way).
* :func:`list_recorded` and :func:`delete_recorded` for the "what is recorded about me" page; they
  raise :class:`RecordingError` with a message for the user, because a user who asked to see or
  delete their data must learn when that failed (:class:`RecordingUnavailable` when the user has no
  such tool).

The recording tools are the host's bookkeeping, not tools for the model: :data:`RECORDING_TOOLS`
names them so the agent's tool list can leave them out.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from kontor.host.agent import AnswerComplete, ToolCallFinished
from kontor.host.citations import Citation
from kontor.host.mcp_session import McpSession

log = logging.getLogger(__name__)

__all__ = [
    "DELETE_TOOL",
    "FEEDBACK_TOOL",
    "LIST_TOOL",
    "RECORDING_TOOLS",
    "RECORD_TOOL",
    "RecordedPage",
    "RecordingError",
    "RecordingUnavailable",
    "delete_recorded",
    "list_recorded",
    "record_feedback",
    "record_turn",
]

RECORD_TOOL = "lakehouse__record_interaction"
FEEDBACK_TOOL = "lakehouse__set_interaction_feedback"
LIST_TOOL = "lakehouse__list_my_interactions"
DELETE_TOOL = "lakehouse__delete_my_interactions"
#: the interactions tools: the host calls them itself; they are not for the model
RECORDING_TOOLS = frozenset({RECORD_TOOL, FEEDBACK_TOOL, LIST_TOOL, DELETE_TOOL})

# The lakehouse's limits (servers/lakehouse/store.py); the host clips to them rather than lose a recording.
MAX_QUESTION_CHARS = 20_000
MAX_ANSWER_CHARS = 100_000
MAX_COMMENT_CHARS = 2_000
MAX_TOOLS = 64
MAX_CITATIONS = 50
MAX_PAGE = 100
MAX_DELETE_IDS = 500
CLIPPED = "\n[… clipped]"
TIMEOUT_S = 20.0
_REF = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
_CITATION_FIELDS = ("document_id", "title", "source", "page", "sheet", "section", "char_start", "char_end",
                    "chunk_id", "number", "score")
_CITATION_LIMITS = {"document_id": 256, "title": 500, "source": 1000, "sheet": 200, "section": 1000, "chunk_id": 256}


class RecordingError(Exception):
    """Listing or deleting the recorded interactions failed; the message can be shown to the user."""


class RecordingUnavailable(RecordingError):
    """This user has no recording tools (no ``lakehouse:interactions`` scope, or no lakehouse installed)."""


@dataclass(frozen=True)
class RecordedPage:
    """One page of what is recorded about the user, newest first (items as the lakehouse returns them:
    ``id ts question answer tools citations feedback comment conversation_id message_id``)."""

    interactions: list[dict[str, Any]]
    total: int
    next_cursor: str | None


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - len(CLIPPED)] + CLIPPED


def _ref(value: Any, what: str) -> str | None:
    """The host's id as the lakehouse takes it (1-128 of ``A-Za-z0-9._:-``), else None (logged)."""
    if value is None:
        return None
    text = str(value)
    if _REF.match(text):
        return text
    log.warning("not recording the %s %r with the interaction: not a valid reference", what, text[:40])
    return None


def _citation(citation: Citation | Mapping[str, Any]) -> dict[str, Any] | None:
    data = citation if isinstance(citation, Mapping) else {f: getattr(citation, f, None) for f in _CITATION_FIELDS}
    out: dict[str, Any] = {}
    for key in _CITATION_FIELDS:
        value = data.get(key)
        if value is None or (isinstance(value, str) and not value):
            continue
        if isinstance(value, str):
            value = value[:_CITATION_LIMITS.get(key, 1000)]
        elif isinstance(value, bool) or not isinstance(value, int | float):
            continue
        elif key != "score" and (not isinstance(value, int) or value < 0):
            continue
        out[key] = value
    return out if out.get("document_id") else None


def tools_used(events: Iterable[Any]) -> list[str]:
    """Names of the tools a turn ran (each once, in order; denied calls did not run, recording tools left out)."""
    names: list[str] = []
    for event in events:
        if isinstance(event, ToolCallFinished) and event.status != "denied" and event.tool not in RECORDING_TOOLS \
                and event.tool not in names:
            names.append(event.tool)
    return names[:MAX_TOOLS]


async def _has(session: McpSession, tool: str) -> bool:
    try:
        return await session.tool(tool) is not None
    except Exception as exc:
        log.warning("could not list the tools to find %s: %s", tool, exc)
        return False


async def _call(session: McpSession, tool: str, arguments: dict[str, Any], timeout_s: float) -> Any:
    """The tool's structured result; RecordingError (with the tool's message) when it failed."""
    try:
        result = await session.call_tool(tool, arguments, timeout_s=timeout_s)
    except Exception as exc:  # MCPError (refused), McpSessionError (gateway unreachable), ToolCallTimeout
        raise RecordingError(f"{tool} failed: {getattr(exc, 'message', None) or exc}") from exc
    if result.is_error:
        text = " ".join(getattr(c, "text", "") for c in result.content or []).strip()
        raise RecordingError(f"{tool} failed: {text[:500] or 'the tool reported an error'}")
    structured = result.structured_content
    if not isinstance(structured, Mapping):
        raise RecordingError(f"{tool} answered without a structured result")
    return structured


async def record_turn(session: McpSession, *, question: str, answer_event: AnswerComplete,
                      tool_events: Iterable[Any] = (), conversation_id: Any = None, message_id: Any = None,
                      timeout_s: float = TIMEOUT_S) -> str | None:
    """Record one answered question in the tenant's lakehouse; the interaction's id, or None.

    ``answer_event`` is the turn's :class:`AnswerComplete` (its text and citations), ``tool_events``
    the turn's events (its :class:`ToolCallFinished` ones name the tools used). None when the user
    cannot record (no tool), when there is nothing to record (an empty question or answer) or when
    recording failed (logged). Never raises, except for cancellation of the awaiting task.
    """
    try:
        if not question.strip() or not answer_event.text.strip():
            return None
        if not await _has(session, RECORD_TOOL):
            log.debug("no %s for this user: the turn is not recorded", RECORD_TOOL)
            return None
        arguments: dict[str, Any] = {
            "question": _clip(question, MAX_QUESTION_CHARS),
            "answer": _clip(answer_event.text, MAX_ANSWER_CHARS),
            "tools": tools_used(tool_events),
        }
        citations = [c for c in (_citation(c) for c in answer_event.citations) if c is not None][:MAX_CITATIONS]
        if citations:
            arguments["citations"] = citations
        for key, value in (("conversation_id", _ref(conversation_id, "conversation id")),
                           ("message_id", _ref(message_id, "message id"))):
            if value is not None:
                arguments[key] = value
        result = await _call(session, RECORD_TOOL, arguments, timeout_s)
        interaction_id = result.get("id")
        return interaction_id if isinstance(interaction_id, str) and interaction_id else None
    except Exception as exc:
        log.warning("the turn was not recorded in the lakehouse: %s", exc)
        return None


async def record_feedback(session: McpSession, interaction_id: str, feedback: int, comment: str | None = None, *,
                          timeout_s: float = TIMEOUT_S) -> bool:
    """Store thumbs up (1), neutral (0) or down (-1) and an optional comment on a recorded interaction.

    True when the lakehouse stored it; False (logged) when the user cannot record, the interaction is
    not theirs or unknown, or the call failed. Never raises, except for cancellation.
    """
    try:
        if isinstance(feedback, bool) or feedback not in (-1, 0, 1):
            raise ValueError(f"feedback must be -1, 0 or 1, got {feedback!r}")
        if not await _has(session, FEEDBACK_TOOL):
            return False
        arguments: dict[str, Any] = {"interaction_id": str(interaction_id), "feedback": feedback}
        if comment and comment.strip():
            arguments["comment"] = _clip(comment.strip(), MAX_COMMENT_CHARS)
        await _call(session, FEEDBACK_TOOL, arguments, timeout_s)
        return True
    except Exception as exc:
        log.warning("the feedback was not recorded in the lakehouse: %s", exc)
        return False


async def list_recorded(session: McpSession, *, limit: int = 20, cursor: str | None = None,
                        timeout_s: float = TIMEOUT_S) -> RecordedPage:
    """One page of the interactions recorded about this user, newest first (``cursor``: the last page's
    ``next_cursor``). Raises :class:`RecordingUnavailable` / :class:`RecordingError`."""
    if not await _has(session, LIST_TOOL):
        raise RecordingUnavailable("Nothing can be recorded about you here: your access does not include "
                                   "recording (lakehouse:interactions), or no lakehouse is installed.")
    arguments: dict[str, Any] = {"limit": max(1, min(MAX_PAGE, int(limit)))}
    if cursor:
        arguments["cursor"] = cursor
    result = await _call(session, LIST_TOOL, arguments, timeout_s)
    items = result.get("interactions")
    return RecordedPage(interactions=[dict(i) for i in items] if isinstance(items, list) else [],
                        total=int(result.get("total") or 0), next_cursor=result.get("next_cursor") or None)


async def delete_recorded(session: McpSession, ids: Sequence[str] | Literal["all"], *,
                          timeout_s: float = TIMEOUT_S) -> int:
    """Delete interactions recorded about this user: these ``ids`` (others' ids are ignored by the
    lakehouse), or every one with ``"all"``. Returns how many were deleted; raises
    :class:`RecordingUnavailable` / :class:`RecordingError` (rows deleted before a failure stay deleted)."""
    if not await _has(session, DELETE_TOOL):
        raise RecordingUnavailable("Nothing is recorded about you here: your access does not include "
                                   "recording (lakehouse:interactions), or no lakehouse is installed.")
    if isinstance(ids, str):
        if ids != "all":
            raise ValueError("ids must be a list of interaction ids or the string 'all'")
        result = await _call(session, DELETE_TOOL, {"all": True}, timeout_s)
        return int(result.get("deleted") or 0)
    wanted = list(dict.fromkeys(str(i) for i in ids))
    deleted = 0
    for start in range(0, len(wanted), MAX_DELETE_IDS):
        result = await _call(session, DELETE_TOOL, {"ids": wanted[start:start + MAX_DELETE_IDS]}, timeout_s)
        deleted += int(result.get("deleted") or 0)
    return deleted
