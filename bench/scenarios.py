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
import psycopg
from psycopg.rows import TupleRow

from bench import common, profiling
from bench.common import log
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
    ``bisect_steps`` geometric bisections between the last good and the first bad.

    When the first rate already misses, up to ``step_down`` rates below it (÷f each);
    ``must_include``: a rate measured at the end if the ladder did not offer it;
    ``min_changes``: a longer window (up to 3 times) at low rates, for that many changes.
    """
    ladder = _Ladder(ctx, server, fleet, prefix, min_changes)
    good, bad = ladder.climb(start)
    good, bad = ladder.step_down(good, bad, step_down)
    ladder.bisect(good, bad, bisect_steps)
    if must_include is not None and at_rate(ladder.steps, must_include) is None:
        ladder.sustained(must_include)
    return ladder.steps


class _Ladder:
    """The steps of one ladder of offered rates, in the order they were measured."""

    def __init__(
        self, ctx: Context, server: Server, fleet: Fleet, prefix: str, min_changes: int
    ) -> None:
        self.ctx = ctx
        self.server = server
        self.fleet = fleet
        self.prefix = prefix
        self.min_changes = min_changes
        self.steps: list[StepResult] = []

    def sustained(self, rate: float) -> bool:
        """Measure one rate; whether it was sustained."""
        cfg = self.ctx.cfg
        window = None
        if self.min_changes:
            # Enough changes in the window for a percentile at low rates.
            window = min(max(cfg.window, self.min_changes * cfg.fanout / rate), 3 * cfg.window)
        name = f"{self.prefix}-{rate:.0f}"
        result = self._measure(rate, name, window)
        if not result.summary["sustained"] and cfg.confirm_misses:
            # A miss is confirmed by a second try before the ladder turns back:
            # a single pause (a garbage collection, say) must not decide the
            # highest rate alone. Both attempts stay in the results.
            log(f"  {name}: missed; measuring again to confirm")
            again = self._measure(rate, f"{name}-confirm", window)
            result.summary["confirmed_by"] = again.summary["name"]
            again.summary["confirms"] = name
            result = again
        return bool(result.summary["sustained"])

    def _measure(self, rate: float, name: str, window: float | None) -> StepResult:
        ctx = self.ctx
        result = measured_step(ctx.cfg, ctx.db, self.server, self.fleet, rate, name, window=window)
        self.steps.append(result)
        return result

    def climb(self, rate: float) -> tuple[float | None, float | None]:
        """Up by the factor from ``rate`` until a rate misses: (last good, first bad)."""
        cfg = self.ctx.cfg
        good: float | None = None
        while rate <= cfg.ladder_max:
            if not self.sustained(rate):
                return good, rate
            good = rate
            rate *= cfg.ladder_factor
        return good, None

    def step_down(
        self, good: float | None, bad: float | None, times: int
    ) -> tuple[float | None, float | None]:
        """No rate sustained yet: down by the factor from the first bad, at most ``times``."""
        downs = 0
        while good is None and bad is not None and downs < times:
            downs += 1
            rate = bad / self.ctx.cfg.ladder_factor
            if self.sustained(rate):
                good = rate
            else:
                bad = rate
        return good, bad

    def bisect(self, good: float | None, bad: float | None, times: int) -> None:
        """Geometric bisections between the last good and the first bad rate."""
        for _ in range(times):
            if good is None or bad is None or bad / good < 1.15:
                break
            mid = math.sqrt(good * bad)
            if self.sustained(mid):
                good = mid
            else:
                bad = mid


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


def authorized(ctx: Context, size: int, largest: bool, supabase: bool = False) -> dict[str, Any]:
    """The relay with ``size`` users: the storm, RSS, the ladder, the profile.

    ``supabase``: the same workload and measurement, the clients speaking Supabase
    Realtime's protocol on the relay's compatible endpoint (Phoenix vsn 2.0.0, one
    ``realtime:changes`` channel with a ``postgres_changes`` binding per table, the
    user's token as ``access_token``); no profile and no second storm."""
    cfg = ctx.cfg
    label = f"supabase-{size}" if supabase else f"relay-{size}"
    log(
        f"authorized fan-out: relay, {size} connections"
        + (", Supabase's protocol (postgres_changes)" if supabase else "")
    )
    relay = RelayServer(ctx.db, cfg, ctx.raw, label, cpus=cfg.server_cpus()).start()
    fleet = Fleet(cfg, relay.url, size, ctx.raw, label, protocol="changes" if supabase else "nexus")
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
        _keep_relay_curves(ctx, size, top, ref, "supabase" if supabase else "relay")
        profile = (
            _profile(ctx, relay, fleet, label, top)
            if cfg.profile and largest and not supabase
            else None
        )
        end_stats = fleet.stats()
        held = storm["failed"] == 0 and end_stats["open"] == size and end_stats["disconnects"] == 0
        gentler = _gentler_storm(ctx, relay, fleet, label) if largest and not supabase else None
        return {
            "protocol": "supabase (phoenix vsn 2.0.0)" if supabase else "nexus-relay.v1",
            "connections": size,
            "tenants": size // cfg.users_per_tenant,
            "storm": storm,
            "storm_within_backlog": gentler,
            **_rss_summary(size, rss0, rss1, rss2),
            "open_after_join": stats["open"],
            "held": held,
            "max_sustained": top.summary if top else None,
            "at_reference_rate": ref.summary if ref else None,
            "steps": [s.summary for s in steps],
            "relay_env": relay.env
            | {"RELAY_JWT_SECRET": "(bench secret)", "RELAY_DATABASE_URL": "(the bench database)"},
            "profile": profile,
        }
    finally:
        fleet.close()
        relay.stop()


def _keep_relay_curves(
    ctx: Context, size: int, top: StepResult | None, ref: StepResult | None, name: str = "relay"
) -> None:
    """The latencies at the reference rate and at the highest sustained one, for the CDF."""
    rate = ctx.cfg.reference_rate
    if ref is not None:
        ctx.curves[f"{name} C={size} @ {rate:,.0f} msgs/s"] = ref.latencies_ms
    if top is not None and top is not ref:
        ctx.curves[f"{name} C={size} @ {top.summary['offered_msgs_per_s']:,.0f} msgs/s (max)"] = (
            top.latencies_ms
        )


def _profile(
    ctx: Context, relay: RelayServer, fleet: Fleet, label: str, top: StepResult | None
) -> dict[str, Any] | None:
    """One more step, under py-spy, at the highest sustained rate (else the reference
    rate): the profile's summary, with that step in it."""
    cfg = ctx.cfg
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
    summary = profiling.summarize(path) if path.exists() else None
    if summary is not None:
        summary["step"] = result.summary
    return summary


def _gentler_storm(ctx: Context, relay: RelayServer, fleet: Fleet, label: str) -> dict[str, Any]:
    """Close ``fleet``, and join as many again, at most ~96 connections being set up at
    once (it fits even asyncio's default listen backlog of 100): how fast the relay admits
    clients when no SYN has to be retried."""
    fleet.close()
    time.sleep(2.0)
    gentle = Fleet(ctx.cfg, relay.url, fleet.size, ctx.raw, f"{label}-storm2")
    try:
        gentle.start()
        storm = gentle.join(concurrency=max(1, 96 // gentle.processes))
        log(
            f"  gentler storm: {storm['joined']}/{fleet.size} in "
            f"{storm['last_subscribed_s'] or 0:.2f} s "
            f"({storm['joins_per_s'] or 0:,.0f} joins/s)"
        )
        return storm
    finally:
        gentle.close()


def _rss_summary(size: int, idle: int, connected: int, after_load: int) -> dict[str, Any]:
    """The relay's RSS with no connection, with ``size`` idle ones, after the load (bytes)."""
    return {
        "rss_kb_idle": round(idle / 1024),
        "rss_kb_connected": round(connected / 1024),
        "rss_kb_after_load": round(after_load / 1024),
        "rss_kb_per_connection": round((connected - idle) / 1024 / size, 2),
        "rss_kb_per_connection_after_load": round((after_load - idle) / 1024 / size, 2),
    }


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
    runs = _write_runs(ctx, pgbench)
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
            pub = _median_tps(runs, "published", writers, setup)
            unpub = _median_tps(runs, "unpublished", writers, setup)
            summary[f"writers_{writers}{suffix}"] = {
                "published_inserts_per_s": pub,
                "unpublished_inserts_per_s": unpub,
                "ratio": round(pub / unpub, 3) if pub and unpub else None,
            }
    return summary


def _write_runs(ctx: Context, pgbench: Path) -> list[dict[str, Any]]:
    """Every pgbench run of every setup; PostgreSQL pinned back to the load's CPUs at the end."""
    cfg = ctx.cfg
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
            runs += _write_setup(ctx, pgbench, setup, relay, writer_cpus)
    finally:
        if relay is not None:
            relay.stop()
        for pid in [p.pid for p in ctx.db.processes()]:
            common.pin(pid, cfg.load_cpus())
    return runs


def _write_setup(
    ctx: Context,
    pgbench: Path,
    setup: str,
    relay: RelayServer | None,
    cpus: list[int] | None,
) -> list[dict[str, Any]]:
    """1 and 16 writers, ``write_repeats`` times, into both tables (in turn first)."""
    runs = []
    for writers in (1, 16):
        for repeat in range(ctx.cfg.write_repeats):
            order = ["unpublished", "published"]
            if repeat % 2:
                order.reverse()
            for kind in order:
                run = _pgbench(ctx, pgbench, kind, writers, repeat, relay, cpus)
                run["setup"] = setup
                runs.append(run)
                log(
                    f"  {writers:>2} writer(s) {kind:<11} {setup:<17}: "
                    f"{run['tps'] or 0:,.0f} inserts/s"
                )
    return runs


def _median_tps(runs: list[dict[str, Any]], kind: str, writers: int, setup: str) -> float | None:
    values = [
        r["tps"]
        for r in runs
        if r["table"] == kind and r["writers"] == writers and r["setup"] == setup and r["tps"]
    ]
    return float(np.median(values)) if values else None


def _pgbench(
    ctx: Context,
    pgbench: Path,
    kind: str,
    writers: int,
    repeat: int,
    relay: RelayServer | None,
    cpus: list[int] | None = None,
) -> dict[str, Any]:
    """One pgbench run into ``bench_write_<kind>``, emptied first."""
    cfg = ctx.cfg
    script = _empty_write_table(ctx, kind)
    cpu0 = common.cpu_seconds([relay.pid]) if relay else 0.0
    changes0 = _published_changes(relay) if relay else 0.0
    busy0 = sum(common.busy_seconds_per_cpu())
    began = time.time()
    done = subprocess.run(  # noqa: S603 - our own arguments
        _pgbench_argv(ctx, pgbench, writers, script),
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


def _empty_write_table(ctx: Context, kind: str) -> Path:
    """Empty ``bench_write_<kind>`` (and checkpoint); the pgbench script that inserts into it."""
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
    return script


def _pgbench_argv(ctx: Context, pgbench: Path, writers: int, script: Path) -> list[str]:
    return [
        str(pgbench),
        "-n",
        "-c",
        str(writers),
        "-j",
        str(min(writers, 2)),
        "-T",
        str(int(ctx.cfg.write_duration)),
        "-f",
        str(script),
        *ctx.db.libpq_args(),
        ctx.db.name,
    ]


def _published_changes(relay: RelayServer) -> float:
    metrics = relay.metrics()
    return sum(
        v
        for k, v in metrics.items()
        if k.startswith("relay_changes_total") and "bench_write_published" in k
    )


def psycopg_conn(db: Database) -> psycopg.Connection[TupleRow]:
    return psycopg.connect(db.url, autocommit=True)
