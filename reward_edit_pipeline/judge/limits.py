"""Client-side limits for API calls: bounded concurrency, requests per minute and tokens per minute.

`CallLimiter` must be created inside the event loop that uses it (the annotation engine does this per run).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class TokenBucket:
    """A token bucket refilled continuously at ``per_minute / 60`` units per second.

    It holds at most one second's worth (no minute-long bursts, as servers enforce limits over short windows). A
    request larger than the bucket waits for a full bucket and drives it negative, so the long-run rate still holds.
    """

    def __init__(self, per_minute: float, name: str) -> None:
        if isinstance(per_minute, bool) or not isinstance(per_minute, (int, float)) or not per_minute > 0:
            raise ValueError(f"`{name}` must be a positive number per minute, got {per_minute!r}")
        self.rate = float(per_minute) / 60.0
        self.capacity = max(1.0, self.rate)
        self.available = self.capacity
        self.updated = time.monotonic()
        self.name = name
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = time.monotonic()
        self.available = min(self.capacity, self.available + (now - self.updated) * self.rate)
        self.updated = now

    async def take(self, amount: float) -> None:
        """Wait until ``min(amount, capacity)`` units are available, then take ``amount``."""
        needed = min(float(amount), self.capacity)
        async with self._lock:  # FIFO: callers are served in arrival order
            while True:
                self._refill()
                if self.available >= needed:
                    self.available -= float(amount)
                    return
                await asyncio.sleep((needed - self.available) / self.rate)

    def charge(self, amount: float) -> None:
        """Take ``amount`` units without waiting (may go negative; later callers then wait longer)."""
        self._refill()
        self.available -= float(amount)


class CallLimiter:
    """Limits shared by all calls of one annotation run.

    Args:
        concurrency (`int`, *optional*): maximum number of requests in flight; ``None`` for no limit.
        rpm (`float`, *optional*): maximum requests per minute.
        tpm (`float`, *optional*): maximum tokens per minute (estimated before the call, corrected after it).
    """

    def __init__(self, concurrency: int | None = None, rpm: float | None = None, tpm: float | None = None) -> None:
        if concurrency is not None and (
            isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1
        ):
            raise ValueError(f"`concurrency` must be an integer >= 1 or None, got {concurrency!r}")
        self.concurrency = concurrency
        self._semaphore = asyncio.Semaphore(concurrency) if concurrency else None
        self._requests = TokenBucket(rpm, "rpm") if rpm is not None else None
        self._tokens = TokenBucket(tpm, "tpm") if tpm is not None else None
        self.in_flight = 0
        self.peak_in_flight = 0

    @asynccontextmanager
    async def slot(self, estimated_tokens: int = 0) -> AsyncIterator[None]:
        """Hold one request slot for the duration of one HTTP request."""
        if self._semaphore is not None:
            await self._semaphore.acquire()
        try:
            if self._requests is not None:
                await self._requests.take(1)
            if self._tokens is not None:
                await self._tokens.take(estimated_tokens)
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            try:
                yield
            finally:
                self.in_flight -= 1
        finally:
            if self._semaphore is not None:
                self._semaphore.release()

    def correct_tokens(self, estimated_tokens: int, actual_tokens: int) -> None:
        """After a call: charge the difference between the actual and the estimated token count."""
        if self._tokens is not None and actual_tokens > estimated_tokens:
            self._tokens.charge(actual_tokens - estimated_tokens)
