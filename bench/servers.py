"""The two comparison servers, speaking just enough of protocol v1 for the load clients.

    python -m bench.servers ceiling  --port P --database-url URL
    python -m bench.servers baseline --port P --database-url URL

Both accept the same connections as the relay (``auth``, then ``subscribe`` to
tables; ``ready`` and ``subscribed`` replies), read the same change log as the
relay reads it (``relay/log.py``: a tick, then the net changes since the last,
every 10 ms, holding the doorbell's lock as a busy relay does), fed by the
same writers, and send the same change frames (with ``commit_timestamp``) to
the same subscribers, with ``websockets`` on uvloop like the relay.

- **ceiling**: the least work that delivers this traffic. The token is read
  without verification; each change is decoded, routed by a dictionary
  lookup (payments: the users of ``from_id`` and ``to_id``; notifications:
  the user, or the tenant's users when ``user_id`` is null), encoded once and
  sent with ``websockets.broadcast``. No policy, no index, no history, no
  per-subscriber decision.
- **baseline** (Supabase-style): the token is verified (HS256); each
  subscription is a row of ``bench_walrus.subscription`` (its claims), as in
  Supabase's ``realtime.subscription``; each change is authorized by
  ``bench_walrus.apply_rls``, which runs one query per subscriber of the table
  as that subscriber (``role`` = authenticated, ``request.jwt.claims`` = its
  claims, ``SELECT 1 FROM table WHERE id = $1`` under RLS), in commit order,
  one change at a time, as WALRUS does; the frame goes to the subscribers
  whose query returned the row.

stdin takes JSON-line commands: ``stats`` and ``reset`` (drop the backlog of
changes not yet processed: the baseline falls behind by design).
"""

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
import time
from collections import deque
from typing import Any

import orjson
import psycopg
from psycopg.rows import dict_row
from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from bench.common import JWT_AUDIENCE, JWT_SECRET, NOTIFICATIONS, PAYMENTS
from relay import catalog
from relay import log as changelog
from relay.core import tables
from relay.core.changes import Change, LoggedChange
from relay.core.positions import Position

SUBPROTOCOL = "nexus-relay.v1"


# The connections subscribed under one key (tenant or user; None when the token has none).
Members = dict[str | None, set[ServerConnection]]


def qualified(name: str) -> str:
    return name if "." in name else f"public.{name}"


async def send(ws: ServerConnection, message: dict[str, Any]) -> None:
    await ws.send(orjson.dumps(message).decode())


class Server:
    def __init__(self, mode: str, database_url: str) -> None:
        self.mode = mode
        self.database_url = database_url
        self.sent = 0
        self.changes = 0
        self.dropped = 0
        self.connections = 0
        self.intake: deque[Change] = deque()
        self.wake = asyncio.Event()
        # ceiling routes
        self.pay_by_tenant: Members = {}
        self.notif_by_tenant: Members = {}
        self.notif_by_user: Members = {}
        # baseline: subscription id -> connection
        self.by_subscription: dict[int, ServerConnection] = {}
        self.db: psycopg.AsyncConnection[Any] | None = None  # baseline: apply_rls
        self.registry: psycopg.AsyncConnection[Any] | None = None  # baseline: subscriptions

    # --- Connections ---------------------------------------------------------------

    async def handle(self, ws: ServerConnection) -> None:
        self.connections += 1
        routes: list[tuple[Members, str | None]] = []
        subscriptions: list[int] = []
        try:
            claims = await self.authenticate(ws)
            if claims is None:
                return
            async for message in ws:
                frame = orjson.loads(message)
                if frame.get("type") != "subscribe":
                    continue
                table = qualified(str(frame.get("table")))
                if self.mode == "ceiling":
                    sid = self.route(ws, table, claims, routes)
                else:
                    sid = await self.register(ws, table, claims)
                    subscriptions.append(sid)
                await send(
                    ws,
                    {
                        "type": "subscribed",
                        "ref": frame.get("ref"),
                        "id": f"s{sid}",
                        "table": table,
                    },
                )
        except ConnectionClosed:
            pass
        finally:
            self.connections -= 1
            await self.forget(ws, routes, subscriptions)

    async def authenticate(self, ws: ServerConnection) -> dict[str, Any] | None:
        """The claims of the first frame's token, answered with ``ready``; None for a bad
        token, answered with an error."""
        first = orjson.loads(await ws.recv())
        claims = self.claims(first.get("token", ""))
        if claims is None:
            await send(
                ws,
                {
                    "type": "error",
                    "ref": first.get("ref"),
                    "code": "unauthorized",
                    "message": "bad token",
                },
            )
            return None
        ready = {"type": "ready", "ref": first.get("ref"), "version": 1, "user": claims.get("sub")}
        await send(ws, ready)
        return claims

    def claims(self, token: str) -> dict[str, Any] | None:
        import jwt

        try:
            if self.mode == "ceiling":
                return dict(jwt.decode(token, options={"verify_signature": False}))
            return dict(jwt.decode(token, JWT_SECRET, algorithms=["HS256"], audience=JWT_AUDIENCE))
        except jwt.PyJWTError:
            return None

    def route(
        self,
        ws: ServerConnection,
        table: str,
        claims: dict[str, Any],
        routes: list[tuple[Members, str | None]],
    ) -> int:
        """Ceiling: file ``ws`` under its tenant (and user) for ``table``, and note where
        in ``routes``; the subscription's number."""
        meta = claims.get("app_metadata") or {}
        user: str | None = meta.get("user_id")
        tenant: str | None = meta.get("tenant_id")
        if table == PAYMENTS:
            self.pay_by_tenant.setdefault(tenant, set()).add(ws)
            routes.append((self.pay_by_tenant, tenant))
        elif table == NOTIFICATIONS:
            self.notif_by_tenant.setdefault(tenant, set()).add(ws)
            self.notif_by_user.setdefault(user, set()).add(ws)
            routes += [(self.notif_by_tenant, tenant), (self.notif_by_user, user)]
        return len(routes)

    async def register(self, ws: ServerConnection, table: str, claims: dict[str, Any]) -> int:
        """Baseline: a row of bench_walrus.subscription for ``ws``; its id."""
        assert self.registry is not None
        cursor = await self.registry.execute(
            "INSERT INTO bench_walrus.subscription (entity, claims)"
            " VALUES (%s::regclass, %s) RETURNING id",
            (table, json.dumps(claims)),
        )
        row = await cursor.fetchone()
        assert row is not None  # INSERT ... RETURNING
        sid = int(row[0])
        self.by_subscription[sid] = ws
        return sid

    async def forget(
        self,
        ws: ServerConnection,
        routes: list[tuple[Members, str | None]],
        subscriptions: list[int],
    ) -> None:
        """Undo ``route`` and ``register`` for a connection that closed."""
        for index, key in routes:
            members = index.get(key)
            if members is not None:
                members.discard(ws)
        for sid in subscriptions:
            self.by_subscription.pop(sid, None)
        if subscriptions and self.registry is not None:
            with contextlib.suppress(psycopg.Error):
                await self.registry.execute(
                    "DELETE FROM bench_walrus.subscription WHERE id = ANY(%s)", (subscriptions,)
                )

    # --- Changes ---------------------------------------------------------------------

    async def listen(self) -> None:
        """The change log, read every 10 ms as the relay reads it when busy."""
        async with await psycopg.AsyncConnection.connect(
            self.database_url,
            autocommit=True,
            application_name=f"bench-{self.mode}",
            options="-c plan_cache_mode=force_custom_plan -c jit=off",
        ) as conn:
            changelog.text_json(conn)
            await conn.execute("SELECT pg_advisory_lock_shared(1380273242, 0)")  # no bell
            async with conn.cursor(row_factory=dict_row) as cursor:
                await cursor.execute(catalog.PUBLISHED_TABLES)
                known = {t.oid: t for t in tables.from_rows(await cursor.fetchall()).values()}
            last = await changelog.tick(conn)
            while True:
                newest = await changelog.tick(conn)
                if newest > last:
                    since = Position.after(last)
                    async for entries in changelog.read(conn, last, newest, since, known):
                        for _, logged in entries:
                            if not isinstance(logged, LoggedChange):
                                continue  # a table not published, or a revocation
                            change = logged.read()
                            if isinstance(change, Change):
                                self.take(change)
                    last = newest
                await asyncio.sleep(0.01)

    def take(self, change: Change) -> None:
        if self.mode == "ceiling":
            self.ceiling(change)
        else:
            self.intake.append(change)
            self.wake.set()

    def frame(self, change: Change) -> bytes:
        self.changes += 1
        body: dict[str, Any] = {
            "table": change.table,
            "op": change.op,
            "commit_timestamp": change.timestamp,
            "position": f"bench:{self.changes}",
        }
        if change.new is not None:
            body["new"] = change.new
        if change.old is not None:
            body["old"] = change.old
        return b'{"type":"change","subscriptions":["s"],' + orjson.dumps(body)[1:]

    def ceiling(self, change: Change) -> None:
        row = change.new or change.old
        if row is None:
            return
        if change.table == PAYMENTS:
            targets: set[ServerConnection] = set()
            for tenant in (row.get("from_id"), row.get("to_id")):
                members = self.pay_by_tenant.get(tenant)
                if members:
                    targets |= members
        elif change.table == NOTIFICATIONS:
            if row.get("user_id") is None:
                targets = self.notif_by_tenant.get(row.get("tenant_id")) or set()
            else:
                targets = self.notif_by_user.get(row.get("user_id")) or set()
        else:
            return
        if targets:
            broadcast(targets, self.frame(change), text=True)
            self.sent += len(targets)

    async def process(self) -> None:
        """Baseline: one change at a time, in commit order, authorized by apply_rls."""
        assert self.db is not None
        while True:
            await self.wake.wait()
            self.wake.clear()
            while self.intake:
                change = self.intake.popleft()
                row = change.new or change.old
                if row is None or change.table not in (PAYMENTS, NOTIFICATIONS):
                    continue
                cursor = await self.db.execute(
                    "SELECT bench_walrus.apply_rls(%s::regclass, %s)", (change.table, row["id"])
                )
                result = await cursor.fetchone()
                visible = result[0] if result else []
                targets = [self.by_subscription[s] for s in visible if s in self.by_subscription]
                if targets:
                    broadcast(targets, self.frame(change), text=True)
                    self.sent += len(targets)

    # --- Control ----------------------------------------------------------------------

    async def control(self) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while True:
            line = await reader.readline()
            if not line:
                return
            command = json.loads(line)
            if command.get("cmd") == "reset":
                self.dropped += len(self.intake)
                self.intake.clear()
            reply = {
                "sent": self.sent,
                "changes": self.changes,
                "backlog": len(self.intake),
                "dropped": self.dropped,
                "connections": self.connections,
            }
            sys.stdout.write(json.dumps(reply) + "\n")
            sys.stdout.flush()

    async def run(self, port: int) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        tasks = [asyncio.create_task(self.listen())]
        if self.mode == "baseline":
            self.db = await psycopg.AsyncConnection.connect(
                self.database_url, autocommit=True, application_name="bench-baseline"
            )
            self.registry = await psycopg.AsyncConnection.connect(
                self.database_url, autocommit=True, application_name="bench-baseline-registry"
            )
            await self.registry.execute("DELETE FROM bench_walrus.subscription")
            tasks.append(asyncio.create_task(self.process()))
        async with serve(
            self.handle,
            "127.0.0.1",
            port,
            subprotocols=[Subprotocol(SUBPROTOCOL)],
            compression=None,
            max_queue=16,
            ping_interval=20,
            ping_timeout=20,
            close_timeout=5,
            backlog=4096,  # as the relay's (relay/server.py)
        ):
            await asyncio.sleep(0.3)  # the log's reader is up before clients come
            print(json.dumps({"serving": port, "started": time.time()}), flush=True)
            control = asyncio.create_task(self.control())
            await stop.wait()
            control.cancel()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for conn in (self.db, self.registry):
            if conn is not None:
                await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=("ceiling", "baseline"))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--database-url", required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    server = Server(args.mode, args.database_url)
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        asyncio.run(server.run(args.port))
    else:
        uvloop.run(server.run(args.port))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
