"""The registry's repository: verbatim and immutable versions, refused submissions, namespaces, secrets.

Runs on SQLite and on the throwaway PostgreSQL (see :mod:`tests.registry.test_registry_support`).
"""

from __future__ import annotations

import hashlib
import json

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from kontor.gateway.db import AlreadyExists, InvalidValue
from kontor.gateway.pinning import definition_hash
from kontor.registry.lifecycle import ProofMethod, VersionState
from kontor.registry.models import (
    ImmutableVersion,
    ReviewRunRow,
    SecretRow,
    ServerRow,
    ToolSnapshotRow,
    VersionRow,
)
from kontor.registry.server_json import SCHEMA_URL
from kontor.registry.service import InvalidSubmission
from kontor.registry.store import (
    PermissionDenied,
    RegistryStore,
    SecretBox,
    SecretsUnavailable,
    derive_slug,
    latest_version,
)
from tests.registry import test_registry_support as support
from tests.registry.test_registry_support import (
    NAME,
    PUBLISHER,
    WEATHER_TOOLS,
    World,
    server_json,
    tool,
)

# the shared fixtures (pytest finds them by their own names)
db_url, gateway, store, world = support.db_url, support.gateway, support.store, support.world


async def _count(store: RegistryStore, model: type) -> int:
    async with store._sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


async def test_submission_is_stored_verbatim_with_the_hash_of_its_bytes(world: World) -> None:
    # Odd spacing, key order, a non-ASCII character and a byte-order mark: all kept exactly.
    raw = ("\ufeff{\n  \"version\": \"1.0.0\",   \"name\": \"com.example/weather\",\n"
           f"  \"description\": \"Wetter für Städte\", \"$schema\": \"{SCHEMA_URL}\",\n"
           "  \"remotes\": [{\"type\": \"streamable-http\", \"url\": \"https://weather.example.com/mcp\"}]\n}\n"
           ).encode()
    world.live.serve(NAME, "1.0.0", WEATHER_TOOLS)
    version = await world.service.submit(world.publisher.id, raw, PUBLISHER)
    stored = await world.store.get_version(version.id)
    assert stored.server_json_bytes == raw
    assert stored.sha256 == hashlib.sha256(raw).hexdigest()
    assert stored.server_json["description"] == "Wetter für Städte"
    assert stored.submitted_by == PUBLISHER and stored.server_name == NAME and stored.slug == "weather"
    # the review got the parsed document and the publisher's namespaces
    assert world.live.calls == [(NAME, "1.0.0", ["com.example.*"])]
    runs = await world.store.list_review_runs(version.id)
    assert [(r.number, r.passed, r.risk) for r in runs] == [(1, True, "low")]
    snapshot = await world.store.snapshot(runs[0].id)
    assert [s.tool_name for s in snapshot] == ["get_forecast", "get_alerts", "set_alert"]
    assert snapshot[0].definition == WEATHER_TOOLS[0]
    assert snapshot[0].definition_hash == definition_hash(WEATHER_TOOLS[0])


async def test_a_submitted_version_is_immutable(world: World) -> None:
    version = await world.submit("1.0.0")
    # the same version number again: refused, even with other content
    with pytest.raises(AlreadyExists, match="immutable"):
        await world.submit("1.0.0", description="Another text.")
    # the ORM refuses to flush a change to the stored document
    async with world.store._sessions() as session:
        row = await session.get(VersionRow, version.id)
        row.server_json_text = row.server_json_text.replace("Weather", "Wether")
        with pytest.raises(ImmutableVersion, match="immutable"):
            await session.flush()
        await session.rollback()
    # the database refuses a second row for the same (server, version)
    async with world.store._sessions() as session:
        original = await session.get(VersionRow, version.id)
        session.add(VersionRow(server_id=original.server_id, version="1.0.0", server_json_text="{}",
                               server_json={}, sha256="0" * 64, state="submitted", submitted_by="x",
                               created_at=original.created_at, updated_at=original.created_at))
        with pytest.raises(IntegrityError):
            await session.flush()
        await session.rollback()
    assert (await world.store.get_version(version.id)).server_json_text == version.server_json_text
    assert len(await world.store.list_versions()) == 1


async def test_an_invalid_submission_stores_nothing_and_lists_every_problem(world: World) -> None:
    doc = {"$schema": SCHEMA_URL, "name": "org.other/weather", "version": "^1.0",
           "remotes": [{"type": "streamable-http", "url": "http://127.0.0.1:8080/mcp"},
                       {"type": "streamable-http", "url": "https://169.254.169.254/latest"}]}
    with pytest.raises(InvalidSubmission) as caught:
        await world.service.submit(world.publisher.id, json.dumps(doc).encode(), PUBLISHER)
    problems = {(p.path, p.rule) for p in caught.value.problems}
    assert ("$.description", "schema.required") in problems  # missing
    assert ("$.name", "namespace-not-owned") in problems
    assert ("$.version", "version-range") in problems
    assert ("$.remotes[0].url", "remote-url-not-https") in problems
    assert ("$.remotes[0].url", "remote-url-local") in problems
    assert ("$.remotes[1].url", "remote-url-local") in problems
    assert all(p.path.startswith("$") for p in caught.value.problems)
    assert "$.remotes[1].url" in str(caught.value)
    assert caught.value.to_dict()["ok"] is False
    # nothing stored, nothing reviewed
    for model in (ServerRow, VersionRow, ReviewRunRow, ToolSnapshotRow):
        assert await _count(world.store, model) == 0
    assert [e for e in await world.store.list_events() if e.subject_type in ("server", "version")] == []
    assert world.live.calls == []


async def test_kontor_limits_beyond_the_schema_are_problems_too(world: World) -> None:
    bad = json.dumps({"$schema": SCHEMA_URL, "name": NAME, "description": "a\u0000b", "version": "1." + "0" * 70})
    with pytest.raises(InvalidSubmission) as caught:
        await world.service.submit(world.publisher.id, bad.encode(), PUBLISHER)
    assert {(p.path, p.rule) for p in caught.value.problems} >= {("$.description", "nul-character"),
                                                                  ("$.version", "version-too-long")}
    with pytest.raises(InvalidSubmission, match="not UTF-8"):
        await world.service.submit(world.publisher.id, b"\xff\xfe{}", PUBLISHER)
    assert await _count(world.store, VersionRow) == 0


async def test_only_the_publisher_owner_submits(world: World) -> None:
    with pytest.raises(PermissionDenied):
        await world.service.submit(world.publisher.id, server_json(), "mallory@evil.example")
    other = await world.store.create_publisher("Other", "other@example.org")
    await world.store.add_namespace(other.id, "com.example", ProofMethod.dns, actor="other@example.org")
    world.live.serve(NAME, "1.0.0", WEATHER_TOOLS)
    await world.submit("1.0.0")
    # another publisher (owning com.example too) cannot add versions to a server it does not own
    with pytest.raises(PermissionDenied, match="another publisher"):
        await world.service.submit(other.id, server_json(NAME, "2.0.0"), "other@example.org")


async def test_a_namespace_belongs_to_one_publisher(store: RegistryStore) -> None:
    a = await store.create_publisher("A", "a@a.example")
    b = await store.create_publisher("B", "b@b.example")
    first = await store.add_namespace(a.id, "IO.Example", "http", evidence={"url": "https://example.io"},
                                      actor="a@a.example")
    assert first.namespace == "io.example" and first.proof_method == ProofMethod.http
    again = await store.add_namespace(a.id, "io.example", ProofMethod.dns, actor="a@a.example")
    assert again.id == first.id and again.proof_method == ProofMethod.dns
    with pytest.raises(AlreadyExists):
        await store.add_namespace(b.id, "io.example", ProofMethod.dns, actor="b@b.example")
    for bad in ("", "-x", "io..", "io/example", "*.io", "a b"):
        with pytest.raises(InvalidValue):
            await store.add_namespace(a.id, bad, ProofMethod.dns, actor="a@a.example")
    with pytest.raises(InvalidValue):
        await store.add_namespace(a.id, "io.other", "github", actor="a@a.example")
    assert [n.namespace for n in await store.list_namespaces(a.id)] == ["io.example"]


async def test_server_names_and_gateway_names(world: World) -> None:
    assert derive_slug("com.example/Weather_API.v2") == "weather-api-v2"
    assert derive_slug("com.example/42") == "server"
    assert derive_slug("io.github.alice/Weather_MCP") == "weather-mcp"
    assert len(derive_slug("com.example/" + "x" * 80)) == 24
    first = await world.submit("1.0.0")
    # a reserved first-party name is never given to a third-party server
    reserved = await world.submit("1.0.0", name="com.example.tools/lakehouse")
    assert reserved.slug != "lakehouse" and reserved.slug.startswith("lakehouse-")
    # names differing only in letter case are the same server
    again = await world.submit("1.0.1", name="COM.example/WEATHER")
    assert again.server_id == first.server_id
    # a second "weather" server of another namespace gets another gateway name
    other = await world.submit("1.0.0", name="com.example.eu/weather")
    assert other.slug == "weather-2"


async def test_private_server_visibility_is_fixed_by_the_first_version(world: World) -> None:
    private = await world.submit("1.0.0", name="com.example/internal", tenant="acme")
    server = await world.store.get_server(private.server_id)
    assert server.visibility == "private" and server.owner_tenant_id == "acme"
    with pytest.raises(Exception, match="visibility"):
        await world.service.submit(world.publisher.id, server_json("com.example/internal", "1.0.1"), PUBLISHER,
                                   visibility="public")


async def test_review_that_crashes_leaves_a_failed_run_not_a_stuck_version(world: World) -> None:
    world.live.fail = RuntimeError("snapshot transport exploded")
    version = await world.submit("1.0.0")
    assert version.state == VersionState.checks_failed
    run = await world.store.latest_review_run(version.id)
    assert run is not None and run.passed is False and "exploded" in (run.error or "")
    world.live.fail = None
    assert (await world.service.rerun_review(version.id, PUBLISHER)).state == VersionState.in_review
    assert [r.number for r in await world.store.list_review_runs(version.id)] == [1, 2]


async def test_secret_box_encrypts_and_binds_the_context(tmp_path) -> None:
    box = SecretBox.generate()
    token = box.encrypt("s3cr3t-value", "ctx-a")
    assert "s3cr3t" not in token and box.decrypt(token, "ctx-a") == "s3cr3t-value"
    with pytest.raises(SecretsUnavailable):
        box.decrypt(token, "ctx-b")  # moved to another row: does not decrypt
    assert "key" not in repr(box).replace("key_id", "")
    path = tmp_path / "registry" / "secrets.key"
    first = SecretBox.from_file(path)
    assert (path.stat().st_mode & 0o777) == 0o600
    assert SecretBox.from_file(path).key_id == first.key_id


async def test_secrets_are_encrypted_at_rest_and_never_listed(world: World) -> None:
    version = await world.approved("1.0.0", secret_header=True)
    ref = await world.service.set_secret("acme", NAME, "X-Api-Key", "key-123456", "admin@acme.example")
    assert "key-123456" not in repr(ref)
    async with world.store._sessions() as session:
        row = (await session.scalars(select(SecretRow))).one()
    assert "key-123456" not in row.ciphertext and "key-123456" not in repr(row)
    assert await world.store.secret_value("acme", version.server_id, "X-Api-Key") == "key-123456"
    listed = await world.service.list_secrets("acme", NAME, "admin@acme.example")
    assert [(s.name, s.updated_by) for s in listed] == [("X-Api-Key", "admin@acme.example")]
    events = await world.store.list_events(subject_type="secret")
    assert events and all("key-123456" not in json.dumps(e.detail) for e in events)
    with pytest.raises(InvalidValue, match="declares no secret"):
        await world.service.set_secret("acme", NAME, "OTHER", "x", "admin@acme.example")
    no_key = RegistryStore(world.gateway)
    with pytest.raises(SecretsUnavailable):
        await no_key.set_secret("acme", version.server_id, "X-Api-Key", "v", actor="admin@acme.example")


def test_latest_version_orders_semantic_versions() -> None:
    class V:
        def __init__(self, version: str, when: int) -> None:
            self.version, self.approved_at, self.created_at = version, when, when

    rows = [V("1.10.0", 1), V("1.9.0", 3), V("1.10.0-rc.1", 2)]
    assert latest_version(rows).version == "1.10.0"
    assert latest_version([V("2024-01", 5), V("1.0.0", 9)]).version == "1.0.0"  # not all semver: newest approval
    assert tool("x")["annotations"] == {"readOnlyHint": True}
