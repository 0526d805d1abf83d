"""The token bucket, fed the time."""

import pytest

from relay.core.rates import TokenBucket


def test_token_bucket() -> None:
    bucket = TokenBucket(rate=2.0, burst=2, now=100.0)
    assert [bucket.take(100.0) for _ in range(3)] == [True, True, False]
    assert bucket.take(100.25) is False  # half a token
    assert bucket.take(100.5) is True
    assert bucket.take(99.0) is False  # the clock stepped back: nothing refilled
    assert bucket.take(1000.0) and bucket.take(1000.0) and not bucket.take(1000.0)  # burst caps
    unlimited = TokenBucket(rate=float("inf"), burst=1, now=0.0)
    assert all(unlimited.take(0.0) for _ in range(1000))
    for rate, burst in [(0.0, 1.0), (1.0, 0.5), (float("nan"), 1.0)]:
        with pytest.raises(ValueError, match="rate > 0 and burst >= 1"):
            TokenBucket(rate, burst, 0.0)
