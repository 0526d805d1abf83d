"""Run the benchmark: ``python -m bench.run --quick`` (under 5 minutes) or ``--full``.

Writes bench/results/latest.json, latest.md and the plots (and a copy named
after the mode); a full run also updates the results block of bench/README.md.
Raw data (every message's commit and receive time, logs, the profile) goes to
bench/results/raw/<mode>/, which git ignores.

Every process the run starts is stopped when it ends, also on error and on
Ctrl-C (SIGINT) or SIGTERM.
"""

import argparse
import json
import os
import shutil
import sys
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from bench import common, machine, profiling, report, rooms, scenarios
from bench import log as change_log
from bench.common import CHILDREN, RAW, log
from bench.database import Database
from bench.harness import Config

SCENARIOS = (
    "authorized",
    "supabase",
    "broadcast",
    "presence",
    "ceiling",
    "baseline",
    "write",
    "log",
)
# Scenarios measured by size: the key of their results.
BY_SIZE = {
    "authorized": "authorized",
    "supabase": "supabase",
    "broadcast": "broadcast",
    "presence": "presence",
    "ceiling": "ceiling",
    "baseline": "baseline",
}


def config(mode: str, args: argparse.Namespace) -> Config:
    if mode == "quick":
        # About 3.5 minutes on a quiet machine; no waiting for quiet, no repeats.
        cfg = Config(
            mode="quick",
            sizes=[200, 500],
            client_processes=2,
            warmup=1.0,
            window=3.0,
            drain_max=8.0,
            ladder_start=5000.0,
            ladder_max=80_000.0,
            bisect_steps=1,
            bisect_largest_only=True,
            ceiling_sizes=[500],
            baseline_sizes=[500],
            baseline_bisect_steps=0,
            baseline_scale=50_000.0,
            quiet_wait=0.0,
            retries=0,
            confirm_misses=False,
            write_duration=3.0,
            write_repeats=1,
            profile_duration=5.0,
            broadcast_sizes=[500],
            presence_sizes=[500],
            broadcast_ladder_start=10_000.0,
        )
    else:
        cfg = Config(
            mode="full",
            sizes=[500, 2000, 10_000],
            client_processes=4,
            warmup=3.0,
            window=10.0,
            drain_max=30.0,
            ladder_start=2500.0,
            ladder_max=160_000.0,
            bisect_steps=2,
            ceiling_sizes=[500, 2000, 10_000],
            baseline_sizes=[500, 2000, 10_000],
            baseline_bisect_steps=1,
            baseline_scale=25_000.0,
            quiet_wait=10.0,
            retries=2,
            write_duration=10.0,
            write_repeats=2,
            profile_duration=20.0,
            broadcast_sizes=[2000, 10_000],
            presence_sizes=[2000, 10_000],
            broadcast_ladder_start=10_000.0,
        )
    if args.sizes:
        cfg.sizes = [int(x) for x in args.sizes.split(",")]
        cfg.ceiling_sizes = [s for s in cfg.ceiling_sizes if s in cfg.sizes] or cfg.sizes[-1:]
        cfg.baseline_sizes = [s for s in cfg.baseline_sizes if s in cfg.sizes] or cfg.sizes[-1:]
        cfg.broadcast_sizes = cfg.sizes[-1:]
        cfg.presence_sizes = cfg.sizes[-1:]
    if args.window:
        cfg.window = args.window
    if args.warmup is not None:
        cfg.warmup = args.warmup
    if args.no_pin:
        cfg.pin = False
    if args.no_profile:
        cfg.profile = False
    return cfg


def how(cfg: Config) -> dict[str, Any]:
    mix = cfg.mix
    total = sum(mix)
    u = cfg.users_per_tenant
    return {
        "cores": (
            f"CPU {common.SERVER_CPUS[0]} ran the server under test alone (the relay, the bare "
            "broadcast or the baseline: one process, one event loop); "
            f"CPU {common.LOAD_CPUS[0]} ran the load: PostgreSQL, the writer, "
            f"{cfg.client_processes} load-client processes and the orchestrator "
            "(sched_setaffinity). Other developers' processes were not pinned and may run on "
            "either: each step records their CPU use. The write-path scenario ran three ways: "
            "no listener and the relay listening with everything unpinned (PostgreSQL and "
            "pgbench on both CPUs), then the relay on CPU 0 and PostgreSQL and pgbench on "
            "CPU 1."
            if cfg.pin
            else "Not pinned: every process shared both CPUs."
        ),
        "workload": (
            f"{u} users per tenant, C/{u} tenants; each connection is one user with the portal's "
            "two subscriptions (nexus_notifications and nexus_payments, no filter: the policies "
            "decide). The writer commits every 10 ms the rows due at the offered rate, drawn at "
            f"random: {mix[0] / total:.0%} payments between two tenants (reach both tenants' "
            f"users: {2 * u} messages), {mix[1] / total:.0%} notifications for a whole tenant "
            f"({u} messages), {mix[2] / total:.0%} notifications for one user (1 message): "
            f"{cfg.fanout:.2f} messages per change. A rate is sustained when p95 commit→receive "
            f"<= {cfg.latency_limit_ms:g} ms over the window, every expected message arrived, no "
            "connection was lost, and the writer kept the rate. Latency: the client's "
            "time.time() at receipt minus the change's commit_timestamp (the transaction's "
            "now(), i.e. its start: an upper bound), same clock, one machine. Window: "
            f"{cfg.window:g} s after {cfg.warmup:g} s of warm-up."
        ),
        "clients": (
            "bench/loadclient.py: websockets' sans-I/O client protocol driven from an "
            "asyncio.Protocol on uvloop, "
            f"{cfg.client_processes} processes, each holding C/{cfg.client_processes} "
            "connections from its own loopback address (127.0.0.11, .12, ...)."
        ),
        "relay_settings": (
            "RELAY_MAX_CONNECTIONS=20000, RELAY_MAX_CONNECTIONS_PER_USER=100, others default "
            "(RELAY_MAX_SEND_BUFFER_BYTES 1 MiB, ping 20 s, log level INFO)"
        ),
        "supabase": (
            "Supabase Realtime's protocol on the relay's /realtime/v1/websocket (?apikey=<an "
            "anon key>&vsn=2.0.0), the same load-client structure. postgres_changes: the "
            "authorized scenario's users, workload, ladder and measurement, each connection "
            "joining realtime:changes with a postgres_changes binding per table and its user's "
            "token as access_token. Broadcast: members in rooms of "
            f"{cfg.room_size} (realtime:room:<n>, self false), at least "
            f'{cfg.senders_per_room} of each room sending {{"t": time.time()}}, each at '
            f"most {cfg.max_sends_per_member:g}/s (a member may broadcast 25/s), more of them "
            "as the rate grows; offered and delivered rates are deliveries/s (sends x "
            f"{cfg.room_size - 1}); latency send → receive. Presence: members "
            f"join realtime:lobby:<n> (rooms of {cfg.room_size}) with presence enabled and "
            "track; tracks acknowledged per second over the storm, and track → own "
            "presence_diff. Broadcast and presence run on a relay with two topic rules added "
            "to the portal's policy (room:{name}, lobby:{name}), its limits the defaults."
        ),
    }


def merge(previous: dict[str, Any], new: dict[str, Any], only: set[str]) -> dict[str, Any]:
    """The previous run's results with the scenarios of this one in their place."""
    merged = dict(previous)
    for scenario in only:
        key = BY_SIZE.get(scenario, "change_log" if scenario == "log" else "write_path")
        if key in new:
            if key not in BY_SIZE:
                merged[key] = new[key]
            else:  # by size: the sizes measured again replace theirs, the others stay
                merged[key] = {**(previous.get(key) or {}), **new[key]}
        merged["errors"] = {
            k: v for k, v in merged.get("errors", {}).items() if not k.startswith(key)
        } | {k: v for k, v in new.get("errors", {}).items() if k.startswith(key)}
    merged.setdefault("merged", []).append(
        {
            "scenarios": sorted(only),
            "sizes": new["config"]["sizes"],
            "date": new["date"],
            "git": new["git"],
            "load_average_at_start": new["machine"]["load_average_at_start"],
            "duration_s": new["duration_s"],
        }
    )
    merged["duration_s"] = round(previous.get("duration_s", 0) + new["duration_s"], 1)
    return merged


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description=__doc__.split("\n\n")[0]
    )
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--quick", action="store_true", help="small sizes, under 5 minutes")
    group.add_argument("--full", action="store_true", help="500, 2,000 and 10,000 connections")
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(SCENARIOS)}")
    parser.add_argument("--sizes", help="comma-separated connection counts (overrides the mode's)")
    parser.add_argument(
        "--database-url", help="a PostgreSQL server to use instead of the embedded one"
    )
    parser.add_argument(
        "--window", type=float, help="seconds measured per step (overrides the mode's)"
    )
    parser.add_argument(
        "--warmup", type=float, help="seconds of warm-up per step (overrides the mode's)"
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="rebuild bench/results/ from the raw data of the last run of this mode",
    )
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep the last run of this mode and replace only the scenarios of --only "
        "(e.g. to measure again one that other processes disturbed)",
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    parser.add_argument("--no-profile", action="store_true", help="skip the py-spy profile")
    parser.add_argument(
        "--no-readme", action="store_true", help="a full run: leave bench/README.md alone"
    )
    parser.add_argument(
        "--no-results",
        action="store_true",
        help="development: write raw data only, leave bench/results/*.json|md|png alone",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    cli = parser()
    args = cli.parse_args(argv)
    mode = "quick" if args.quick else "full"
    cfg = config(mode, args)
    only = set(args.only.split(",")) if args.only else set(SCENARIOS)
    unknown = only - set(SCENARIOS)
    if unknown:
        cli.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    fit_to_machine(cfg)
    raw = RAW / mode
    update_readme = mode == "full" and not args.no_readme
    if args.report_only:
        return report_only(raw, update_readme)
    previous: dict[str, Any] | None = None
    if args.merge:
        if not args.only:
            cli.error("--merge needs --only")
        previous = json.loads((raw / "results.json").read_text())
    else:
        shutil.rmtree(raw, ignore_errors=True)
    raw.mkdir(parents=True, exist_ok=True)
    common.install_signal_handlers()
    if cfg.pin:
        os.sched_setaffinity(0, common.LOAD_CPUS)

    began = time.time()
    results = first_results(mode, cfg)
    curves = measure(cfg, only, raw, args.database_url, results)
    if curves is None:
        return 130
    last_results(results, cfg, began)
    if previous is not None:
        results = merge(previous, results, only)
        (raw / "curves.npz").unlink(missing_ok=True)
        curves = report.curves_from_raw(raw, results)
    save_raw(raw, results, curves)
    if args.no_results:
        log(f"done in {results['duration_s']:.0f} s: raw results in {raw.relative_to(common.ROOT)}")
        return 0
    files = report.write_all(results, curves, update_readme=update_readme)
    log(
        f"done in {results['duration_s']:.0f} s: "
        + ", ".join(str(p.relative_to(common.ROOT)) for p in files.values())
    )
    print_headline(files["json"])
    return 0


def fit_to_machine(cfg: Config) -> None:
    """No pinning on one CPU; no profile without py-spy."""
    if cfg.pin and (os.cpu_count() or 1) < 2:
        cfg.pin = False
    if cfg.profile and not (common.VENV_BIN / "py-spy").exists():
        log("py-spy is not installed in the venv: no profile (pip install py-spy)")
        cfg.profile = False


def report_only(raw: Path, update_readme: bool) -> int:
    """``--report-only``: bench/results/ again from the last run's raw data."""
    results = json.loads((raw / "results.json").read_text())
    # The profiles again from py-spy's raw stacks: the areas may have been redrawn since.
    for size, found in results.get("authorized", {}).items():
        stacks = raw / f"relay-{size}.py-spy.txt"
        if isinstance(found, dict) and found.get("profile") and stacks.exists():
            found["profile"] = profiling.summarize(stacks) | {"step": found["profile"]["step"]}
    files = report.write_all(results, report.curves_from_raw(raw, results), update_readme)
    log("rebuilt: " + ", ".join(str(p.relative_to(common.ROOT)) for p in files.values()))
    return 0


def first_results(mode: str, cfg: Config) -> dict[str, Any]:
    """The results before anything is measured: the run, the machine, the commit."""
    return {
        "mode": mode,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "git": machine.git(),
        "machine": machine.describe(),
        "config": {
            k: v for k, v in vars(cfg).items() if k not in ("relay_env", "waited", "repeated")
        }
        | {"fanout": round(cfg.fanout, 3)},
        "how": how(cfg),
        "errors": {},
    }


def measure(
    cfg: Config, only: set[str], raw: Path, database_url: str | None, results: dict[str, Any]
) -> dict[str, np.ndarray] | None:
    """Run the scenarios of ``only`` on a database of their own, into ``results``; the
    latency curves for the CDF plot, or None when interrupted (Ctrl-C, SIGTERM)."""
    db: Database | None = None
    try:
        db = Database(database_url)
        sizes_needed = max(
            [
                *cfg.sizes,
                *cfg.ceiling_sizes,
                *cfg.baseline_sizes,
                *cfg.broadcast_sizes,
                *cfg.presence_sizes,
            ]
        )
        db.create(sizes_needed // cfg.users_per_tenant, cfg.users_per_tenant)
        if cfg.pin:
            for process in db.processes():
                common.pin(process.pid, common.LOAD_CPUS)
        results["postgres"] = db.facts()
        ctx = scenarios.Context(cfg, db, raw)
        run_scenarios(ctx, only, results)
        return ctx.curves
    except KeyboardInterrupt:
        log("interrupted: stopping every process this run started; no results written")
        return None
    finally:
        CHILDREN.stop_all()
        if db is not None:
            db.drop()


def run_scenarios(ctx: scenarios.Context, only: set[str], results: dict[str, Any]) -> None:
    """Each scenario of ``only``, each size from the smallest; one that fails is an error in
    ``results``, and the others still run."""
    cfg = ctx.cfg
    largest = max(cfg.sizes)
    fanouts = [
        (name, partial(_fanout, ctx, largest, name == "supabase"))
        for name in ("authorized", "supabase")
        if name in only
    ]
    if fanouts:
        # The same fan-out through our protocol and Supabase's, size by size, one after
        # the other: side by side, under the same conditions as far as a run allows.
        for name, _ in fanouts:
            results[name] = {}
        for size in sorted(cfg.sizes):
            for name, measure in fanouts:
                measure_sizes(ctx, results, name, [size], measure, keep=True)
    if "broadcast" in only:
        measure_sizes(ctx, results, "broadcast", cfg.broadcast_sizes, partial(rooms.broadcast, ctx))
    if "presence" in only:
        measure_sizes(ctx, results, "presence", cfg.presence_sizes, partial(rooms.presence, ctx))
    if "ceiling" in only:
        measure_sizes(
            ctx,
            results,
            "ceiling",
            cfg.ceiling_sizes,
            lambda size: scenarios.ceiling(ctx, size, ceiling_rates(cfg, results, size)),
        )
    if "baseline" in only:
        measure_sizes(
            ctx, results, "baseline", cfg.baseline_sizes, partial(scenarios.baseline, ctx)
        )
    if "write" in only:
        out = attempt(
            ctx.raw, results, "write path", "write_path", partial(scenarios.write_path, ctx)
        )
        if out is not None:
            results["write_path"] = out
    if "log" in only:
        out = attempt(
            ctx.raw, results, "change log", "change_log", partial(change_log.log_path, ctx)
        )
        if out is not None:
            results["change_log"] = out


def _fanout(ctx: scenarios.Context, largest: int, supabase: bool, size: int) -> dict[str, Any]:
    """The authorized fan-out at ``size``, through our protocol or Supabase's."""
    return scenarios.authorized(ctx, size, size == largest, supabase=supabase)


def measure_sizes(
    ctx: scenarios.Context,
    results: dict[str, Any],
    scenario: str,
    sizes: list[int],
    measure: Callable[[int], dict[str, Any]],
    keep: bool = False,
) -> None:
    """``measure(size)`` into ``results[scenario][size]``, each size from the smallest, the
    tables the writers fill emptied before each; ``keep``: the sizes already there stay."""
    if not keep:
        results[scenario] = {}
    for size in sorted(sizes):
        ctx.db.reset_changes()
        out = attempt(
            ctx.raw, results, f"{scenario} C={size}", f"{scenario}_{size}", partial(measure, size)
        )
        if out is not None:
            results[scenario][str(size)] = out


def ceiling_rates(cfg: Config, results: dict[str, Any], size: int) -> list[float]:
    """The reference rate, and the relay's highest sustained rate at ``size`` if it had one."""
    rates = [cfg.reference_rate]
    top = (results.get("authorized", {}).get(str(size)) or {}).get("max_sustained")
    if top:
        rates.append(top["offered_msgs_per_s"])
    return rates


def attempt(
    raw: Path,
    results: dict[str, Any],
    name: str,
    key: str,
    scenario: Callable[[], dict[str, Any]],
) -> dict[str, Any] | None:
    """``scenario()``, or None if it failed: the error goes to ``results["errors"][key]``,
    its traceback to ``raw``/error-<key>.txt, and every process it left is stopped."""
    try:
        return scenario()
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        log(f"{name} failed: {exc!r}")
        (raw / f"error-{key}.txt").write_text(traceback.format_exc())
        results["errors"][key] = f"{type(exc).__name__}: {exc}"
        CHILDREN.stop_all()
        return None


def last_results(results: dict[str, Any], cfg: Config, began: float) -> None:
    """What only the end of the run knows: its duration, the commit and the load then."""
    results["duration_s"] = round(time.time() - began, 1)
    at_end = machine.git()
    if at_end != results["git"]:
        results["git_at_end"] = at_end
        if at_end["relay_source_sha256"] != results["git"]["relay_source_sha256"]:
            results["errors"]["relay_source_changed"] = (
                "the relay's source (relay/) changed while the run went on: "
                "sizes measured later may have run other code"
            )
    results["config"]["quiet_waited_s"] = round(cfg.waited, 1)
    results["config"]["steps_repeated"] = cfg.repeated
    results["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]


def save_raw(raw: Path, results: dict[str, Any], curves: dict[str, np.ndarray]) -> None:
    """results.json and the curves, for ``--report-only`` and ``--merge``."""
    (raw / "results.json").write_text(json.dumps(results, indent=1, default=report.json_default))
    if curves:
        # allow_pickle: numpy's default, named so that mypy does not match **curves against it.
        np.savez_compressed(raw / "curves.npz", allow_pickle=True, **curves)


def print_headline(path: Path) -> None:
    """The headline figures and the targets, as written in ``path`` (latest.json)."""
    with open(path) as f:
        document = json.load(f)
    for key in report.KEYS:
        print(f"  {key} = {document[key]}")
    for row in document["targets"]:
        state = {True: "met", False: "MISSED", None: "not measured"}[row["met"]]
        by = f" ({row['missed_by']})" if row["missed_by"] else ""
        print(f"  target: {row['target']}: {state}{by}")


if __name__ == "__main__":
    sys.exit(main())
