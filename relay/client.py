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

A service that must stay connected gives a token provider, a function (sync or
async) that returns a token, and ``reconnect=True``::

    async def token() -> str:
        return await my_identity_provider.relay_token()

    client = await RelayClient.connect(url, token, reconnect=True)

Then the client (docs/protocol.md, *A client, in short*):

- asks the provider for a token to connect, and again on ``token_expiring``,
  and sends it in ``refresh``: the connection outlives its tokens;
- reconnects when the connection is lost or the relay closes with a code that
  means "come back" (1001, 1006, 1011-1014, 4002, 4004, 4005, 4008, 4029: with the
  same token, which a resume needs; 4001 after ``ready``, 4003, 4010: with a
  new one from the provider), waiting between attempts as ``reconnect_delays``
  says (by default ``backoff()``: exponential, with jitter, capped), at most
  ``max_attempts`` times in a row;
- resubscribes each subscription from its resume point with its resume token,
  so that nothing committed meanwhile is lost while the log holds it (or a
  ``gap`` says so), under the same id, and nothing arrives twice (a replay
  cut short starts again: what it delivered is dropped); and joins its rooms
  again, tracking the same presence;
- tells the application with two events of its own, in order with the rest:
  ``{"type": "reconnecting", "attempt", "delay", "code", "reason"}`` before
  each attempt, ``{"type": "reconnected", "attempt"}`` once authenticated
  again, before any frame of the new connection.

It stops, and ``events()`` raises, when it must not come back: a close code
that means "fix the client" (4000, 1009...), a token the relay refused at
``auth`` or that the provider hands out again after the relay refused it
(``RelayRequestError``, no loop), the provider raising, or ``max_attempts``
reached. Keepalive is websockets': a WebSocket ping every ``ping_interval``
(20 s) and a connection without a pong after ``ping_timeout`` (20 s) is lost,
and so reconnected.

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
token that proves it may (``resume_point(id)``). Subscription ids are the
client's (``s1``, ``s2``... in the order of the acks, as the relay numbers
them on one connection) and stay the same across reconnections: subscribe
with ``subscribe()``, not a raw ``request()``, which the client would not
know to translate.
"""

import asyncio
import inspect
import itertools
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, TypedDict

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.client import process_exception
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from relay.core.protocol import SUBPROTOCOL

logger = logging.getLogger("relay.client")

TokenProvider = Callable[[], str | Awaitable[str]]
"""Returns a token for the relay; called to connect and before the token expires."""


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


class Reconnecting(TypedDict):
    """The connection was lost; the next attempt starts after ``delay`` seconds."""

    type: Literal["reconnecting"]
    attempt: int  # 1 for the first attempt after a connection was lost
    delay: float
    code: int | None  # why the last connection or attempt ended: its close code
    reason: str


class Reconnected(TypedDict):
    """Authenticated again; the subscriptions and rooms are being restored."""

    type: Literal["reconnected"]
    attempt: int


# Close codes (docs/protocol.md, *Close codes*) after which a client comes back
# with the token it has: a resume needs it (the *Resuming* rule on ``iat``).
COME_BACK = frozenset({1001, 1006, 1011, 1012, 1013, 1014, 4002, 4004, 4005, 4008, 4029})
# ... and those after which it needs a new token first.
NEW_TOKEN = frozenset({4001, 4003, 4010})
# Refusals of ``auth`` that a newer token may overcome.
_STALE_TOKEN = frozenset({"token_expired", "token_revoked"})


def backoff(
    initial: float = 0.5, maximum: float = 30.0, factor: float = 2.0, jitter: float = 0.5
) -> Iterator[float]:
    """Delays before each reconnection attempt, as docs/protocol.md suggests.

    The first is random between 0 and ``initial``: the clients a relay closed
    at once do not come back at once (RFC 6455, 7.2.3, *Recovering from
    Abnormal Closure*). Then ``initial`` multiplied by ``factor`` at each
    attempt up to ``maximum``, each ± ``jitter`` (a fraction) at random.
    """
    yield random.random() * initial  # noqa: S311 - jitter, not a secret
    delay = initial
    while True:
        yield delay * random.uniform(1 - jitter, 1 + jitter)  # noqa: S311
        delay = min(delay * factor, maximum)


@dataclass(slots=True)
class _Subscription:
    """A subscription as the client restores it on a new connection."""

    frame: dict[str, Any]  # the subscribe frame, without since and resume_token
    position: str | None = None  # its resume point (None: not known yet)
    token: str = ""  # its latest resume token
    replaying: bool = False  # until "replayed": its replay is still arriving
    client_id: str = ""  # its id for the application, from its first ack on
    server_id: str = ""  # its id on the current connection
    # The positions of the changes its replay delivered: a connection lost before
    # "replayed" resumes from the same point, and these must not arrive twice.
    replayed: set[str] = field(default_factory=set)

    def caught_up(self, position: str) -> None:
        self.position = position
        self.replaying = False
        self.replayed.clear()

    def delivers(self, position: str) -> bool:
        """Whether a change at ``position`` is new to the application."""
        if not self.replaying:
            self.position = position
            return True
        if position in self.replayed:
            return False
        self.replayed.add(position)
        return True


@dataclass(slots=True)
class _Room:
    """A room as the client joins it again on a new connection."""

    frame: dict[str, Any]  # the join frame
    ack: bool
    tracked: dict[str, Any] | None = None  # the last payload tracked, until untracked
    presence: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


@dataclass(slots=True)
class _Pending:
    """A request waiting for its reply."""

    future: "asyncio.Future[dict[str, Any]]"
    subscription: _Subscription | None = None  # a subscribe: the one it (re)makes
    since: str | None = None
    room: _Room | None = None  # a join: the room it (re)enters
    token: str | None = None  # an auth: its token


class RelayClient:
    def __init__(
        self,
        connection: ClientConnection,
        *,
        url: str = "",
        token_provider: TokenProvider | None = None,
        reconnect: bool = False,
        reconnect_delays: Callable[[], Iterator[float]] = backoff,
        max_attempts: int | None = None,
        timeout: float = 10.0,
        connect_options: dict[str, Any] | None = None,
    ) -> None:
        """Use ``connect()``: it opens the connection and authenticates."""
        self.connection = connection
        self.ready: dict[str, Any] = {}
        self.position: str | None = None  # of the last change received
        self._url = url
        self._provider = token_provider
        self._token: str | None = None  # the token the connection authenticated with
        self._expires_at: float | None = None  # that token's exp
        self._reconnect = reconnect
        self._delays = reconnect_delays
        self._max_attempts = max_attempts
        self._timeout = timeout
        self._connect_options = connect_options or {}
        # Subscriptions by the client's id; the current connection's ids to them.
        self._subscriptions: dict[str, _Subscription] = {}
        self._by_server_id: dict[str, str] = {}
        self._ids = itertools.count(1)
        self._rooms: dict[str, _Room] = {}
        self._refs = itertools.count(1)
        self._pending: dict[Any, _Pending] = {}
        self._events: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._connected = asyncio.Event()  # requests wait for it while reconnecting
        self._connected.set()
        self._stopped = False
        self._failure: BaseException | None = None  # why a reconnecting client stopped
        self._tasks: set[asyncio.Task[None]] = set()
        self._reader = asyncio.get_running_loop().create_task(self._read(connection))
        self._supervisor: asyncio.Task[None] | None = None
        self._attempt: int | None = None  # of the connection authenticating again

    @classmethod
    async def connect(
        cls,
        url: str,
        token: str | TokenProvider | None,
        *,
        origin: str | None = None,
        timeout: float = 10.0,
        reconnect: bool = False,
        reconnect_delays: Callable[[], Iterator[float]] = backoff,
        max_attempts: int | None = None,
        **options: Any,
    ) -> "RelayClient":
        """Open a connection and authenticate (unless ``token`` is None).

        ``token`` is a token, or a provider that returns one (sync or async),
        asked now and whenever a new token is needed. With ``reconnect``, the
        client comes back by itself (see the module's docstring); this first
        connection is not retried: its failure raises here. ``options`` go to
        websockets' ``connect()`` (``ping_interval``, ``ping_timeout``...).
        """
        if reconnect and token is None:
            raise ValueError("reconnect=True needs a token or a token provider")
        connect_options = {"origin": origin, "open_timeout": timeout, **options}
        provider = token if callable(token) else None
        client = cls(
            await _open(url, connect_options),
            url=url,
            token_provider=provider,
            reconnect=reconnect,
            reconnect_delays=reconnect_delays,
            max_attempts=max_attempts,
            timeout=timeout,
            connect_options=connect_options,
        )
        try:
            if provider is not None:
                token = await client._provide()
            if token is not None:
                assert isinstance(token, str)
                await client._authenticate(token)
        except BaseException:
            await client.close()
            raise
        if reconnect:
            client._supervisor = asyncio.get_running_loop().create_task(client._supervise())
        return client

    # --- Requests ------------------------------------------------------------------

    async def request(self, frame: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
        """Send ``frame`` with a fresh ``ref``; return the reply, or raise its error.

        While the client reconnects, the request waits for the connection (within
        ``timeout``); one whose connection is lost before its reply raises
        ``RelayClosed``.
        """
        await self._wait_connected(timeout)
        return await self._request(frame, timeout)

    async def _request(
        self,
        frame: dict[str, Any],
        timeout: float,
        subscription: _Subscription | None = None,
        since: str | None = None,
        room: _Room | None = None,
        token: str | None = None,
    ) -> dict[str, Any]:
        ref = next(self._refs)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[ref] = _Pending(future, subscription, since, room, token)
        try:
            try:
                await self.connection.send(orjson.dumps({**frame, "ref": ref}).decode())
            except ConnectionClosed as exc:
                raise self._closed() from exc
            reply = await asyncio.wait_for(future, timeout)
        finally:
            self._pending.pop(ref, None)
        if reply["type"] == "error":
            raise RelayRequestError(reply["code"], reply["message"])
        return reply

    async def _wait_connected(self, timeout: float) -> None:
        if not self._connected.is_set():
            await asyncio.wait_for(self._connected.wait(), timeout)
        if self._stopped and self._failure is not None:
            raise self._failure

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
        subscription = _Subscription(frame)
        resume = {} if since is None else {"since": since, "resume_token": resume_token}
        await self._wait_connected(timeout)
        return await self._request(
            {**frame, **{k: v for k, v in resume.items() if v is not None}},
            timeout,
            subscription,
            since,
        )

    def resume_point(self, subscription_id: str) -> tuple[str, str]:
        """``(since, resume_token)`` to resume this subscription on a new connection."""
        subscription = self._subscriptions[subscription_id]
        assert subscription.position is not None  # set at the ack
        return subscription.position, subscription.token

    async def unsubscribe(self, subscription_id: str, timeout: float = 10.0) -> None:
        await self._wait_connected(timeout)
        subscription = self._subscriptions.get(subscription_id)
        server_id = subscription_id if subscription is None else subscription.server_id
        await self._request({"type": "unsubscribe", "id": server_id}, timeout)

    async def refresh(self, token: str, timeout: float = 10.0) -> dict[str, Any]:
        """Send a new token on the open connection (``refreshed``'s resume tokens
        replace the subscriptions'); a reconnection uses it from now on."""
        await self._wait_connected(timeout)
        return await self._request({"type": "refresh", "token": token}, timeout, token=token)

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
        await self._wait_connected(timeout)
        return await self._request(frame, timeout, room=_Room(frame, ack))

    async def leave(self, topic: str, timeout: float = 10.0) -> None:
        await self.request({"type": "leave", "topic": topic}, timeout)
        self._rooms.pop(topic, None)

    async def broadcast(self, topic: str, event: str, payload: Any, timeout: float = 10.0) -> None:
        """Send ``event`` to the room; in a room joined with ``ack``, wait until
        the relay has sent it on (or raise its refusal)."""
        frame = {"type": "broadcast", "topic": topic, "event": event, "payload": payload}
        room = self._rooms.get(topic)
        if room is not None and room.ack:
            await self.request(frame, timeout)
            return
        await self._wait_connected(timeout)
        try:
            await self.connection.send(orjson.dumps({**frame, "ref": next(self._refs)}).decode())
        except ConnectionClosed as exc:
            raise self._closed() from exc

    async def track(self, topic: str, payload: dict[str, Any], timeout: float = 10.0) -> None:
        """Be present in the room with ``payload`` (a new one replaces the last)."""
        await self.request({"type": "track", "topic": topic, "payload": payload}, timeout)
        if topic in self._rooms:
            self._rooms[topic].tracked = payload

    async def untrack(self, topic: str, timeout: float = 10.0) -> None:
        await self.request({"type": "untrack", "topic": topic}, timeout)
        if topic in self._rooms:
            self._rooms[topic].tracked = None

    def presence(self, topic: str) -> dict[str, list[dict[str, Any]]]:
        """Who is present in a room joined with presence, by key: the ``joined``
        state with every ``presence_diff`` received since applied (after a
        reconnection, the state of the new ``joined``)."""
        room = self._rooms.get(topic)
        return {key: list(metas) for key, metas in (room.presence if room else {}).items()}

    # --- Events --------------------------------------------------------------------

    async def next_event(self, timeout: float = 10.0) -> dict[str, Any]:
        """The next event; ``TimeoutError`` after ``timeout``; once closed,
        ``RelayClosed``, or what stopped a reconnecting client."""
        event = await asyncio.wait_for(self._events.get(), timeout)
        if event is None:
            self._events.put_nowait(None)  # stays closed for later calls
            if self._failure is not None:
                raise self._failure
            raise self._closed()
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
        """Every event, until the client is closed; raises what stopped a
        reconnecting client (``RelayClosed``, ``RelayRequestError``...)."""
        while True:
            try:
                event = await self.next_event(timeout=float("inf"))
            except RelayClosed:
                if self._failure is not None:
                    raise
                return
            yield event

    async def wait_closed(self, timeout: float = 10.0) -> RelayClosed:
        """Wait for the server to close the connection; its code and reason."""
        await asyncio.wait_for(self.connection.wait_closed(), timeout)
        return self._closed()

    def _closed(self) -> RelayClosed:
        return RelayClosed(self.connection.close_code, self.connection.close_reason or "")

    def _emit(self, event: dict[str, Any]) -> None:
        self._events.put_nowait(event)

    # --- Reading -------------------------------------------------------------------

    async def _read(self, connection: ClientConnection) -> None:
        try:
            async for message in connection:
                frame = self._to_client_ids(orjson.loads(message))
                ref = frame.get("ref")
                pending = self._pending.get(ref) if ref is not None else None
                if pending is not None and not pending.future.done():
                    self._answered(frame, pending)
                    pending.future.set_result(frame)
                    continue
                if self._track(frame):
                    self._events.put_nowait(frame)
        except ConnectionClosed:
            pass
        finally:
            closed = RelayClosed(connection.close_code, connection.close_reason or "")
            for pending in self._pending.values():
                if not pending.future.done():
                    pending.future.set_exception(closed)
            if not self._reconnect:
                self._events.put_nowait(None)

    def _to_client_ids(self, frame: dict[str, Any]) -> dict[str, Any]:
        """The frame with the client's subscription ids in place of this connection's."""
        ids = self._by_server_id
        if "subscriptions" in frame:
            frame["subscriptions"] = [ids.get(sid, sid) for sid in frame["subscriptions"]]
        if frame.get("type") in ("replayed", "unsubscribed") and frame.get("id") in ids:
            frame["id"] = ids[frame["id"]]
        if "resume_tokens" in frame:
            frame["resume_tokens"] = {
                ids.get(sid, sid): token for sid, token in frame["resume_tokens"].items()
            }
        return frame

    def _answered(self, frame: dict[str, Any], pending: _Pending) -> None:
        """Keep what a reply changes, here rather than where the request waits:
        a subscription's replay may follow its ack before the request resumes."""
        kind = frame.get("type")
        if kind == "subscribed" and pending.subscription is not None:
            self._subscribed(frame, pending.subscription, pending.since)
        elif kind == "joined" and pending.room is not None:
            # Filed here: its presence diffs may follow at once.
            self._rooms[frame["topic"]] = pending.room
            pending.room.presence = {
                key: list(value["metas"]) for key, value in frame.get("presence_state", {}).items()
            }
        elif kind == "ready" and pending.token is not None:
            # Here: a token_expiring may follow at once, and its refresh must
            # know which token the connection has.
            self._token, self._expires_at = pending.token, frame.get("expires_at")
            if self._attempt is not None:  # before any other frame of this connection
                self._emit(dict(Reconnected(type="reconnected", attempt=self._attempt)))
                self._attempt = None
        elif kind == "refreshed":
            self._token, self._expires_at = pending.token, frame.get("expires_at")
            # Resume tokens that cover the new token too.
            for subscription_id, token in frame.get("resume_tokens", {}).items():
                if subscription_id in self._subscriptions:
                    self._subscriptions[subscription_id].token = token
        elif kind == "unsubscribed":
            self._forget_subscription(frame["id"])

    def _subscribed(
        self, frame: dict[str, Any], subscription: _Subscription, since: str | None
    ) -> None:
        if not subscription.client_id:
            subscription.client_id = f"s{next(self._ids)}"
        self._subscriptions[subscription.client_id] = subscription
        subscription.server_id = frame["id"]
        self._by_server_id[frame["id"]] = subscription.client_id
        subscription.token = frame["resume_token"]
        subscription.replaying = frame["resumed"]
        if not frame["resumed"]:
            subscription.replayed.clear()
        # Until "replayed", a resumed subscription resumes from where it was.
        subscription.position = since if frame["resumed"] else frame["position"]
        frame["id"] = subscription.client_id

    def _forget_subscription(self, client_id: str) -> None:
        subscription = self._subscriptions.pop(client_id, None)
        if subscription is not None:
            self._by_server_id.pop(subscription.server_id, None)

    def _track(self, frame: dict[str, Any]) -> bool:
        """Keep what an event changes; whether the application is to see it (not a
        change that a replay interrupted by a lost connection delivered already)."""
        kind = frame.get("type")
        if kind == "change":
            self.position = frame["position"]
            frame["subscriptions"] = [
                sid
                for sid in frame["subscriptions"]
                if sid not in self._subscriptions
                or self._subscriptions[sid].delivers(frame["position"])
            ]
            return bool(frame["subscriptions"])
        if kind == "replayed" and frame["id"] in self._subscriptions:
            self._subscriptions[frame["id"]].caught_up(frame["position"])
        elif kind == "gap":
            for subscription_id in frame["subscriptions"]:
                if subscription_id in self._subscriptions:
                    self._subscriptions[subscription_id].caught_up(frame["position"])
        elif kind == "unsubscribed":
            self._forget_subscription(frame["id"])
        elif kind == "presence_diff" and frame["topic"] in self._rooms:
            _apply_presence(self._rooms[frame["topic"]].presence, frame)
        elif kind == "left":
            self._rooms.pop(frame["topic"], None)
        elif kind == "token_expiring" and self._provider is not None and not self._stopped:
            self._spawn(self._refresh_from_provider())
        return True

    # --- Tokens ----------------------------------------------------------------------

    async def _provide(self) -> str:
        assert self._provider is not None
        token = self._provider()
        if inspect.isawaitable(token):
            token = await token
        return token

    async def _authenticate(self, token: str) -> None:
        auth = {"type": "auth", "token": token}
        self.ready = await self._request(auth, self._timeout, token=token)

    async def _refresh_from_provider(self) -> None:
        """On ``token_expiring``: a new token from the provider, sent in ``refresh``.

        A provider that still hands out the same token (it renews its own a
        little later) is asked again, halfway to the expiry each time. A failure
        only logs: the expiry (4003) then makes the client reconnect.
        """
        try:
            while (token := await self._provide()) == self._token:
                left = (self._expires_at or 0) - time.time()
                if left < 1:
                    return
                await asyncio.sleep(left / 2)
            await self._request({"type": "refresh", "token": token}, self._timeout, token=token)
        except Exception:
            logger.warning("token refresh failed; the relay will close at expiry", exc_info=True)

    def _spawn(self, coroutine: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- Reconnecting ----------------------------------------------------------------

    async def _supervise(self) -> None:
        """Wait for each connection to end, then come back, until stopped."""
        try:
            while True:
                await asyncio.shield(self._reader)
                if self._stopped:
                    return
                self._connected.clear()
                await self._come_back(self.connection.close_code, self.connection.close_reason)
        except Exception as exc:
            logger.info("relay client stopped: %s", exc)
            self._stop(exc)

    async def _come_back(self, code: int | None, reason: str | None) -> None:
        """Reconnect after a connection ended with ``code``; raise when it must not."""
        code = 1006 if code is None else code
        if code not in COME_BACK | NEW_TOKEN or (code in NEW_TOKEN and self._provider is None):
            raise RelayClosed(code, reason or "")
        refused = self._token if code in NEW_TOKEN else None
        delays = self._delays()
        for attempt in itertools.count(1):
            if self._max_attempts is not None and attempt > self._max_attempts:
                raise RelayClosed(code, f"gave up after {self._max_attempts} attempts: {reason}")
            delay = next(delays)
            logger.info("relay connection lost (%s); reconnecting in %.1f s", code, delay)
            event = Reconnecting(
                type="reconnecting", attempt=attempt, delay=delay, code=code, reason=reason or ""
            )
            self._emit(dict(event))
            await asyncio.sleep(delay)
            token = await self._token_for(refused)
            try:
                await self._reopen(token, attempt)
                return
            except RelayRequestError as exc:  # auth refused
                if exc.code not in _STALE_TOKEN or self._provider is None:
                    raise
                refused, code, reason = token, None, exc.code  # a newer token may do
            except Exception as exc:  # sorted by _retryable
                code, reason = self._retryable(exc)
                if code in NEW_TOKEN:
                    refused = token

    async def _token_for(self, refused: str | None) -> str:
        """The token to reconnect with: the same one while it may be (a resume
        needs it), else the provider's; never again one the relay refused."""
        assert self._token is not None
        expired = self._expires_at is not None and self._expires_at <= time.time()
        if refused is None and not expired:
            return self._token
        if self._provider is None:
            raise RelayClosed(4003 if expired else 4001, "a new token is needed, and no provider")
        token = await self._provide()
        if token == refused:
            raise RelayRequestError("invalid_token", "the provider gave the token just refused")
        return token

    def _retryable(self, exc: Exception) -> tuple[int | None, str]:
        """Why an attempt failed, as (close code, reason); raise it when no other
        attempt may succeed."""
        if isinstance(exc, RelayClosed):
            if exc.code is None or exc.code in COME_BACK:
                return exc.code, exc.reason
            if exc.code in NEW_TOKEN and self._provider is not None:
                return exc.code, exc.reason
            raise exc
        if process_exception(exc) is None:  # websockets': network errors, HTTP 5xx
            return None, str(exc) or type(exc).__name__
        raise exc

    async def _reopen(self, token: str, attempt: int) -> None:
        """A new connection: authenticate, then restore subscriptions and rooms."""
        connection = await _open(self._url, self._connect_options)
        self.connection = connection
        self._by_server_id = {}
        self._reader = asyncio.get_running_loop().create_task(self._read(connection))
        try:
            self._attempt = attempt
            await self._authenticate(token)
            logger.info("relay connection back after %d attempt(s)", attempt)
            await self._resubscribe()
            await self._rejoin()
        except BaseException:
            self._attempt = None
            await connection.close()
            await asyncio.gather(self._reader, return_exceptions=True)
            raise
        self._connected.set()

    async def _resubscribe(self) -> None:
        """Each subscription again, from its resume point (docs/protocol.md, *Resuming*)."""
        for client_id, subscription in list(self._subscriptions.items()):
            frame = dict(subscription.frame)
            since = subscription.position
            if since is not None:
                frame.update(since=since, resume_token=subscription.token)
            try:
                await self._request(frame, self._timeout, subscription, since)
            except RelayRequestError as exc:  # no longer allowed, say
                self._forget_subscription(client_id)
                self._emit({"type": "unsubscribed", "id": client_id, "reason": exc.code})

    async def _rejoin(self) -> None:
        """Each room again, with the presence it tracked."""
        for topic, room in list(self._rooms.items()):
            try:
                await self._request(room.frame, self._timeout, room=room)
                if room.tracked is not None:
                    await self._request(
                        {"type": "track", "topic": topic, "payload": room.tracked}, self._timeout
                    )
            except RelayRequestError as exc:
                self._rooms.pop(topic, None)
                self._emit(
                    {"type": "left", "topic": topic, "reason": exc.code, "message": exc.message}
                )

    def _stop(self, failure: BaseException | None) -> None:
        """No more connections: ``events()`` ends (raising ``failure``, if any)."""
        if self._stopped:
            return
        self._stopped = True
        self._failure = failure
        self._connected.set()  # wakes waiting requests, which raise
        self._events.put_nowait(None)

    # --- Lifetime -----------------------------------------------------------------

    async def close(self) -> None:
        """Close the connection, and stop reconnecting; ``events()`` ends."""
        reconnecting = self._reconnect and not self._stopped
        self._stopped = True
        tasks = [t for t in (self._supervisor, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await self.connection.close()
        await asyncio.gather(self._reader, *tasks, return_exceptions=True)
        if reconnecting:
            self._connected.set()
            self._events.put_nowait(None)

    async def __aenter__(self) -> "RelayClient":
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


async def _open(url: str, options: dict[str, Any]) -> ClientConnection:
    return await connect(
        url,
        subprotocols=[Subprotocol(SUBPROTOCOL)],
        compression=None,
        max_size=None,
        **options,
    )


def _apply_presence(state: dict[str, list[dict[str, Any]]], frame: dict[str, Any]) -> None:
    """A diff as realtime-js applies it: leaves by ``phx_ref``, then joins."""
    for key, value in frame.get("leaves", {}).items():
        gone = {meta["phx_ref"] for meta in value["metas"]}
        metas = [meta for meta in state.get(key, []) if meta["phx_ref"] not in gone]
        if metas:
            state[key] = metas
        else:
            state.pop(key, None)
    for key, value in frame.get("joins", {}).items():
        state.setdefault(key, []).extend(value["metas"])
