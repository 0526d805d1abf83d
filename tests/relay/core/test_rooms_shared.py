"""Rooms: what reaches the members here, and what the other relays are told (a broadcast
from the log is not shared: every relay reads the log)."""

from dataclasses import dataclass, field
from typing import Any

from relay.core.peers import Broadcast, Event
from relay.core.rooms import Rooms
from relay.core.topic_rules import EVERY_ACTION, Actions
from relay.core.topics import Options


@dataclass(eq=False)
class FakeMember:
    actions: Actions = EVERY_ACTION
    received: list[tuple[str, Any]] = field(default_factory=list)

    @property
    def owner(self) -> Any:
        return self

    def push_broadcast(self, event: str, payload: Any) -> None:
        self.received.append((event, payload))

    def push_presence_diff(self, diff: dict[str, Any]) -> None:
        pass

    __hash__ = object.__hash__


def test_the_relays_own_broadcast_reaches_its_members_and_is_shared_unless_told_not_to() -> None:
    marked: list[Any] = []
    published: list[list[Event]] = []
    rooms = Rooms(marked.append)
    rooms.publish = published.append
    member = FakeMember()
    rooms.join("room:a", member, Options(), 0.0)

    rooms.broadcast("room:a", None, "http", {"n": 1}, 0.0)
    assert published == [[Broadcast("room:a", "http", {"n": 1}, rooms.node)]]

    # From the log: every relay reads it, so nobody else must be told.
    rooms.broadcast("room:a", None, "sql", {"n": 2}, 0.0, share=False)
    assert member.received == [("http", {"n": 1}), ("sql", {"n": 2})]
    assert marked == [member, member]
    assert len(published) == 1
