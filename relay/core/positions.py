"""Stream positions: where a change is in the database's change log.

The log is read in ticks (relay/sql/v2_objects.sql): the changes of tick N are
those that committed between ticks N-1 and N, in sequence order. A change's
position is ``(tick, seq)``: its tick, and the sequence number of its first
log row. ``(tick, 0)`` is the position before every change of ``tick``: after
the whole of tick N, a relay is at ``(N + 1, 0)``. Positions are the same for
every relay reading the same log, and survive restarts.

On the wire a position is ``"<log>:<tick>.<seq>"``, the log's id first, so that
a position of another log (a reinstalled one) is never taken for ours.
Clients hand positions back to resume; to them they are opaque.
"""

import re
from typing import NamedTuple

from relay.core.errors import ClientError, ErrorCode

TEXT = re.compile(r"([0-9a-z]{1,32}):([0-9]{1,18})\.([0-9]{1,18})")  # ASCII digits only
# A position of trigger layer 1 ("<epoch>:<offset>", one relay process's
# stream): of no log. A client that kept one across the upgrade re-fetches.
FORMER = re.compile(r"[0-9a-f]{1,32}:[0-9]{1,18}")


class Position(NamedTuple):
    tick: int
    seq: int

    @classmethod
    def after(cls, tick: int) -> "Position":
        """The position once every change of ``tick`` is read."""
        return cls(tick + 1, 0)


class Stream:
    """Where this relay is in the log: the log's id, and the latest position read."""

    def __init__(self, log_id: str, head: Position) -> None:
        self.log_id = log_id
        self.head = head

    def text(self, position: Position | None = None) -> str:
        """``position`` (default: the head) as clients see it."""
        tick, seq = self.head if position is None else position
        return f"{self.log_id}:{tick}.{seq}"

    def parse(self, text: str) -> Position | None:
        """The position a client sent; None if it is of another log.

        ``ClientError`` if it is not a position. A position ahead of the head
        is one that another relay, further in the log, has sent: valid.
        """
        match = TEXT.fullmatch(text)
        if match is None and FORMER.fullmatch(text):
            return None
        if match is None:
            raise ClientError(
                ErrorCode.INVALID_POSITION, f"{text!r} is not a position (log:tick.seq)"
            )
        if match[1] != self.log_id:
            return None
        return Position(int(match[2]), int(match[3]))
