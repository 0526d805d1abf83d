"""relay/peers_redis.py without a Redis: the queue between the rooms and Redis.
With a real redis-server: tests/relay/test_several_relays.py."""

import asyncio
import contextlib
from typing import Any

from relay.core import peers
from relay.core.peers import Broadcast, Heartbeat, PresenceSync
from relay.core.rooms import Rooms
from relay.peers_redis import RedisPeers
from tests.support import WAIT


class FakeRedis:
    """What the publisher uses of a redis.asyncio.Redis: publish."""

    def __init__(self) -> None:
        self.published: list[list[peers.Event]] = []

    async def publish(self, channel: str, data: bytes) -> int:
        self.published.append(peers.decode(data))
        return 1


def make(**options: Any) -> tuple[RedisPeers, Rooms]:
    rooms = Rooms(lambda session: None)
    bus = RedisPeers("redis://unused", rooms, lambda gaps: None, **options)
    bus.attach()
    return bus, rooms


async def publish_all(bus: RedisPeers, client: FakeRedis) -> None:
    task = asyncio.create_task(bus._publish(client))  # type: ignore[arg-type]
    await asyncio.wait_for(bus._idle.wait(), WAIT)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_what_the_rooms_say_without_redis_is_dropped_and_counted() -> None:
    bus, rooms = make()
    rooms.broadcast("room:a", None, "e", {}, 0.0)
    assert bus.dropped == 1
    assert not bus._queue


async def test_updates_go_out_in_batches_in_their_order() -> None:
    bus, rooms = make(max_batch=2)
    bus.connected = True
    for n in range(3):
        rooms.broadcast("room:a", None, "e", {"n": n}, 0.0)
    client = FakeRedis()
    await publish_all(bus, client)
    assert [[e.payload for e in m if isinstance(e, Broadcast)] for m in client.published] == [
        [{"n": 0}, {"n": 1}],
        [{"n": 2}],
    ]
    assert bus.messages_out == 2


async def test_a_full_queue_drops_its_oldest_and_then_syncs_presence_whole() -> None:
    bus, rooms = make(max_queue=2)
    bus.connected = True
    for _ in range(3):
        bus._enqueue([Heartbeat(rooms.node)])
    assert bus.dropped == 1
    client = FakeRedis()
    await publish_all(bus, client)
    assert client.published[0] == [Heartbeat(rooms.node), Heartbeat(rooms.node)]
    assert client.published[1] == [PresenceSync(rooms.node, ())]
