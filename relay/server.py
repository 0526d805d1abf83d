"""The WebSocket side: moves frames between sockets and sessions, and owns the waiting.

Built on the ``websockets`` asyncio server directly: fan-out writes each
session's frames straight to its connection's transport, the way
``websockets.broadcast`` does, without a coroutine or a lock per message. A
connection whose unsent bytes pass ``max_send_buffer_bytes`` is a slow
consumer: it gets no more frames and is closed with 4008, and nobody else
waits for it.
"""

import asyncio
import http
import logging
import random
import time
import urllib.parse
import weakref
from collections.abc import Coroutine, Sequence
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers, MultipleValuesError
from websockets.exceptions import ConnectionClosed, InvalidHeader
from websockets.headers import parse_subprotocol
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.typing import Subprotocol

from relay.core import phoenix, protocol
from relay.core.errors import AuthError, CloseCode, ErrorCode, Refusal
from relay.core.fanout import Fanout
from relay.core.session import BaseSession, PendingCheck
from relay.refusals import RefusalLog
from relay.topic_checks import TopicChecks

logger = logging.getLogger("relay.server")


class RelayServer:
    def __init__(
        self,
        fanout: Fanout,
        *,
        path: str = "/",
        supabase_path: str | None = None,
        allowed_origins: tuple[str, ...] = (),
        max_send_buffer_bytes: int = 1024 * 1024,
        ping_interval: float = 20.0,
        ping_timeout: float = 20.0,
        database_url: str | None = None,
    ) -> None:
        self.fanout = fanout
        # Topic rules' SQL checks (relay.topic_checks) run on a connection of their own.
        self.checks = TopicChecks(database_url)
        self.path = path
        self.supabase_path = supabase_path
        self.allowed_origins = allowed_origins
        self.max_send_buffer_bytes = max_send_buffer_bytes
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.connections: dict[BaseSession, ServerConnection] = {}
        self._timers: dict[BaseSession, asyncio.TimerHandle] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self.server: Server | None = None
        self.refusals = RefusalLog(fanout.stats)
        self._refused: weakref.WeakSet[ServerConnection] = weakref.WeakSet()  # handshakes

    async def start(self, host: str, port: int) -> Server:
        self.server = await serve(
            self.handle,
            host,
            port,
            select_subprotocol=self._select_subprotocol,
            compression=None,  # per-recipient deflate would undo encode-once
            process_request=self._process_request,
            process_response=self._process_response,
            max_size=self.fanout.limits.max_frame_bytes,
            max_queue=16,
            ping_interval=self.ping_interval,
            ping_timeout=self.ping_timeout,
            close_timeout=5,
            logger=logging.getLogger("relay.websockets"),
            # asyncio's default accept backlog (100) overflows when many
            # clients reconnect at once (a relay restart): their SYNs are
            # dropped and retried a second later. The kernel caps this at
            # net.core.somaxconn.
            backlog=4096,
        )
        return self.server

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        """Refuse, logged and counted, a handshake for another path, from an origin
        not allowed, or without the relay's subprotocol (for Supabase's endpoint:
        without a valid project key or with an unknown ``vsn``); websockets
        checks the rest."""
        supabase = self._is_supabase(request)
        if not supabase and request.path.split("?", 1)[0] != self.path:
            return self._refuse_handshake(
                connection,
                http.HTTPStatus.NOT_FOUND,
                "path",
                f"The relay's WebSocket endpoint is {self.path}",
            )
        # Browsers always send Origin: only the allowed ones get in. Clients
        # that send none (services, the Python client) are not browsers.
        try:
            origin = request.headers.get("Origin")
        except MultipleValuesError:
            origin = "(several)"
        if origin is not None and origin not in self.allowed_origins:
            return self._refuse_handshake(
                connection,
                http.HTTPStatus.FORBIDDEN,
                "origin",
                f"The origin {origin} may not connect (RELAY_ALLOWED_ORIGINS)",
            )
        if supabase:
            return self._check_supabase(connection, request)
        try:
            offered = [
                subprotocol
                for value in request.headers.get_all("Sec-WebSocket-Protocol")
                for subprotocol in parse_subprotocol(value)
            ]
        except InvalidHeader:
            offered = []
        if protocol.SUBPROTOCOL not in offered:
            return self._refuse_handshake(
                connection,
                http.HTTPStatus.BAD_REQUEST,
                "subprotocol",
                f"The relay speaks the WebSocket subprotocol {protocol.SUBPROTOCOL} only",
            )
        return None

    def _select_subprotocol(
        self, connection: ServerConnection, offered: Sequence[Subprotocol]
    ) -> Subprotocol | None:
        """The relay's subprotocol (offered: ``_process_request`` checked it); none
        for Supabase's endpoint, whose clients offer none."""
        if protocol.SUBPROTOCOL in offered and not self._is_supabase(connection.request):
            return Subprotocol(protocol.SUBPROTOCOL)
        return None

    def _is_supabase(self, request: Request | None) -> bool:
        return (
            request is not None
            and self.supabase_path is not None
            and request.path.split("?", 1)[0] == self.supabase_path
        )

    def _check_supabase(self, connection: ServerConnection, request: Request) -> Response | None:
        """Supabase's endpoint (../shared/supabase-protocol.md, section 1): a known
        ``vsn`` (missing: 1.0.0), and a valid project key as ``apikey``."""
        vsn, key = _supabase_query(request)
        if vsn not in phoenix.VERSIONS:
            return self._refuse_handshake(
                connection,
                http.HTTPStatus.FORBIDDEN,
                "vsn",
                f"Unknown vsn {vsn!r}: this endpoint speaks {' and '.join(phoenix.VERSIONS)}",
            )
        if key is None:
            return self._refuse_handshake(
                connection,
                http.HTTPStatus.UNAUTHORIZED,
                "apikey",
                "The apikey query parameter (the project's anon key) is missing",
            )
        try:
            self.fanout.verifier.verify_key(key)
        except AuthError as exc:
            return self._refuse_handshake(
                connection, http.HTTPStatus.UNAUTHORIZED, "apikey", f"The apikey: {exc.message}"
            )
        return None

    def _process_response(
        self, connection: ServerConnection, request: Request, response: Response
    ) -> None:
        """A handshake that websockets itself refused (not an upgrade request, a bad
        header): logged and counted too."""
        if (
            response.status_code != http.HTTPStatus.SWITCHING_PROTOCOLS
            and connection not in self._refused
        ):
            message = response.body.decode(errors="replace").strip().splitlines()
            self._report_handshake(
                connection, "invalid_request", message[0] if message else response.reason_phrase
            )

    def _refuse_handshake(
        self, connection: ServerConnection, status: http.HTTPStatus, reason: str, message: str
    ) -> Response:
        self._report_handshake(connection, reason, message)
        self._refused.add(connection)
        body = f"{message}\n".encode()
        headers = Headers([("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return Response(status, status.phrase, headers, body)

    def _report_handshake(self, connection: ServerConnection, reason: str, message: str) -> None:
        self.refusals.report(
            Refusal("handshake", reason, message),
            client=_address(connection),
            forwarded_for=_forwarded_for(connection),
        )

    def _report(self, session: BaseSession) -> None:
        """Log and count what ``session`` refused since the last call."""
        connection = self.connections.get(session)
        user = session.identity.subject if session.identity is not None else None
        for refusal in session.refusals:
            self.refusals.report(
                refusal,
                client=_address(connection) if connection is not None else None,
                connection=session.id,
                user=user,
                forwarded_for=_forwarded_for(connection) if connection is not None else None,
            )
        session.refusals.clear()

    async def handle(self, connection: ServerConnection) -> None:
        session = self._open(connection)
        self.connections[session] = connection
        reason = "client_closed"
        try:
            self.flush_session(session)
            self._schedule(session)
            if session.close_request is None:
                async for message in connection:
                    session.receive(message, time.time())
                    self.flush_session(session)
                    for pending in session.take_checks():
                        self._spawn(self._check(session, pending))
                    self.flush(False)  # what it sent to others: broadcasts, presence
                    if session.close_request is not None:
                        break
                    self._schedule(session)
            if session.close_request is not None:
                code, error, _ = session.close_request
                await connection.close(code, error.value)  # begun by flush_session: waits
        except ConnectionClosed as exc:
            if (
                exc.rcvd is None
                and exc.sent is not None
                and exc.sent.code == CloseCode.MESSAGE_TOO_BIG
            ):
                reason = "message_too_big"
            elif exc.rcvd is None:
                reason = "connection_lost"
        finally:
            if session.refusals:
                self._report(session)
            if session.close_request is not None:
                reason = session.close_request[1].value
            timer = self._timers.pop(session, None)
            if timer is not None:
                timer.cancel()
            self.connections.pop(session, None)
            self.fanout.close_session(session, reason)

    def _open(self, connection: ServerConnection) -> BaseSession:
        """A session of the protocol that the handshake's path names."""
        request = connection.request
        now = time.time()
        if request is not None and self._is_supabase(request):
            vsn, key = _supabase_query(request)
            assert key is not None  # checked at the handshake
            return self.fanout.open_supabase_session(now, vsn, key)
        return self.fanout.open_session(now)

    # --- Output ----------------------------------------------------------------

    def flush(self, gaps: bool = True) -> None:
        """Write every session's pending frames: after each batch of changes, with
        the batch's gaps, and every few milliseconds within a large one, without.

        A failure to write to one connection costs that connection, logged and
        counted, never the others nor the stream.
        """
        for session in self.fanout.take_dirty(gaps):
            try:
                self.flush_session(session)
            except Exception:
                logger.exception(
                    "session %s: cannot write its frames; connection dropped", session.id
                )
                self.fanout.stats.errors["flush"] += 1
                session.close(
                    CloseCode.INTERNAL_ERROR, ErrorCode.INTERNAL_ERROR, "the relay failed to write"
                )
                session.data_to_send()
                connection = self.connections.get(session)
                if connection is not None:
                    connection.transport.abort()

    def flush_session(self, session: BaseSession) -> None:
        if session.refusals:
            self._report(session)
        frames = session.data_to_send()
        connection = self.connections.get(session)
        if connection is None or connection.protocol.state is not State.OPEN:
            return
        if not frames:
            # Nothing to write; a session that ends without a last frame of its
            # own (Supabase's, closed by the relay) still has its socket closed.
            if session.close_request is not None:
                self._close_soon(session, connection)
            return
        transport = connection.transport
        if (
            transport.get_write_buffer_size() > self.max_send_buffer_bytes
            and session.close_request is None
        ):
            session.drop_slow()
            self._report(session)
            session.data_to_send()  # its buffer is full: the close frame would not get through
            self._close_soon(session, connection)
            return
        websocket = connection.protocol  # websockets' sans-I/O protocol
        for frame in frames:
            websocket.send_text(frame)
        # One write, so one system call, for all of a session's frames of this
        # batch (websockets' send_data makes one per frame: the relay's largest
        # cost under load). An empty chunk asks for a half-close, as in send_data.
        chunks = websocket.data_to_send()
        data = b"".join(chunks)
        if data:
            transport.write(data)
        if b"" in chunks:
            if transport.can_write_eof():
                transport.write_eof()
            else:
                transport.close()
        if session.close_request is not None:
            self._close_soon(session, connection)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _check(self, session: BaseSession, pending: PendingCheck) -> None:
        """Run a topic rule's SQL check, then finish (or refuse) the join."""
        result = await self.checks.confirm(pending.admitted)
        if session in self.connections:
            session.checked(pending, result, time.time())
            self.flush_session(session)
            self.flush(False)
            self._schedule(session)

    def _close_soon(self, session: BaseSession, connection: ServerConnection) -> None:
        assert session.close_request is not None
        code, error, _ = session.close_request
        self._spawn(connection.close(code, error.value))

    # --- Time ------------------------------------------------------------------------

    def _schedule(self, session: BaseSession) -> None:
        deadline = session.deadline()
        timer = self._timers.pop(session, None)
        if timer is not None:
            timer.cancel()
        if deadline is None:
            return
        loop = asyncio.get_running_loop()
        self._timers[session] = loop.call_at(
            loop.time() + max(deadline - time.time(), 0.0), self._tick, session
        )

    def _tick(self, session: BaseSession) -> None:
        self._timers.pop(session, None)
        if session not in self.connections:
            return
        session.tick(time.time())
        self.flush_session(session)
        if session.close_request is None:
            self._schedule(session)

    async def drain(self, window: float) -> None:
        """Stop accepting, then close the connections over ``window`` seconds, in a
        random order and evenly spread, with 1001: their clients reconnect (to
        another relay, behind a load balancer) and resume, a few at a time
        rather than all at once. Changes reach each until it closes."""
        if self.server is None:
            return
        self.server.close(close_connections=False)  # mid-handshake ones get HTTP 503
        sessions = list(self.connections)
        random.shuffle(sessions)
        loop = asyncio.get_running_loop()
        start = loop.time()
        timers = [
            loop.call_at(start + window * (i + 1) / (len(sessions) + 1), self._go_away, session)
            for i, session in enumerate(sessions)
        ]
        try:
            await self.server.wait_closed()
        finally:
            for timer in timers:
                timer.cancel()

    def _go_away(self, session: BaseSession) -> None:
        if session in self.connections and session.close_request is None:
            session.close(
                CloseCode.GOING_AWAY,
                ErrorCode.GOING_AWAY,
                "the relay is shutting down; reconnect",
            )
            self.flush_session(session)

    async def close(self) -> None:
        """Stop accepting; close every connection with 1001 (going away)."""
        await self.checks.close()
        if self.server is not None:
            for session in list(self.connections):
                self._go_away(session)
            self.server.close(close_connections=True)
            await self.server.wait_closed()


def _supabase_query(request: Request) -> tuple[str, str | None]:
    """``vsn`` (missing: 1.0.0) and ``apikey`` of a handshake to Supabase's endpoint;
    the key from the query, or an ``apikey`` header as Supabase also reads."""
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(request.path).query)
    vsn = query.get("vsn", [phoenix.VSN_1])[-1]
    keys = query.get("apikey")
    try:
        key = keys[-1] if keys else request.headers.get("apikey")
    except MultipleValuesError:
        key = None
    return vsn, key or None


def _address(connection: ServerConnection) -> str | None:
    """The peer's address, "host:port" (a proxy's, behind one: see forwarded_for)."""
    peer = connection.remote_address
    if not peer:
        return None
    host, port = peer[0], peer[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def _forwarded_for(connection: ServerConnection) -> str | None:
    """What a proxy in front says of the client (X-Forwarded-For): logged, not trusted."""
    request = connection.request
    if request is None:
        return None
    try:
        return request.headers.get("X-Forwarded-For")
    except MultipleValuesError:
        return ", ".join(request.headers.get_all("X-Forwarded-For"))
