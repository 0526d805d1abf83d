"""The PostgreSQL side: the doorbell by LISTEN, the changes by reading the log.

Three connections, each a task of the relay's:

- ``listen``: LISTENs to ``relay_wake`` (the doorbell: no payload) and
  ``relay_control`` (``relay.publish``/``unpublish`` ran). It only wakes the
  reader: a relay that stops reading fills no queue with data, and a writer
  never waits on it.
- ``process``: the reader. Woken by the doorbell, or every ``poll_interval``
  without it (a transaction that did not ring), it takes a tick
  (``relay.tick()``) and reads the net changes since its last tick, in order,
  into the fan-out; then the replays that resuming clients asked for. While
  writers write it reads every ``busy_poll`` and silences the bell (see
  ``process``). Lost connection: it reconnects with backoff and reads on from
  its last tick, so nothing is lost while the log keeps it.
- ``housekeeping``: prunes the log (``relay.prune``), and measures it.
"""

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg.rows import dict_row

from relay import catalog, log
from relay.core import tables
from relay.core.changes import LoggedBroadcast, LoggedChange
from relay.core.errors import ClientError, first_line
from relay.core.fanout import Fanout
from relay.core.policy import Problem
from relay.core.positions import Position
from relay.core.replays import Replay
from relay.core.revocations import Revocation

logger = logging.getLogger("relay.reader")

# Within a read, frames are written at least this often (seconds).
FLUSH_EVERY = 0.005

WAKE_CHANNEL = "relay_wake"
CONTROL_CHANNEL = "relay_control"

# libpq keepalives: notice a dead server or network within about half a minute.
CONNECT_OPTIONS: dict[str, Any] = {
    "autocommit": True,
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "application_name": "nexus-relay",
    # relay.tick() needs each statement to see what committed before it. The
    # log's queries are planned for their values: a generic plan of a range of
    # xids scans the whole log, and JIT compiling them costs more than them.
    "options": (
        "-c default_transaction_isolation=read\\ committed"
        " -c plan_cache_mode=force_custom_plan -c jit=off"
    ),
}


class LogReader:
    def __init__(
        self,
        database_url: str,
        fanout: Fanout,
        flush: Callable[[bool], None],
        *,
        poll_interval: float = 0.25,
        busy_poll: float = 0.01,
        busy_reads: int = 10,
        retention: float = 3600.0,
        max_log_bytes: int = 1024**3,
    ) -> None:
        self.database_url = database_url
        self.fanout = fanout
        self.flush = flush
        self.poll_interval = poll_interval
        self.busy_poll = busy_poll
        self.busy_reads = busy_reads
        self.retention = retention
        self._problems: list[Problem] = []  # the policies' problems, as last logged
        self.max_log_bytes = max_log_bytes
        self.observe_latency: Callable[[float], None] | None = None  # set by the metrics
        self.first_load = asyncio.Event()  # set once the log and the published tables are known
        self.processing = False  # while process() runs: readiness depends on it
        self.connected = False  # the reader's connection
        self.listening = False  # the doorbell's
        self.reconnects = 0
        self.last_tick = 0
        self.reads = 0
        self.log_bytes: int | None = None
        self.oldest_tick_at: float | None = None
        self.queue_usage: float | None = None
        self._wake = asyncio.Event()
        self._reload = False
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._holding_bell = False  # the doorbell's lock, in share mode, on _conn

    # --- The doorbell ----------------------------------------------------------------

    async def listen(self) -> None:
        """Hold the LISTEN connection, forever, reconnecting with backoff."""
        attempt = 0
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.database_url, **CONNECT_OPTIONS
                ) as conn:
                    await conn.execute(f"LISTEN {WAKE_CHANNEL}")
                    await conn.execute(f"LISTEN {CONTROL_CHANNEL}")
                    self.listening = True
                    attempt = 0
                    self._reload = True  # a publish may have gone unheard meanwhile
                    self._wake.set()
                    async for notify in conn.notifies():
                        if notify.channel == CONTROL_CHANNEL:
                            self._reload = True
                        self._wake.set()
            except psycopg.Error as exc:
                logger.warning("lost the LISTEN connection: %s", first_line(exc))
            finally:
                self.listening = False
            attempt += 1
            await asyncio.sleep(_backoff(attempt, 0.1))

    # --- Reading --------------------------------------------------------------------------

    async def process(self) -> None:
        """Read the log, in order, forever.

        Busy (a read found changes), it reads again ``busy_poll`` after the
        last read began (at once, when reading took longer) and holds the
        doorbell's lock in share mode, so that writers do not ring: the bell
        would only cost them. After ``busy_reads`` reads without
        news it lets go, reads once more (a writer may have skipped the bell
        just before), and waits for the bell or ``poll_interval``.

        A change that fails is logged with its traceback, counted, and told to
        its subscribers as a gap; reading goes on. Anything else that escapes
        ends the task, and the relay with it (it runs supervised).
        """
        self.processing = True
        try:
            quiet = self.busy_reads  # idle at first: the bell wakes it
            wait = 0.0
            while True:
                if wait:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), wait)
                self._wake.clear()
                began = time.monotonic()
                if await self._read_or_reconnect():
                    quiet = 0
                    await self._hold_bell(True)
                elif quiet < self.busy_reads:
                    quiet += 1
                    if quiet == self.busy_reads:
                        await self._hold_bell(False)
                        wait = 0.0
                        continue
                if quiet < self.busy_reads:  # busy: a read every busy_poll, or at once if behind
                    wait = max(self.busy_poll - (time.monotonic() - began), 0.0)
                else:
                    wait = self.poll_interval
        finally:
            self.processing = False

    async def _hold_bell(self, hold: bool) -> None:
        """Hold (or let go of) the doorbell's lock in share mode: held, writers do not ring."""
        if hold == self._holding_bell or self._conn is None:
            return
        try:
            if hold:
                cursor = await self._conn.execute(
                    "SELECT pg_try_advisory_lock_shared(1380273242, 0)"
                )
                row = await cursor.fetchone()
                self._holding_bell = bool(row and row[0])
            else:
                await self._conn.execute("SELECT pg_advisory_unlock_shared(1380273242, 0)")
                self._holding_bell = False
        except psycopg.Error as exc:
            logger.warning("lost the reader's connection: %s", first_line(exc))
            await self._close()

    async def _read_or_reconnect(self) -> bool:
        """One read of the log; whether it found changes. A lost connection is
        taken again, with backoff, before it returns."""
        try:
            conn = await self._connection()
            if self._reload:
                self._reload = False
                await self._load_tables(conn)
            found = await self._read(conn)
            await self._replay(conn)
            return found
        except psycopg.Error as exc:
            logger.warning("lost the reader's connection: %s", first_line(exc))
            await self._close()
            return False
        finally:
            self.flush(True)  # the batch is over: with its gaps

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        attempt = 0
        while self._conn is None:
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
            log.text_json(conn)
            try:
                await self._start_from(conn)
            except BaseException:
                await conn.close()  # not left open when the log cannot be read (no layer 2?)
                raise
            self._conn = conn
            self.connected = True
            logger.info(
                "reading the log %s from tick %s (backend pid %s)",
                self.fanout.stream.log_id,
                self.last_tick,
                conn.info.backend_pid,
            )
        return self._conn

    async def _start_from(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Where to read from: at the start, a tick of its own (what committed
        before the relay started is not news); after a lost connection, where
        it was, unless the log no longer has it."""
        if not self.first_load.is_set():
            await log.tick(conn)
        head = await log.head(conn)
        if not self.first_load.is_set():
            self.fanout.begin(head.log_id, Position.after(head.newest_tick))
            self.last_tick = head.newest_tick
            await self._load_tables(conn)
            self.fanout.load_revocations(await log.revocations(conn))
            self.first_load.set()
            return
        self.reconnects += 1
        if head.log_id != self.fanout.stream.log_id or head.oldest_tick > self.last_tick:
            reason = (
                "log_changed" if head.log_id != self.fanout.stream.log_id else "history_exceeded"
            )
            logger.error("the log moved on without this relay (%s): subscribers told gap", reason)
            self.fanout.gap_all(reason)
            self.fanout.begin(head.log_id, Position.after(head.newest_tick))
            self.last_tick = head.newest_tick
        await self._load_tables(conn)
        self.fanout.load_revocations(await log.revocations(conn))

    async def _read(self, conn: psycopg.AsyncConnection[Any]) -> bool:
        newest = await log.tick(conn)
        if newest <= self.last_tick:
            return False
        self.reads += 1
        # After what the fan-out has: a read cut short (the connection lost
        # after some changes were dispatched) goes on after the last of them.
        since = max(Position.after(self.last_tick), self.fanout.stream.head)
        found = False
        flushed = time.monotonic()
        async for entries in log.read(
            conn, self.last_tick, newest, since, self.fanout.tables_by_oid
        ):
            found = True
            for n, (position, entry) in enumerate(entries, 1):
                self._dispatch(position, entry)
                # Frames leave every few milliseconds, not after a whole batch:
                # a batch of thousands of changes would hold the first ones back.
                if not n % 32 and time.monotonic() - flushed > FLUSH_EVERY:
                    self.flush(False)
                    flushed = time.monotonic()
            self.flush(False)
            flushed = time.monotonic()
            await asyncio.sleep(0)
        self.fanout.end_tick(newest)
        self.last_tick = newest
        return found

    def _dispatch(
        self, position: Position, entry: LoggedChange | Revocation | LoggedBroadcast | None
    ) -> None:
        if entry is None:
            return
        if isinstance(entry, LoggedBroadcast):
            try:
                self.fanout.broadcast_logged(entry, position, time.monotonic())
            except ClientError as exc:  # relay.broadcast checks the same limits first
                logger.warning("a broadcast from the log to %r refused: %s", entry.topic, exc)
            except Exception:  # a bug must cost this broadcast, not the stream
                logger.exception("could not deliver a broadcast from the log to %r", entry.topic)
                self.fanout.stats.errors["broadcast"] += 1
            return
        if isinstance(entry, Revocation):
            closed = self.fanout.revoke(entry, position)
            logger.info(
                "revoked the tokens of %s (%s): %d connection(s) closed",
                entry.subject,
                entry.reason or "no reason given",
                closed,
            )
            return
        try:
            self.fanout.take(entry, position)
            if self.observe_latency is not None:
                self.observe_latency(max(time.time() - entry.committed_at, 0.0))
        except Exception:  # a bug must cost this change, not the stream
            logger.exception(
                "could not process a change of %s; its subscribers told gap", entry.table
            )
            self.fanout.stats.errors["change"] += 1
            self.fanout.gap_table(entry.table, "relay_error")

    async def _replay(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Read the log for the resumes that memory could not serve, a table at a time."""
        requests = self.fanout.take_replay_requests()
        if not requests:
            return
        oldest = (await log.head(conn)).oldest_tick
        by_table: dict[str, list[Replay]] = {}
        for replay in requests:
            if replay.since < Position.after(oldest):
                self.fanout.replay_read(replay, lost="history_exceeded")
            else:
                by_table.setdefault(replay.subscription.table.name, []).append(replay)
        for replays in by_table.values():
            table = replays[0].subscription.table
            since = min(r.since for r in replays)
            upto = max(r.upto for r in replays)
            async for entries in log.read(
                conn, since.tick - 1, upto.tick, since, self.fanout.tables_by_oid, table
            ):
                # Of this table only: no revocation or broadcast among them.
                changes = [(p, e) for p, e in entries if isinstance(e, LoggedChange)]
                for replay in replays:
                    self.fanout.replay_from_log(replay, changes)
            for replay in replays:
                self.fanout.replay_read(replay)

    async def _load_tables(self, conn: psycopg.AsyncConnection[Any]) -> None:
        async with conn.cursor(row_factory=dict_row) as cursor:
            await cursor.execute(catalog.PUBLISHED_TABLES)
            rows = await cursor.fetchall()
            await cursor.execute(catalog.PARENTS)
            parents = await cursor.fetchall()
        problems = self.fanout.set_tables(tables.from_rows(rows), catalog.parent_columns(parents))
        if problems != self._problems:  # tables are read again after each publish, reconnect
            catalog.log_problems(logger, problems)
            self._problems = problems
        logger.info("published tables: %s", ", ".join(sorted(self.fanout.tables)) or "none")

    @property
    def backend_pid(self) -> int | None:
        """The reader's backend in pg_stat_activity, while it is connected."""
        return self._conn.info.backend_pid if self._conn is not None else None

    async def _close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            self.connected = False
            self._holding_bell = False  # a session's lock goes with it
            await conn.close()

    # --- Housekeeping ------------------------------------------------------------------

    async def housekeeping(self, interval: float = 5.0, prune_every: float = 30.0) -> None:
        """Every few seconds, measure the log and the notification queue; now and
        then, prune the log (one relay at a time: the others skip)."""
        last_prune = 0.0
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.database_url, **CONNECT_OPTIONS
                ) as conn:
                    while True:
                        if time.monotonic() - last_prune > prune_every:
                            last_prune = time.monotonic()
                            await self._prune(conn)
                        await self._measure(conn)
                        await asyncio.sleep(interval)
            except psycopg.Error as exc:
                logger.warning("housekeeping failed: %s", first_line(exc))
                self.queue_usage = self.log_bytes = None
            await asyncio.sleep(interval)

    async def _prune(self, conn: psycopg.AsyncConnection[Any]) -> None:
        pruned = 0
        while deleted := await log.prune(conn, self.retention, self.max_log_bytes):
            pruned += deleted
            await asyncio.sleep(0.05)  # batches, with room for the writers in between
        if pruned:
            logger.info("pruned %d changes from the log", pruned)

    async def _measure(self, conn: psycopg.AsyncConnection[Any]) -> None:
        cursor = await conn.execute(
            "SELECT pg_notification_queue_usage(), pg_total_relation_size('relay.changes'),"
            " (SELECT extract(epoch FROM min(at)) FROM relay.ticks)"
        )
        row = await cursor.fetchone()
        assert row is not None
        self.queue_usage, self.log_bytes = float(row[0]), int(row[1])
        self.oldest_tick_at = float(row[2]) if row[2] is not None else None

    async def close(self) -> None:
        await self._close()


def _backoff(attempt: int, base: float) -> float:
    """Seconds before retry ``attempt``: doubling from ``base``, at most 10, with jitter."""
    return min(10.0, base * 2.0**attempt) * random.uniform(0.5, 1.0)  # noqa: S311
