"""``nexus-relay install`` and ``uninstall``, as a platform team runs them on a
database of its own: idempotent, versioned, and leaving nothing behind."""

import secrets
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import make_url

from relay import sql, trigger_layer
from relay.core.errors import ConfigError
from tests.support import WAIT

CLI = str(Path(sys.executable).parent / "nexus-relay")

APP_SCHEMA = """
CREATE TABLE items (id bigint PRIMARY KEY, name text NOT NULL);
CREATE TABLE notes (id bigint PRIMARY KEY, item_id bigint REFERENCES items, body text);
"""


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, *args], capture_output=True, text=True, timeout=4 * WAIT, check=False
    )


def layer_objects(url: str) -> dict[str, Any]:
    """What of the trigger layer is in the database: its schema, triggers and functions."""
    with psycopg.connect(url) as conn:
        row = conn.execute("""
            SELECT to_regnamespace('relay') IS NOT NULL,
                   (SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'relay%'),
                   (SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                     WHERE n.nspname = 'relay'),
                   (SELECT count(*) FROM pg_proc WHERE prosrc LIKE '%relay.changes%')
        """).fetchone()
    assert row is not None
    return {"schema": row[0], "triggers": row[1], "functions": row[2], "captures": row[3]}


@pytest.fixture
def app_database(new_database: Callable[[], str]) -> str:
    """A database of an application that is not Nexus: two tables, no trigger layer."""
    url = new_database()
    with psycopg.connect(url) as conn:
        conn.execute(APP_SCHEMA)
    return url


def test_install_then_install_again_is_a_no_op(app_database: str) -> None:
    first = run("install", "--database-url", app_database)
    assert first.returncode == 0, first.stderr
    assert first.stdout == "nexus-relay: installed the trigger layer, version 2 (schema relay)\n"
    with psycopg.connect(app_database) as conn:
        conn.execute("SELECT relay.publish('items')")
        assert conn.execute("SELECT relay.version()").fetchone() == (sql.VERSION,)
        log_id = conn.execute("SELECT id FROM relay.log").fetchone()

    again = run("install", "--database-url", app_database)
    assert again.returncode == 0, again.stderr
    assert again.stdout == (
        "nexus-relay: the trigger layer is already installed (version 2, 1 table published):"
        " nothing to do\n"
    )
    with psycopg.connect(app_database) as conn:
        # The same log: positions that clients hold stay valid.
        assert conn.execute("SELECT id FROM relay.log").fetchone() == log_id
        assert conn.execute("SELECT count(*) FROM relay.publications").fetchone() == (1,)


def test_install_upgrades_version_1_keeping_what_is_published(app_database: str) -> None:
    with psycopg.connect(app_database) as conn:
        sql.run(conn, sql.read("v1_install"))
        conn.execute("""SELECT relay.publish('notes', parents => '{"item": "item_id"}')""")
    with psycopg.connect(app_database, autocommit=True) as conn:
        assert trigger_layer.found(conn) == trigger_layer.Layer(1, 1)

    result = run("install", "--database-url", app_database)
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        "nexus-relay: upgraded the trigger layer from version 1 to 2; 1 table still published\n"
    )
    with psycopg.connect(app_database) as conn:
        assert conn.execute("SELECT relay.version()").fetchone() == (2,)
        assert conn.execute("SELECT parents FROM relay.publications").fetchone() == (
            {"item": "item_id"},
        )
        conn.execute("INSERT INTO items VALUES (1, 'one')")
        conn.execute("INSERT INTO notes VALUES (1, 1, 'logged')")
        logged = conn.execute(
            "SELECT op, new->>'body', parents->'item'->>'name' FROM relay.changes"
        )
        assert logged.fetchall() == [("INSERT", "logged", "one")]


def test_a_version_2_layer_without_a_version_function_is_version_2(app_database: str) -> None:
    # As migration 0006 installed it before relay.version() existed.
    with psycopg.connect(app_database, autocommit=True) as conn:
        sql.run(conn, sql.install())
        conn.execute("DROP FUNCTION relay.version()")
        assert trigger_layer.found(conn) == trigger_layer.Layer(2, 0)
        assert "nothing to do" in trigger_layer.install(conn)


def test_a_newer_layer_is_refused_and_left_alone(app_database: str) -> None:
    with psycopg.connect(app_database) as conn:
        sql.run(conn, sql.install())
        conn.execute(
            "CREATE OR REPLACE FUNCTION relay.version() RETURNS integer"
            " LANGUAGE sql AS $$ SELECT 3 $$"
        )
    for command in (["install"], ["uninstall", "--yes"]):
        result = run(*command, "--database-url", app_database)
        assert result.returncode == 2
        assert result.stderr == (
            "nexus-relay: the database has the trigger layer version 3, newer than this"
            " nexus-relay's (2): use a nexus-relay of that version or later\n"
        )
    assert layer_objects(app_database)["schema"]


def test_a_schema_relay_of_something_else_is_refused(app_database: str) -> None:
    with psycopg.connect(app_database) as conn:
        conn.execute("CREATE SCHEMA relay; CREATE TABLE relay.mine (id int)")
    with psycopg.connect(app_database, autocommit=True) as conn:
        with pytest.raises(ConfigError, match="not a Nexus Relay trigger layer"):
            trigger_layer.install(conn)
        with pytest.raises(ConfigError, match="not a Nexus Relay trigger layer"):
            trigger_layer.uninstall(conn)
        assert conn.execute("SELECT to_regclass('relay.mine')").fetchone() == ("relay.mine",)


def test_uninstall_asks_for_yes_then_removes_everything(app_database: str) -> None:
    assert run("install", "--database-url", app_database).returncode == 0
    with psycopg.connect(app_database) as conn:
        conn.execute("""SELECT relay.publish('items'),
                               relay.publish('notes', parents => '{"item": "item_id"}')""")
    before = layer_objects(app_database)
    assert before["triggers"] == 4
    assert before["captures"] > 0

    unconfirmed = run("uninstall", "--database-url", app_database)
    assert unconfirmed.returncode == 1
    assert "run again with --yes" in unconfirmed.stderr
    assert layer_objects(app_database) == before

    done = run("uninstall", "--yes", "--database-url", app_database)
    assert done.returncode == 0, done.stderr
    assert done.stdout == (
        "nexus-relay: removed the trigger layer (version 2): schema relay, its change log,"
        " and the triggers of 2 tables\n"
    )
    assert layer_objects(app_database) == {
        "schema": False,
        "triggers": 0,
        "functions": 0,
        "captures": 0,
    }
    with psycopg.connect(app_database) as conn:
        # The application's tables and rows are its own: untouched, and writable.
        conn.execute("INSERT INTO items VALUES (2, 'two')")
        assert conn.execute("SELECT count(*) FROM items").fetchone() == (1,)

    again = run("uninstall", "--yes", "--database-url", app_database)
    assert again.returncode == 0
    assert "nothing to do" in again.stdout


def test_uninstall_removes_version_1_too(app_database: str) -> None:
    with psycopg.connect(app_database) as conn:
        sql.run(conn, sql.read("v1_install"))
        conn.execute("SELECT relay.publish('items')")
    with psycopg.connect(app_database, autocommit=True) as conn:
        assert "version 1" in trigger_layer.uninstall(conn)
    assert layer_objects(app_database)["schema"] is False
    assert layer_objects(app_database)["triggers"] == 0


def test_a_role_without_the_rights_is_told_which_it_needs(
    app_database: str, server_url: str
) -> None:
    role = f"nobody_{secrets.token_hex(4)}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {role} LOGIN")
        try:
            as_nobody = as_role(app_database, role)
            refused = run("install", "--database-url", as_nobody)
            assert refused.returncode == 2
            assert "run it as the relay's role, with CREATE on the database" in refused.stderr
            assert run("install", "--database-url", app_database).returncode == 0
            with psycopg.connect(app_database) as conn:
                conn.execute("SELECT relay.publish('items')")
            refused = run("uninstall", "--yes", "--database-url", as_nobody)
            assert refused.returncode == 2
            assert "owns the published tables" in refused.stderr
        finally:
            admin.execute(f"DROP ROLE {role}")


def as_role(url: str, role: str) -> str:
    return make_url(url).set(username=role, password=None).render_as_string(hide_password=False)


def test_without_a_database_url_it_says_so() -> None:
    env_free = subprocess.run(
        [CLI, "install"], capture_output=True, text=True, env={}, timeout=4 * WAIT, check=False
    )
    assert env_free.returncode == 2
    assert "pass --database-url or set RELAY_DATABASE_URL" in env_free.stderr


def test_a_database_that_does_not_answer_is_a_clear_error() -> None:
    result = run("install", "--database-url", "postgresql://nobody@127.0.0.1:1/none")
    assert result.returncode == 2
    assert result.stderr.startswith("nexus-relay: cannot install the trigger layer: ")
