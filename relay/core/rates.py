"""A token bucket fed the time: how often one member may do one thing."""

import math


class TokenBucket:
    """At most ``burst`` actions at once, refilled at ``rate`` actions per second.

    The bucket starts full. ``now`` is any monotonic clock in seconds, the same
    for every call; a ``rate`` of ``math.inf`` never refuses.
    """

    __slots__ = ("_time", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if not rate > 0 or not burst >= 1:
            raise ValueError(f"a token bucket needs rate > 0 and burst >= 1, not {rate}, {burst}")
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._time = now

    def take(self, now: float) -> bool:
        """Spend one token if there is one; False (and nothing spent) if not."""
        if math.isinf(self.rate):
            return True
        elapsed = max(now - self._time, 0.0)  # a clock that stepped back refills nothing
        self._tokens = min(self.burst, self._tokens + elapsed * self.rate)
        self._time = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True
