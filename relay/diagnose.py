"""``nexus-relay diagnose``: the seed's "failure matrix", as a command.

Checks, in the order a change travels, and says what to do about each problem:
the database, the trigger layer, what is published (and whether its triggers
are in place), the change log's health, the policies, the notification queue,
a running relay, and what its metrics counted since it started (gaps,
refusals, connections it ended). A problem makes the command exit 1; a warning
(something that happened, and may happen again) does not.
"""

import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from prometheus_client.parser import text_string_to_metric_families
from psycopg.rows import dict_row

from relay import catalog
from relay.core import policy, tables
from relay.core.errors import ConfigError, first_line
from relay.core.policy import ParentColumns

Connection = psycopg.Connection[dict[str, Any]]

# The relay's defaults (relay/settings.py), when diagnose's environment does not set them.
DEFAULT_RETENTION_S = 3600.0
DEFAULT_LOG_MAX_BYTES = 1024**3

# Counters of a running relay worth a warning when not zero (relay/metrics.py),
# and what to do about them. Connections that ended normally are not.
COUNTERS = {
    "relay_gaps": "clients were told to re-fetch (gap); docs/troubleshooting.md says why by reason",
    "relay_refusals": "the relay's log (logger relay.refusals) says who was refused and why",
    "relay_disconnects": "the relay ended these connections; see docs/troubleshooting.md",
    "relay_errors": "unexpected exceptions: the relay's log has their tracebacks",
}
NORMAL_DISCONNECTS = frozenset(("client_closed", "going_away"))


class _Report:
    def __init__(self) -> None:
        self.problems = 0
        self.warnings = 0

    def ok(self, text: str) -> None:
        print(f"  ok       {text}")

    def warning(self, text: str, hint: str) -> None:
        self.warnings += 1
        print(f"  WARNING  {text}\n           {hint}")

    def problem(self, text: str, fix: str) -> None:
        self.problems += 1
        print(f"  PROBLEM  {text}\n           fix: {fix}")

    def skipped(self, text: str) -> None:
        print(f"  (skipped: {text})")


@dataclass
class _Target:
    """What to diagnose, and what the checks have found so far."""

    database_url: str | None
    policy_path: Path | None
    ops_url: str | None
    metrics_url: str | None
    retention: float
    log_max_bytes: int
    published: dict[str, tables.Table] = field(default_factory=dict)
    parents: ParentColumns = field(default_factory=dict)


def run(
    database_url: str | None,
    policy_file: Path | None,
    ops_url: str | None,
    metrics_url: str | None = None,
) -> int:
    """Run every check, print what each found; 1 if there is a problem, else 0."""
    target = _target(database_url, policy_file, ops_url, metrics_url)
    report = _Report()
    for title, check in (
        ("Database", _check_database),
        ("Policies", _check_policies),
        ("Relay", _check_relay),
        ("Since the relay started (its metrics)", _check_metrics),
    ):
        print(title)
        check(target, report)
    print()
    if report.problems:
        print(f"{report.problems} problem(s), {report.warnings} warning(s).")
    elif report.warnings:
        print(f"No problem found; {report.warnings} warning(s).")
    else:
        print("No problem found.")
    return 0 if report.problems == 0 else 1


def _target(
    database_url: str | None,
    policy_file: Path | None,
    ops_url: str | None,
    metrics_url: str | None,
) -> _Target:
    env = os.environ
    policy_file = policy_file or (Path(p) if (p := env.get("RELAY_POLICY_FILE")) else None)
    if metrics_url is None and ops_url is not None:
        metrics_url = f"{ops_url.rstrip('/')}/metrics"  # where the relay serves them
    try:
        retention = float(env.get("RELAY_LOG_RETENTION_S", DEFAULT_RETENTION_S))
        log_max_bytes = int(env.get("RELAY_LOG_MAX_BYTES", DEFAULT_LOG_MAX_BYTES))
    except ValueError as exc:
        raise ConfigError(f"RELAY_LOG_RETENTION_S or RELAY_LOG_MAX_BYTES: {exc}") from None
    return _Target(
        database_url=database_url or env.get("RELAY_DATABASE_URL") or env.get("DATABASE_URL"),
        policy_path=policy_file,
        ops_url=ops_url,
        metrics_url=metrics_url,
        retention=retention,
        log_max_bytes=log_max_bytes,
    )


# --- The database --------------------------------------------------------------------


def _check_database(target: _Target, report: _Report) -> None:
    if target.database_url is None:
        report.problem("no database URL", "pass --database-url or set RELAY_DATABASE_URL")
        return
    try:
        with psycopg.connect(target.database_url, connect_timeout=5, row_factory=dict_row) as conn:
            if not _check_layer(conn, report):
                return
            target.published, target.parents = catalog.published(conn)
            _check_triggers(conn, target.published, report)
            _check_log(conn, target, report)
            _check_queue(conn, report)
            _check_relay_connections(conn, report)
    except psycopg.Error as exc:
        report.problem(f"cannot connect: {first_line(exc)}", "check the URL and the server")


def _check_layer(conn: Connection, report: _Report) -> bool:
    """The server answers and the trigger layer is installed."""
    version = conn.execute("SHOW server_version").fetchone()
    report.ok(f"PostgreSQL {version['server_version'] if version else '?'} answers")
    has_layer = conn.execute("SELECT to_regclass('relay.published_tables') AS v").fetchone()
    if not has_layer or has_layer["v"] is None:
        report.problem(
            "the trigger layer (schema relay) is not installed",
            "nexus-relay install --database-url URL (or the Nexus migrations)",
        )
        return False
    return True


def _check_triggers(conn: Connection, published: dict[str, tables.Table], report: _Report) -> None:
    if not published:
        report.problem("no table is published", "SELECT relay.publish('your_table')")
    for name, table in sorted(published.items()):
        trigger = conn.execute(
            "SELECT 1 FROM pg_trigger WHERE tgrelid = %s::regclass AND tgname = 'relay_capture'",
            (name,),
        ).fetchone()
        if trigger:
            report.ok(f"{name} publishes {', '.join(sorted(table.events))}")
        else:
            report.problem(
                f"{name} is listed as published but has no trigger",
                f"SELECT relay.publish('{name}')",
            )


def _check_log(conn: Connection, target: _Target, report: _Report) -> None:
    """The change log: its size and oldest entry against what the relays keep
    (RELAY_LOG_RETENTION_S, RELAY_LOG_MAX_BYTES), how far back clients can
    resume, and whether relays read it."""
    row = conn.execute(
        "SELECT pg_total_relation_size('relay.changes') AS bytes,"
        " (SELECT reltuples FROM pg_class WHERE oid = 'relay.changes'::regclass) AS entries,"
        # The index on xid finds the oldest entry without reading the log.
        " (SELECT now() - at FROM relay.changes ORDER BY xid LIMIT 1) AS oldest,"
        " (SELECT now() - min(at) FROM relay.ticks) AS kept,"
        " (SELECT now() - max(at) FROM relay.ticks) AS since_tick,"
        " (SELECT count(*) FROM relay.changes c, relay.ticks t"
        "   WHERE t.id = (SELECT max(id) FROM relay.ticks)"
        "     AND NOT pg_visible_in_snapshot(c.xid, t.snapshot)) AS unread"
    ).fetchone()
    assert row is not None
    entries = max(int(row["entries"]), 0)  # -1: never vacuumed nor analyzed
    oldest_entry = (
        "no entry" if row["oldest"] is None else f"oldest entry {_ago(row['oldest'])} old"
    )
    report.ok(
        f"the change log: {row['bytes'] / 2**20:.1f} MiB, about {entries} entries,"
        f" {oldest_entry}, resumable back {_ago(row['kept'])}"
        f" (retention {_ago(target.retention)})"
    )
    # Relays prune every 30 s, to the retention: far older entries stay when
    # nobody prunes, or a transaction still open holds them (relay.prune).
    oldest = _seconds(row["oldest"])
    if oldest > 2 * target.retention + 60:
        report.problem(
            f"the log's oldest entry is {_ago(oldest)} old, the retention {_ago(target.retention)}:"
            " it is not pruned",
            "is a relay running? a long transaction open (pg_stat_activity.xact_start)?",
        )
    if row["bytes"] > 1.5 * target.log_max_bytes:
        report.problem(
            f"the log takes {row['bytes'] / 2**20:.0f} MiB, RELAY_LOG_MAX_BYTES"
            f" {target.log_max_bytes / 2**20:.0f} MiB",
            "is a relay running? autovacuum keeping up with relay.changes?",
        )
    if row["unread"] and _seconds(row["since_tick"]) > 10:
        report.problem(
            f"{row['unread']} committed changes wait in the log, the last tick"
            f" {_ago(row['since_tick'])} ago: no relay is reading it",
            "start a relay, or see its log (nexus-relay serve)",
        )


def _check_queue(conn: Connection, report: _Report) -> None:
    usage = conn.execute("SELECT pg_notification_queue_usage() AS u").fetchone()
    fraction = float(usage["u"]) if usage else 0.0
    if fraction < 0.1:
        report.ok(f"notification queue {fraction:.1%} used")
    else:
        report.problem(
            f"notification queue {fraction:.1%} used: a LISTEN session is not reading"
            " (the doorbell stops at half; relays then read every RELAY_POLL_INTERVAL_S)",
            "find it in pg_stat_activity (a LISTEN session idle in transaction?)",
        )


def _check_relay_connections(conn: Connection, report: _Report) -> None:
    listeners = conn.execute(
        "SELECT count(*) AS n FROM pg_stat_activity"
        " WHERE application_name = 'nexus-relay' AND datname = current_database()"
    ).fetchone()
    count = listeners["n"] if listeners else 0
    if count:
        report.ok(f"{count} relay connection(s) to this database")
    else:
        report.problem(
            "no relay is connected to this database",
            "start one: nexus-relay serve (and check RELAY_DATABASE_URL)",
        )


def _seconds(delta: Any) -> float:
    """An interval (or seconds) as seconds; None is 0."""
    if delta is None:
        return 0.0
    return float(delta if isinstance(delta, int | float) else delta.total_seconds())


def _ago(delta: Any) -> str:
    seconds = _seconds(delta)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


# --- The policies --------------------------------------------------------------------


def _check_policies(target: _Target, report: _Report) -> None:
    path = target.policy_path
    if path is None:
        report.problem("no policy file", "pass --policy-file or set RELAY_POLICY_FILE")
        return
    try:
        policies = policy.load(path)
    except ConfigError as exc:
        report.problem(str(exc), "fix the policy file")
        return
    report.ok(f"{path} loads: {len(policies.tables)} tables")
    for problem in policy.find_problems(policies, target.published, target.parents):
        if problem.policy is None:
            fix = f'add [tables."{problem.table}"] visible = "..." to {path}'
        else:
            fix = "fix the policy, or publish the parent it names"
        report.problem(catalog.describe(problem), fix)


# --- A running relay -----------------------------------------------------------------


def _check_relay(target: _Target, report: _Report) -> None:
    if target.ops_url is None:
        report.skipped("pass --ops-url to check a running relay")
        return
    ops_url = target.ops_url
    try:
        with urllib.request.urlopen(f"{ops_url.rstrip('/')}/readyz", timeout=5) as response:  # noqa: S310
            state = json.load(response)
        report.ok(f"ready at position {state['position']}, {state['connections']} connections")
    except urllib.error.HTTPError as exc:
        state = json.load(exc)
        report.problem(f"not ready: {state}", "is PostgreSQL reachable from the relay? see its log")
    except (urllib.error.URLError, OSError) as exc:
        report.problem(f"cannot reach {ops_url}: {exc}", "is the relay running, on that ops port?")


def _check_metrics(target: _Target, report: _Report) -> None:
    """Counters of gaps, refusals, ended connections and errors that are not zero."""
    if target.metrics_url is None:
        report.skipped("pass --ops-url or --metrics-url to read a running relay's metrics")
        return
    try:
        with urllib.request.urlopen(target.metrics_url, timeout=5) as response:  # noqa: S310
            text = response.read().decode()
    except (urllib.error.URLError, OSError) as exc:
        report.problem(
            f"cannot read {target.metrics_url}: {exc}", "is the relay running, on that ops port?"
        )
        return
    found = 0
    for family in text_string_to_metric_families(text):
        hint = COUNTERS.get(family.name)
        if hint is None:
            continue
        for sample in family.samples:
            if not sample.name.endswith("_total") or sample.value <= 0:
                continue
            if family.name == "relay_disconnects" and (
                sample.labels.get("reason") in NORMAL_DISCONNECTS
            ):
                continue
            labels = ", ".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            report.warning(f"{sample.name} {{{labels}}}: {sample.value:g}", hint)
            found += 1
    if not found:
        report.ok("no gap, refusal, error, nor connection ended by the relay")
