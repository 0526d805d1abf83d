"""The recent past: a bounded history of changes and gaps, by stream position.

A client that reconnects hands back the last position it received. While the
history still holds everything after it, in the same epoch (the same relay
process), the relay replays it, authorized again with the client's current
token; otherwise the client is told ``gap`` and re-fetches.
"""

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

from relay.core.changes import Change


@dataclass(frozen=True, slots=True)
class Gap:
    """Events may have been lost here: for one table, or for all (``table`` None)."""

    table: str | None
    reason: str


Entry = Change | Gap


class History:
    """The latest entries, at most ``size`` of them and about ``max_bytes`` of payload."""

    def __init__(self, size: int, max_bytes: int = 64 * 1024 * 1024) -> None:
        self._entries: deque[tuple[int, Entry]] = deque()
        self.size = max(size, 0)
        self.max_bytes = max_bytes
        self.bytes = 0

    def append(self, offset: int, entry: Entry) -> None:
        if not self.size:
            return
        self._entries.append((offset, entry))
        self.bytes += _size(entry)
        while len(self._entries) > self.size or (
            self.bytes > self.max_bytes and len(self._entries) > 1
        ):
            _, dropped = self._entries.popleft()
            self.bytes -= _size(dropped)

    def oldest(self) -> int | None:
        return self._entries[0][0] if self._entries else None

    def covers(self, after: int, current: int) -> bool:
        """Whether every entry with an offset in (after, current] is still held."""
        if after >= current:
            return True
        oldest = self.oldest()
        return oldest is not None and oldest <= after + 1

    def since(self, after: int) -> Iterator[tuple[int, Entry]]:
        """Entries after offset ``after``, oldest first."""
        for offset, entry in self._entries:
            if offset > after:
                yield offset, entry


def _size(entry: Entry) -> int:
    return entry.size if isinstance(entry, Change) else 64
