"""Token-bucket rate limits per tenant and per user, with pluggable bucket storage.

A bucket holds up to ``burst`` tokens and refills at ``rate_per_s``; a request takes ``cost``
tokens (default 1) or is refused with the time until enough tokens will be there.

The algorithm lives in :class:`RateLimiter`; a :class:`BucketStorage` only has to apply a
pure read-modify-write function to one key atomically. That is all a shared backend needs
to offer (a row lock or compare-and-set in PostgreSQL, a WATCH/MULTI retry or Lua script in
Redis), so replicas can later share limits without touching the limiter. Times come from the
limiter's clock: ``time.monotonic`` is right for the in-process storage, a shared storage must
be paired with a clock all replicas agree on (``time.time``, or the store's own time).

A missing bucket means a full one, so dropping a bucket that has been idle long enough to
refill completely loses nothing; :class:`InMemoryBucketStorage` relies on that.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

__all__ = ["BucketState", "BucketStorage", "Decision", "InMemoryBucketStorage", "RateLimiter", "allow_all"]

T = TypeVar("T")


@dataclass(frozen=True)
class BucketState:
    tokens: float
    updated: float  # clock reading when ``tokens`` was computed


@dataclass(frozen=True)
class Decision:
    allowed: bool
    retry_after_s: float  # 0.0 when allowed; otherwise when ``cost`` tokens will be available
    remaining: float = 0.0  # tokens left after this decision (for RateLimit-* headers)
    limit: float = 0.0  # the bucket size


class BucketStorage(Protocol):
    """Where buckets live. ``update`` must run ``fn`` and store its new state atomically per key.

    ``fn`` is pure and may be called more than once (optimistic backends retry it). ``now`` is the
    limiter's clock reading, for the storage's own housekeeping (idle expiry).
    """

    async def update(self, key: str, fn: Callable[[BucketState | None], tuple[BucketState, T]], *, now: float) -> T:
        ...


class InMemoryBucketStorage:
    """Process-local buckets: safe across threads and tasks, with bounded memory.

    Buckets idle for ``idle_ttl_s`` are dropped (lossless when ``idle_ttl_s >= burst / rate``, the time
    a bucket takes to refill); beyond ``max_keys`` the least recently used bucket is dropped, which
    hands that key a full bucket again — so size ``max_keys`` above the number of keys active within
    ``idle_ttl_s``. Keys are tenant and user ids from verified tokens, so a flood of new keys needs a
    flood of valid identities.
    """

    def __init__(self, max_keys: int = 100_000, idle_ttl_s: float = 600.0) -> None:
        if max_keys < 1 or idle_ttl_s <= 0:
            raise ValueError("max_keys must be >= 1 and idle_ttl_s > 0")
        self.max_keys = max_keys
        self.idle_ttl_s = idle_ttl_s
        self._buckets: OrderedDict[str, tuple[BucketState, float]] = OrderedDict()  # key -> (state, last use)
        self._lock = threading.Lock()  # held only for in-memory work, never across an await
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._buckets)

    async def update(self, key: str, fn: Callable[[BucketState | None], tuple[BucketState, T]], *, now: float) -> T:
        return self.update_sync(key, fn, now=now)

    def update_sync(self, key: str, fn: Callable[[BucketState | None], tuple[BucketState, T]], *, now: float) -> T:
        with self._lock:
            entry = self._buckets.get(key)
            state, result = fn(entry[0] if entry is not None else None)
            self._buckets[key] = (state, now)
            self._buckets.move_to_end(key)
            self._evict(now)
            return result

    def _evict(self, now: float) -> None:
        # The dict is in last-use order, so the idle ones are at the front: amortised O(1) per call.
        buckets = self._buckets
        while buckets:
            key, (_, last_use) = next(iter(buckets.items()))
            if len(buckets) > self.max_keys or now - last_use >= self.idle_ttl_s:
                del buckets[key]
                self.evicted += 1
            else:
                break


class RateLimiter:
    """``await limiter.allow(key)`` -> :class:`Decision`. One limiter per limit (e.g. tenant, user)."""

    def __init__(
        self,
        storage: BucketStorage,
        rate_per_s: float,
        burst: float,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not (rate_per_s > 0 and math.isfinite(rate_per_s)):
            raise ValueError("rate_per_s must be a positive number")
        if not (burst >= 1 and math.isfinite(burst)):
            raise ValueError("burst must be >= 1")
        self.storage = storage
        self.rate_per_s = float(rate_per_s)
        self.burst = float(burst)
        self.clock = clock

    def _refilled(self, state: BucketState | None, now: float) -> float:
        if state is None:
            return self.burst
        elapsed = max(0.0, now - state.updated)  # a clock step backwards never adds tokens
        return min(self.burst, state.tokens + elapsed * self.rate_per_s)

    async def allow(self, key: str, cost: float = 1.0) -> Decision:
        """Take ``cost`` tokens from ``key``'s bucket if it has them."""
        if not 0 < cost <= self.burst:
            raise ValueError(f"cost must be in (0, burst={self.burst:g}]")
        now = self.clock()

        def take(state: BucketState | None) -> tuple[BucketState, Decision]:
            tokens = self._refilled(state, now)
            if tokens >= cost:
                left = tokens - cost
                return BucketState(left, now), Decision(True, 0.0, left, self.burst)
            wait = (cost - tokens) / self.rate_per_s
            return BucketState(tokens, now), Decision(False, wait, tokens, self.burst)

        return await self.storage.update(key, take, now=now)

    async def refund(self, key: str, cost: float = 1.0) -> None:
        """Give back tokens taken by a call that did not happen (never above ``burst``)."""
        now = self.clock()

        def give(state: BucketState | None) -> tuple[BucketState, None]:
            return BucketState(min(self.burst, self._refilled(state, now) + cost), now), None

        await self.storage.update(key, give, now=now)


async def allow_all(checks: Sequence[tuple[RateLimiter, str]], cost: float = 1.0) -> Decision:
    """Pass only if every (limiter, key) allows — e.g. ``[(per_user, f"{tenant}/{user}"), (per_tenant, tenant)]``.

    Tokens already taken are refunded when a later check refuses, so a refused call costs nothing.
    Returns the first refusal, or the allowed decision with the fewest tokens remaining.
    """
    taken: list[tuple[RateLimiter, str]] = []
    tightest: Decision | None = None
    for limiter, key in checks:
        decision = await limiter.allow(key, cost)
        if not decision.allowed:
            for done_limiter, done_key in taken:
                await done_limiter.refund(done_key, cost)
            return decision
        taken.append((limiter, key))
        if tightest is None or decision.remaining < tightest.remaining:
            tightest = decision
    if tightest is None:
        raise ValueError("allow_all needs at least one check")
    return tightest
