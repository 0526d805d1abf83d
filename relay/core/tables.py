"""What the relay knows of a published table: its name, events, key and columns.

Read from the view ``relay.published_tables`` when the relay connects, and
again when ``relay.publish`` or ``relay.unpublish`` runs. Changes of a table it
does not know (yet) are skipped: nobody can have subscribed to it.
"""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

# pg_type.typcategory (PostgreSQL docs, "pg_type"): how filters compare values.
NUMERIC = "N"
BOOLEAN = "B"
DATETIME = "D"
STRING = "S"


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type: str  # as format_type() renders it, e.g. "numeric(14,2)"
    category: str  # pg_type.typcategory


@dataclass(frozen=True, slots=True)
class Table:
    name: str  # "schema.table"
    events: frozenset[str]
    primary_key: tuple[str, ...]
    columns: Mapping[str, Column]
    parents: Mapping[str, str]  # alias -> foreign key column
    oid: int = 0  # pg_class.oid: how the log names it


def from_rows(rows: Iterable[Mapping[str, Any]]) -> dict[str, Table]:
    """Tables from rows of ``relay.published_tables``, by "schema.table"."""
    tables = {}
    for row in rows:
        name = f"{row['schemaname']}.{row['tablename']}"
        tables[name] = Table(
            name=name,
            events=frozenset(row["events"]),
            primary_key=tuple(row["primary_key"]),
            columns={
                c["name"]: Column(c["name"], c["type"], c["category"]) for c in row["columns"]
            },
            parents=dict(row["parents"]),
            oid=int(row["relid"]),
        )
    return tables


def qualified(name: str) -> str:
    """``name`` with its schema: a bare table name is in ``public``."""
    return name if "." in name else f"public.{name}"
