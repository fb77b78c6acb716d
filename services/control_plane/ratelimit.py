"""Per-API-key token buckets, held in process memory.

Each control-plane replica keeps its own buckets, so with N replicas behind a balancer a key
can reach up to N times the configured rate; that trade buys a limit that costs no database
round trip on the run path. Operators who need an exact global limit put it at their proxy.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from services.rpc.errors import rate_limited

# Past this many tracked keys, full (idle) buckets are dropped: they carry no state.
_PRUNE_AT = 10_000


@dataclass
class _Bucket:
    tokens: float
    updated: float


class KeyRateLimiter:
    """Allow `per_minute` calls per key on average, with bursts of up to `burst` calls."""

    def __init__(
        self,
        what: str,
        *,
        per_minute: int,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._what = what
        self._per_minute = per_minute
        self._rate = per_minute / 60.0
        self._burst = float(max(burst, 1))
        self._clock = clock
        self._buckets: dict[uuid.UUID, _Bucket] = {}

    def take(self, key: uuid.UUID | None) -> None:
        """Spend one call of `key`'s budget, or raise RESOURCE_EXHAUSTED with a retry delay."""
        if self._per_minute <= 0 or key is None:
            return
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= _PRUNE_AT:
                self._prune(now)
            bucket = self._buckets[key] = _Bucket(self._burst, now)
        bucket.tokens = min(self._burst, bucket.tokens + (now - bucket.updated) * self._rate)
        bucket.updated = now
        if bucket.tokens < 1.0:
            raise rate_limited(self._what, self._per_minute, (1.0 - bucket.tokens) / self._rate)
        bucket.tokens -= 1.0

    def _prune(self, now: float) -> None:
        full = [
            key
            for key, b in self._buckets.items()
            if b.tokens + (now - b.updated) * self._rate >= self._burst
        ]
        for key in full:
            del self._buckets[key]
