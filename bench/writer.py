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

import numpy as np
import psycopg

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

    mix = np.array([float(x) for x in args.mix.split(",")])
    mix = mix / mix.sum()
    tenants = args.tenants
    per = args.users_per_tenant
    rng = np.random.default_rng(args.seed)
    tenant_names = [tenant_id(t) for t in range(tenants)]
    tenant_counts = np.zeros(tenants, dtype=np.int64)  # rows that reach every user of the tenant
    user_counts: dict[int, int] = {}
    kinds = np.zeros(3, dtype=np.int64)
    rows = transactions = 0
    max_lag = 0.0
    busy = 0.0

    with psycopg.connect(args.url, autocommit=False) as conn:
        conn.execute("SET synchronous_commit = on")
        conn.commit()
        start = time.time()
        print(json.dumps({"started": start}), flush=True)
        end = start + args.duration
        tick = start
        while True:
            now = time.time()
            if now >= end:
                break
            # Rows due up to now: the rate holds even when a tick runs late.
            elapsed = now - start
            target = args.rate * elapsed
            count = int(target) - rows
            if count > 0:
                began = time.time()
                kind = rng.choice(3, size=count, p=mix)
                n_pay = int((kind == 0).sum())
                n_tn = int((kind == 1).sum())
                n_un = int((kind == 2).sum())
                kinds += (n_pay, n_tn, n_un)
                frm = rng.integers(0, tenants, n_pay)
                to = (frm + rng.integers(1, tenants, n_pay)) % tenants if tenants > 1 else frm
                notif_tenants = rng.integers(0, tenants, n_tn + n_un)
                notif_users = notif_tenants[n_tn:] * per + rng.integers(0, per, n_un)
                np.add.at(tenant_counts, frm, 1)
                np.add.at(tenant_counts, to, 1)
                np.add.at(tenant_counts, notif_tenants[:n_tn], 1)
                for g in notif_users.tolist():
                    user_counts[g] = user_counts.get(g, 0) + 1
                with conn.cursor() as cur:
                    if n_pay:
                        cur.execute(
                            PAYMENTS_SQL,
                            (
                                [tenant_names[t] for t in frm.tolist()],
                                [tenant_names[t] for t in to.tolist()],
                            ),
                        )
                    if n_tn + n_un:
                        cur.execute(
                            NOTIFICATIONS_SQL,
                            (
                                [tenant_names[t] for t in notif_tenants.tolist()],
                                [None] * n_tn + [user_id(g) for g in notif_users.tolist()],
                            ),
                        )
                conn.commit()
                rows += count
                transactions += 1
                busy += time.time() - began
            max_lag = max(max_lag, args.rate * (time.time() - start) - rows) if args.rate else 0.0
            tick += args.tick
            pause = tick - time.time()
            if pause > 0:
                time.sleep(pause)
            elif pause < -1.0:
                tick = time.time()  # far behind: do not try to catch up in a burst
        finished = time.time()

    print(
        json.dumps(
            {
                "finished": finished,
                "started": start,
                "rows": rows,
                "transactions": transactions,
                "payments": int(kinds[0]),
                "tenant_notifications": int(kinds[1]),
                "user_notifications": int(kinds[2]),
                "achieved_rate": rows / max(finished - start, 1e-9),
                "busy_fraction": busy / max(finished - start, 1e-9),
                "max_lag_rows": max_lag,
                "tenant_counts": tenant_counts.tolist(),
                "user_counts": {str(k): v for k, v in user_counts.items()},
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
