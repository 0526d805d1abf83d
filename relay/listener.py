"""The PostgreSQL side: LISTEN, in commit order, into the fan-out.

One connection LISTENs to ``relay_changes`` and ``relay_control``. Its intake
only appends notifications to a bounded queue, so reading from PostgreSQL never
waits on fan-out; a processing task drains the queue in order, turns each
payload into our own types right away (a psycopg ``Notify`` goes no further),
reads large changes by reference on a second connection, and hands everything
to ``Fanout``. After each batch it calls ``flush`` so the shell writes the
frames.

The listener reconnects with exponential backoff and jitter. Changes committed
while it was away are lost to it: after a reconnect every subscriber is told
``gap``. If the intake queue overflows (fan-out far behind), the backlog is
dropped and every subscriber is told ``gap`` too.
"""

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from relay.core import changes, tables
from relay.core.changes import Change, LargeChangeRef, TableReset
from relay.core.errors import ChangeError, first_line
from relay.core.fanout import Fanout

logger = logging.getLogger("relay.listener")

CHANGES_CHANNEL = "relay_changes"
CONTROL_CHANNEL = "relay_control"
BATCH = 512  # changes dispatched between two yields to the event loop

# libpq keepalives: notice a dead server or network within about half a minute.
CONNECT_OPTIONS: dict[str, Any] = {
    "autocommit": True,
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "application_name": "nexus-relay",
}


@dataclass(frozen=True, slots=True)
class _Reconnected:
    """Marker in the intake queue: what came before is from the previous connection,
    or (``overflow``) was dropped because fan-out fell too far behind."""

    overflow: bool = False


@dataclass(frozen=True, slots=True)
class _Received:
    channel: str
    payload: str


class Listener:
    def __init__(
        self,
        database_url: str,
        fanout: Fanout,
        flush: Callable[[], None],
        *,
        intake_limit: int = 100_000,
        large_change_retention: float = 3600.0,
    ) -> None:
        self.database_url = database_url
        self.fanout = fanout
        self.flush = flush
        self.intake_limit = intake_limit
        self.large_change_retention = large_change_retention
        self.observe_latency: Callable[[float], None] | None = None  # set by the metrics
        self.intake: deque[_Received | _Reconnected] = deque()
        self._wake = asyncio.Event()
        self.first_load = asyncio.Event()  # set once the published tables are known
        self.processing = False  # while process() runs: readiness depends on it
        self.connected = False
        self.reconnects = 0
        self.queue_usage: float | None = None
        self.backend_pid: int | None = None
        self._reader: psycopg.AsyncConnection[dict[str, Any]] | None = None
        self._reader_lock = asyncio.Lock()  # one reconnect at a time: none leaked

    # --- Intake ----------------------------------------------------------------

    async def listen(self) -> None:
        """Hold the LISTEN connection, forever, reconnecting with backoff."""
        attempt = 0
        first = True
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(self.database_url, **CONNECT_OPTIONS)
            except psycopg.OperationalError as exc:
                attempt += 1
                delay = _backoff(attempt, 0.1)
                logger.warning(
                    "cannot connect to PostgreSQL (%s); retrying in %.1f s", first_line(exc), delay
                )
                await asyncio.sleep(delay)
                continue
            try:
                async with conn:
                    await conn.execute(f"LISTEN {CHANGES_CHANNEL}")
                    await conn.execute(f"LISTEN {CONTROL_CHANNEL}")
                    # Loaded after LISTEN: a publish in between is also notified.
                    await self._load_tables(conn)
                    self.backend_pid = conn.info.backend_pid
                    if not first:
                        self._enqueue(_Reconnected())
                    first = False
                    attempt = 0
                    self.connected = True
                    logger.info("listening on PostgreSQL (backend pid %s)", self.backend_pid)
                    async for notify in conn.notifies():
                        self._enqueue(_Received(notify.channel, notify.payload))
            except psycopg.Error as exc:
                logger.warning("lost the LISTEN connection: %s", first_line(exc))
            finally:
                if self.connected:
                    self.reconnects += 1
                self.connected = False
            attempt += 1
            await asyncio.sleep(_backoff(attempt, 0.05))

    def _enqueue(self, item: "_Received | _Reconnected") -> None:
        if len(self.intake) >= self.intake_limit:
            # Fan-out is far behind: drop the backlog rather than memory, and
            # say so. The marker makes every subscriber re-fetch.
            self.intake.clear()
            self.intake.append(_Reconnected(overflow=True))
            logger.error(
                "intake queue over %d notifications: dropped, subscribers told gap",
                self.intake_limit,
            )
        self.intake.append(item)
        self._wake.set()

    # --- Processing --------------------------------------------------------------

    async def process(self) -> None:
        """Drain the intake in order, forever.

        A change that fails is logged with its traceback, counted, and told to
        its subscribers as a gap; processing goes on. Anything else that
        escapes ends the task, and the relay with it (it runs supervised).
        """
        self.processing = True
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                handled = 0
                while self.intake:
                    await self._handle(self.intake.popleft())
                    handled += 1
                    if handled % BATCH == 0:
                        self.flush()
                        await asyncio.sleep(0)
                self.flush()
        finally:
            self.processing = False

    async def _handle(self, item: "_Received | _Reconnected") -> None:
        if isinstance(item, _Reconnected):
            self.fanout.gap_all("overflow" if item.overflow else "listener_reconnected")
            if item.overflow:
                # The dropped backlog may have held a publish or unpublish.
                await self.reload_tables()
            return
        if item.channel == CONTROL_CHANNEL:
            await self.reload_tables()
            return
        try:
            notification = changes.decode(item.payload)
            if isinstance(notification, LargeChangeRef):
                resolved = await self._resolve(notification)
                if resolved is None:
                    return
                notification = resolved
        except ChangeError as exc:
            logger.error("unreadable change on %s: %s", CHANGES_CHANNEL, exc)
            self.fanout.gap_all("unreadable_change")
            return
        try:
            self._dispatch(notification)
        except Exception:  # a bug must cost this change, not the stream
            table = notification.table if isinstance(notification, Change | TableReset) else None
            logger.exception("could not process a change of %s; its subscribers told gap", table)
            self.fanout.stats.errors["change"] += 1
            if table is None:
                self.fanout.gap_all("relay_error")
            else:
                self.fanout.gap_table(table, "relay_error")

    def _dispatch(self, notification: changes.Notification) -> None:
        if isinstance(notification, Change):
            self.fanout.ingest(notification)
            if self.observe_latency is not None:
                self.observe_latency(_age(notification.timestamp))
        elif isinstance(notification, TableReset):
            self.fanout.reset_table(notification)

    async def _resolve(self, ref: LargeChangeRef) -> changes.Notification | None:
        try:
            reader = await self._reader_connection()
            cursor = await reader.execute(
                "SELECT payload FROM relay.large_changes WHERE id = %s", (ref.id,)
            )
            row = await cursor.fetchone()
        except psycopg.Error as exc:
            logger.error("cannot read large change %s: %s", ref.id, first_line(exc))
            row = None
        if row is None:
            if ref.table:
                self.fanout.gap_table(ref.table, "large_change_unavailable")
            else:
                self.fanout.gap_all("large_change_unavailable")
            return None
        return changes.decode(row["payload"])

    async def _reader_connection(self) -> psycopg.AsyncConnection[dict[str, Any]]:
        async with self._reader_lock:
            if self._reader is None or self._reader.closed or self._reader.broken:
                self._reader = await psycopg.AsyncConnection.connect(
                    self.database_url, row_factory=dict_row, **CONNECT_OPTIONS
                )
            return self._reader

    async def reload_tables(self) -> None:
        try:
            await self._load_tables(await self._reader_connection())
        except psycopg.Error as exc:
            logger.error("cannot reload the published tables: %s", first_line(exc))

    async def _load_tables(self, conn: psycopg.AsyncConnection[Any]) -> None:
        async with conn.cursor(row_factory=dict_row) as cursor:
            await cursor.execute("SELECT * FROM relay.published_tables")
            rows = await cursor.fetchall()
        problems = self.fanout.set_tables(tables.from_rows(rows))
        for problem in problems:
            logger.error("%s: subscriptions to this table are refused", problem)
        self.first_load.set()
        logger.info("published tables: %s", ", ".join(sorted(self.fanout.tables)) or "none")

    # --- Housekeeping ----------------------------------------------------------------

    async def housekeeping(self, interval: float = 5.0) -> None:
        """Every few seconds: read the notification queue's usage; now and then,
        delete large changes older than the retention."""
        last_cleanup = 0.0
        while True:
            try:
                reader = await self._reader_connection()
                cursor = await reader.execute("SELECT pg_notification_queue_usage() AS usage")
                row = await cursor.fetchone()
                self.queue_usage = float(row["usage"]) if row else None
                if time.monotonic() - last_cleanup > 60:
                    last_cleanup = time.monotonic()
                    await reader.execute(
                        "DELETE FROM relay.large_changes"
                        " WHERE created_at < now() - make_interval(secs => %s)",
                        (self.large_change_retention,),
                    )
            except psycopg.Error as exc:
                logger.warning("housekeeping query failed: %s", first_line(exc))
                self.queue_usage = None
            await asyncio.sleep(interval)

    async def close(self) -> None:
        if self._reader is not None:
            await self._reader.close()


def _age(timestamp: str) -> float:
    try:
        return max(time.time() - datetime.fromisoformat(timestamp).timestamp(), 0.0)
    except ValueError:
        return 0.0


def _backoff(attempt: int, base: float) -> float:
    """Seconds before retry ``attempt``: doubling from ``base``, at most 10, with jitter."""
    return min(10.0, base * 2.0**attempt) * random.uniform(0.5, 1.0)  # noqa: S311
