"""The recent past, in memory: a cache of the change log's latest entries.

A client that reconnects hands back the last position it received. While this
cache holds everything after it, the relay replays from memory, at once;
otherwise from the log in PostgreSQL (``relay.core.replays``). Gaps are kept
too: a resume across one cannot be made whole.
"""

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

from relay.core.changes import Change, LoggedChange, TableReset
from relay.core.positions import Position


@dataclass(frozen=True, slots=True)
class Gap:
    """Events may have been lost here: for one table, or for all (``table`` None)."""

    table: str | None
    reason: str


# What the history holds: a change (read, or as the log had it when nobody
# could receive it), a reset, a gap.
Entry = Change | LoggedChange | TableReset | Gap


class History:
    """The latest entries, at most ``size`` of them and about ``max_bytes`` of rows."""

    def __init__(self, size: int, max_bytes: int = 64 * 1024 * 1024) -> None:
        self._entries: deque[tuple[Position, Entry]] = deque()
        self.size = max(size, 0)
        self.max_bytes = max_bytes
        self.bytes = 0
        # Everything after this position is held (when it began, or what was dropped).
        self.floor = Position(0, 0)

    def begin(self, floor: Position) -> None:
        """Forget everything: the history holds what comes after ``floor``."""
        self._entries.clear()
        self.bytes = 0
        self.floor = floor

    def append(self, position: Position, entry: Entry) -> None:
        if not self.size:
            self.floor = position
            return
        self._entries.append((position, entry))
        self.bytes += _size(entry)
        while len(self._entries) > self.size or (
            self.bytes > self.max_bytes and len(self._entries) > 1
        ):
            self.floor, dropped = self._entries.popleft()
            self.bytes -= _size(dropped)

    def covers(self, after: Position) -> bool:
        """Whether every entry after position ``after`` is held."""
        return after >= self.floor

    def since(self, after: Position) -> Iterator[tuple[Position, Entry]]:
        """Entries after position ``after``, oldest first."""
        for position, entry in self._entries:
            if position > after:
                yield position, entry


def _size(entry: Entry) -> int:
    return entry.size if isinstance(entry, Change | LoggedChange) else 64
