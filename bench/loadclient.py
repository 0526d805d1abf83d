"""One load-client process: many WebSocket connections, one event loop, little CPU each.

    python -m bench.loadclient --url ws://127.0.0.1:PORT/ --users FILE [--local-host 127.0.0.N]
        [--protocol nexus|changes|broadcast|presence] [--room-size K]

websockets' sans-I/O client protocol (``websockets.client.ClientProtocol``),
driven from an ``asyncio.Protocol`` (uvloop): the library does the WebSocket
work, and nothing runs a coroutine or a queue per message. That keeps the
client side cheap enough to share one core with PostgreSQL and the writers
while the server under test has the other.

Each connection is one user, as the portal connects: ``auth`` with the user's
token, then ``subscribe`` to ``nexus_notifications`` and to ``nexus_payments``
(no filter: the policy decides). A connection has joined when both
subscriptions are acknowledged.

For every ``change`` frame it records two numbers, on the same clock
(``time.time()``, one machine): the change's ``commit_timestamp`` (the
transaction's ``now()``, which is its start, so the latency is an upper bound)
and the time the chunk that held the frame was read from the socket.

With ``--protocol`` other than ``nexus`` it speaks Supabase Realtime's
protocol instead (Phoenix frames of vsn 2.0.0, arrays; the relay's
``/realtime/v1/websocket``), one channel per connection:

- ``changes``: ``realtime:changes`` with ``postgres_changes`` bindings on the
  same two tables; joined on the ``phx_reply`` ok; each ``postgres_changes``
  push recorded as above (its ``commit_timestamp``);
- ``broadcast``: ``realtime:room:<user // room size>`` (``self`` false);
  ``send`` makes some members broadcast ``{"t": time.time()}`` at a rate, and
  each ``broadcast`` received is recorded as (``t``, receive time);
- ``presence``: ``realtime:lobby:<user // room size>`` with presence enabled
  under the key ``u<user>``; after the join's reply, a ``track``. Joined when
  the track is acknowledged and the member's own ``presence_diff`` arrived;
  each is recorded as (track sent, own diff received).

The orchestrator talks to it by JSON lines: on stdin a command, on stdout the
reply. Commands: ``join`` (at a given wall time, with bounded concurrency),
``rejoin`` (the same, for the users whose connection was lost), ``stats``,
``dump`` (write the recorded pairs as .npy, then forget them), ``send``
(broadcast: at a rate for a duration), ``close``.
"""

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from array import array
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

SUBPROTOCOL = "nexus-relay.v1"
CHANGE_PREFIX = b'{"type":"change"'
TS_KEY = b'"commit_timestamp":"'
TS_KEY_LEN = len(TS_KEY)
PHOENIX_PATH = "/realtime/v1/websocket"
PHOENIX_VSN = "2.0.0"
PHOENIX_CHANGES = b',"postgres_changes",{'  # a push: [null,null,topic,"postgres_changes",{..
PHOENIX_BROADCAST = b',"broadcast",{'
SENT_KEY = b'"t":'
SENT_KEY_LEN = len(SENT_KEY)
PROTOCOLS = ("nexus", "changes", "broadcast", "presence")
TABLES = ("nexus_notifications", "nexus_payments")
JOIN_REF = "1"
TRACK_REF = "2"

HANDSHAKE, AUTHENTICATING, SUBSCRIBING, JOINED, CLOSED = range(5)


@dataclass
class Mode:
    """What the connections of a process speak (``--protocol``) and join."""

    protocol: str = "nexus"
    apikey: str = ""  # Phoenix: the project's anon key, in the URL
    room_size: int = 10  # broadcast and presence: users u*K .. u*K+K-1 share a room

    def topic(self, user: int) -> str:
        if self.protocol == "broadcast":
            return f"realtime:room:{user // self.room_size}"
        if self.protocol == "presence":
            return f"realtime:lobby:{user // self.room_size}"
        return "realtime:changes"


class Pool:
    """Everything one process records."""

    def __init__(self, mode: Mode | None = None) -> None:
        self.mode = mode or Mode()
        self.commit = array("d")
        self.recv = array("d")
        self.ts_cache: dict[bytes, float] = {}
        self.received = 0  # change frames (broadcasts, own presence diffs), since start
        self.last_recv = 0.0
        self.types: Counter[str] = Counter()
        self.close_codes: Counter[str] = Counter()
        self.disconnects = 0  # joined connections lost while not closing
        self.closing = False
        self.connections: list[Connection] = []

    def timestamp(self, raw: bytes) -> float:
        value = self.ts_cache.get(raw)
        if value is None:
            if len(self.ts_cache) > 200_000:
                self.ts_cache.clear()
            value = self.ts_cache[raw] = datetime.fromisoformat(raw.decode()).timestamp()
        return value


class Connection(asyncio.Protocol):
    """One user's connection: websockets' sans-I/O client protocol, driven by hand.

    The library does the handshake, framing, masking, pings and the closing
    handshake; this class only moves bytes and reads the frames it hands over,
    without a coroutine or a queue per message.
    """

    def __init__(
        self, pool: Pool, host: str, port: int, path: str, token: str, mode: "Mode", user: int
    ) -> None:
        self.pool = pool
        self.mode = mode
        self.user = user
        self.token = token
        self.transport: asyncio.Transport | None = None
        if mode.protocol == "nexus":
            self.uri = parse_uri(f"ws://{host}:{port}{path}")
            self.protocol = ClientProtocol(
                self.uri, subprotocols=[Subprotocol(SUBPROTOCOL)], max_size=None
            )
        else:
            query = f"?apikey={mode.apikey}&vsn={PHOENIX_VSN}"
            self.uri = parse_uri(f"ws://{host}:{port}{PHOENIX_PATH}{query}")
            self.protocol = ClientProtocol(self.uri, max_size=None)
        self.topic = mode.topic(user)
        self.key = f"u{user}"
        self.tracked_at = 0.0  # presence: when the track was sent
        self.track_acked = False
        self.own_diff = False
        self.state = HANDSHAKE
        self.acks = 0
        self.error: str | None = None
        self.done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    # --- asyncio.Protocol ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.protocol.send_request(self.protocol.connect())
        self._flush()

    def data_received(self, data: bytes) -> None:
        protocol = self.protocol
        protocol.receive_data(data)
        pool = self.pool
        now = 0.0
        for event in protocol.events_received():
            if isinstance(event, Response):
                if protocol.state is not State.OPEN:
                    self._fail(f"handshake: {event.status_code} {protocol.handshake_exc}")
                    return
                self._opened()
                continue
            assert isinstance(event, Frame)  # a client receives one Response, then frames
            if event.opcode is not Opcode.TEXT:
                continue  # pings are answered, closes handled, by the protocol
            payload = bytes(event.data)
            if payload.startswith(CHANGE_PREFIX) or (payload.find(PHOENIX_CHANGES, 0, 160) >= 0):
                i = payload.find(TS_KEY)
                if i >= 0:
                    i += TS_KEY_LEN
                    if now == 0.0:
                        now = time.time()
                    pool.commit.append(pool.timestamp(payload[i : payload.find(b'"', i)]))
                    pool.recv.append(now)
                    pool.received += 1
                    continue
            elif payload.find(PHOENIX_BROADCAST, 0, 120) >= 0:
                i = payload.find(SENT_KEY)
                if i >= 0:
                    i += SENT_KEY_LEN
                    if now == 0.0:
                        now = time.time()
                    j = i
                    while payload[j] not in b",}":
                        j += 1
                    pool.commit.append(float(payload[i:j]))
                    pool.recv.append(now)
                    pool.received += 1
                    continue
            self._text(payload)
        if now:
            pool.last_recv = now
        self._flush()
        if protocol.state is State.CLOSED or protocol.close_expected():
            if protocol.close_rcvd is not None:
                pool.close_codes[str(protocol.close_rcvd.code)] += 1
                if self.state == JOINED and not pool.closing:
                    pool.disconnects += 1  # closed by the server: lost, as a dropped one
                self._fail(f"closed {protocol.close_rcvd.code}")
            if self.transport is not None:
                self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.state == JOINED and not self.pool.closing:
            self.pool.disconnects += 1
        self._fail("connection lost" if exc is None else f"connection lost: {exc}")

    # --- Protocol ------------------------------------------------------------------

    def _flush(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        for data in self.protocol.data_to_send():
            if data:
                self.transport.write(data)
            elif self.transport.can_write_eof():
                self.transport.write_eof()

    def _opened(self) -> None:
        """The handshake is done: authenticate (ours), or join the channel (Phoenix)."""
        mode = self.mode
        if mode.protocol == "nexus":
            self.state = AUTHENTICATING
            self._send({"type": "auth", "token": self.token, "ref": 1})
            return
        self.state = SUBSCRIBING
        bindings = (
            [{"event": "*", "schema": "public", "table": t} for t in TABLES]
            if mode.protocol == "changes"
            else []
        )
        config = {
            "broadcast": {"self": False, "ack": False},
            "presence": {
                "key": self.key if mode.protocol == "presence" else "",
                "enabled": mode.protocol == "presence",
            },
            "postgres_changes": bindings,
            "private": False,
        }
        self._push(JOIN_REF, JOIN_REF, "phx_join", {"config": config, "access_token": self.token})

    def _push(self, join_ref: str | None, ref: str | None, event: str, payload: Any) -> None:
        if self.protocol.state is State.OPEN:
            self.protocol.send_text(orjson.dumps([join_ref, ref, self.topic, event, payload]))
            self._flush()

    def _joined(self) -> None:
        self.state = JOINED
        if not self.done.done():
            self.done.set_result(True)

    def _phoenix(self, frame: list[Any]) -> None:
        """A Phoenix frame other than a change or broadcast push."""
        _join_ref, ref, _topic, event, payload = frame
        self.pool.types[str(event)] += 1
        if event == "phx_reply":
            ok = isinstance(payload, dict) and payload.get("status") == "ok"
            if not ok:
                if self.state != JOINED:
                    response = payload.get("response") if isinstance(payload, dict) else None
                    self._fail(f"{ref} refused: {str(response)[:120]}")
                return
            if ref == JOIN_REF and self.state == SUBSCRIBING:
                if self.mode.protocol == "presence":
                    self.tracked_at = time.time()
                    self._push(
                        JOIN_REF,
                        TRACK_REF,
                        "presence",
                        {"type": "presence", "event": "track", "payload": {"user": self.key}},
                    )
                else:
                    self._joined()
            elif ref == TRACK_REF:
                self.track_acked = True
                if self.own_diff:
                    self._joined()
        elif event == "presence_diff" and self.tracked_at and not self.own_diff:
            joins = payload.get("joins") if isinstance(payload, dict) else None
            if isinstance(joins, dict) and self.key in joins:
                self.own_diff = True
                self.pool.commit.append(self.tracked_at)
                self.pool.recv.append(time.time())
                self.pool.received += 1
                if self.track_acked:
                    self._joined()
        elif event in ("phx_error", "phx_close") and self.state != JOINED:
            self._fail(str(event))

    def _text(self, payload: bytes) -> None:
        try:
            frame = orjson.loads(payload)
        except orjson.JSONDecodeError:
            self.pool.types["bad_json"] += 1
            return
        if isinstance(frame, list) and len(frame) == 5:
            self._phoenix(frame)
            return
        kind = frame.get("type")
        self.pool.types[str(kind)] += 1
        if kind == "change":  # without a commit_timestamp: should not happen
            return
        if self.state == AUTHENTICATING and kind == "ready":
            self.state = SUBSCRIBING
            self._send({"type": "subscribe", "table": "nexus_notifications", "ref": 2})
            self._send({"type": "subscribe", "table": "nexus_payments", "ref": 3})
        elif self.state == SUBSCRIBING and kind == "subscribed":
            self.acks += 1
            if self.acks == 2:
                self.state = JOINED
                if not self.done.done():
                    self.done.set_result(True)
        elif kind == "error" and self.state != JOINED:
            self._fail(f"error {frame.get('code')}")

    def _send(self, frame: dict[str, Any]) -> None:
        if self.protocol.state is State.OPEN:
            self.protocol.send_text(orjson.dumps(frame))
            self._flush()

    def _fail(self, reason: str) -> None:
        if self.error is None and self.state != JOINED:
            self.error = reason
        self.state = CLOSED
        if not self.done.done():
            self.done.set_result(False)

    def close(self) -> None:
        if self.protocol.state is State.OPEN:
            with contextlib.suppress(Exception):
                self.protocol.send_close(1000)
                self._flush()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


@dataclass
class Joins:
    """What joining a process's users gave: each joined user's start and end (wall time)."""

    starts: list[float] = field(default_factory=list)
    ends: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    failed: list[int] = field(default_factory=list)  # indexes of the users who never joined
    retries: int = 0


async def join_all(
    pool: Pool,
    url: tuple[str, int, str],
    users: list[tuple[int, str]],
    at: float,
    concurrency: int,
    timeout: float,
    local_host: str | None,
    only_lost: bool = False,
) -> dict[str, Any]:
    """Join every user (``users``: index and token) from wall time ``at``,
    ``concurrency`` at a time; each tries up to 5 times. ``only_lost``: only the
    users without a joined connection (lost, or never joined), the others stay
    (``failed_indexes`` are still indexes into ``users``)."""
    if only_lost:
        pool.connections = [c for c in pool.connections if c.state == JOINED]
        joined = {c.user for c in pool.connections}
        chosen = [(i, u) for i, u in enumerate(users) if u[0] not in joined]
    else:
        chosen = list(enumerate(users))
    delay = at - time.time()
    if delay > 0:
        await asyncio.sleep(delay)
    semaphore = asyncio.Semaphore(concurrency)
    joins = Joins()

    async def one(index: int, user: tuple[int, str]) -> None:
        async with semaphore:
            await _join(pool, url, user, timeout, local_host, index, joins)

    started = time.time()
    await asyncio.gather(*(one(i, user) for i, user in chosen))
    return {
        "joined": len(joins.ends),
        "failed": len(chosen) - len(joins.ends),
        "failed_indexes": joins.failed,
        "retries": joins.retries,
        "errors": dict(joins.errors),
        "started": started,
        "starts": joins.starts,
        "ends": joins.ends,
    }


async def _join(
    pool: Pool,
    url: tuple[str, int, str],
    user: tuple[int, str],
    timeout: float,
    local_host: str | None,
    index: int,
    joins: Joins,
) -> None:
    """Join one user, trying up to 5 times (backing off 50 ms, doubled each time)."""
    begin = time.time()
    for attempt in range(5):
        connection, ok = await _connect(pool, url, user, timeout, local_host)
        if ok:
            pool.connections.append(connection)
            joins.starts.append(begin)
            joins.ends.append(time.time())
            return
        connection.close()
        joins.errors[connection.error or "unknown"] += 1
        if attempt < 4:
            joins.retries += 1
            await asyncio.sleep(0.05 * 2**attempt)
    joins.failed.append(index)


async def _connect(
    pool: Pool,
    url: tuple[str, int, str],
    user: tuple[int, str],
    timeout: float,
    local_host: str | None,
) -> tuple[Connection, bool]:
    """One attempt: connect, authenticate and subscribe; whether it joined."""
    host, port, path = url
    loop = asyncio.get_running_loop()
    connection = Connection(pool, host, port, path, user[1], pool.mode, user[0])
    try:
        await asyncio.wait_for(
            loop.create_connection(
                lambda: connection,
                host,
                port,
                local_addr=(local_host, 0) if local_host else None,
            ),
            timeout,
        )
        ok = await asyncio.wait_for(connection.done, timeout)
    except (OSError, TimeoutError) as exc:
        connection.close()
        connection.error = connection.error or type(exc).__name__
        ok = False
    return connection, ok


async def send_all(
    pool: Pool, at: float, rate: float, duration: float, senders_per_room: int
) -> dict[str, Any]:
    """Broadcast: from wall time ``at`` for ``duration`` s, ``rate`` messages/s from each
    of this process's joined members whose place in their room is under
    ``senders_per_room``, round-robin; every 10 ms the messages due, each
    ``{"t": time.time()}``. How many each member sent, by user index."""
    room = pool.mode.room_size
    senders = [
        c for c in pool.connections if c.state == JOINED and c.user % room < senders_per_room
    ]
    rate *= len(senders)
    sent: Counter[int] = Counter()
    delay = at - time.time()
    if delay > 0:
        await asyncio.sleep(delay)
    started = time.time()
    busy = 0.0
    total = 0
    if senders:
        end = started + duration
        while True:
            now = time.time()
            if now >= end:
                break
            due = int(rate * (now - started)) - total
            for _ in range(due):
                connection = senders[total % len(senders)]
                connection._push(
                    JOIN_REF,
                    None,
                    "broadcast",
                    {"type": "broadcast", "event": "m", "payload": {"t": time.time()}},
                )
                sent[connection.user] += 1
                total += 1
            busy += time.time() - now
            await asyncio.sleep(0.01)
    finished = time.time()
    return {
        "sent": total,
        "sent_by_user": {str(k): v for k, v in sent.items()},
        "senders": len(senders),
        "started": started,
        "finished": finished,
        "achieved_rate": total / max(finished - started, 1e-9),
        "busy_fraction": busy / max(finished - started, 1e-9),
    }


def stats(pool: Pool) -> dict[str, Any]:
    return {
        "received": pool.received,
        "last_recv": pool.last_recv,
        "open": sum(1 for c in pool.connections if c.state == JOINED),
        "disconnects": pool.disconnects,
        "types": dict(pool.types),
        "close_codes": dict(pool.close_codes),
        "pending": len(pool.commit),
    }


async def main_async(args: argparse.Namespace) -> None:
    from urllib.parse import urlsplit

    parts = urlsplit(args.url)
    url = (parts.hostname or "127.0.0.1", parts.port or 80, parts.path or "/")
    users: list[tuple[int, str]] = list(zip(args.users_list, args.tokens, strict=True))
    pool = Pool(Mode(args.protocol, args.apikey or "", args.room_size))
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    def reply(message: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()

    reply({"ready": True, "pid": os.getpid(), "connections": len(users)})
    while True:
        line = await reader.readline()
        if not line:
            break
        command = json.loads(line)
        cmd = command["cmd"]
        if cmd in ("join", "rejoin"):
            result = await join_all(
                pool,
                url,
                users,
                float(command.get("at", 0.0)),
                int(command.get("concurrency", 64)),
                float(command.get("timeout", 30.0)),
                args.local_host,
                only_lost=cmd == "rejoin",
            )
            reply(result)
        elif cmd == "stats":
            reply(stats(pool))
        elif cmd == "send":
            reply(
                await send_all(
                    pool,
                    float(command["at"]),
                    float(command["rate"]),
                    float(command["duration"]),
                    int(command["senders_per_room"]),
                )
            )
        elif cmd == "dump":
            import numpy as np

            data = np.vstack(
                [
                    np.frombuffer(pool.commit, dtype=np.float64),
                    np.frombuffer(pool.recv, dtype=np.float64),
                ]
            )
            np.save(command["path"], data)
            pool.commit = array("d")
            pool.recv = array("d")
            reply({"dumped": int(data.shape[1]), **stats(pool)})
        elif cmd == "close":
            pool.closing = True
            for connection in pool.connections:
                connection.close()
            await asyncio.sleep(0.5)
            reply({"closed": len(pool.connections)})
            break
        else:
            reply({"error": f"unknown command {cmd!r}"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--users", required=True, help="JSON file: {'tokens': [...]}")
    parser.add_argument("--local-host", help="source address, e.g. 127.0.0.11")
    parser.add_argument("--protocol", choices=PROTOCOLS, default="nexus")
    parser.add_argument("--room-size", type=int, default=10, help="broadcast and presence")
    args = parser.parse_args()
    users = json.loads(Path(args.users).read_text(encoding="utf-8"))
    args.tokens = users["tokens"]
    args.users_list = users.get("users") or list(range(len(args.tokens)))
    args.apikey = users.get("apikey")
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        asyncio.run(main_async(args))
    else:
        uvloop.run(main_async(args))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
