"""Several relays through Redis: broadcast and presence on every relay.

With ``RELAY_REDIS_URL`` set, the relays of a deployment share one Redis
pub/sub channel, as Centrifugo's Redis engine does. What one relay's rooms
must tell the others (``relay/core/peers.py``: broadcasts, presence joins and
leaves, syncs, heartbeats) goes to ``Rooms.publish``, which here only queues
it; a task publishes the queue in batches (``peers.encode``, one message per
batch, so the events of one update stay together and a node's messages keep
their order), and another hears the channel and hands the others' events to
the rooms (``Rooms.apply_peer_events``), then has the server write what they
pushed. Without Redis, ``Rooms.publish`` stays None and nothing here runs.

Presence lives in the relays, not in Redis. Every relay keeps a copy of every
topic's presence; a relay that starts or reconnects publishes its whole
presence asking for the others' (a ``PresenceSync`` with ``reply``), so a
late joiner learns the state from the relays themselves, and a Redis that
restarts loses nothing. Each relay publishes a ``Heartbeat`` every
``heartbeat`` seconds and, on the same timer, forgets the presence of relays
it has not heard from for ``Presence.node_timeout`` (15 s): a relay that dies
has its presence expire everywhere; one that stops cleanly says ``NodeGone``.

When Redis goes away the relay keeps serving its own clients: broadcasts
reach its members, presence shows its own. It logs the loss, reports it
(``/readyz``'s ``redis_connected``, ``relay_redis_connected``), drops what it
could not publish (messages between relays are at most once, as Supabase's
are), and reconnects with backoff; then it syncs its presence again.
"""

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Callable

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from relay.core import peers
from relay.core.errors import first_line
from relay.core.peers import Broadcast, Event, Heartbeat, NodeGone
from relay.core.rooms import Rooms

logger = logging.getLogger("relay.peers")

CHANNEL = "nexus-relay:peers"


def _node_of(event: Event) -> str:
    return event.origin if isinstance(event, Broadcast) else event.node


class RedisPeers:
    """The relay's rooms, joined to the other relays' through Redis.

    ``attach`` points the rooms' ``publish`` here; ``run`` connects and
    serves, forever (supervised by the service); ``close`` says ``NodeGone``.
    ``flush`` writes what the rooms pushed to sessions (``RelayServer.flush``).
    """

    def __init__(
        self,
        url: str,
        rooms: Rooms,
        flush: Callable[[bool], None],
        *,
        channel: str = CHANNEL,
        heartbeat: float = 5.0,
        # Limits
        max_queue: int = 10_000,  # messages waiting for Redis; beyond, the oldest go
        max_batch: int = 500,  # events per message
    ) -> None:
        self.url = url
        self.rooms = rooms
        self.flush = flush
        self.channel = channel
        self.heartbeat = heartbeat
        self.max_queue = max_queue
        self.max_batch = max_batch
        self.node = rooms.node
        self.connected = False
        self.reconnects = 0
        self.messages_out = 0
        self.messages_in = 0
        self.dropped = 0  # events not published: Redis was away, or the queue full
        self.unreadable = 0  # messages heard that do not decode
        self._queue: deque[list[Event]] = deque()
        self._wake = asyncio.Event()  # the queue has something
        self._idle = asyncio.Event()  # the queue is empty and published
        self._idle.set()
        self._resync = False  # the queue overflowed: publish this relay's presence whole
        self._client: redis.Redis | None = None

    def attach(self) -> None:
        """From now on, what the rooms must tell the other relays is queued here."""
        self.rooms.publish = self._enqueue

    def _enqueue(self, events: list[Event]) -> None:
        """``Rooms.publish``: never blocks, never raises."""
        if not self.connected:
            self.dropped += len(events)  # the sync after reconnecting makes presence whole
            return
        if len(self._queue) >= self.max_queue:
            self.dropped += len(self._queue.popleft())
            self._resync = True  # what the others lost of this relay's presence
        self._queue.append(events)
        self._idle.clear()
        self._wake.set()

    # --- Running ---------------------------------------------------------------

    async def run(self) -> None:
        """Connect, publish, listen and beat, forever; a lost Redis is taken again
        with backoff while the relay serves its own clients. Anything but Redis
        failing (a bug) ends it, and the relay with it: it runs supervised."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self._connect_forever(), name="peers-redis")
            group.create_task(self._beat(), name="peers-heartbeat")

    async def _connect_forever(self) -> None:
        attempt = 0
        while True:
            try:
                await self._serve()
            except (RedisError, OSError) as exc:
                if self.connected or attempt == 0:
                    logger.warning(
                        "no Redis (%s): broadcast and presence reach this relay's clients"
                        " only, until it is back",
                        first_line(exc),
                    )
            finally:
                if self.connected:
                    self.reconnects += 1
                    attempt = 0
                self.connected = False
                self.dropped += sum(len(events) for events in self._queue)
                self._queue.clear()
                self._idle.set()
                await self._close_client()
            attempt += 1
            await asyncio.sleep(_backoff(attempt, 0.1))

    async def _serve(self) -> None:
        """One connection to Redis, until it fails (``RedisError``, ``OSError``)."""
        # No retries of redis-py's own: a lost connection must end this one,
        # so that the relay reports it, and syncs presence once back.
        client = self._client = redis.Redis.from_url(
            self.url,
            socket_connect_timeout=5,
            socket_timeout=10,  # a publish that gets no answer: the connection is lost
            socket_keepalive=True,
            health_check_interval=10,
            retry=Retry(NoBackoff(), 0),
        )
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        tasks: list[asyncio.Task[None]] = []
        try:
            await pubsub.subscribe(self.channel)
            self.connected = True
            logger.info("joined the other relays through Redis (node %s)", self.node)
            # Whatever happened meanwhile, the others get this relay's whole
            # presence, and answer with theirs.
            self._enqueue([self.rooms.presence.sync(reply=True)])
            tasks = [
                asyncio.create_task(self._publish(client), name="peers-publish"),
                asyncio.create_task(self._listen(pubsub), name="peers-listen"),
            ]
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # raises what ended it
            raise RuntimeError("the Redis publisher or listener ended")
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, RedisError, OSError):
                    await task
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _publish(self, client: redis.Redis) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                batch: list[Event] = []
                while self._queue and len(batch) + len(self._queue[0]) <= self.max_batch:
                    batch += self._queue.popleft()
                if not batch:  # one update larger than a batch: alone
                    batch = self._queue.popleft()
                await client.publish(self.channel, peers.encode(batch))
                self.messages_out += 1
            if self._resync:
                self._resync = False
                await client.publish(self.channel, peers.encode([self.rooms.presence.sync()]))
                self.messages_out += 1
            self._idle.set()

    async def _listen(self, pubsub: redis.client.PubSub) -> None:
        """Apply the others' messages. This relay hears its own heartbeats too:
        hearing nothing for three of them, the connection is taken for dead
        (a network that drops packets closes no socket)."""
        heard = time.monotonic()
        while True:
            message = await pubsub.get_message(timeout=self.heartbeat)
            now = time.monotonic()
            if message is None or message.get("type") != "message":
                if now - heard > 3 * self.heartbeat:
                    raise RedisConnectionError(
                        f"nothing heard on {self.channel} for {now - heard:.1f} s,"
                        " not even this relay's heartbeats"
                    )
                continue
            heard = now
            self.messages_in += 1
            try:
                events = peers.decode(message["data"])
            except ValueError as exc:
                self.unreadable += 1
                logger.warning("a message on %s is not one of the relays': %s", self.channel, exc)
                continue
            others = [event for event in events if _node_of(event) != self.node]
            if others:
                self.rooms.apply_peer_events(others, time.monotonic())
                self.flush(False)

    async def _beat(self) -> None:
        """Say this relay lives; forget the relays that no longer say so."""
        while True:
            await asyncio.sleep(self.heartbeat)
            if self.connected:
                self._enqueue([Heartbeat(self.node)])
            self.rooms.expire(time.monotonic())
            self.flush(False)

    # --- Stopping --------------------------------------------------------------

    async def close(self, timeout: float = 1.0) -> None:
        """Tell the other relays this one is gone (its presence leaves there at
        once), after what is queued, if Redis is there to hear it. Call it while
        ``run`` still runs; the rooms publish nothing more."""
        if self.connected:
            self._enqueue([NodeGone(self.node)])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), timeout)
        self.rooms.publish = None

    async def _close_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(RedisError, OSError):
                await client.aclose()


def _backoff(attempt: int, base: float) -> float:
    """Seconds before retry ``attempt``: doubling from ``base``, at most 10, with jitter."""
    return min(10.0, base * 2.0**attempt) * random.uniform(0.5, 1.0)  # noqa: S311
