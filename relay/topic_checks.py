"""A topic rule's SQL check, run in PostgreSQL as the user, under RLS.

The shell of ``relay.core.topic_rules``: ``decide`` says which check a join
needs, ``confirm`` runs it. As PostgREST and Supabase run a user's query
(Supabase: ``Realtime.Tenants.Authorization.set_conn_config``), in one
transaction that is always rolled back:

- ``SET TRANSACTION READ ONLY``: a check reads, it never writes;
- ``SET LOCAL statement_timeout``: a slow check is cancelled, and refused;
- the claims in ``request.jwt.claims`` (and ``sub``, ``role`` in the older
  ``request.jwt.claim.*``, the topic in ``realtime.topic``), which the
  database's policies read (migration 0004's ``jwt_nexus_claim``);
- ``SET LOCAL ROLE`` to the token's role, one of ``[roles] policy``, so that
  the tables' RLS policies apply;
- then the rule's query, its parameters bound.

The user is admitted iff the query returns a row. Any error refuses: the
client is told only that it may not join, the operator reads the cause in
the log (``relay.topics``, WARNING).
"""

import asyncio
import logging
from typing import Any

import psycopg
from psycopg import sql

from relay.core.errors import first_line
from relay.core.topic_rules import Admitted, Check, Refused, refused

logger = logging.getLogger("relay.topics")

# Long enough for a primary-key lookup under a policy; short, since a join waits for it.
DEFAULT_TIMEOUT_MS = 1000

_SET_CLAIMS = """
    SELECT set_config('request.jwt.claims', %(claims)s, true),
           set_config('request.jwt.claim.sub', %(sub)s, true),
           set_config('request.jwt.claim.role', %(role)s, true),
           set_config('realtime.topic', %(topic)s, true)
"""


async def confirm(
    conn: psycopg.AsyncConnection[Any],
    admitted: Admitted,
    *,
    timeout_ms: int = DEFAULT_TIMEOUT_MS,
) -> Admitted | Refused:
    """``admitted`` if it needs no check or its check returns a row; else ``Refused``.

    ``conn`` is best idle, in autocommit. In a transaction, the check runs in a
    savepoint, rolled back: the transaction goes on as it was, whatever
    happens, unless the connection is broken (``conn.broken``).
    """
    check = admitted.check
    if check is None:
        return admitted
    try:
        found = await run(conn, check, timeout_ms=timeout_ms)
    except psycopg.Error as exc:
        logger.warning(
            "topic check failed, join refused: %s",
            first_line(exc),
            extra={"fields": _fields(check) | {"sqlstate": exc.sqlstate}},
        )
        return refused(check.topic, "check_error")
    if not found:
        logger.debug("topic check returned no row", extra={"fields": _fields(check)})
        return refused(check.topic, "check")
    return admitted


async def run(
    conn: psycopg.AsyncConnection[Any], check: Check, *, timeout_ms: int = DEFAULT_TIMEOUT_MS
) -> bool:
    """Whether ``check`` returns a row, run as its user; raises ``psycopg.Error``."""
    async with conn.transaction(force_rollback=True):
        # Read-only from here on; in a savepoint too, until it is rolled back.
        await conn.execute("SET TRANSACTION READ ONLY")
        await conn.execute(
            sql.SQL("SET LOCAL statement_timeout = {}").format(sql.Literal(int(timeout_ms)))
        )
        await conn.execute(
            _SET_CLAIMS,
            {
                "claims": check.claims,
                "sub": check.subject,
                "role": check.role,
                "topic": check.topic,
            },
        )
        await conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(check.role)))
        cursor = await conn.execute(check.text, dict(check.params))
        return await cursor.fetchone() is not None


def _fields(check: Check) -> dict[str, Any]:
    return {"topic": check.topic, "rule": check.pattern, "user": check.subject}


class TopicChecks:
    """The relay's connection for topic checks: opened at the first check, again
    after it broke; one check at a time (a check is a primary-key lookup, at
    a join). Without a database URL, or when PostgreSQL cannot be reached, a
    join that needs a check is refused (``check_error``): deny by default."""

    def __init__(self, database_url: str | None, timeout_ms: int = DEFAULT_TIMEOUT_MS) -> None:
        self.database_url = database_url
        self.timeout_ms = timeout_ms
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._lock = asyncio.Lock()

    async def confirm(self, admitted: Admitted) -> Admitted | Refused:
        if admitted.check is None:
            return admitted
        async with self._lock:
            try:
                conn = await self._connection()
            except psycopg.Error as exc:
                logger.warning("topic check not run, join refused: %s", first_line(exc))
                return refused(admitted.topic, "check_error")
            result = await confirm(conn, admitted, timeout_ms=self.timeout_ms)
            if conn.broken:
                self._conn = None
            return result

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        if self.database_url is None:
            raise psycopg.OperationalError("no database to run topic checks on")
        if self._conn is None or self._conn.closed:
            self._conn = await psycopg.AsyncConnection.connect(
                self.database_url, autocommit=True, application_name="nexus-relay topic checks"
            )
        return self._conn

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None
