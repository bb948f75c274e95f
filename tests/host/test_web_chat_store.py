"""The web chat's database (kontor.host.store) on SQLite and on PostgreSQL: conversations and
their search, messages with tool calls and feedback, sessions and encrypted tokens, approvals —
and that one user never reaches another user's data."""

from __future__ import annotations

import asyncio
import os
import stat
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from kontor.host.approvals import ApprovalPolicy
from kontor.host.mcp_session import ToolInfo
from kontor.host.store import HostStore, NotFound, Owner, TokenBox, TokenSet, TokensUnavailable, default_url

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return default_url(tmp_path / "data")
    return request.getfixturevalue("pg_url")


@pytest.fixture
async def store(db_url: str, tmp_path: Path) -> AsyncIterator[HostStore]:
    clock = Clock()
    async with HostStore(db_url, key_path=tmp_path / "keys" / "host" / "tokens.key", clock=clock) as s:
        s.test_clock = clock  # type: ignore[attr-defined]
        yield s


async def two_users(store: HostStore) -> tuple[Owner, Owner, Owner]:
    ada = await store.upsert_user("acme", "sub-ada", "ada@acme.example")
    bob = await store.upsert_user("acme", "sub-bob", "bob@acme.example")
    eve = await store.upsert_user("globex", "sub-ada", "ada@globex.example")  # same subject, other tenant
    return ada.owner, bob.owner, eve.owner


async def test_users_are_created_once_per_tenant_and_subject(store: HostStore):
    first = await store.upsert_user("acme", "sub-1", "old@acme.example")
    again = await store.upsert_user("acme", "sub-1", "new@acme.example")
    other = await store.upsert_user("globex", "sub-1", "x@globex.example")
    assert first.id == again.id and again.email == "new@acme.example" and other.id != first.id
    assert (await store.update_user_settings(first.owner, {"ask_every_tool": True})) == {"ask_every_tool": True}
    assert (await store.get_user_settings(first.owner)) == {"ask_every_tool": True}
    assert (await store.update_user_settings(first.owner, {"ask_every_tool": None})) == {}
    with pytest.raises(NotFound):
        await store.get_user(Owner("globex", first.id))  # the id of another tenant's user


async def test_conversations_crud_search_and_order(store: HostStore):
    ada, _, _ = await two_users(store)
    clock: Clock = store.test_clock  # type: ignore[attr-defined]
    first = await store.create_conversation(ada, "Rahmenvertrag Schrauben")
    clock.advance(minutes=1)
    second = await store.create_conversation(ada)
    assert second.title == ""
    await store.add_message(ada, second.id, "user", "Was kostet die Sechskantschraube M8?",
                            title_if_empty="Was kostet die   Sechskantschraube M8?")
    assert (await store.get_conversation(ada, second.id)).title == "Was kostet die Sechskantschraube M8?"
    clock.advance(minutes=1)
    await store.add_message(ada, first.id, "assistant", "Die Lieferfrist beträgt 14 Werktage (100% sicher).")

    assert [c.id for c in await store.list_conversations(ada)] == [first.id, second.id]  # most recent first
    assert [c.id for c in await store.list_conversations(ada, "SCHRAUBE")] == [first.id, second.id]
    assert [c.id for c in await store.list_conversations(ada, "lieferfrist")] == [first.id]  # message text
    assert [c.id for c in await store.list_conversations(ada, "kostet")] == [second.id]
    assert [c.id for c in await store.list_conversations(ada, "100%")] == [first.id]
    assert await store.list_conversations(ada, "Lief%frist") == []  # LIKE wildcards are literal
    assert await store.list_conversations(ada, "Lieferfris_") == []

    renamed = await store.rename_conversation(ada, second.id, "  Preise  ")
    assert renamed.title == "Preise"
    await store.delete_conversation(ada, first.id)
    with pytest.raises(NotFound):
        await store.get_conversation(ada, first.id)
    assert [c.id for c in await store.list_conversations(ada)] == [second.id]
    with pytest.raises(NotFound):
        await store.get_conversation(ada, "not-a-uuid")


async def test_messages_tool_calls_feedback_and_history(store: HostStore):
    ada, _, _ = await two_users(store)
    c = await store.create_conversation(ada, "t")
    user = await store.add_message(ada, c.id, "user", "Frage\x00mit NUL",
                                   data=[{"role": "user", "text": "Frage"}])
    answer = await store.add_message(ada, c.id, "assistant", "", partial=True, stop_reason="running")
    await store.record_tool_call(ada, answer.id, "c1", "lakehouse__search", arguments={"query": "M8"})
    await store.record_tool_call(ada, answer.id, "c2", "fix__write_note", arguments={"text": "x"})
    await store.record_tool_call(ada, answer.id, "c2", "fix__write_note", approval="always")
    await store.record_tool_call(ada, answer.id, "c1", "lakehouse__search", status="ok", duration_s=0.25,
                                 preview="Passages …")
    await store.record_tool_call(ada, answer.id, "c2", "fix__write_note", status="ok", duration_s=0.1,
                                 preview="stored: x")
    citations = [{"document_id": "d1", "title": "Vertrag", "text": "…", "number": 1, "page": 2}]
    await store.update_message(ada, answer.id, text="Antwort [1]", partial=False, stop_reason="end_turn",
                               citations=citations, data=[{"role": "assistant", "text": "Antwort [1]"}],
                               usage={"input_tokens": 10, "output_tokens": 3})
    await store.set_feedback(ada, answer.id, -1, "zu knapp")
    await store.set_feedback(ada, answer.id, 1, "doch gut")  # replaces the earlier one

    messages = await store.list_messages(ada, c.id)
    assert [m.role for m in messages] == ["user", "assistant"]
    assert messages[0].text == "Frage\ufffdmit NUL" and messages[0].id == user.id
    stored = messages[1]
    assert (stored.text, stored.partial, stored.stop_reason, stored.citations) == ("Antwort [1]", False, "end_turn",
                                                                                   citations)
    assert [(t.call_id, t.status, t.approval, t.arguments) for t in stored.tool_calls] == [
        ("c1", "ok", None, {"query": "M8"}), ("c2", "ok", "always", {"text": "x"})]
    assert stored.tool_calls[0].duration_s == pytest.approx(0.25) and stored.tool_calls[1].preview == "stored: x"
    assert stored.feedback is not None and (stored.feedback.rating, stored.feedback.comment) == (1, "doch gut")
    assert stored.usage == {"input_tokens": 10, "output_tokens": 3}
    assert await store.history(ada, c.id) == [{"role": "user", "text": "Frage"},
                                              {"role": "assistant", "text": "Antwort [1]"}]
    with pytest.raises(ValueError, match="rating"):
        await store.set_feedback(ada, answer.id, 0)
    with pytest.raises(ValueError, match="answers only"):
        await store.set_feedback(ada, user.id, 1)
    await store.delete_conversation(ada, c.id)  # messages, tool calls and feedback go with it
    with pytest.raises(NotFound):
        await store.get_message(ada, answer.id)


async def test_a_user_never_reaches_another_users_conversation(store: HostStore):
    ada, bob, eve = await two_users(store)
    c = await store.create_conversation(ada, "Adas Geheimnis")
    answer = await store.add_message(ada, c.id, "assistant", "geheim")
    for intruder in (bob, eve, Owner("globex", ada.user_id), Owner("acme", uuid.uuid4())):
        with pytest.raises(NotFound):
            await store.get_conversation(intruder, c.id)
        with pytest.raises(NotFound):
            await store.list_messages(intruder, c.id)
        with pytest.raises(NotFound):
            await store.history(intruder, c.id)
        with pytest.raises(NotFound):
            await store.rename_conversation(intruder, c.id, "mine")
        with pytest.raises(NotFound):
            await store.delete_conversation(intruder, c.id)
        with pytest.raises(NotFound):
            await store.add_message(intruder, c.id, "user", "hello")
        with pytest.raises(NotFound):
            await store.get_message(intruder, answer.id)
        with pytest.raises(NotFound):
            await store.update_message(intruder, answer.id, text="changed")
        with pytest.raises(NotFound):
            await store.record_tool_call(intruder, answer.id, "x", "fix__echo")
        with pytest.raises(NotFound):
            await store.set_feedback(intruder, answer.id, 1)
        with pytest.raises(NotFound):
            await store.get_feedback(intruder, answer.id)
        assert await store.list_conversations(intruder) == []
        assert await store.list_conversations(intruder, "geheim") == []
    messages = await store.list_messages(ada, c.id)
    assert [m.text for m in messages] == ["geheim"] and (await store.get_conversation(ada, c.id)).title == \
        "Adas Geheimnis"


async def test_sessions_hold_encrypted_tokens_and_expire(store: HostStore, db_url: str):
    user = await store.upsert_user("acme", "sub-ada", "ada@acme.example")
    clock: Clock = store.test_clock  # type: ignore[attr-defined]
    tokens = TokenSet("eyJ.access.token", clock.now + timedelta(minutes=10), "refresh-secret", "lakehouse:read")
    session_id = await store.create_session(user, tokens, "http://gw/t/acme", timedelta(hours=1))
    assert len(session_id) >= 40
    web = await store.get_session(session_id)
    assert web is not None and web.user.id == user.id and len(web.csrf_token) >= 40
    assert "refresh-secret" not in repr(web) and "eyJ" not in repr(await store.get_tokens(session_id))
    record = await store.get_tokens(session_id)
    assert record is not None and record.tokens.access_token == "eyJ.access.token"
    assert record.tokens.refresh_token == "refresh-secret" and record.issuer == "http://gw/t/acme"

    async with store.engine.connect() as conn:  # at rest: neither the tokens nor the session id
        rows = (await conn.execute(text("SELECT * FROM host_sessions"))).all()
    dump = repr(rows)
    assert "eyJ.access.token" not in dump and "refresh-secret" not in dump and session_id not in dump

    await store.update_tokens(session_id, TokenSet("eyJ.second", clock.now + timedelta(minutes=20)))
    record = await store.get_tokens(session_id)
    assert record is not None and record.tokens.access_token == "eyJ.second"
    assert record.tokens.refresh_token == "refresh-secret"  # kept when the refresh answer has none

    assert await store.get_session("forged-" + session_id) is None
    clock.advance(hours=2)
    assert await store.get_session(session_id) is None and await store.get_tokens(session_id) is None
    assert await store.prune() == 1
    assert await store.delete_session(session_id) is None


async def test_a_token_sealed_for_one_session_does_not_open_in_another(store: HostStore):
    user = await store.upsert_user("acme", "sub-ada", None)
    clock: Clock = store.test_clock  # type: ignore[attr-defined]
    one = await store.create_session(user, TokenSet("token-one", clock.now + timedelta(minutes=5), "r1"), "iss")
    two = await store.create_session(user, TokenSet("token-two", clock.now + timedelta(minutes=5), "r2"), "iss")
    async with store.engine.begin() as conn:  # an attacker with database access swaps the ciphertexts
        rows = {r[0]: r[1] for r in (await conn.execute(text("SELECT id_hash, access_token FROM host_sessions")))}
        (h1, c1), (h2, _) = rows.items()
        await conn.execute(text("UPDATE host_sessions SET access_token = :c WHERE id_hash = :h"), {"c": c1, "h": h2})
    errors = 0
    for session_id in (one, two):
        try:
            await store.get_tokens(session_id)
        except TokensUnavailable:
            errors += 1
    assert errors == 1


async def test_login_states_are_single_use_bound_to_the_browser_and_expire(store: HostStore):
    clock: Clock = store.test_clock  # type: ignore[attr-defined]
    state = await store.create_login_state("acme", "verifier-123", "/chat/", "browser-a")
    assert await store.take_login_state(state, "browser-b") is None  # another browser: refused (and used up)
    state = await store.create_login_state("acme", "verifier-456", "/chat/c/1", "browser-a")
    pending = await store.take_login_state(state, "browser-a")
    assert pending is not None and (pending.tenant, pending.code_verifier, pending.return_to) == (
        "acme", "verifier-456", "/chat/c/1")
    assert "verifier" not in repr(pending)
    assert await store.take_login_state(state, "browser-a") is None  # once only
    late = await store.create_login_state("acme", "v", "/chat/", "browser-a", ttl=timedelta(minutes=10))
    clock.advance(minutes=11)
    assert await store.take_login_state(late, "browser-a") is None


async def test_approvals_persist_user_decisions_and_admin_rules(store: HostStore, db_url: str, tmp_path: Path):
    approvals = store.approvals
    policy = ApprovalPolicy(approvals, "acme", "sub-ada")
    write = ToolInfo(name="fix__write_note")
    assert (await policy.check(write)).action == "ask"
    await policy.record(write, "always")
    await approvals.set_user_decision("acme", "sub-ada", "ingest__ingest_upload", "always")
    await approvals.set_user_decision("globex", "sub-ada", "fix__write_note", "always")
    assert await approvals.list_user_decisions("acme", "sub-ada") == {
        "fix__write_note": "always", "ingest__ingest_upload": "always"}
    assert await approvals.list_user_decisions("acme", "sub-bob") == {}
    assert (await policy.check(write)).action == "allow"
    await approvals.set_admin_rule("acme", "fix__*", "always_ask")
    await approvals.set_admin_rule("acme", "ingest__ingest_upload", "blocked")
    verdict = await policy.check(write)
    assert verdict.action == "ask" and not verdict.remember  # the admin's rule wins over "always"
    assert (await policy.check(ToolInfo(name="ingest__ingest_upload"))).action == "blocked"
    assert await approvals.list_admin_rules("acme") == {"fix__*": "always_ask", "ingest__ingest_upload": "blocked"}
    assert await approvals.list_admin_rules("globex") == {}
    with pytest.raises(ValueError):
        await approvals.set_admin_rule("acme", "x", "sometimes")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        await approvals.set_user_decision("acme", "sub-ada", "x", "allow_once")  # type: ignore[arg-type]

    # persisted: a new store on the same database sees the same decisions
    async with HostStore(db_url, box=store.box) as again:
        assert await again.approvals.get_user_decision("acme", "sub-ada", "fix__write_note") == "always"
        assert await again.approvals.get_admin_rule("acme", "ingest__ingest_upload") == "blocked"
        await again.approvals.set_user_decision("acme", "sub-ada", "fix__write_note", None)
        await again.approvals.set_admin_rule("acme", "fix__*", None)
    assert await approvals.list_user_decisions("acme", "sub-ada") == {"ingest__ingest_upload": "always"}
    assert await approvals.list_admin_rules("acme") == {"ingest__ingest_upload": "blocked"}


async def test_concurrent_first_sign_ins_make_one_user(store: HostStore):
    users = await asyncio.gather(*(store.upsert_user("acme", "sub-race", "r@acme.example") for _ in range(8)))
    assert len({u.id for u in users}) == 1


def test_the_token_key_file_is_private_and_stable(tmp_path: Path):
    path = tmp_path / "keys" / "host" / "tokens.key"
    box = TokenBox.from_file(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    again = TokenBox.from_file(path)
    sealed = box.encrypt("secret", "ctx")
    assert again.decrypt(sealed, "ctx") == "secret" and "secret" not in sealed
    with pytest.raises(TokensUnavailable):
        again.decrypt(sealed, "other-context")
    with pytest.raises(TokensUnavailable):
        TokenBox(b"\x01" * 32).decrypt(sealed, "ctx")
    assert "secret" not in repr(box) and box.key_id in repr(box)
