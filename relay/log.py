"""The change log in PostgreSQL: ticks, and the net changes between them.

Queries of ``relay/sql/v2_objects.sql``'s tables, run by the relay's role (the
log's owner). Rows become the core's types right here: positions, ``Change``
and ``TableReset``; no psycopg type goes further.

``NET_CHANGES`` reads the batches of a range of ticks, as PgQ reads one: the
changes of tick N are those of the transactions that its snapshot sees as
committed and tick N-1's does not. Transactions in progress at tick N-1 are
looked up by id (its snapshot lists them), the others by the range of ids
between the two snapshots, so a transaction left open for an hour makes no
batch scan an hour of log. Per tick, transaction and row, only the net change
is returned (``relay.core.changes.net``): its first operation and row before,
its last operation and row after, at the position of its first log row.
"""

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
import psycopg
from psycopg.types.string import TextLoader

from relay.core.changes import LoggedBroadcast, LoggedChange
from relay.core.positions import Position
from relay.core.revocations import Revocation
from relay.core.tables import Table
from relay.core.types import UserId

NET_CHANGES = """
WITH pairs AS (
    SELECT t.id AS tick, t.snapshot AS cur, lag(t.snapshot) OVER (ORDER BY t.id) AS prev
      FROM relay.ticks t
     WHERE t.id BETWEEN %(after)s AND %(upto)s
), events AS (
    SELECT p.tick, c.*
      FROM pairs p
      CROSS JOIN LATERAL (
        SELECT c.* FROM relay.changes c
         WHERE (c.xid >= pg_snapshot_xmax(p.prev) AND c.xid < pg_snapshot_xmax(p.cur)
                OR c.xid = ANY (ARRAY(SELECT pg_snapshot_xip(p.prev))))
           AND pg_visible_in_snapshot(c.xid, p.cur)
           AND NOT pg_visible_in_snapshot(c.xid, p.prev)
      ) c
     WHERE p.prev IS NOT NULL AND (%(rel)s::oid IS NULL OR c.rel = %(rel)s::oid)
), rows_of_a_transaction AS (
    SELECT e.*,
           first_value(e.seq) OVER w AS first_seq,
           first_value(e.op) OVER w AS first_op,
           first_value(e.old) OVER w AS first_old,
           first_value(COALESCE(e.old_parents, e.parents)) OVER w AS first_old_parents,
           row_number() OVER w AS nth,
           count(*) OVER (w ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING) AS rows
      FROM events e
    WINDOW w AS (PARTITION BY e.tick, e.xid, e.rel, e.key ORDER BY e.seq)
)
SELECT tick, first_seq, rel, first_op, op, first_old::text, new::text,
       first_old_parents::text, parents::text, xid::text,
       to_json(at) #>> '{}', extract(epoch FROM at)::float8
  FROM rows_of_a_transaction
 WHERE nth = rows AND (tick, first_seq) > (%(since_tick)s, %(since_seq)s)
 ORDER BY tick, first_seq
"""

NET_CHANGES_PAGE = NET_CHANGES + " LIMIT %(limit)s"

# Entries of the log, in order: a change, a revocation (relay.revoke), a
# broadcast (relay.broadcast), or None for a table the relay does not know
# (published after it last loaded the list; skipped).
Entry = tuple[Position, LoggedChange | Revocation | LoggedBroadcast | None]


@dataclass(frozen=True)
class Head:
    log_id: str
    newest_tick: int
    oldest_tick: int


def text_json(conn: psycopg.AsyncConnection[Any]) -> None:
    """Rows of json columns arrive as text: the core reads them (orjson)."""
    conn.adapters.register_loader("json", TextLoader)


async def head(conn: psycopg.AsyncConnection[Any]) -> Head:
    cursor = await conn.execute(
        "SELECT (SELECT id FROM relay.log), max(id), min(id) FROM relay.ticks"
    )
    row = await cursor.fetchone()
    assert row is not None
    return Head(str(row[0]), int(row[1]), int(row[2]))


async def tick(conn: psycopg.AsyncConnection[Any]) -> int:
    """Take a tick if the log may have news (relay.tick()); the newest tick's id."""
    cursor = await conn.execute("SELECT relay.tick()")
    row = await cursor.fetchone()
    assert row is not None
    return int(row[0])


async def read(
    conn: psycopg.AsyncConnection[Any],
    after_tick: int,
    upto_tick: int,
    since: Position,
    tables: Mapping[int, Table],
    table: Table | None = None,
    chunk: int = 2000,
) -> AsyncIterator[list[Entry]]:
    """The net changes of ticks (after_tick, upto_tick] after position ``since``,
    in order, ``chunk`` at a time; of ``table`` only, if given.

    The first ``chunk`` in one round trip (a prepared query with a limit: most
    reads are that small, and each round trip to a busy server costs more than
    the rows); what a larger batch holds beyond it, through a cursor, which
    reads it in one scan however large it is (a bulk transaction)."""
    params = {
        "after": after_tick,
        "upto": upto_tick,
        "rel": table.oid if table is not None else None,
        "since_tick": since.tick,
        "since_seq": since.seq,
    }
    cursor = await conn.execute(NET_CHANGES_PAGE, {**params, "limit": chunk}, prepare=True)
    rows = await cursor.fetchall()
    if rows:
        yield [entry(row, tables) for row in rows]
    if len(rows) < chunk:
        return
    last_tick, last_seq = rows[-1][0], rows[-1][1]
    params.update(since_tick=last_tick, since_seq=last_seq)
    async with conn.transaction(), conn.cursor(name="relay_net_changes") as cursor:
        await cursor.execute(NET_CHANGES, params)
        while rows := await cursor.fetchmany(chunk):
            yield [entry(row, tables) for row in rows]
            if len(rows) < chunk:
                return


def entry(row: tuple[Any, ...], tables: Mapping[int, Table]) -> Entry:
    """One row of ``NET_CHANGES``, in the core's types; None for a table not known."""
    tick, seq, rel, first_op, last_op, old, new, old_parents, parents, xid, at, epoch = row
    if last_op == "REVOKE":  # written by relay.revocation_at_commit() only
        marker = orjson.loads(new)
        return Position(tick, seq), Revocation(
            UserId(marker["subject"]), float(marker["revoked_at"]), marker["reason"]
        )
    if last_op == "BROADCAST":  # written by relay.broadcast() only
        marker = orjson.loads(new)
        return Position(tick, seq), LoggedBroadcast(
            marker["topic"], marker["event"], marker["payload"], bool(marker["private"])
        )
    known = tables.get(rel)
    if known is None:
        return Position(tick, seq), None
    return Position(tick, seq), LoggedChange(
        known.name, first_op, last_op, old, new, old_parents, parents, xid, at, epoch
    )


async def revocations(conn: psycopg.AsyncConnection[Any]) -> list[Revocation]:
    """The newest revocation of each subject (relay.revoke)."""
    cursor = await conn.execute(
        "SELECT subject, extract(epoch FROM revoked_at)::float8, reason FROM relay.revocations"
    )
    return [Revocation(UserId(s), float(at), reason) for s, at, reason in await cursor.fetchall()]


async def prune(
    conn: psycopg.AsyncConnection[Any], max_age: float, max_bytes: int, batch: int = 10_000
) -> int:
    """Delete what the log no longer keeps, one batch (relay.prune); rows deleted."""
    cursor = await conn.execute(
        "SELECT relay.prune(make_interval(secs => %s), %s, %s)", (max_age, max_bytes, batch)
    )
    row = await cursor.fetchone()
    return int(row[0]) if row else 0


async def size(conn: psycopg.AsyncConnection[Any]) -> int:
    """Bytes of the log on disk, with its indexes and TOAST."""
    cursor = await conn.execute("SELECT pg_total_relation_size('relay.changes')")
    row = await cursor.fetchone()
    return int(row[0]) if row else 0
