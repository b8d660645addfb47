"""The mover's byte budget: a token bucket on the injected clock (pure)."""

from __future__ import annotations

from hypertier_common.clock import Clock

__all__ = ["RateLimiter"]


class RateLimiter:
    """Token bucket in bytes/s on an injected clock; never sleeps.

    ``take(n)`` grants up to ``n`` bytes from what has accrued (at most
    ``burst_s`` seconds' worth), so the mover moves at most the configured rate
    averaged over any window longer than ``burst_s``.
    """

    def __init__(self, rate_mib_s: float, clock: Clock, burst_s: float = 1.0) -> None:
        self._rate = rate_mib_s * (1 << 20)
        self._cap = self._rate * burst_s
        self._clock = clock
        self._tokens = self._cap
        self._last = clock.monotonic()

    def available(self) -> int:
        now = self._clock.monotonic()
        self._tokens = min(self._cap, self._tokens + (now - self._last) * self._rate)
        self._last = now
        return int(self._tokens)

    def take(self, want_bytes: int) -> int:
        granted = max(0, min(want_bytes, self.available()))
        self._tokens -= granted
        return granted

    def refund(self, unused_bytes: int) -> None:
        self._tokens = min(self._cap, self._tokens + max(0, unused_bytes))
