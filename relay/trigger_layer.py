"""The trigger layer on a database: which version is there, installing, upgrading, removing.

``nexus-relay install`` and ``uninstall`` call these, for applications that do
not run the Nexus migrations (they apply the same SQL, ``relay.sql``). Each
function runs in one transaction of the psycopg connection it is given, under
an advisory lock, so that two installers started at once do not both install:
the second finds the first's work and has nothing to do.

Versions: 1 sent changes as NOTIFY payloads, 2 writes them to the change log.
A layer of version 2 or later answers ``relay.version()``; an older one is
told by its objects (version 1 has ``relay.large_changes``, version 2
``relay.changes``; version 2 installed before ``relay.version()`` existed has
no function).
"""

from dataclasses import dataclass
from typing import Any

from relay import sql
from relay.core.errors import ConfigError

# Advisory locks of the class 1380273241 ("RELY") are the layer's (v2_objects.sql):
# 1 and 2 are the tick and the pruner; 3 is installing or removing the layer.
_LOCK = "SELECT pg_advisory_xact_lock(1380273241, 3)"

_FOUND = """
SELECT to_regnamespace('relay') IS NOT NULL AS schema,
       to_regclass('relay.publications') IS NOT NULL AS publications,
       to_regclass('relay.changes') IS NOT NULL AS changes,
       to_regclass('relay.large_changes') IS NOT NULL AS large_changes,
       to_regprocedure('relay.version()') IS NOT NULL AS version_function
"""


@dataclass(frozen=True, slots=True)
class Layer:
    """What a database holds: its trigger layer's version (None: no layer) and how
    many tables it publishes."""

    version: int | None
    published: int = 0


def found(conn: Any) -> Layer:
    """The trigger layer of the database ``conn`` (a psycopg connection) is on.

    Raises ``ConfigError`` when a schema ``relay`` is there but is not a trigger
    layer: nothing here may touch it.
    """
    row = conn.execute(_FOUND).fetchone()
    schema, publications, changes, large_changes, version_function = row
    if not schema:
        return Layer(None)
    if not publications:
        raise ConfigError(
            "the database has a schema relay that is not a Nexus Relay trigger layer"
            " (no relay.publications): rename it, or use another database"
        )
    published = conn.execute("SELECT count(*) FROM relay.publications").fetchone()[0]
    if version_function:
        return Layer(int(conn.execute("SELECT relay.version()").fetchone()[0]), published)
    if changes:
        return Layer(2, published)
    if large_changes:
        return Layer(1, published)
    raise ConfigError("the database's schema relay is a trigger layer of no version known here")


def install(conn: Any) -> str:
    """Install the current version, or upgrade an older one (as migration 0006
    does, keeping what is published); a no-op when it is there. What was done,
    in a sentence. Refuses a newer version than this package's."""
    with conn.transaction():
        conn.execute(_LOCK)
        layer = found(conn)
        if layer.version is None:
            sql.run(conn, sql.install())
            return f"installed the trigger layer, version {sql.VERSION} (schema relay)"
        if layer.version == sql.VERSION:
            return (
                f"the trigger layer is already installed (version {sql.VERSION},"
                f" {_tables(layer.published)} published): nothing to do"
            )
        if layer.version > sql.VERSION:
            raise _newer(layer.version)
        sql.run(conn, sql.upgrade_from_v1())
        return (
            f"upgraded the trigger layer from version {layer.version} to {sql.VERSION};"
            f" {_tables(layer.published)} still published"
        )


def uninstall(conn: Any) -> str:
    """Remove the layer: every capture trigger and function, the change log, the
    schema ``relay``. What was done, in a sentence; a no-op without a layer."""
    with conn.transaction():
        conn.execute(_LOCK)
        layer = found(conn)
        if layer.version is None:
            return "no trigger layer is installed (no schema relay): nothing to do"
        if layer.version > sql.VERSION:
            raise _newer(layer.version)
        sql.run(conn, sql.uninstall() if layer.version == 2 else sql.read("v1_uninstall"))
        return (
            f"removed the trigger layer (version {layer.version}): schema relay, its change"
            f" log, and the triggers of {_tables(layer.published)}"
        )


def _tables(count: int) -> str:
    return f"{count} table" if count == 1 else f"{count} tables"


def _newer(version: int) -> ConfigError:
    return ConfigError(
        f"the database has the trigger layer version {version}, newer than this"
        f" nexus-relay's ({sql.VERSION}): use a nexus-relay of that version or later"
    )
