"""SQL of the relay's trigger layer, applied by ``nexus-relay install``
(relay/trigger_layer.py) or by an application's migrations (the Nexus ones).

Version 2 (the change log) is current; version 1 (changes as NOTIFY payloads)
is kept for migrations that installed it and upgrade from it. A layer of
version 2 answers ``relay.version()``. ``relay.broadcast`` (``v2_broadcast.sql``)
came later within version 2: ``install`` has it, and ``add_broadcast`` adds it to
a version 2 installed without it (migration 0009).
"""

from importlib.resources import files
from typing import Any

VERSION = 2

# Re-publishes what relay.publications lists, with the current capture.
REPUBLISH = """
DO $$
DECLARE
    p record;
BEGIN
    FOR p IN SELECT rel, events, parents FROM relay.publications LOOP
        PERFORM relay.publish(p.rel, p.events, p.parents);
    END LOOP;
END
$$;
"""


def read(name: str) -> str:
    """The text of ``relay/sql/<name>.sql``, e.g. ``read("v2_uninstall")``."""
    return files(__name__).joinpath(f"{name}.sql").read_text(encoding="utf-8")


def install() -> str:
    """Installs the current version on a database without a trigger layer."""
    return read("v2_install") + read("v2_objects") + add_broadcast()


def upgrade_from_v1() -> str:
    """Turns version 1 into version 2 as it first was (migration 0006), keeping
    what is published; ``add_broadcast`` then makes it current."""
    return read("v1_to_v2") + read("v2_objects") + REPUBLISH


def add_broadcast() -> str:
    """``relay.broadcast``, on a version 2 with or without it (it replaces it)."""
    return read("v2_broadcast")


def remove_broadcast() -> str:
    return "DROP FUNCTION IF EXISTS relay.broadcast(text, text, jsonb, boolean);\n"


def uninstall() -> str:
    return read("v2_uninstall")


def run(connection: Any, script: str) -> None:
    """Run ``script`` on a psycopg connection, as it is: without parameters, since
    PL/pgSQL full of ``%`` and JSON would read as placeholders. In the
    connection's transaction."""
    connection.execute(script)
