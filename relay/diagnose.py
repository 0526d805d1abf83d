"""``nexus-relay diagnose``: the seed's "failure matrix", as a command.

Checks, in the order a change travels, and says what to do about each problem:
the database, the trigger layer, what is published (and whether its triggers
are in place), the policies, the notification queue, and a running relay.
"""

import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

from relay.core import policy, tables
from relay.core.errors import ConfigError, first_line


def published_tables(conn: psycopg.Connection[dict[str, Any]]) -> dict[str, tables.Table]:
    return tables.from_rows(conn.execute("SELECT * FROM relay.published_tables").fetchall())


class _Report:
    def __init__(self) -> None:
        self.problems = 0

    def ok(self, text: str) -> None:
        print(f"  ok       {text}")

    def problem(self, text: str, fix: str) -> None:
        self.problems += 1
        print(f"  PROBLEM  {text}\n           fix: {fix}")


def run(database_url: str | None, policy_file: Path | None, ops_url: str | None) -> int:
    report = _Report()
    database_url = (
        database_url or os.environ.get("RELAY_DATABASE_URL") or os.environ.get("DATABASE_URL")
    )
    policy_path = policy_file or (Path(p) if (p := os.environ.get("RELAY_POLICY_FILE")) else None)

    print("Database")
    published: dict[str, tables.Table] = {}
    if database_url is None:
        report.problem("no database URL", "pass --database-url or set RELAY_DATABASE_URL")
    else:
        try:
            with psycopg.connect(database_url, connect_timeout=5, row_factory=dict_row) as conn:
                published = _check_database(conn, report)
        except psycopg.Error as exc:
            report.problem(f"cannot connect: {first_line(exc)}", "check the URL and the server")

    print("Policies")
    if policy_path is None:
        report.problem("no policy file", "pass --policy-file or set RELAY_POLICY_FILE")
    else:
        _check_policies(policy_path, published, report)

    print("Relay")
    if ops_url is None:
        print("  (skipped: pass --ops-url to check a running relay)")
    else:
        _check_relay(ops_url, report)

    print()
    print("No problem found." if report.problems == 0 else f"{report.problems} problem(s).")
    return 0 if report.problems == 0 else 1


def _check_database(
    conn: psycopg.Connection[dict[str, Any]], report: _Report
) -> dict[str, tables.Table]:
    """Check the server, trigger layer, triggers, queue and relays; return what is published."""
    version = conn.execute("SHOW server_version").fetchone()
    report.ok(f"PostgreSQL {version['server_version'] if version else '?'} answers")
    has_layer = conn.execute("SELECT to_regclass('relay.published_tables') AS v").fetchone()
    if not has_layer or has_layer["v"] is None:
        report.problem(
            "the trigger layer (schema relay) is not installed",
            "run the migrations: alembic upgrade head",
        )
        return {}
    published = published_tables(conn)
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
    _check_log(conn, report)
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
    return published


def _check_log(conn: psycopg.Connection[dict[str, Any]], report: _Report) -> None:
    """The change log: its size, how far back clients can resume, whether relays read it."""
    row = conn.execute(
        "SELECT pg_total_relation_size('relay.changes') AS bytes,"
        " (SELECT count(*) FROM relay.ticks) AS ticks,"
        " (SELECT now() - min(at) FROM relay.ticks) AS kept,"
        " (SELECT now() - max(at) FROM relay.ticks) AS since_tick,"
        " (SELECT count(*) FROM relay.changes c, relay.ticks t"
        "   WHERE t.id = (SELECT max(id) FROM relay.ticks)"
        "     AND NOT pg_visible_in_snapshot(c.xid, t.snapshot)) AS unread"
    ).fetchone()
    assert row is not None
    report.ok(f"the change log: {row['bytes'] / 2**20:.1f} MiB, resumable back {_ago(row['kept'])}")
    if row["unread"] and row["since_tick"].total_seconds() > 10:
        report.problem(
            f"{row['unread']} committed changes wait in the log, the last tick"
            f" {_ago(row['since_tick'])} ago: no relay is reading it",
            "start a relay, or see its log (nexus-relay serve)",
        )


def _ago(delta: Any) -> str:
    seconds = delta.total_seconds() if delta is not None else 0.0
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _check_policies(path: Path, published: dict[str, tables.Table], report: _Report) -> None:
    try:
        policies = policy.load(path)
    except ConfigError as exc:
        report.problem(str(exc), "fix the policy file")
        return
    report.ok(f"{path} loads: {len(policies.tables)} tables")
    for name in sorted(published):
        if name not in policies.tables:
            report.problem(
                f"{name} is published but has no policy: nobody can subscribe to it",
                f'add [tables."{name}"] visible = "..." to {path}',
            )
    for problem in policies.check_against(published):
        report.problem(problem, "fix the policy, or publish the parent it names")


def _check_relay(ops_url: str, report: _Report) -> None:
    try:
        with urllib.request.urlopen(f"{ops_url.rstrip('/')}/readyz", timeout=5) as response:  # noqa: S310
            state = json.load(response)
        report.ok(f"ready at position {state['position']}, {state['connections']} connections")
    except urllib.error.HTTPError as exc:
        state = json.load(exc)
        report.problem(f"not ready: {state}", "is PostgreSQL reachable from the relay? see its log")
    except (urllib.error.URLError, OSError) as exc:
        report.problem(f"cannot reach {ops_url}: {exc}", "is the relay running, on that ops port?")
