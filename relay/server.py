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
import time

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.typing import Origin, Subprotocol

from relay.core import protocol
from relay.core.errors import CloseCode, ErrorCode
from relay.core.fanout import Fanout
from relay.core.session import Session

logger = logging.getLogger("relay.server")


class RelayServer:
    def __init__(
        self,
        fanout: Fanout,
        *,
        path: str = "/",
        allowed_origins: tuple[str, ...] = (),
        max_send_buffer_bytes: int = 1024 * 1024,
        ping_interval: float = 20.0,
        ping_timeout: float = 20.0,
    ) -> None:
        self.fanout = fanout
        self.path = path
        self.allowed_origins = allowed_origins
        self.max_send_buffer_bytes = max_send_buffer_bytes
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.connections: dict[Session, ServerConnection] = {}
        self._timers: dict[Session, asyncio.TimerHandle] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self.server: Server | None = None

    async def start(self, host: str, port: int) -> Server:
        # Browsers always send Origin: only the allowed ones get in. Clients
        # that send none (services, the Python client) are not browsers.
        origins: list[Origin | None] = [Origin(o) for o in self.allowed_origins]
        origins.append(None)
        self.server = await serve(
            self.handle,
            host,
            port,
            origins=origins,
            subprotocols=[Subprotocol(protocol.SUBPROTOCOL)],
            compression=None,  # per-recipient deflate would undo encode-once
            process_request=self._process_request,
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
        if request.path.split("?", 1)[0] != self.path:
            body = f"The relay's WebSocket endpoint is {self.path}\n".encode()
            return Response(
                http.HTTPStatus.NOT_FOUND,
                "Not Found",
                Headers([("Content-Type", "text/plain"), ("Content-Length", str(len(body)))]),
                body,
            )
        return None

    async def handle(self, connection: ServerConnection) -> None:
        session = self.fanout.open_session(time.time())
        self.connections[session] = connection
        reason = "client_closed"
        try:
            self.flush_session(session)
            self._schedule(session)
            if session.close_request is None:
                async for message in connection:
                    session.receive(message, time.time())
                    self.flush_session(session)
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
            if session.close_request is not None:
                reason = session.close_request[1].value
            timer = self._timers.pop(session, None)
            if timer is not None:
                timer.cancel()
            self.connections.pop(session, None)
            self.fanout.close_session(session, reason)

    # --- Output ----------------------------------------------------------------

    def flush(self) -> None:
        """Write every session's pending frames; called after each batch of changes.

        A failure to write to one connection costs that connection, logged and
        counted, never the others nor the stream.
        """
        for session in self.fanout.take_dirty():
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

    def flush_session(self, session: Session) -> None:
        frames = session.data_to_send()
        if not frames:
            return
        connection = self.connections.get(session)
        if connection is None or connection.protocol.state is not State.OPEN:
            return
        transport = connection.transport
        if (
            transport.get_write_buffer_size() > self.max_send_buffer_bytes
            and session.close_request is None
        ):
            session.drop_slow()
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

    def _close_soon(self, session: Session, connection: ServerConnection) -> None:
        assert session.close_request is not None
        code, error, _ = session.close_request
        task = asyncio.get_running_loop().create_task(connection.close(code, error.value))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    # --- Time ------------------------------------------------------------------------

    def _schedule(self, session: Session) -> None:
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

    def _tick(self, session: Session) -> None:
        self._timers.pop(session, None)
        if session not in self.connections:
            return
        session.tick(time.time())
        self.flush_session(session)
        if session.close_request is None:
            self._schedule(session)

    async def close(self) -> None:
        """Stop accepting; close every connection with 1001 (going away)."""
        if self.server is not None:
            for session in list(self.connections):
                if session.close_request is None:
                    session.close(
                        CloseCode.GOING_AWAY,
                        ErrorCode.GOING_AWAY,
                        "the relay is shutting down; reconnect",
                    )
                    self.flush_session(session)
            self.server.close(close_connections=True)
            await self.server.wait_closed()
