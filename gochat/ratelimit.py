"""Token buckets keyed by client address, with bounded memory.

Used by the HTTP API to slow down password guessing on ``/login`` (failed
attempts) and mass sign-ups on ``/register``. Time comes from an injected
clock so tests drive refills with ``twisted.internet.task.Clock``. At most
``max_keys`` addresses are tracked; past that the least recently seen one is
forgotten (it starts again with a full bucket), so a flood of spoofed or
distinct addresses costs a fixed amount of memory.
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime


class RateLimiter:
    """``rate`` tokens per second, at most ``burst`` banked, one per request."""

    def __init__(
        self, rate: float, burst: float, clock: IReactorTime, max_keys: int = 65536
    ) -> None:
        if rate <= 0 or burst < 1 or max_keys < 1:
            raise ValueError("rate must be positive, burst and max_keys at least 1")
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.max_keys = max_keys
        # key -> (tokens, time of last update); dict order is least recently seen first.
        self._buckets: dict[str, tuple[float, float]] = {}

    def allow(self, key: str) -> bool:
        """Take one token for ``key``; False when its bucket is empty."""
        now = self.clock.seconds()
        state = self._buckets.pop(key, None)
        if state is None:
            tokens = self.burst
            if len(self._buckets) >= self.max_keys:
                del self._buckets[next(iter(self._buckets))]
        else:
            tokens = min(self.burst, state[0] + (now - state[1]) * self.rate)
        allowed = tokens >= 1
        if allowed:
            tokens -= 1
        self._buckets[key] = (tokens, now)
        return allowed

    def refund(self, key: str) -> None:
        """Give back a token taken by :meth:`allow` (the attempt turned out legitimate)."""
        state = self._buckets.get(key)
        if state is not None:
            self._buckets[key] = (min(self.burst, state[0] + 1), state[1])

    def exhausted(self, key: str) -> bool:
        """True when ``key`` has no token now (nothing is taken)."""
        return self.retry_after(key) > 0

    def retry_after(self, key: str) -> float:
        """Seconds until ``key`` has a token again (0 when it has one now)."""
        state = self._buckets.get(key)
        if state is None:
            return 0.0
        tokens = min(self.burst, state[0] + (self.clock.seconds() - state[1]) * self.rate)
        return 0.0 if tokens >= 1 else (1 - tokens) / self.rate

    def __len__(self) -> int:
        return len(self._buckets)
