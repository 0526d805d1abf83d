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

    # --- Events --------------------------------------------------------------------

    async def next_event(self, timeout: float = 10.0) -> dict[str, Any]:
        """The next event; ``TimeoutError`` after ``timeout``, ``RelayClosed`` once closed."""
        event = await asyncio.wait_for(self._events.get(), timeout)
        if event is None:
            self._events.put_nowait(None)  # stays closed for later calls
            raise RelayClosed(self.connection.close_code, self.connection.close_reason or "")
        return event

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
