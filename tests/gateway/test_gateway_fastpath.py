"""The lean ``tools/call`` path (kontor.gateway.fastpath) over real HTTP: what takes it, what it keeps.

The SDK transport always answers a request with an SSE stream; the lean path answers a quick call
with one JSON object, which is how these tests tell which path served a call.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import mcp_types as types
import pytest

from kontor.gateway.audit import AuditLog
from tests.gateway.mesh import Mesh, mesh

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

ALL = ("fix:read", "fix:write")
HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json",
           "mcp-protocol-version": "2025-11-25"}


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    root = tmp_path_factory.mktemp("mesh")
    with mesh(root, KONTOR_GATEWAY_TOOL_CALL_TIMEOUT_S="20") as m:
        fix = m.start_upstream("fix")
        m.run(m.setup_tenant("acme", {"fix": fix}))
        m.start_gateway()
        yield m


class RawSession:
    """A 2025-11-25 session spoken by hand, to see the wire (content types, ids, SSE events)."""

    def __init__(self, gw: Mesh, token: str, capabilities: dict[str, Any] | None = None) -> None:
        self.gw = gw
        self.http = httpx.AsyncClient(timeout=30, headers={**HEADERS, "authorization": f"Bearer {token}"})
        self.capabilities = capabilities or {}
        self.session_id = ""

    async def __aenter__(self) -> RawSession:
        r = await self.http.post(self.gw.url("acme"), json={
            "jsonrpc": "2.0", "id": 0, "method": "initialize",
            "params": {"protocolVersion": "2025-11-25", "capabilities": self.capabilities,
                       "clientInfo": {"name": "raw", "version": "1"}}})
        assert r.status_code == 200, r.text
        self.session_id = r.headers["mcp-session-id"]
        self.http.headers["mcp-session-id"] = self.session_id
        r = await self.http.post(self.gw.url("acme"), json={"jsonrpc": "2.0", "method": "notifications/initialized"})
        assert r.status_code == 202
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.aclose()

    def call(self, request_id: Any, name: str, arguments: dict[str, Any], **params: Any) -> dict[str, Any]:
        return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call",
                "params": {"name": name, "arguments": arguments, **params}}

    async def post(self, message: Any) -> httpx.Response:
        return await self.http.post(self.gw.url("acme"), json=message)


def sse_messages(text: str) -> list[dict[str, Any]]:
    return [json.loads(line[5:]) for line in text.splitlines() if line.startswith("data:")]


async def test_quick_call_on_an_open_session_is_answered_as_one_json_object(gw: Mesh) -> None:
    async with RawSession(gw, gw.token("acme", scopes=ALL)) as s:
        r = await s.post(s.call(7, "fix__echo", {"text": "hi"}))
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert r.headers["mcp-session-id"] == s.session_id
    body = r.json()
    assert body["id"] == 7 and body["result"]["content"][0]["text"] == "hi"


async def test_errors_on_the_lean_path_are_json_rpc_errors(gw: Mesh) -> None:
    async with RawSession(gw, gw.token("acme", scopes=ALL)) as s:
        unknown = (await s.post(s.call("a", "fix__nope", {}))).json()
        invalid = (await s.post(s.call("b", "fix__echo", {"wrong": 1}))).json()
    assert unknown["id"] == "a" and unknown["error"]["code"] == -32602 and "unknown tool" in unknown["error"]["message"]
    # the upstream's validation error comes back as its tool error result
    assert invalid["id"] == "b" and (invalid.get("result", {}).get("isError") or "error" in invalid)


async def test_progress_turns_the_answer_into_an_sse_stream_with_the_notifications_first(gw: Mesh) -> None:
    async with RawSession(gw, gw.token("acme", scopes=ALL)) as s:
        r = await s.post(s.call(1, "fix__slow", {"steps": 3, "delay_s": 0.01}, _meta={"progressToken": "p1"}))
    assert r.headers["content-type"] == "text/event-stream"
    messages = sse_messages(r.text)
    progress = [m for m in messages if m.get("method") == "notifications/progress"]
    assert [m["params"]["progress"] for m in progress] == [1, 2, 3]
    assert all(m["params"]["progressToken"] == "p1" for m in progress)
    assert messages[-1]["id"] == 1 and messages[-1]["result"]["content"][0]["text"] == "done after 3 steps"


async def test_a_relayed_sampling_request_is_answered_by_a_later_post(gw: Mesh) -> None:
    async with RawSession(gw, gw.token("acme", scopes=ALL), capabilities={"sampling": {}}) as s:
        async with s.http.stream("POST", gw.url("acme"), json=s.call(3, "fix__ask_model", {"question": "2+2?"})) as r:
            assert r.headers["content-type"] == "text/event-stream"
            seen: list[dict[str, Any]] = []
            async for line in r.aiter_lines():
                if not line.startswith("data:"):
                    continue
                message = json.loads(line[5:])
                seen.append(message)
                if message.get("method") == "sampling/createMessage":
                    # someone else's session cannot answer it
                    async with RawSession(gw, gw.token("acme", "intruder", ALL)) as other:
                        reply = {"jsonrpc": "2.0", "id": message["id"], "result": {
                            "role": "assistant", "content": {"type": "text", "text": "5"}, "model": "evil"}}
                        assert (await other.post(reply)).status_code == 202  # swallowed by the SDK, not routed
                    answer = await s.post({"jsonrpc": "2.0", "id": message["id"], "result": {
                        "role": "assistant", "content": {"type": "text", "text": "4"}, "model": "m"}})
                    assert answer.status_code == 202
    assert seen[0]["method"] == "sampling/createMessage" and str(seen[0]["id"]).startswith("kontor-relay-")
    assert seen[-1]["id"] == 3 and seen[-1]["result"]["content"][0]["text"] == "model said: 4"


async def test_client_without_elicitation_gets_an_error_not_a_hang(gw: Mesh) -> None:
    async with RawSession(gw, gw.token("acme", scopes=ALL)) as s:
        started = time.monotonic()
        r = await s.post(s.call(4, "fix__confirm", {}))
    assert time.monotonic() - started < 10
    final = r.json() if r.headers["content-type"] == "application/json" else sse_messages(r.text)[-1]
    text = json.dumps(final)
    assert "does not support elicitation" in text


async def _audit_records(gw: Mesh, subject: str) -> list[Any]:
    log = AuditLog(gw.settings.data_dir / "audit" / "audit.db")
    await log.init(check_anchor=False)
    try:
        return [r for r in await log.query(tenant="acme", limit=1000) if r.subject == subject]
    finally:
        await log.close()


async def test_cancellation_stops_the_call_and_is_audited(gw: Mesh) -> None:
    async with RawSession(gw, gw.token("acme", "canceller", ALL)) as s:
        call = asyncio.create_task(s.post(s.call(9, "fix__hang", {"seconds": 30})))
        await asyncio.sleep(1.5)  # past the JSON window: the stream is open
        r = await s.post({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 9}})
        assert r.status_code == 202
        answer = await asyncio.wait_for(call, 10)
    assert answer.status_code == 200 and sse_messages(answer.text) == []  # a cancelled request gets no answer
    records = await _audit_records(gw, "canceller")
    assert [(r.tool, r.status) for r in records] == [("fix__hang", "cancelled")]


async def test_client_going_away_cancels_the_call_and_is_audited(gw: Mesh) -> None:
    async with RawSession(gw, gw.token("acme", "leaver", ALL)) as s:
        with pytest.raises(httpx.ReadTimeout):
            await s.http.post(gw.url("acme"), json=s.call(5, "fix__hang", {"seconds": 30}), timeout=1.0)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        records = await _audit_records(gw, "leaver")
        if records:
            break
        await asyncio.sleep(0.2)
    assert [(r.tool, r.status) for r in records] == [("fix__hang", "cancelled")]


async def test_session_of_another_user_is_not_served(gw: Mesh) -> None:
    async with RawSession(gw, gw.token("acme", "owner", ALL)) as s:
        thief = httpx.AsyncClient(headers={**HEADERS, "authorization": f"Bearer {gw.token('acme', 'thief', ALL)}",
                                           "mcp-session-id": s.session_id})
        async with thief:
            r = await thief.post(gw.url("acme"), json=s.call(1, "fix__echo", {"text": "x"}))
    assert r.status_code == 404


async def test_deleted_session_is_not_served(gw: Mesh) -> None:
    async with RawSession(gw, gw.token("acme", scopes=ALL)) as s:
        assert (await s.http.delete(gw.url("acme"))).status_code == 200
        r = await s.post(s.call(1, "fix__echo", {"text": "x"}))
    assert r.status_code == 404


async def test_sdk_client_works_the_same_with_the_lean_path_off(tmp_path: Path) -> None:
    with mesh(tmp_path, KONTOR_GATEWAY_FAST_PATH="false") as m:
        await m.setup_tenant("acme", {"fix": m.start_upstream("fix")})
        m.start_gateway()
        async with RawSession(m, m.token("acme", scopes=ALL)) as s:
            r = await s.post(s.call(1, "fix__echo", {"text": "sdk"}))
        assert r.headers["content-type"] == "text/event-stream"  # the SDK transport's answer
        assert sse_messages(r.text)[-1]["result"]["content"][0]["text"] == "sdk"

        async def sample(ctx: object, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
            return types.CreateMessageResult(role="assistant", content=types.TextContent(type="text", text="4"),
                                             model="m")

        async with m.client("acme", m.token("acme", scopes=ALL), sampling_callback=sample) as client:
            result = await client.call_tool("fix__ask_model", {"question": "2+2?"})
        assert result.content[0].text == "model said: 4"


async def test_the_hosts_approval_decisions_are_audited_and_a_refused_call_never_runs(gw: Mesh) -> None:
    async with RawSession(gw, gw.token("acme", "approver", ALL)) as s:
        approval = {"io.kontor/approval": {"decision": "allow_once", "reason": "writes"}}
        ran = (await s.post(s.call(1, "fix__write_note", {"text": "yes"}, _meta=approval))).json()
        refusal = {"io.kontor/approval": {"decision": "deny", "reason": "writes"}}
        refused = (await s.post(s.call(2, "fix__write_note", {"text": "no"}, _meta=refusal))).json()
    assert "result" in ran and not ran["result"].get("isError")
    assert refused["error"]["code"] == -32003 and "was not run" in refused["error"]["message"]
    records = await _audit_records(gw, "approver")
    assert [(r.decision, r.status, r.reason) for r in sorted(records, key=lambda r: r.seq)] == [
        ("allowed", "ok", "allow_once by the user in the host"), ("denied", None, "denied in the host: writes")]
