"""What the database says is published, as the relay, the CLI and diagnose read it.

The queries are shared by the relay's reader (asyncio) and the commands
(blocking); turning their rows into the core's types is done here, at the door.
"""

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import psycopg

from relay.core import tables
from relay.core.policy import ParentColumns, Problem

# The published tables, with the collation of each collatable column: the
# view predates collations, and what names a locale differs across versions
# (datlocale from PostgreSQL 17, daticulocale before), hence to_jsonb.
PUBLISHED_TABLES = """
SELECT t.*, (
    SELECT jsonb_object_agg(a.attname, jsonb_build_object(
               'name', co.collname,
               'provider', CASE WHEN co.collprovider = 'd'
                                THEN coalesce(d.j->>'datlocprovider', 'c')
                                ELSE co.collprovider::text END,
               'collate', CASE WHEN co.collprovider = 'd' THEN d.j->>'datcollate'
                               ELSE co.collcollate END,
               'ctype', CASE WHEN co.collprovider = 'd' THEN d.j->>'datctype'
                             ELSE co.collctype END,
               'locale', CASE WHEN co.collprovider = 'd'
                              THEN coalesce(d.j->>'datlocale', d.j->>'daticulocale')
                              ELSE coalesce(to_jsonb(co)->>'colllocale',
                                            to_jsonb(co)->>'colliculocale') END,
               'deterministic', co.collisdeterministic))
      FROM pg_attribute a
      JOIN pg_collation co ON co.oid = a.attcollation
     CROSS JOIN (SELECT to_jsonb(db) AS j FROM pg_database db
                  WHERE db.datname = current_database()) d
     WHERE a.attrelid = t.relid AND a.attnum > 0 AND NOT a.attisdropped
) AS collations
FROM relay.published_tables t
"""

# Each published parent (relay.publish(..., parents => '{"alias": "fk_column"}')):
# the table and column its foreign key points at, found as the capture function
# finds them (relay.capture_source, relay/sql/v2_objects.sql), and that table's
# columns.
PARENTS = """
SELECT p.schemaname || '.' || p.tablename AS "table",
       e.key AS alias,
       e.value AS fk_column,
       f.confrelid::regclass::text AS parent,
       ra.attname::text AS parent_column,
       ARRAY(SELECT a.attname::text FROM pg_attribute a
              WHERE a.attrelid = f.confrelid AND a.attnum > 0 AND NOT a.attisdropped
              ORDER BY a.attnum) AS columns
  FROM relay.published_tables p
 CROSS JOIN LATERAL jsonb_each_text(p.parents) AS e(key, value)
  JOIN LATERAL (
       SELECT c.confrelid, c.confkey
         FROM pg_constraint c
         JOIN pg_attribute la ON la.attrelid = c.conrelid AND la.attnum = c.conkey[1]
        WHERE c.conrelid = p.relid AND c.contype = 'f' AND cardinality(c.conkey) = 1
          AND la.attname = e.value
        LIMIT 1) f ON true
  JOIN pg_attribute ra ON ra.attrelid = f.confrelid AND ra.attnum = f.confkey[1]
"""


def published(
    conn: psycopg.Connection[dict[str, Any]],
) -> tuple[dict[str, tables.Table], ParentColumns]:
    """The published tables, and the columns of their parents (a blocking read)."""
    found = tables.from_rows(conn.execute(PUBLISHED_TABLES).fetchall())
    return found, parent_columns(conn.execute(PARENTS).fetchall())


def describe(problem: Problem) -> str:
    """One line: what is wrong, then which table, policy and column."""
    where = [f"table {problem.table}"]
    if problem.column is not None:
        where.append(f"column {problem.column}")
    if problem.policy is not None:
        where.append(f'policy "{problem.policy}"')
    return f"{problem} ({', '.join(where)})"


def parent_columns(rows: Iterable[Mapping[str, Any]]) -> ParentColumns:
    """The columns of each published parent, by (table, alias), from rows of ``PARENTS``."""
    return {(row["table"], row["alias"]): frozenset(row["columns"]) for row in rows}


def log_problems(logger: logging.Logger, problems: Iterable[Problem]) -> None:
    """One WARNING per problem, with its table, policy and column as fields."""
    for problem in problems:
        logger.warning(
            "%s: subscriptions to this table are refused",
            problem,
            extra={"fields": problem.fields()},
        )
