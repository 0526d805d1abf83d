"""The writer: inserts changes into the published Nexus tables at a set rate.

    python -m bench.writer --url URL --rate CHANGES_PER_S --duration S \\
        --tenants T --users-per-tenant U

Every tick (10 ms) it commits one transaction with the rows due since the last
one, drawn at random (seeded) over the tenants:

- a payment between two different tenants: reaches both tenants' users
  (``from_id = claims.tenant_id or to_id = claims.tenant_id``);
- a notification for the whole tenant (``user_id`` NULL): reaches the tenant's users;
- a notification for one user: reaches that user.

The mix is given by ``--mix payments,tenant_notifications,user_notifications``.
At the end it prints one JSON line: what it wrote, per tenant and per user, so
that the orchestrator can tell how many messages the subscribers must receive.
"""

import argparse
import json
import sys
import time
from dataclasses import dataclass

import numpy as np
import psycopg
from psycopg.rows import TupleRow

from bench.common import tenant_id, user_id

PAYMENTS_SQL = (
    "INSERT INTO nexus_payments (from_id, to_id, amount, reference)"
    " SELECT f, t, 125.50, 'bench' FROM unnest(%s::text[], %s::text[]) AS u(f, t)"
)
NOTIFICATIONS_SQL = (
    "INSERT INTO nexus_notifications (tenant_id, user_id, notification_type, title, body)"
    " SELECT t, u, 'bench_event', 'Benchmark notification', 'A change to deliver'"
    " FROM unnest(%s::text[], %s::text[]) AS x(t, u)"
)


@dataclass
class Batch:
    """One transaction's rows: payments (from, to) and notifications (tenant, user or None)."""

    payments: tuple[list[str], list[str]]
    notifications: tuple[list[str], list[str | None]]


class Workload:
    """Draws the rows at random (seeded) over the tenants, and counts whom they reach."""

    def __init__(self, tenants: int, users_per_tenant: int, mix: str, seed: int) -> None:
        shares = np.array([float(x) for x in mix.split(",")])
        self.mix = shares / shares.sum()
        self.tenants = tenants
        self.per = users_per_tenant
        self.rng = np.random.default_rng(seed)
        self.tenant_names = [tenant_id(t) for t in range(tenants)]
        # Rows that reach every user of the tenant; rows for one user (global index).
        self.tenant_counts = np.zeros(tenants, dtype=np.int64)
        self.user_counts: dict[int, int] = {}
        self.kinds = np.zeros(3, dtype=np.int64)  # payments, tenant and user notifications

    def draw(self, count: int) -> Batch:
        rng, tenants, per = self.rng, self.tenants, self.per
        kind = rng.choice(3, size=count, p=self.mix)
        n_pay = int((kind == 0).sum())
        n_tn = int((kind == 1).sum())
        n_un = int((kind == 2).sum())
        self.kinds += (n_pay, n_tn, n_un)
        frm = rng.integers(0, tenants, n_pay)
        to = (frm + rng.integers(1, tenants, n_pay)) % tenants if tenants > 1 else frm
        notif_tenants = rng.integers(0, tenants, n_tn + n_un)
        notif_users = notif_tenants[n_tn:] * per + rng.integers(0, per, n_un)
        np.add.at(self.tenant_counts, frm, 1)
        np.add.at(self.tenant_counts, to, 1)
        np.add.at(self.tenant_counts, notif_tenants[:n_tn], 1)
        for g in notif_users.tolist():
            self.user_counts[g] = self.user_counts.get(g, 0) + 1
        names = self.tenant_names
        return Batch(
            payments=([names[t] for t in frm.tolist()], [names[t] for t in to.tolist()]),
            notifications=(
                [names[t] for t in notif_tenants.tolist()],
                [None] * n_tn + [user_id(g) for g in notif_users.tolist()],
            ),
        )

    def counts(self) -> dict[str, int]:
        return {
            "payments": int(self.kinds[0]),
            "tenant_notifications": int(self.kinds[1]),
            "user_notifications": int(self.kinds[2]),
        }


def insert(conn: psycopg.Connection[TupleRow], batch: Batch) -> None:
    """One transaction: the batch's payments, then its notifications."""
    with conn.cursor() as cur:
        if batch.payments[0]:
            cur.execute(PAYMENTS_SQL, batch.payments)
        if batch.notifications[0]:
            cur.execute(NOTIFICATIONS_SQL, batch.notifications)
    conn.commit()


@dataclass
class Pace:
    """How the writer kept its rate."""

    started: float
    finished: float = 0.0
    rows: int = 0
    transactions: int = 0
    busy: float = 0.0  # seconds spent drawing, inserting and committing
    max_lag: float = 0.0  # rows


def write(
    conn: psycopg.Connection[TupleRow],
    workload: Workload,
    rate: float,
    duration: float,
    tick_s: float,
) -> Pace:
    """Every tick, commit the rows due since the last one, for ``duration`` seconds."""
    pace = Pace(started=time.time())
    print(json.dumps({"started": pace.started}), flush=True)
    end = pace.started + duration
    tick = pace.started
    while True:
        now = time.time()
        if now >= end:
            break
        # Rows due up to now: the rate holds even when a tick runs late.
        count = int(rate * (now - pace.started)) - pace.rows
        if count > 0:
            began = time.time()
            insert(conn, workload.draw(count))
            pace.rows += count
            pace.transactions += 1
            pace.busy += time.time() - began
        lag = rate * (time.time() - pace.started) - pace.rows
        pace.max_lag = max(pace.max_lag, lag) if rate else 0.0
        tick += tick_s
        pause = tick - time.time()
        if pause > 0:
            time.sleep(pause)
        elif pause < -1.0:
            tick = time.time()  # far behind: do not try to catch up in a burst
    pace.finished = time.time()
    return pace


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--rate", type=float, required=True, help="changes (rows) per second")
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--tenants", type=int, required=True)
    parser.add_argument("--users-per-tenant", type=int, required=True)
    parser.add_argument("--mix", default="0.5,0.25,0.25")
    parser.add_argument("--tick", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    workload = Workload(args.tenants, args.users_per_tenant, args.mix, args.seed)
    with psycopg.connect(args.url, autocommit=False) as conn:
        conn.execute("SET synchronous_commit = on")
        conn.commit()
        pace = write(conn, workload, args.rate, args.duration, args.tick)
    elapsed = max(pace.finished - pace.started, 1e-9)
    report = {
        "finished": pace.finished,
        "started": pace.started,
        "rows": pace.rows,
        "transactions": pace.transactions,
        **workload.counts(),
        "achieved_rate": pace.rows / elapsed,
        "busy_fraction": pace.busy / elapsed,
        "max_lag_rows": pace.max_lag,
        "tenant_counts": workload.tenant_counts.tolist(),
        "user_counts": {str(k): v for k, v in workload.user_counts.items()},
    }
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
