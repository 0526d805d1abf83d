"""The change log's scenario: what the log costs and gives, beside the write path.

1. latency under 16 writers: pgbench, 16 clients, one-row INSERTs into a
   published table; 1% of the rows are probes that one subscriber receives
   (through the index, by a filter); commit → receipt of each probe;
2. latency when only the reader's regular read picks a change up (the bell
   off for the writer, ``relay.doorbell = 'off'``), a change every 0.5 s;
3. what an idle relay costs its database: transactions per second in the
   database with only the relay connected;
4. the log's size under a sustained write load, with the relay pruning it
   (``RELAY_LOG_RETENTION_S=60``): size, rows, dead rows and autovacuums over
   time, and the size at the end (``log_bytes_after_write_load``);
5. resumes after a relay restart: clients subscribed while notifications
   flow, the relay stopped and started again on its port; each client
   reconnects with its token and resumes; gaps counted
   (``resume_after_restart_gaps``, which must be 0), and what each received
   checked against what was committed.

The relay runs on the server CPU, PostgreSQL, pgbench and the clients on the
load CPU (the production layout), unless the run is not pinned.
"""

import asyncio
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psycopg

from bench import common
from bench.common import log
from bench.database import pgbench_path
from bench.harness import RelayServer
from bench.scenarios import Context, psycopg_conn

PROBE_TABLE = "bench_write_published"
PROBE_POLICY = """
[tables."public.bench_write_published"]
visible = "from_id = claims.tenant_id or to_id = claims.tenant_id"
"""


def log_path(ctx: Context) -> dict[str, Any]:
    policy = ctx.raw / "log-policy.toml"
    policy.write_text(common.POLICY_FILE.read_text() + PROBE_POLICY)
    relay = _relay(ctx, policy, "log")
    try:
        results = {
            "latency_16_writers": _latency_under_writers(ctx, relay),
            "fallback_read": _fallback_latency(ctx, relay),
            "idle": _idle_transactions(ctx, relay),
        }
    finally:
        relay.stop()
    results["retention"] = _retention(ctx, policy)
    results["restart"] = asyncio.run(_restart_resume(ctx, policy))
    return results


def _relay(ctx: Context, policy: Path, label: str, **env: str) -> RelayServer:
    relay = RelayServer(
        ctx.db, ctx.cfg, ctx.raw, label, cpus=ctx.cfg.server_cpus(), policy_file=policy, env=env
    )
    relay.start()
    for pid in [p.pid for p in ctx.db.processes()]:
        common.pin(pid, ctx.cfg.load_cpus())
    return relay


# --- 1 and 2: latency -------------------------------------------------------------------


class Probes:
    """A service-role subscriber to the probe rows, in a thread: commit → receipt, in ms."""

    def __init__(self, relay: RelayServer) -> None:
        self.url = relay.url
        self.latencies: list[float] = []
        self.ready = threading.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self) -> "Probes":
        self.thread.start()
        if not self.ready.wait(30):
            raise RuntimeError("the probe subscriber did not subscribe")
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)

    async def _run(self) -> None:
        from datetime import datetime

        from relay.client import RelayClient

        token = common.mint_service()
        async with await RelayClient.connect(self.url, token) as client:
            await client.subscribe(PROBE_TABLE, events=["INSERT"], filter="reference=eq.probe")
            self.ready.set()
            while not self.stop.is_set():
                try:
                    event = await client.next_event(0.2)
                except TimeoutError:
                    continue
                if event.get("type") == "change":
                    committed = datetime.fromisoformat(event["commit_timestamp"]).timestamp()
                    self.latencies.append((time.time() - committed) * 1000)

    def summary(self) -> dict[str, Any]:
        values = np.array(self.latencies)
        if not len(values):
            return {"probes": 0}
        return {
            "probes": len(values),
            "p50_ms": round(float(np.percentile(values, 50)), 1),
            "p95_ms": round(float(np.percentile(values, 95)), 1),
            "p99_ms": round(float(np.percentile(values, 99)), 1),
            "max_ms": round(float(values.max()), 1),
        }


def _latency_under_writers(ctx: Context, relay: RelayServer) -> dict[str, Any]:
    pgbench = pgbench_path()
    if pgbench is None:
        return {"error": "pgbench not found"}
    script = ctx.raw / "log-probes.sql"
    script.write_text(
        "\\set r random(1, 100)\n"
        f"INSERT INTO {PROBE_TABLE} (from_id, to_id, amount, reference)"
        " VALUES ('TNT-B0000000', 'TNT-B0000001', 42.00,"
        " CASE WHEN :r = 1 THEN 'probe' ELSE 'pgbench' END);\n"
    )
    duration = max(ctx.cfg.write_duration, 5.0)
    log(f"log: latency of 1% probes under 16 writers, {duration:g} s")
    with Probes(relay) as probes:
        done = _pgbench(ctx, pgbench, script, 16, duration)
    return {"pgbench_tps": done, "duration_s": duration, **probes.summary()}


def _fallback_latency(ctx: Context, relay: RelayServer) -> dict[str, Any]:
    changes = 12 if ctx.cfg.mode == "quick" else 40
    log(f"log: latency when only the regular read finds a change (no bell), {changes} changes")
    with Probes(relay) as probes, psycopg_conn(ctx.db) as conn:
        conn.execute("SET relay.doorbell = 'off'")
        for _ in range(changes):
            time.sleep(0.5)  # the relay is idle again between two changes
            conn.execute(
                f"INSERT INTO {PROBE_TABLE} (from_id, to_id, amount, reference)"
                " VALUES ('TNT-B0000000', 'TNT-B0000001', 1, 'probe')"
            )
        time.sleep(1.0)  # the last one's read
    return {"interval_s": 0.5, **probes.summary()}


def _pgbench(
    ctx: Context, pgbench: Path, script: Path, clients: int, duration: float, *rate: str
) -> float | None:
    cpus = ctx.cfg.load_cpus()
    done = subprocess.run(  # noqa: S603 - our own arguments
        [
            str(pgbench),
            "-n",
            "-c",
            str(clients),
            "-j",
            str(min(clients, 2)),
            "-T",
            str(int(duration)),
            *rate,
            "-f",
            str(script),
            *ctx.db.libpq_args(),
            ctx.db.name,
        ],
        capture_output=True,
        text=True,
        timeout=duration + 120,
        check=False,
        preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
    )
    for line in done.stdout.splitlines():
        if line.startswith("tps ="):
            return round(float(line.split()[2]), 1)
    return None


# --- 3: idle ------------------------------------------------------------------------------


def _idle_transactions(ctx: Context, relay: RelayServer) -> dict[str, Any]:
    seconds = 20.0 if ctx.cfg.mode == "quick" else 60.0
    log(f"log: what an idle relay costs its database, {seconds:g} s")
    time.sleep(2.0)  # the reader settles to its idle pace
    with psycopg_conn(ctx.db) as conn:

        def committed() -> int:
            conn.execute("SELECT pg_stat_clear_snapshot()")
            row = conn.execute(
                "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
            ).fetchone()
            return int(row[0]) if row else 0

        # Backends report their counts within a second (PostgreSQL 15+): margins around.
        before = committed()
        began = time.time()
        time.sleep(seconds)
        after = committed()
        elapsed = time.time() - began
    own = 2  # this function's own two reads
    per_s = (after - before - own) / elapsed
    return {
        "seconds": round(elapsed, 1),
        "transactions": after - before - own,
        "transactions_per_s": round(per_s, 2),
        "relay_backends": len(ctx.db.backend_pids("nexus-relay")),
    }


# --- 4: retention --------------------------------------------------------------------------


def _retention(ctx: Context, policy: Path) -> dict[str, Any]:
    quick = ctx.cfg.mode == "quick"
    seconds, rate = (120.0, 500) if quick else (600.0, 2000)
    pgbench = pgbench_path()
    if pgbench is None:
        return {"error": "pgbench not found"}
    log(f"log: size under {rate}/s of writes for {seconds:g} s, retention 60 s")
    with psycopg_conn(ctx.db) as conn:  # from an empty log, not the earlier scenarios' rows
        conn.execute("SELECT relay.tick()")
        while conn.execute("SELECT relay.prune(interval '0', 0, 100000)").fetchone() != (0,):
            pass
        conn.execute("VACUUM FULL relay.changes")
    relay = _relay(ctx, policy, "retention", RELAY_LOG_RETENTION_S="60")
    script = ctx.raw / "log-retention.sql"
    script.write_text(
        f"INSERT INTO {PROBE_TABLE} (from_id, to_id, amount, reference)"
        " VALUES ('TNT-B0000000', 'TNT-B0000001', 42.00, 'retention');\n"
    )
    samples: list[dict[str, Any]] = []
    stop = threading.Event()
    sampler = threading.Thread(target=_sample_log, args=(ctx, samples, stop), daemon=True)
    try:
        sampler.start()
        tps = _pgbench(ctx, pgbench, script, 4, seconds, "-R", str(rate))
    finally:
        stop.set()
        sampler.join(30)
        relay.stop()
    final = samples[-1] if samples else {}
    return {
        "seconds": seconds,
        "rate_per_s": rate,
        "pgbench_tps": tps,
        "retention_s": 60,
        "samples": samples,
        "final_bytes": final.get("bytes"),
        "max_bytes": max((s["bytes"] for s in samples), default=None),
    }


def _sample_log(ctx: Context, samples: list[dict[str, Any]], stop: threading.Event) -> None:
    began = time.time()
    with psycopg_conn(ctx.db) as conn:
        while True:
            conn.execute("SELECT pg_stat_clear_snapshot()")
            row = conn.execute(
                "SELECT pg_total_relation_size('relay.changes'), s.n_live_tup, s.n_dead_tup,"
                " s.autovacuum_count, (SELECT count(*) FROM relay.ticks),"
                " (SELECT extract(epoch FROM now() - min(at)) FROM relay.ticks)"
                " FROM pg_stat_user_tables s WHERE s.relid = 'relay.changes'::regclass"
            ).fetchone()
            if row is not None:
                samples.append(
                    {
                        "t_s": round(time.time() - began, 1),
                        "bytes": int(row[0]),
                        "live_rows": int(row[1]),
                        "dead_rows": int(row[2]),
                        "autovacuums": int(row[3]),
                        "ticks": int(row[4]),
                        "oldest_tick_s": round(float(row[5] or 0), 1),
                    }
                )
            if stop.wait(10.0):
                return


# --- 5: resumes after a restart -------------------------------------------------------------


async def _restart_resume(ctx: Context, policy: Path) -> dict[str, Any]:
    from relay.client import RelayClient, RelayClosed

    clients_n = 100 if ctx.cfg.mode == "quick" else 400
    tenants = max(1, clients_n // ctx.cfg.users_per_tenant)
    log(f"log: {clients_n} clients resume after a relay restart")
    relay = _relay(ctx, policy, "restart")
    users = [
        (common.user_id(g), common.tenant_id(g // ctx.cfg.users_per_tenant))
        for g in range(clients_n)
    ]
    received: list[list[str]] = [[] for _ in users]
    gaps = [0]
    back = asyncio.Event()

    async def client(n: int, user: str, tenant: str, subscribed: asyncio.Event) -> None:
        token = common.mint(user, tenant)  # kept across the reconnection, as clients should
        since: tuple[str, str] | None = None
        while True:
            try:
                conn = await RelayClient.connect(relay.url, token, timeout=10)
            except OSError:
                await asyncio.sleep(0.05)  # the relay is starting again
                continue
            try:
                options = {"filter": "notification_type=eq.restart"}
                if since is not None:
                    options.update(since=since[0], resume_token=since[1])
                ack = await conn.subscribe("nexus_notifications", **options)  # type: ignore[arg-type]
                since = conn.resume_point(ack["id"])
                subscribed.set()
                async for event in conn.events():
                    if event["type"] == "gap":
                        gaps[0] += 1
                    elif event["type"] == "change":
                        received[n].append(event["new"]["title"])
                        if event["new"]["title"] == "restart end":
                            await conn.close()
                            return
                    since = conn.resume_point(ack["id"])
            except (RelayClosed, ConnectionError):
                pass
            await back.wait()

    subscribed = [asyncio.Event() for _ in users]
    tasks = [asyncio.create_task(client(n, u, t, subscribed[n])) for n, (u, t) in enumerate(users)]
    await asyncio.wait_for(asyncio.gather(*(e.wait() for e in subscribed)), 60)
    written: list[tuple[str, str]] = []
    writer = threading.Thread(target=_write_notifications, args=(ctx, tenants, written))
    writer.start()
    await asyncio.sleep(1.0)
    began = time.time()
    await asyncio.to_thread(relay.stop)
    await asyncio.to_thread(relay.start)
    restarted_s = time.time() - began
    back.set()
    await asyncio.to_thread(writer.join)
    try:
        await asyncio.wait_for(asyncio.gather(*tasks), 120)
    finally:
        relay.stop()
    expected = {
        t: [title for tenant, title in written if tenant == t] for t in {t for _, t in users}
    }
    wrong = sum(1 for n, (_, t) in enumerate(users) if received[n] != expected[t])
    return {
        "clients": clients_n,
        "notifications_written": len(written),
        "restart_s": round(restarted_s, 2),
        "gaps": gaps[0],
        "clients_with_missing_or_repeated_changes": wrong,
    }


def _write_notifications(ctx: Context, tenants: int, written: list[tuple[str, str]]) -> None:
    """Tenant-wide notifications, round robin over the tenants, for about 4 s, then the end."""
    with psycopg.connect(ctx.db.url, autocommit=True) as conn:
        deadline = time.monotonic() + 4.0
        n = 0
        while True:
            done = time.monotonic() > deadline
            for t in range(tenants):
                title = "restart end" if done else f"restart {n}"
                tenant = common.tenant_id(t)
                conn.execute(
                    "INSERT INTO nexus_notifications (tenant_id, notification_type, title)"
                    " VALUES (%s, 'restart', %s)",
                    (tenant, title),
                )
                written.append((tenant, title))
            if done:
                return
            n += 1
            time.sleep(0.05)  # a pace of about 20 a second per tenant
