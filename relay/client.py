"""An asyncio client for the relay's protocol, for services and tests.

    async with await RelayClient.connect("ws://127.0.0.1:8765/", token) as client:
        subscription = await client.subscribe("nexus_payments", filter="status=eq.pending")
        async for event in client.events():
            if event["type"] == "change":
                ...

Requests wait for their reply and raise ``RelayRequestError`` (with the
server's ``code``) when refused. Change and system events (``change``,
``gap``, ``replayed``, ``token_expiring``, ``closing``, unsolicited
``unsubscribed``) arrive in order through ``events()`` or ``next_event()``.

Rooms (broadcast and presence on a topic)::

    await client.join("case:CASE-AB000001", presence_key="USR-ALIC0001")
    await client.track("case:CASE-AB000001", {"name": "Alice"})
    await client.broadcast("case:CASE-AB000001", "typing", {"name": "Alice"})
    client.presence("case:CASE-AB000001")  # {key: [meta, ...]}, kept from the diffs

and their events (``broadcast``, ``presence_diff``, unsolicited ``left``)
arrive through ``events()`` too. A broadcast waits for the relay's
``broadcasted`` only in a room joined with ``ack``; otherwise a refusal
arrives later, as an ``error`` event.

The client keeps, for each subscription, where a resume should start and the
token that proves it may (``resume_point(id)``); a reconnecting client passes
both to ``subscribe`` to receive what it missed.
"""

import asyncio
import itertools
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from relay.core.protocol import SUBPROTOCOL


class RelayRequestError(Exception):
    """The relay refused a request."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class RelayClosed(Exception):
    """The connection is closed; ``code`` and ``reason`` say why."""

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"connection closed ({code}: {reason})")
        self.code = code
        self.reason = reason


@dataclass(slots=True)
class _ResumePoint:
    """Where a subscription resumes from on a new connection."""

    position: str | None  # the last position it received (None: not known yet)
    token: str
    replaying: bool  # until "replayed": its replay is still arriving

    def caught_up(self, position: str) -> None:
        self.position = position
        self.replaying = False


class RelayClient:
    def __init__(self, connection: ClientConnection) -> None:
        self.connection = connection
        self.ready: dict[str, Any] = {}
        self.position: str | None = None  # of the last change received
        # subscription id -> [resume position, resume token, resume pending]
        self._resume: dict[str, _ResumePoint] = {}
        self._refs = itertools.count(1)
        self._pending: dict[Any, asyncio.Future[dict[str, Any]]] = {}
        self._events: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        # topic -> presence key -> metas, for the rooms joined with presence
        self._presence: dict[str, dict[str, list[dict[str, Any]]]] = {}
        self._acks: dict[str, bool] = {}  # topic -> broadcasts are acked
        self._reader = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def connect(
        cls,
        url: str,
        token: str | None,
        *,
        origin: str | None = None,
        timeout: float = 10.0,
        **options: Any,
    ) -> "RelayClient":
        """Open a connection and authenticate (unless ``token`` is None)."""
        connection = await connect(
            url,
            subprotocols=[Subprotocol(SUBPROTOCOL)],
            origin=origin,  # type: ignore[arg-type]
            open_timeout=timeout,
            compression=None,
            max_size=None,
            **options,
        )
        client = cls(connection)
        if token is not None:
            client.ready = await client.request({"type": "auth", "token": token}, timeout)
        return client

    # --- Requests ------------------------------------------------------------------

    async def request(self, frame: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
        """Send ``frame`` with a fresh ``ref``; return the reply, or raise its error."""
        ref = next(self._refs)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[ref] = future
        try:
            await self.connection.send(orjson.dumps({**frame, "ref": ref}).decode())
            reply = await asyncio.wait_for(future, timeout)
        finally:
            self._pending.pop(ref, None)
        if reply["type"] == "error":
            raise RelayRequestError(reply["code"], reply["message"])
        return reply

    async def subscribe(
        self,
        table: str,
        *,
        events: str | Iterable[str] = "*",
        select: Iterable[str] | None = None,
        filter: str | None = None,
        since: str | None = None,
        resume_token: str | None = None,
        timeout: float = 10.0,
    ) -> dict[str, Any]:
        """Subscribe; the reply (``id``, ``resumed``...). Live from the moment it returns."""
        frame: dict[str, Any] = {
            "type": "subscribe",
            "table": table,
            "events": events if isinstance(events, str) else list(events),
        }
        if select is not None:
            frame["select"] = list(select)
        if filter is not None:
            frame["filter"] = filter
        if since is not None:
            frame["since"] = since
        if resume_token is not None:
            frame["resume_token"] = resume_token
        reply = await self.request(frame, timeout)
        state = self._resume[reply["id"]]
        if state.replaying:  # until "replayed", resume from where we were
            state.position = since
        return reply

    def resume_point(self, subscription_id: str) -> tuple[str, str]:
        """``(since, resume_token)`` to resume this subscription on a new connection."""
        state = self._resume[subscription_id]
        assert state.position is not None  # set at the ack, or by subscribe() when resuming
        return state.position, state.token

    async def unsubscribe(self, subscription_id: str, timeout: float = 10.0) -> None:
        await self.request({"type": "unsubscribe", "id": subscription_id}, timeout)

    async def refresh(self, token: str, timeout: float = 10.0) -> dict[str, Any]:
        return await self.request({"type": "refresh", "token": token}, timeout)

    async def ping(self, timeout: float = 10.0) -> None:
        await self.request({"type": "ping"}, timeout)

    # --- Rooms -----------------------------------------------------------------------

    async def join(
        self,
        topic: str,
        *,
        presence: bool = False,
        presence_key: str | None = None,
        self_broadcast: bool = False,
        ack: bool = False,
        timeout: float = 10.0,
    ) -> dict[str, Any]:
        """Enter a room; the ``joined`` reply (with ``presence_state`` when asked
        for presence: ``presence`` true, or a ``presence_key``). In the room from
        the moment it returns: every broadcast made after reaches it."""
        frame: dict[str, Any] = {
            "type": "join",
            "topic": topic,
            "broadcast": {"self": self_broadcast, "ack": ack},
        }
        if presence or presence_key is not None:
            frame["presence"] = {"key": presence_key or ""}
        reply = await self.request(frame, timeout)
        self._acks[topic] = ack
        return reply

    async def leave(self, topic: str, timeout: float = 10.0) -> None:
        await self.request({"type": "leave", "topic": topic}, timeout)
        self._forget_room(topic)

    async def broadcast(self, topic: str, event: str, payload: Any, timeout: float = 10.0) -> None:
        """Send ``event`` to the room; in a room joined with ``ack``, wait until
        the relay has sent it on (or raise its refusal)."""
        frame = {"type": "broadcast", "topic": topic, "event": event, "payload": payload}
        if self._acks.get(topic, False):
            await self.request(frame, timeout)
        else:
            await self.connection.send(orjson.dumps({**frame, "ref": next(self._refs)}).decode())

    async def track(self, topic: str, payload: dict[str, Any], timeout: float = 10.0) -> None:
        """Be present in the room with ``payload`` (a new one replaces the last)."""
        await self.request({"type": "track", "topic": topic, "payload": payload}, timeout)

    async def untrack(self, topic: str, timeout: float = 10.0) -> None:
        await self.request({"type": "untrack", "topic": topic}, timeout)

    def presence(self, topic: str) -> dict[str, list[dict[str, Any]]]:
        """Who is present in a room joined with presence, by key: the ``joined``
        state with every ``presence_diff`` received since applied."""
        return {key: list(metas) for key, metas in self._presence.get(topic, {}).items()}

    def _forget_room(self, topic: str) -> None:
        self._presence.pop(topic, None)
        self._acks.pop(topic, None)

    # --- Events --------------------------------------------------------------------

    async def next_event(self, timeout: float = 10.0) -> dict[str, Any]:
        """The next event; ``TimeoutError`` after ``timeout``, ``RelayClosed`` once closed."""
        event = await asyncio.wait_for(self._events.get(), timeout)
        if event is None:
            self._events.put_nowait(None)  # stays closed for later calls
            raise RelayClosed(self.connection.close_code, self.connection.close_reason or "")
        return event

    def pending_events(self) -> list[dict[str, Any]]:
        """The events received and not taken yet, taken now, without waiting: after
        a ``ping``, everything the relay sent before its ``pong``."""
        taken = []
        while not self._events.empty():
            event = self._events.get_nowait()
            if event is None:
                self._events.put_nowait(None)  # stays closed for later calls
                break
            taken.append(event)
        return taken

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        while True:
            try:
                yield await self.next_event(timeout=float("inf"))
            except RelayClosed:
                return

    async def wait_closed(self, timeout: float = 10.0) -> RelayClosed:
        """Wait for the server to close the connection; its code and reason."""
        await asyncio.wait_for(self.connection.wait_closed(), timeout)
        return RelayClosed(self.connection.close_code, self.connection.close_reason or "")

    async def _read(self) -> None:
        try:
            async for message in self.connection:
                frame = orjson.loads(message)
                ref = frame.get("ref")
                future = self._pending.get(ref) if ref is not None else None
                if future is not None and not future.done():
                    if frame.get("type") == "subscribed":
                        # Here, not in subscribe(): its replay may follow before it resumes.
                        resuming = frame["resumed"]
                        self._resume[frame["id"]] = _ResumePoint(
                            None if resuming else frame["position"],
                            frame["resume_token"],
                            resuming,
                        )
                    elif frame.get("type") == "joined" and "presence_state" in frame:
                        self._presence[frame["topic"]] = {
                            key: list(value["metas"])
                            for key, value in frame["presence_state"].items()
                        }
                    elif frame.get("type") == "refreshed":
                        # Resume tokens that cover the new token too.
                        for subscription_id, token in frame.get("resume_tokens", {}).items():
                            if subscription_id in self._resume:
                                self._resume[subscription_id].token = token
                    future.set_result(frame)
                    continue
                self._track(frame)
                self._events.put_nowait(frame)
        except ConnectionClosed:
            pass
        finally:
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(
                        RelayClosed(self.connection.close_code, self.connection.close_reason or "")
                    )
            self._events.put_nowait(None)

    def _track(self, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        if kind == "change":
            self.position = frame["position"]
            for subscription_id in frame["subscriptions"]:
                state = self._resume.get(subscription_id)
                if state is not None and not state.replaying:
                    state.position = frame["position"]
        elif kind == "replayed" and frame["id"] in self._resume:
            self._resume[frame["id"]].caught_up(frame["position"])
        elif kind == "gap":
            for subscription_id in frame["subscriptions"]:
                if subscription_id in self._resume:
                    self._resume[subscription_id].caught_up(frame["position"])
        elif kind == "presence_diff":
            self._apply_presence(frame)
        elif kind == "left":
            self._forget_room(frame["topic"])

    def _apply_presence(self, frame: dict[str, Any]) -> None:
        """A diff as realtime-js applies it: leaves by ``phx_ref``, then joins."""
        state = self._presence.setdefault(frame["topic"], {})
        for key, value in frame.get("leaves", {}).items():
            gone = {meta["phx_ref"] for meta in value["metas"]}
            metas = [meta for meta in state.get(key, []) if meta["phx_ref"] not in gone]
            if metas:
                state[key] = metas
            else:
                state.pop(key, None)
        for key, value in frame.get("joins", {}).items():
            state.setdefault(key, []).extend(value["metas"])

    # --- Lifetime -----------------------------------------------------------------

    async def close(self) -> None:
        await self.connection.close()
        await asyncio.gather(self._reader, return_exceptions=True)

    async def __aenter__(self) -> "RelayClient":
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
