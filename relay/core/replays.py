"""Replays: what a resuming subscription missed, authorized again, then live again.

A subscription that resumes after position ``since`` is filed (it is live from
its ack), but its live frames are held back while its replay is assembled:
from the history in memory when that covers ``since``, else from the log in
PostgreSQL, which the shell reads (``Fanout.take_replay_requests``). The
replay is authorized with the subscriber's claims of now; then come the held
frames (those after ``since``: a position ahead of this relay, which another
relay had sent, holds back everything up to it), then ``replayed``. A replay
over ``max_replay_bytes``, or across a gap, is lost instead: the client hears
``gap`` and re-fetches.
"""

from collections.abc import Iterable
from dataclasses import dataclass, field

from relay.core.changes import Change, LoggedChange, TableReset
from relay.core.history import Entry, Gap
from relay.core.positions import Position, Stream
from relay.core.subscription import Subscription, encode_body
from relay.core.tokens import Identity


@dataclass(eq=False)
class Replay:
    """One subscription's replay of (since, upto]: ``upto`` is the head when it asked."""

    subscription: Subscription
    since: Position
    upto: Position
    budget: int  # bytes of frames it may replay and hold
    from_log: bool  # else: from memory, or (a position ahead) none
    max_change_bytes: int  # a change larger is replayed without its rows (too_large)
    frames: list[bytes] = field(default_factory=list)
    # Live frames held back until the replay is sent, with their positions.
    held: list[tuple[Position, bytes]] = field(default_factory=list)
    size: int = 0  # of frames and held frames
    lost: str | None = None  # why it cannot be made whole

    def add(
        self,
        identity: Identity,
        stream: Stream,
        entries: Iterable[tuple[Position, Entry | None]],
    ) -> None:
        """Replay those of ``entries`` (any table, in order) that fall in (since, upto];
        None is an entry with nothing to send."""
        table = self.subscription.table.name
        for position, entry in entries:
            if self.lost is not None:
                return
            if entry is None or not self.since < position <= self.upto:
                continue
            if isinstance(entry, LoggedChange):
                if entry.table != table:
                    continue
                read = entry.read()
                if read is None:
                    continue
                entry = read
            if isinstance(entry, Gap):
                if entry.table in (None, table):
                    self._lose(entry.reason)
            elif entry.table != table:
                continue
            elif isinstance(entry, TableReset):
                self._lose(entry.reason)
            else:
                self._replay(identity, stream, position, entry)

    def _replay(
        self, identity: Identity, stream: Stream, position: Position, change: Change
    ) -> None:
        subscription = self.subscription
        variant = subscription.receives(identity, change, {})
        if variant is not None:
            body = encode_body(
                change, stream.text(position), variant, subscription.table, self.max_change_bytes
            )
            frame = subscription.prefix + body
            self.frames.append(frame)
            self._count(len(frame))

    def hold(self, position: Position, frame: bytes) -> None:
        """A live frame, sent after the replay."""
        if self.lost is None:
            self.held.append((position, frame))
            self._count(len(frame))

    def live_frames(self) -> list[bytes]:
        """The held frames that the client does not have yet."""
        return [frame for position, frame in self.held if position > self.since]

    def interrupt(self, reason: str) -> None:
        """It cannot be made whole (a gap): the first reason stays."""
        if self.lost is None:
            self._lose(reason)

    def _count(self, size: int) -> None:
        self.size += size
        if self.size > self.budget:
            self._lose("replay_too_large")

    def _lose(self, reason: str) -> None:
        self.lost = reason
        self.frames.clear()
        self.held.clear()
