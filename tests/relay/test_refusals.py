"""The refusal log's budget: every refusal counted, lines written at a bounded rate."""

import logging

import pytest

from relay.core.errors import Refusal
from relay.core.stats import Stats
from relay.refusals import RefusalLog


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_then_a_rate_and_the_next_line_says_how_many_were_left_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock, stats = Clock(), Stats()
    refusals = RefusalLog(stats, per_second=10, burst=100, clock=clock)
    refusal = Refusal("auth", "signature", "the token's signature is invalid")
    with caplog.at_level(logging.INFO, logger="relay.refusals"):
        for _ in range(1000):
            refusals.report(refusal, client="10.0.0.7:50000")
        assert len(caplog.records) == 100
        assert stats.refusals[("auth", "signature")] == 1000
        clock.now += 1.0  # ten more lines' worth
        for _ in range(20):
            refusals.report(refusal, client="10.0.0.7:50000", user="USR-ALIC0001")
    records = caplog.records
    assert len(records) == 110
    first_after = records[100]
    assert first_after.fields["not_logged_before"] == 900  # type: ignore[attr-defined]
    assert first_after.fields["user"] == "USR-ALIC0001"  # type: ignore[attr-defined]
    assert "not_logged_before" not in records[101].fields  # type: ignore[attr-defined]
    assert stats.refusals[("auth", "signature")] == 1020
    assert "refused (auth, signature)" in first_after.getMessage()
