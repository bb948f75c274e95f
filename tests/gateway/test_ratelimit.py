"""Token buckets with an injected clock: no sleeping, exact numbers."""

from __future__ import annotations

import asyncio
import sys
import threading

import pytest

from kontor.gateway.ratelimit import InMemoryBucketStorage, RateLimiter, allow_all


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def limiter(clock: FakeClock, rate: float = 2.0, burst: float = 5, **storage: float) -> RateLimiter:
    return RateLimiter(InMemoryBucketStorage(**storage), rate_per_s=rate, burst=burst, clock=clock)


async def test_burst_then_refusal_with_retry_after(clock: FakeClock) -> None:
    rl = limiter(clock, rate=2.0, burst=5)
    decisions = [await rl.allow("tenant:acme") for _ in range(5)]
    assert all(d.allowed and d.retry_after_s == 0 for d in decisions)
    assert [d.remaining for d in decisions] == [4, 3, 2, 1, 0]
    refused = await rl.allow("tenant:acme")
    assert not refused.allowed
    assert refused.retry_after_s == pytest.approx(0.5)  # one token at 2 tokens/s
    clock.advance(0.2)
    again = await rl.allow("tenant:acme")
    assert not again.allowed and again.retry_after_s == pytest.approx(0.3)  # refusals don't reset the refill
    clock.advance(0.3)
    assert (await rl.allow("tenant:acme")).allowed
    assert not (await rl.allow("tenant:acme")).allowed


async def test_retry_after_for_a_larger_cost(clock: FakeClock) -> None:
    rl = limiter(clock, rate=4.0, burst=10)
    assert (await rl.allow("k", cost=9)).allowed
    refused = await rl.allow("k", cost=5)
    assert not refused.allowed and refused.retry_after_s == pytest.approx(1.0)  # needs 4 more tokens
    with pytest.raises(ValueError):
        await rl.allow("k", cost=11)  # could never be allowed


async def test_refill_over_time_caps_at_burst(clock: FakeClock) -> None:
    rl = limiter(clock, rate=1.0, burst=3)
    for _ in range(3):
        assert (await rl.allow("u")).allowed
    assert not (await rl.allow("u")).allowed
    clock.advance(2.0)
    assert (await rl.allow("u")).allowed
    assert (await rl.allow("u")).allowed
    assert not (await rl.allow("u")).allowed
    clock.advance(3600)  # a long pause refills only to the burst
    assert sum([(await rl.allow("u")).allowed for _ in range(10)]) == 3


async def test_clock_going_backwards_adds_nothing(clock: FakeClock) -> None:
    rl = limiter(clock, rate=1.0, burst=1)
    assert (await rl.allow("u")).allowed
    clock.advance(-100)
    assert not (await rl.allow("u")).allowed


async def test_keys_are_isolated(clock: FakeClock) -> None:
    rl = limiter(clock, rate=1.0, burst=2)
    assert (await rl.allow("acme/alice")).allowed
    assert (await rl.allow("acme/alice")).allowed
    assert not (await rl.allow("acme/alice")).allowed
    assert (await rl.allow("acme/bob")).allowed
    assert (await rl.allow("globex/alice")).allowed


async def test_allow_all_refunds_when_a_later_limit_refuses(clock: FakeClock) -> None:
    storage = InMemoryBucketStorage()
    per_user = RateLimiter(storage, rate_per_s=1.0, burst=3, clock=clock)
    per_tenant = RateLimiter(storage, rate_per_s=1.0, burst=2, clock=clock)
    checks = [(per_user, "user:acme/alice"), (per_tenant, "tenant:acme")]
    assert (await allow_all(checks)).allowed
    assert (await allow_all(checks)).allowed
    refused = await allow_all(checks)
    assert not refused.allowed and refused.retry_after_s == pytest.approx(1.0)
    # alice's token for the refused call came back: she still has one of her three.
    assert (await per_user.allow("user:acme/alice")).allowed
    assert not (await per_user.allow("user:acme/alice")).allowed


async def test_idle_buckets_are_evicted(clock: FakeClock) -> None:
    storage = InMemoryBucketStorage(idle_ttl_s=10)
    rl = RateLimiter(storage, rate_per_s=1.0, burst=5, clock=clock)
    for i in range(50):
        await rl.allow(f"k{i}")
    assert len(storage) == 50
    clock.advance(11)
    await rl.allow("fresh")
    assert len(storage) == 1 and storage.evicted == 50


async def test_bounded_memory_under_100k_distinct_keys(clock: FakeClock) -> None:
    storage = InMemoryBucketStorage(max_keys=1000, idle_ttl_s=3600)
    rl = RateLimiter(storage, rate_per_s=1.0, burst=2, clock=clock)
    hot = "tenant:acme"
    await rl.allow(hot)
    size_after_warmup = None
    for i in range(100_000):
        await rl.allow(f"user:{i}")
        if i % 100 == 0:
            await rl.allow(hot)  # recently used, so never the one evicted
        if i == 5_000:
            size_after_warmup = sys.getsizeof(storage._buckets)
        clock.advance(0.0001)
    assert len(storage) == 1000
    assert storage.evicted == 100_001 - 1000
    assert sys.getsizeof(storage._buckets) <= 2 * size_after_warmup  # no growth past the cap
    # The hot key kept its state: it has been spending one token per 100 keys and is not reset to full.
    assert hot in storage._buckets


async def test_lru_eviction_drops_least_recently_used(clock: FakeClock) -> None:
    storage = InMemoryBucketStorage(max_keys=2)
    rl = RateLimiter(storage, rate_per_s=0.001, burst=1, clock=clock)
    assert (await rl.allow("a")).allowed
    assert (await rl.allow("b")).allowed
    assert not (await rl.allow("a")).allowed  # touches a: b is now the oldest
    assert (await rl.allow("c")).allowed  # evicts b
    assert not (await rl.allow("a")).allowed  # a's empty bucket survived
    assert set(storage._buckets) == {"a", "c"}


def test_thread_safety_no_lost_updates() -> None:
    clock = FakeClock()  # frozen: no refill, so exactly `burst` calls may pass in total
    storage = InMemoryBucketStorage()
    rl = RateLimiter(storage, rate_per_s=1.0, burst=1000, clock=clock)
    allowed = [0] * 8

    def worker(n: int) -> None:
        async def run() -> None:
            for _ in range(500):
                allowed[n] += (await rl.allow("shared")).allowed

        asyncio.run(run())

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(allowed) == 1000


async def test_concurrent_tasks_share_one_bucket(clock: FakeClock) -> None:
    rl = limiter(clock, rate=1.0, burst=10)
    results = await asyncio.gather(*(rl.allow("k") for _ in range(50)))
    assert sum(d.allowed for d in results) == 10


def test_invalid_settings() -> None:
    with pytest.raises(ValueError):
        RateLimiter(InMemoryBucketStorage(), rate_per_s=0, burst=1)
    with pytest.raises(ValueError):
        RateLimiter(InMemoryBucketStorage(), rate_per_s=1, burst=0.5)
    with pytest.raises(ValueError):
        InMemoryBucketStorage(max_keys=0)
