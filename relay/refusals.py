"""Refusals, where an operator sees them: one log line each, and a counter.

Every refused handshake, token, subscription or request, and every connection
the relay ends (a slow consumer, a revoked token, too many frames), is counted
in ``relay_refusals_total{stage, reason}`` and logged at INFO on the logger
``relay.refusals``, with its reason, the client's address and, once known,
the user: never the token. A flood of refusals (a client retrying a bad
token in a loop, a scan) must not fill a disk: lines beyond a rate are not
written, and the next line written says how many were left out. The counter
counts them all.
"""

import logging
import time
from collections.abc import Callable

from relay.core.errors import Refusal
from relay.core.stats import Stats

logger = logging.getLogger("relay.refusals")


class RefusalLog:
    def __init__(
        self,
        stats: Stats,
        per_second: float = 10.0,
        burst: float = 100.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stats = stats
        self.per_second = per_second
        self.burst = burst
        self.clock = clock
        self.left_out = 0  # lines not written since the last one that was
        self._allowance = burst
        self._checked = clock()

    def report(
        self,
        refusal: Refusal,
        *,
        client: str | None,
        connection: str | None = None,
        user: str | None = None,
        forwarded_for: str | None = None,
    ) -> None:
        self.stats.refusals[(refusal.stage, refusal.reason)] += 1
        if not self._may_write():
            self.left_out += 1
            return
        fields: dict[str, str | int | None] = {
            "stage": refusal.stage,
            "reason": refusal.reason,
            "client": client,
            "forwarded_for": forwarded_for,
            "connection": connection,
            "user": user,
        }
        if self.left_out:
            fields["not_logged_before"] = self.left_out
            self.left_out = 0
        logger.info(
            "refused (%s, %s): %s; client %s%s%s",
            refusal.stage,
            refusal.reason,
            refusal.message,
            client or "unknown",
            f", user {user}" if user else "",
            f", connection {connection}" if connection else "",
            extra={"fields": {k: v for k, v in fields.items() if v is not None}},
        )

    def _may_write(self) -> bool:
        now = self.clock()
        elapsed, self._checked = max(now - self._checked, 0.0), now
        self._allowance = min(self.burst, self._allowance + elapsed * self.per_second)
        if self._allowance < 1.0:
            return False
        self._allowance -= 1.0
        return True
