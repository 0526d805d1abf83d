"""The five scenarios of the benchmark issue, each a function of the run's context.

1. ``authorized``: the relay, C connected users, the ladder of offered rates
   (with the connection storm, RSS per connection and the profile folded in:
   they need the same relay and the same connections);
2. ``ceiling``: a bare websockets broadcast to the same connections;
3. ``baseline``: Supabase-style authorization, one query per subscriber per change;
4. ``write_path``: pgbench inserts into a published and an unpublished table;
5. the connection storm is measured as each fleet joins (``Fleet.join``).
"""

import math
import os
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench import common, profiling
from bench.common import CHILDREN, log
from bench.database import Database, pgbench_path, pgbench_version
from bench.harness import BareServer, Config, Fleet, RelayServer, Server, StepResult, measured_step


@dataclass
class Context:
    cfg: Config
    db: Database
    raw: Path
    # name -> latencies (ms) of chosen steps, for the CDF plot
    curves: dict[str, np.ndarray] = field(default_factory=dict)


def _ladder(
    ctx: Context,
    server: Server,
    fleet: Fleet,
    prefix: str,
    start: float,
    bisect_steps: int,
    must_include: float | None = None,
    step_down: int = 0,
    min_changes: int = 0,
) -> list[StepResult]:
    """Offered rates start, start*f, start*f^2... until one is not sustained, then
    ``bisect_steps`` geometric bisections between the last good and the first bad."""
    cfg = ctx.cfg
    steps: list[StepResult] = []
    good: float | None = None
    bad: float | None = None
    rate = start

    def step(r: float) -> StepResult:
        window = None
        if min_changes:
            # Enough changes in the window for a percentile at low rates.
            window = min(max(cfg.window, min_changes * cfg.fanout / r), 3 * cfg.window)
        name = f"{prefix}-{r:.0f}"
        result = measured_step(cfg, ctx.db, server, fleet, r, name, window=window)
        steps.append(result)
        if not result.summary["sustained"] and cfg.confirm_misses:
            # A miss is confirmed by a second try before the ladder turns back:
            # a single pause (a garbage collection, say) must not decide the
            # highest rate alone. Both attempts stay in the results.
            log(f"  {name}: missed; measuring again to confirm")
            again = measured_step(cfg, ctx.db, server, fleet, r, f"{name}-confirm", window=window)
            result.summary["confirmed_by"] = again.summary["name"]
            again.summary["confirms"] = name
            steps.append(again)
            result = again
        return result

    while rate <= cfg.ladder_max:
        if step(rate).summary["sustained"]:
            good = rate
            rate *= cfg.ladder_factor
        else:
            bad = rate
            break
    downs = 0
    while good is None and bad is not None and downs < step_down:
        downs += 1
        rate = bad / cfg.ladder_factor
        if step(rate).summary["sustained"]:
            good = rate
        else:
            bad = rate
    for _ in range(bisect_steps):
        if good is None or bad is None or bad / good < 1.15:
            break
        mid = math.sqrt(good * bad)
        if step(mid).summary["sustained"]:
            good = mid
        else:
            bad = mid
    if must_include is not None and not any(
        abs(s.summary["offered_msgs_per_s"] - must_include) < 1 for s in steps
    ):
        step(must_include)
    return steps


def best(steps: list[StepResult]) -> StepResult | None:
    """The sustained step that delivered the most."""
    ok = [s for s in steps if s.summary["sustained"]]
    return max(ok, key=lambda s: s.summary["delivered_msgs_per_s"]) if ok else None


def at_rate(steps: list[StepResult], rate: float) -> StepResult | None:
    for s in steps:
        if abs(s.summary["offered_msgs_per_s"] - rate) < 1:
            return s
    return None


# --- 1 (and 5): authorized fan-out ------------------------------------------------------


def authorized(ctx: Context, size: int, largest: bool) -> dict[str, Any]:
    cfg = ctx.cfg
    profile = cfg.profile and largest
    label = f"relay-{size}"
    log(f"authorized fan-out: relay, {size} connections")
    relay = RelayServer(ctx.db, cfg, ctx.raw, label, cpus=cfg.server_cpus()).start()
    fleet = Fleet(cfg, relay.url, size, ctx.raw, label)
    try:
        time.sleep(1.0)
        rss0 = relay.rss()
        fleet.start()
        storm = fleet.join()
        log(
            f"  storm: {storm['joined']}/{size} joined in {storm['last_subscribed_s'] or 0:.2f} s "
            f"({storm['joins_per_s'] or 0:,.0f} joins/s), failed {storm['failed']}"
        )
        time.sleep(2.0)
        rss1 = relay.rss()
        stats = fleet.stats()
        bisect = cfg.bisect_steps if (largest or not cfg.bisect_largest_only) else 0
        steps = _ladder(ctx, relay, fleet, label, cfg.ladder_start, bisect, cfg.reference_rate)
        rss2 = relay.rss()
        top = best(steps)
        ref = at_rate(steps, cfg.reference_rate)
        if ref is not None:
            ctx.curves[f"relay C={size} @ {cfg.reference_rate:,.0f} msgs/s"] = ref.latencies_ms
        if top is not None and top is not ref:
            ctx.curves[
                f"relay C={size} @ {top.summary['offered_msgs_per_s']:,.0f} msgs/s (max)"
            ] = top.latencies_ms
        profile_summary = None
        if profile:
            rate = top.summary["offered_msgs_per_s"] if top else cfg.reference_rate
            path = ctx.raw / f"{label}.py-spy.txt"
            log(f"  profiling the relay with py-spy at {rate:,.0f} msgs/s")
            result = measured_step(
                cfg,
                ctx.db,
                relay,
                fleet,
                rate,
                f"{label}-profile",
                profile=path,
                window=cfg.profile_duration,
            )
            profile_summary = profiling.summarize(path) if path.exists() else None
            if profile_summary is not None:
                profile_summary["step"] = result.summary
        end_stats = fleet.stats()
        held = storm["failed"] == 0 and end_stats["open"] == size and end_stats["disconnects"] == 0
        storm_in_backlog = None
        if largest:
            # A gentler storm, at most ~96 connections being set up at once (it
            # fits even asyncio's default listen backlog of 100): how fast the
            # relay admits clients when no SYN has to be retried.
            fleet.close()
            time.sleep(2.0)
            fleet = Fleet(cfg, relay.url, size, ctx.raw, f"{label}-storm2")
            fleet.start()
            storm_in_backlog = fleet.join(concurrency=max(1, 96 // fleet.processes))
            log(
                f"  gentler storm: {storm_in_backlog['joined']}/{size} in "
                f"{storm_in_backlog['last_subscribed_s'] or 0:.2f} s "
                f"({storm_in_backlog['joins_per_s'] or 0:,.0f} joins/s)"
            )
        return {
            "connections": size,
            "tenants": size // cfg.users_per_tenant,
            "storm": storm,
            "storm_within_backlog": storm_in_backlog,
            "rss_kb_idle": round(rss0 / 1024),
            "rss_kb_connected": round(rss1 / 1024),
            "rss_kb_after_load": round(rss2 / 1024),
            "rss_kb_per_connection": round((rss1 - rss0) / 1024 / size, 2),
            "rss_kb_per_connection_after_load": round((rss2 - rss0) / 1024 / size, 2),
            "open_after_join": stats["open"],
            "held": held,
            "max_sustained": top.summary if top else None,
            "at_reference_rate": ref.summary if ref else None,
            "steps": [s.summary for s in steps],
            "relay_env": relay.env
            | {"RELAY_JWT_SECRET": "(bench secret)", "RELAY_DATABASE_URL": "(the bench database)"},
            "profile": profile_summary,
        }
    finally:
        fleet.close()
        relay.stop()


# --- 2 and 3: the ceiling and the Supabase-style baseline -----------------------------------


def ceiling(ctx: Context, size: int, rates: list[float]) -> dict[str, Any]:
    cfg = ctx.cfg
    label = f"ceiling-{size}"
    log(f"ceiling: bare websockets broadcast, {size} connections")
    server = BareServer("ceiling", ctx.db, cfg, ctx.raw, label, cpus=cfg.server_cpus()).start()
    fleet = Fleet(cfg, server.url, size, ctx.raw, label)
    try:
        time.sleep(1.0)
        rss0 = server.rss()
        fleet.start()
        storm = fleet.join()
        time.sleep(1.0)
        rss1 = server.rss()
        steps = []
        for rate in sorted(set(round(r) for r in rates)):
            steps.append(
                measured_step(cfg, ctx.db, server, fleet, float(rate), f"{label}-{rate:.0f}")
            )
        ref = at_rate(steps, cfg.reference_rate)
        if ref is not None:
            ctx.curves[f"ceiling C={size} @ {cfg.reference_rate:,.0f} msgs/s"] = ref.latencies_ms
        return {
            "connections": size,
            "storm": storm,
            "rss_kb_per_connection": round((rss1 - rss0) / 1024 / size, 2),
            "steps": [s.summary for s in steps],
        }
    finally:
        fleet.close()
        server.stop()


def baseline(ctx: Context, size: int) -> dict[str, Any]:
    cfg = ctx.cfg
    label = f"baseline-{size}"
    log(f"Supabase-style baseline: one query per subscriber per change, {size} connections")
    server = BareServer("baseline", ctx.db, cfg, ctx.raw, label, cpus=cfg.server_cpus()).start()
    fleet = Fleet(cfg, server.url, size, ctx.raw, label)
    try:
        fleet.start()
        storm = fleet.join(timeout=120.0)
        start = max(10.0, cfg.baseline_scale / size)
        steps = _ladder(
            ctx, server, fleet, label, start, cfg.baseline_bisect_steps, step_down=1, min_changes=20
        )
        # Its capacity: what it delivers when offered more than it can handle,
        # whatever the latency (so at least what it sustains).
        if not any(_saturated(s.summary) for s in steps):
            rate = 16 * max(s.summary["offered_msgs_per_s"] for s in steps)
            steps.append(
                measured_step(cfg, ctx.db, server, fleet, rate, f"{label}-saturated-{rate:.0f}")
            )
        saturated = [s.summary for s in steps if _saturated(s.summary)]
        capacity = max(saturated, key=lambda s: s["delivered_msgs_per_s"]) if saturated else None
        top = best(steps)
        if top is not None:
            ctx.curves[
                f"baseline C={size} @ {top.summary['offered_msgs_per_s']:,.0f} msgs/s (max)"
            ] = top.latencies_ms
        return {
            "connections": size,
            "storm": storm,
            "max_sustained": top.summary if top else None,
            "capacity": capacity,
            "lowest_offered": min(s.summary["offered_msgs_per_s"] for s in steps),
            "steps": [s.summary for s in steps],
        }
    finally:
        fleet.close()
        server.stop()


def _saturated(summary: dict[str, Any]) -> bool:
    """Offered more than the server delivers: it fell behind during the window."""
    return (not summary["drained"]) or summary["delivered_msgs_per_s"] < 0.8 * summary[
        "expected_msgs_per_s"
    ]


# --- 4: the write path --------------------------------------------------------------------

PGBENCH_TPS = re.compile(r"tps = ([0-9.]+) \(without initial connection time\)")


def write_path(ctx: Context) -> dict[str, Any]:
    """pgbench: one-row autocommit INSERTs, 1 and 16 clients, published vs unpublished.

    Three ways, each against an unpublished table measured the same way:

    - no listener at all (the trigger and NOTIFY alone), PostgreSQL unpinned;
    - the relay listening on the same two CPUs, everything unpinned: the
      headline ratios (the harshest: the relay takes CPU from the writers);
    - the relay listening on a core of its own, PostgreSQL and pgbench on the
      other, as in production, where the relay does not run on the database
      host (the database still pays its listening backend).
    """
    cfg = ctx.cfg
    pgbench = pgbench_path()
    if pgbench is None:
        return {"error": "pgbench not found (neither the embedded server's nor the system's)"}
    log("write path: pgbench into a published and an identical unpublished table")
    runs: list[dict[str, Any]] = []
    relay: RelayServer | None = None
    setups = [("no listener", False, False), ("relay listening", True, False)]
    if cfg.pin and cfg.server_cpus() and cfg.load_cpus():
        setups.append(("relay on own core", True, True))
    try:
        for setup, listening, own_core in setups:
            if relay is not None:
                relay.stop()
                relay = None
            if listening:
                cpus = cfg.server_cpus() if own_core else None
                relay = RelayServer(ctx.db, cfg, ctx.raw, "write", cpus=cpus).start()
            writer_cpus = cfg.load_cpus() if own_core else None
            for pid in [p.pid for p in ctx.db.processes()]:
                common.pin(pid, writer_cpus)
            for writers in (1, 16):
                for repeat in range(cfg.write_repeats):
                    order = ["unpublished", "published"]
                    if repeat % 2:
                        order.reverse()
                    for kind in order:
                        run = _pgbench(ctx, pgbench, kind, writers, repeat, relay, writer_cpus)
                        run["setup"] = setup
                        runs.append(run)
                        log(
                            f"  {writers:>2} writer(s) {kind:<11} {setup:<17}: "
                            f"{run['tps'] or 0:,.0f} inserts/s"
                        )
    finally:
        if relay is not None:
            relay.stop()
        for pid in [p.pid for p in ctx.db.processes()]:
            common.pin(pid, cfg.load_cpus())

    def median(kind: str, writers: int, setup: str) -> float | None:
        values = [
            r["tps"]
            for r in runs
            if r["table"] == kind and r["writers"] == writers and r["setup"] == setup and r["tps"]
        ]
        return float(np.median(values)) if values else None

    summary: dict[str, Any] = {
        "tool": f"{pgbench_version(pgbench)}, -n -c W -j min(W,2), "
        "one INSERT per transaction (autocommit)",
        "tables": "bench_write_published / bench_write_unpublished: LIKE nexus_payments "
        "INCLUDING ALL (columns, defaults, checks, indexes; no foreign keys); "
        "the first published with relay.publish",
        "runs": runs,
        "duration_s": cfg.write_duration,
        "repeats": cfg.write_repeats,
    }
    for writers in (1, 16):
        for setup, suffix in (
            ("relay listening", ""),
            ("no listener", "_no_listener"),
            ("relay on own core", "_relay_own_core"),
        ):
            pub, unpub = (
                median("published", writers, setup),
                median("unpublished", writers, setup),
            )
            summary[f"writers_{writers}{suffix}"] = {
                "published_inserts_per_s": pub,
                "unpublished_inserts_per_s": unpub,
                "ratio": round(pub / unpub, 3) if pub and unpub else None,
            }
    return summary


def _pgbench(
    ctx: Context,
    pgbench: Path,
    kind: str,
    writers: int,
    repeat: int,
    relay: RelayServer | None,
    cpus: list[int] | None = None,
) -> dict[str, Any]:
    cfg = ctx.cfg
    table = f"bench_write_{kind}"
    script = ctx.raw / f"write-{kind}.sql"
    script.write_text(
        f"INSERT INTO {table} (from_id, to_id, amount, reference)"
        " VALUES ('TNT-B0000000', 'TNT-B0000001', 42.00, 'pgbench');\n"
    )
    with psycopg_conn(ctx.db) as conn:
        conn.execute(f"TRUNCATE {table}")
        conn.execute("CHECKPOINT")
    time.sleep(0.5)
    cpu0 = common.cpu_seconds([relay.pid]) if relay else 0.0
    changes0 = _published_changes(relay) if relay else 0.0
    argv = [
        str(pgbench),
        "-n",
        "-c",
        str(writers),
        "-j",
        str(min(writers, 2)),
        "-T",
        str(int(cfg.write_duration)),
        "-f",
        str(script),
        *ctx.db.libpq_args(),
        ctx.db.name,
    ]
    busy0 = sum(common.busy_seconds_per_cpu())
    began = time.time()
    done = subprocess.run(  # noqa: S603 - our own arguments
        argv,
        capture_output=True,
        text=True,
        timeout=cfg.write_duration + 120,
        check=False,
        preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
    )
    elapsed = time.time() - began
    busy = (sum(common.busy_seconds_per_cpu()) - busy0) / elapsed
    match = PGBENCH_TPS.search(done.stdout)
    if relay is not None:
        time.sleep(1.0)  # the relay reads the last notifications
    run: dict[str, Any] = {
        "table": kind,
        "writers": writers,
        "repeat": repeat,
        "relay_listening": relay is not None,
        "tps": float(match.group(1)) if match else None,
        "machine_cpu_busy": round(busy, 2),
        "relay_cpu_s": round(common.cpu_seconds([relay.pid]) - cpu0, 3) if relay else None,
        "relay_changes_received": (_published_changes(relay) - changes0) if relay else None,
        "pgbench_rc": done.returncode,
    }
    if match is None:
        run["pgbench_output"] = (done.stdout + done.stderr)[-2000:]
    return run


def _published_changes(relay: RelayServer) -> float:
    metrics = relay.metrics()
    return sum(
        v
        for k, v in metrics.items()
        if k.startswith("relay_changes_total") and "bench_write_published" in k
    )


def psycopg_conn(db: Database) -> Any:
    import psycopg

    return psycopg.connect(db.url, autocommit=True)


def stop_everything() -> None:
    CHILDREN.stop_all()
