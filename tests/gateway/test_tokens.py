"""The gateway's signing keys (persistence, rotation, JWKS) and its internal-token minter."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import stat
import statistics
import threading
import time
from pathlib import Path

import pytest
from joserfc import jws

from kontor.gateway.keys import KeyStore, SigningKey
from kontor.gateway.tokens import TOKEN_TYPE, TokenMinter
from kontor.tenancy import InvalidTenant


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _private_d_values(directory: Path) -> set[str]:
    return {json.loads(p.read_text())["jwk"]["d"] for p in directory.glob("*.json")}


def _claims(token: str) -> tuple[dict, dict]:
    obj = jws.extract_compact(token.encode())
    return obj.headers(), json.loads(obj.payload)


# -- key store ------------------------------------------------------------------------------


def test_current_creates_one_key_persisted_private_to_the_owner(tmp_path: Path):
    directory = tmp_path / "gateway" / "keys"
    store = KeyStore(directory)
    key = store.current()
    assert store.current() is key  # no new key per call
    files = list(directory.glob("*.json"))
    assert [p.name for p in files] == [f"{key.kid}.json"]
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o600
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert not [p for p in directory.iterdir() if p.name.startswith(".tmp-")]
    doc = json.loads(files[0].read_text())
    assert doc["jwk"]["kty"] == "EC" and doc["jwk"]["crv"] == "P-256" and doc["jwk"]["d"]
    # A second store (another process, a restart) finds the same key instead of making one.
    assert KeyStore(directory).current().kid == key.kid


def test_jwks_is_public_only_and_nothing_private_is_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.DEBUG)
    clock = Clock()
    store = KeyStore(tmp_path / "keys", max_token_lifetime_s=60, grace_s=10, clock=clock)
    first = store.current()
    second = store.rotate()
    jwks = store.jwks()
    assert [k["kid"] for k in jwks["keys"]] == [second.kid, first.kid]
    for jwk in jwks["keys"]:
        assert set(jwk) == {"kty", "crv", "x", "y", "kid", "alg", "use"}
        assert jwk["alg"] == "ES256" and jwk["use"] == "sig"
    secrets = _private_d_values(tmp_path / "keys")
    assert len(secrets) == 2
    clock.now += 71
    assert store.prune() == [first.kid]
    dumped = json.dumps(jwks) + repr(first) + repr(second) + repr(store.keys()) + caplog.text
    assert "kid=" in caplog.text  # the log says what happened ...
    for d in secrets:
        assert d not in dumped  # ... but never with key material


def test_rotation_keeps_the_previous_key_published_until_its_tokens_expired(tmp_path: Path):
    clock = Clock()
    store = KeyStore(tmp_path / "keys", max_token_lifetime_s=300, grace_s=60, clock=clock)
    old = store.current()
    clock.now += 10
    new = store.rotate()
    assert new.kid != old.kid and store.current().kid == new.kid
    assert {k["kid"] for k in store.jwks()["keys"]} == {old.kid, new.kid}

    clock.now += 359  # superseded 359 s ago: a token signed just before could still be valid
    assert store.prune() == []
    assert {k["kid"] for k in store.jwks()["keys"]} == {old.kid, new.kid}

    clock.now += 1  # 300 s max lifetime + 60 s grace
    assert {k["kid"] for k in store.jwks()["keys"]} == {new.kid}  # no longer published ...
    assert store.prune() == [old.kid]  # ... and removed from disk
    assert not (tmp_path / "keys" / f"{old.kid}.json").exists()
    assert [k.kid for k in KeyStore(tmp_path / "keys", clock=clock).keys()] == [new.kid]


def test_the_active_key_is_never_pruned(tmp_path: Path):
    clock = Clock()
    store = KeyStore(tmp_path / "keys", max_token_lifetime_s=60, grace_s=0, clock=clock)
    key = store.current()
    clock.now += 10 * 365 * 86400
    assert store.prune() == [] and store.current().kid == key.kid


def test_rotate_after_makes_current_rotate_when_due(tmp_path: Path):
    clock = Clock()
    store = KeyStore(tmp_path / "keys", rotate_after_s=3600, clock=clock)
    first = store.current()
    clock.now += 3599
    assert store.current().kid == first.kid
    clock.now += 1
    assert store.current().kid != first.kid


def test_a_rotation_by_another_store_on_the_same_folder_is_seen(tmp_path: Path):
    a = KeyStore(tmp_path / "keys")
    b = KeyStore(tmp_path / "keys")
    assert a.current().kid == b.current().kid
    rotated = b.rotate()  # within the same file-time tick as the load: the "racy" rule must catch it
    assert a.current().kid == rotated.kid
    assert {k["kid"] for k in a.jwks()["keys"]} == {k["kid"] for k in b.jwks()["keys"]}


def test_concurrent_rotations_from_threads_leave_only_complete_keys(tmp_path: Path):
    store = KeyStore(tmp_path / "keys")
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(5):
                store.rotate()
                store.jwks()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    fresh = KeyStore(tmp_path / "keys")
    assert len(fresh.keys()) == 20 and len(fresh.jwks()["keys"]) == 20
    assert not [p for p in (tmp_path / "keys").iterdir() if p.name.startswith(".tmp-")]


def _first_use(directory: str, barrier, out) -> None:  # runs in a child process
    barrier.wait()
    out.put(KeyStore(Path(directory)).current().kid)


def test_first_use_from_several_processes_creates_exactly_one_key(tmp_path: Path):
    ctx = multiprocessing.get_context("fork")
    barrier, out = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_first_use, args=(str(tmp_path / "keys"), barrier, out)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    kids = {out.get(timeout=5) for _ in procs}
    assert len(kids) == 1
    assert [p.stem for p in (tmp_path / "keys").glob("*.json")] == list(kids)


def test_damaged_or_loosely_permitted_key_files(tmp_path: Path):
    store = KeyStore(tmp_path / "keys")
    key = store.current()
    path = tmp_path / "keys" / f"{key.kid}.json"
    os.chmod(path, 0o644)
    (tmp_path / "keys" / "garbage.json").write_text("{not json")
    again = KeyStore(tmp_path / "keys")
    assert [k.kid for k in again.keys()] == [key.kid]  # garbage ignored
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # permissions tightened


def test_signing_key_repr_shows_no_material(tmp_path: Path):
    key = KeyStore(tmp_path / "keys").current()
    assert isinstance(key, SigningKey) and repr(key).startswith("SigningKey(kid=")
    assert key.key.as_dict(private=True)["d"] not in repr(key)


# -- minter ---------------------------------------------------------------------------------


def test_minted_token_carries_the_claims(tmp_path: Path):
    clock = Clock()
    store = KeyStore(tmp_path / "keys", clock=clock)
    minter = TokenMinter(store, "http://127.0.0.1:8700", clock=clock)
    token = minter.mint("http://127.0.0.1:9001/mcp", "user-7", "acme", ["lakehouse:write", "lakehouse:read"],
                        actor="http://127.0.0.1:8700", client_id="claude-desktop", ttl_s=60)
    header, claims = _claims(token)
    assert header == {"typ": TOKEN_TYPE, "alg": "ES256", "kid": store.current().kid}
    assert claims["iss"] == "http://127.0.0.1:8700" and claims["aud"] == "http://127.0.0.1:9001/mcp"
    assert claims["sub"] == "user-7" and claims["tenant"] == "acme"
    assert claims["scope"] == "lakehouse:read lakehouse:write"
    assert claims["act"] == {"sub": "http://127.0.0.1:8700"} and claims["client_id"] == "claude-desktop"
    assert claims["iat"] == claims["nbf"] == int(clock.now) and claims["exp"] == int(clock.now) + 60
    assert isinstance(claims["jti"], str) and len(claims["jti"]) >= 16
    bare = _claims(minter.mint("aud", "u", "acme", []))[1]
    assert "act" not in bare and "client_id" not in bare and bare["scope"] == ""


def test_tokens_are_reused_until_a_third_of_their_life_is_left(tmp_path: Path):
    clock = Clock()
    minter = TokenMinter(KeyStore(tmp_path / "keys", clock=clock), "gw", clock=clock)
    args = ("aud-a", "alice", "acme")
    first = minter.mint(*args, ["x:read", "y:read"], ttl_s=60)
    assert minter.mint(*args, ["y:read", "x:read", "x:read"], ttl_s=60) == first  # same scope set
    # Anything else that goes into the token gives another token.
    others = {
        minter.mint("aud-b", "alice", "acme", ["x:read", "y:read"]),
        minter.mint("aud-a", "bob", "acme", ["x:read", "y:read"]),
        minter.mint("aud-a", "alice", "other", ["x:read", "y:read"]),
        minter.mint(*args, ["x:read"]),
        minter.mint(*args, ["x:read", "y:read"], client_id="c"),
        minter.mint(*args, ["x:read", "y:read"], actor="gw"),
        minter.mint(*args, ["x:read", "y:read"], ttl_s=30),
    }
    assert first not in others and len(others) == 7
    clock.now += 39
    assert minter.mint(*args, ["x:read", "y:read"]) == first  # 21 s left: still more than 1/3
    clock.now += 1
    renewed = minter.mint(*args, ["x:read", "y:read"])  # 20 s left: renewed
    assert renewed != first and _claims(renewed)[1]["exp"] == int(clock.now) + 60
    minter.clear()
    assert minter.mint(*args, ["x:read", "y:read"]) != renewed


def test_cache_is_bounded(tmp_path: Path):
    minter = TokenMinter(KeyStore(tmp_path / "keys"), "gw", max_cached=10)
    for i in range(25):
        minter.mint("aud", f"user-{i}", "acme", [])
    assert len(minter._cache) == 10


def test_mint_refuses_bad_input(tmp_path: Path):
    store = KeyStore(tmp_path / "keys", max_token_lifetime_s=300)
    minter = TokenMinter(store, "gw")
    with pytest.raises(InvalidTenant):
        minter.mint("aud", "u", "../x", [])
    with pytest.raises(ValueError, match="ttl_s"):
        minter.mint("aud", "u", "acme", [], ttl_s=301)  # longer than the key store keeps keys for
    with pytest.raises(ValueError, match="ttl_s"):
        minter.mint("aud", "u", "acme", [], ttl_s=0)
    with pytest.raises(ValueError, match="scope"):
        minter.mint("aud", "u", "acme", ["a b"])
    with pytest.raises(TypeError):
        minter.mint("aud", "u", "acme", "lakehouse:read")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="audience"):
        minter.mint("", "u", "acme", [])
    with pytest.raises(ValueError, match="subject"):
        minter.mint("aud", "", "acme", [])


def _median_us(fn, n: int) -> float:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        fn()
        samples.append(time.perf_counter_ns() - t0)
    return statistics.median(samples) / 1000


def test_cached_mint_is_far_cheaper_than_signing(tmp_path: Path):
    """The hot path: a cached token must cost a small fraction of a signature (figures printed with -s)."""
    minter = TokenMinter(KeyStore(tmp_path / "keys"), "gw")
    args = ("http://127.0.0.1:9001/mcp", "alice", "acme", ["lakehouse:read", "lakehouse:write"])
    minter.mint(*args)
    signed = _median_us(lambda: minter.mint_uncached(*args), 200)
    cached = _median_us(lambda: minter.mint(*args), 2000)
    print(f"\nmint (sign) {signed:.1f} us, mint (cached) {cached:.2f} us, ratio {signed / cached:.0f}x")
    assert cached * 10 < signed
