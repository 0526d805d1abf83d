"""Stream positions: where a change or a gap is in this relay's stream.

A position is ``"<epoch>:<offset>"``: the epoch names this process's stream (a
restart begins another), the offset grows by one per change or gap, in commit
order. Clients hand positions back to resume; they are opaque to them.
"""

import re
import secrets

from relay.core.errors import ClientError, ErrorCode

OFFSET = re.compile(r"[0-9]{1,18}")  # ASCII digits: str.isdigit() also takes "²"


class Stream:
    """This process's stream: its epoch and the offset of its latest entry."""

    def __init__(self, epoch: str | None = None) -> None:
        self.epoch = epoch or secrets.token_hex(4)
        self.offset = 0

    def advance(self) -> int:
        """The offset of a new entry."""
        self.offset += 1
        return self.offset

    def position(self, offset: int | None = None) -> str:
        """The position of ``offset`` (default: the latest entry)."""
        return f"{self.epoch}:{self.offset if offset is None else offset}"

    def parse(self, text: str) -> tuple[str, int]:
        """``(epoch, offset)`` of a position a client sent; ``ClientError`` if it is not one."""
        epoch, sep, offset = text.partition(":")
        if not sep or not epoch or not OFFSET.fullmatch(offset):
            raise ClientError(
                ErrorCode.INVALID_POSITION, f"{text!r} is not a position (epoch:offset)"
            )
        value = int(offset)
        if epoch == self.epoch and value > self.offset:
            raise ClientError(ErrorCode.INVALID_POSITION, f"{text!r} is ahead of the stream")
        return epoch, value
