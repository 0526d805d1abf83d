"""Filters decide what PostgreSQL decides, on every value.

For random rows and filters over columns of every type the relay compares —
with infinities, NaN, BC and five-digit years, seven-digit fractions of a
second, non-ASCII text (ß, İ, Σ/ς, accents, emoji) — PostgreSQL evaluates the
condition on the row in a real table, and the relay evaluates the filter on
that row as ``row_to_json`` renders it. They must agree, unknown included. A
filter the relay refuses is never compared; one it accepts and PostgreSQL
rejects is a failure. Each example is one round trip.
"""

import os
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st
from psycopg import sql

from portal import migrations
from relay import catalog
from relay.core import changes, filters, tables

EXAMPLES = int(os.environ.get("VALUES_EXAMPLES", "40"))
CASES = 40  # per example, in one statement

COLUMNS = {
    "i2": "smallint",
    "i4": "integer",
    "i8": "bigint",
    "num": "numeric(15,4)",
    "f8": "double precision",
    "b": "boolean",
    "d": "date",
    "ts": "timestamp",
    "tstz": "timestamptz",
    "txt": "text",
    "txt_c": 'text COLLATE "C"',
    "vc": "varchar(20)",
    "u": "uuid",
    "mood": "mood",
}


@dataclass
class Database:
    conn: psycopg.Connection[Any]
    table: tables.Table


@pytest.fixture(scope="module")
def database(new_database: Callable[[], str]) -> Iterator[Database]:
    url = new_database()
    migrations.upgrade(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy')")
        columns = ", ".join(f"{name} {type_}" for name, type_ in COLUMNS.items())
        conn.execute(f"CREATE TABLE filter_values (n int PRIMARY KEY, {columns})")
        conn.execute("SELECT relay.publish('filter_values')")
        rows = (
            conn.cursor(row_factory=psycopg.rows.dict_row)
            .execute(catalog.PUBLISHED_TABLES)
            .fetchall()
        )
        table = tables.from_rows(rows)["public.filter_values"]
        conn.autocommit = False
        yield Database(conn, table)


# --- Values, as literals both PostgreSQL and the relay read ----------------------------


def _digits(low: int, high: int) -> st.SearchStrategy[str]:
    return st.integers(low, high).map(str)


def integers(bits: int) -> st.SearchStrategy[str]:
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return st.one_of(
        st.sampled_from([str(low), str(high), "0", "-1", "+7", "007"]), _digits(low, high)
    )


SPECIAL_NUMBERS = ["NaN", "nan", "Infinity", "-Infinity", "inf", "-inf", "+Infinity", "0", "-0"]


def numerics() -> st.SearchStrategy[str]:
    decimal = st.builds(
        lambda sign, whole, fraction: f"{sign}{whole}.{fraction}",
        st.sampled_from(["", "-", "+"]),
        _digits(0, 99_999_999_998),
        st.text("0123456789", min_size=1, max_size=7),
    )
    return st.one_of(
        st.sampled_from([*SPECIAL_NUMBERS, "0.00005", "-0.00005", "0.00015", "1e3", "2.5E-3"]),
        decimal,
        _digits(-99_999_999_999, 99_999_999_999),
    )


def floats() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(
            [*SPECIAL_NUMBERS, "5e-324", "1.7976931348623157e308", "0.1", "1e-7", "-0.0"]
        ),
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
        st.integers(-(2**60), 2**60).map(str),
    )


@st.composite
def dates(draw: st.DrawFn) -> str:
    special = draw(st.sampled_from([None] * 8 + ["infinity", "-infinity", "+infinity", "Infinity"]))
    if special:
        return special
    bc = draw(st.booleans()) and draw(st.booleans())
    year = draw(
        st.one_of(
            st.integers(1, 4713 if bc else 9999),
            st.sampled_from([1, 44, 4713] if bc else [1, 1970, 2000, 2024, 9999, 10000, 294275]),
            st.integers(10_000, 294_275) if not bc else st.integers(1, 4713),
        )
    )
    month = draw(st.integers(1, 12))
    day = draw(st.integers(1, 31 if month != 2 else 29))
    astronomical = 1 - year if bc else year
    shifted = astronomical % 400 or 400
    if day > 28:  # a real day of that month: the calendar repeats every 400 years
        try:
            __import__("datetime").date(shifted, month, day)
        except ValueError:
            day = 28
    return f"{year:04d}-{month:02d}-{day:02d}" + (" BC" if bc else "")


@st.composite
def timestamps(draw: st.DrawFn, offsets: bool) -> str:
    day = draw(dates())
    if "infinity" in day.lower():
        return day
    day, bc = day.removesuffix(" BC"), day.endswith(" BC")
    time = ""
    if draw(st.integers(0, 5)):
        h, m, s = draw(st.integers(0, 23)), draw(st.integers(0, 59)), draw(st.integers(0, 59))
        fraction = draw(
            st.one_of(
                st.text("0123456789", max_size=9),
                st.sampled_from(["0000005", "0000015", "0000025", "9999995", "4999999", "5"]),
            )
        )
        time = f"{draw(st.sampled_from(['T', ' ']))}{h:02d}:{m:02d}:{s:02d}"
        time += f".{fraction}" if fraction else ""
    offset = ""
    if offsets and draw(st.booleans()):
        offset = draw(
            st.sampled_from(["Z", "+00:00", "+05:30", "-03", "+0530", "+14:00", "-12:00", "+01"])
        )
        time = time or "T00:00:00"
    return day + time + offset + (" BC" if bc else "")


TEXT = st.text(
    st.one_of(
        st.sampled_from(list("aAbBkKsSiI ß ẞİıΣσςéÉäÄǅǆ😀%_\\,()&\"'.*")),
        st.characters(exclude_categories=("Cs",), exclude_characters="\0"),
    ),
    max_size=8,
)


def uuids() -> st.SearchStrategy[str]:
    def spell(value: uuid.UUID, how: int) -> str:
        text = str(value)
        return [text, text.upper(), "{" + text + "}", value.hex][how]

    return st.builds(spell, st.uuids(), st.integers(0, 3))


VALUES: dict[str, st.SearchStrategy[str]] = {
    "i2": integers(16),
    "i4": integers(32),
    "i8": integers(64),
    "num": numerics(),
    "f8": floats(),
    "b": st.sampled_from(["true", "false"]),
    "d": dates(),
    "ts": timestamps(offsets=True),
    "tstz": timestamps(offsets=True),
    "txt": TEXT,
    "txt_c": TEXT,
    "vc": TEXT,
    "u": uuids(),
    "mood": st.sampled_from(["sad", "ok", "happy"]),
}
# numeric(p,s) holds NaN but no infinity (PostgreSQL docs, "Numeric Types").
# Rows hold only what PostgreSQL reads ("+infinity" is a timestamp from version 18 on).
ROWS = VALUES | {
    "num": VALUES["num"].filter(lambda v: "inf" not in v.lower()),
    **{c: VALUES[c].filter(lambda v: v != "+infinity") for c in ("d", "ts", "tstz")},
}
ORDERED = frozenset(COLUMNS) - {"b", "u", "mood"}  # b, u: eq only, for brevity
SQL_OPS = {"eq": "=", "neq": "<>", "lt": "<", "lte": "<=", "gt": ">", "gte": ">="}
ZONES = ["UTC", "Europe/Amsterdam", "Asia/Kolkata", "America/St_Johns", "Pacific/Kiritimati"]


@dataclass
class Case:
    column: str
    row: str | None  # the literal inserted; None: NULL
    op: str
    negated: bool
    values: list[str]  # the filter's literal(s)

    def filter(self) -> str:
        def quoted(value: str) -> str:
            return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'

        value = (
            "(" + ",".join(quoted(v) for v in self.values) + ")"
            if self.op == "in"
            else self.values[0]
            if self.op == "is"
            else quoted(self.values[0])
        )
        return f"{self.column}={'not.' if self.negated else ''}{self.op}.{value}"

    def condition(self) -> sql.Composable:
        column = sql.Identifier(self.column)
        literals = [sql.Literal(v) for v in self.values]
        if self.op == "is":
            condition = sql.SQL("{} IS {}").format(column, sql.SQL(self.values[0].upper()))
        elif self.op == "in":
            condition = sql.SQL("{} IN ({})").format(column, sql.SQL(", ").join(literals))
        elif self.op in ("like", "ilike"):
            condition = sql.SQL("{} {} {}").format(column, sql.SQL(self.op.upper()), literals[0])
        else:
            condition = sql.SQL("{} {} {}").format(column, sql.SQL(SQL_OPS[self.op]), literals[0])
        return sql.SQL("NOT ({})").format(condition) if self.negated else condition


@st.composite
def cases(draw: st.DrawFn) -> Case:
    column = draw(st.sampled_from(sorted(COLUMNS)))
    value = VALUES[column]
    row = None if draw(st.integers(0, 9)) == 0 else draw(ROWS[column])
    ops = ["eq", "neq", "in", "is"]
    if column in ORDERED:
        ops += ["lt", "lte", "gt", "gte"] * 2
    if column in ("txt", "txt_c", "vc"):
        ops += ["like", "ilike"] * 3
    op = draw(st.sampled_from(ops))
    if op == "is":
        values = [draw(st.sampled_from(["null", "true", "false"] if column == "b" else ["null"]))]
    elif op == "in":
        values = draw(st.lists(value, min_size=1, max_size=4))
    elif op in ("like", "ilike"):
        values = [draw(st.one_of(TEXT, st.sampled_from(["%", "_", "%ß%", "%ς", "%σ", "i%"])))]
    else:
        # Often the row's own value, or one spelled otherwise, so that eq can hold.
        values = [draw(value if row is None or draw(st.booleans()) else st.just(row))]
    return Case(column, row, op, draw(st.booleans()), values)


# --- The test ----------------------------------------------------------------------------


def postgresql(database: Database, batch: list[Case], zone: str) -> list[tuple[str, Any]]:
    """(row_to_json of the row, the condition's value) of each case, in one statement."""
    names = list(COLUMNS)
    rows = sql.SQL(", ").join(
        sql.SQL("({})").format(
            sql.SQL(", ").join(
                [sql.Literal(n)]
                + [sql.Literal(case.row if case.column == name else None) for name in names]
            )
        )
        for n, case in enumerate(batch)
    )
    conditions = sql.SQL(" ").join(
        sql.SQL("WHEN {} THEN {}").format(sql.Literal(n), case.condition())
        for n, case in enumerate(batch)
    )
    statement = sql.SQL(
        "WITH rows AS (INSERT INTO filter_values (n, {}) VALUES {} RETURNING *)"
        " SELECT row_to_json(rows)::text, CASE n {} END FROM rows ORDER BY n"
    ).format(sql.SQL(", ").join(map(sql.Identifier, names)), rows, conditions)
    conn = database.conn
    try:
        conn.execute(sql.SQL("SET LOCAL TimeZone = {}").format(sql.Literal(zone)))
        return [(text, value) for text, value in conn.execute(statement).fetchall()]
    finally:
        conn.rollback()


def relay(database: Database, case: Case) -> filters.Filter | None:
    try:
        return filters.parse(case.filter(), database.table)
    except filters.FilterError as exc:
        event(f"refused: {type(exc).__name__} {case.column} {case.op}")
        return None


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    # Shrinking a batch takes minutes; its failure names the case that differs.
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target],
    report_multiple_bugs=False,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(batch=st.lists(cases(), min_size=CASES, max_size=CASES), zone=st.sampled_from(ZONES))
def test_filters_decide_what_postgresql_decides(
    database: Database, batch: list[Case], zone: str
) -> None:
    parsed = [relay(database, case) for case in batch]
    decided = [(case, f) for case, f in zip(batch, parsed, strict=True) if f is not None]
    # A literal without an offset is UTC to the relay; to PostgreSQL, it is in TimeZone.
    decided = [
        (case, f)
        for case, f in decided
        if zone == "UTC" or case.column != "tstz" or all(_has_offset(v) for v in case.values)
    ]
    try:
        answers = postgresql(database, [case for case, _ in decided], zone)
    except psycopg.errors.DataError:
        for case, _ in decided:  # which one: the relay accepted what PostgreSQL refuses
            try:
                postgresql(database, [case], zone)
            except psycopg.errors.DataError as exc:
                raise AssertionError(f"{case.filter()}: PostgreSQL refuses it: {exc}") from exc
        raise
    for (case, filter_), (text, expected) in zip(decided, answers, strict=True):
        row = changes.row(text)
        assert row is not None
        assert filter_.match(row) is expected, f"{case.filter()} on {text} (row {case.row!r})"


def _has_offset(value: str) -> bool:
    return "infinity" in value.lower() or bool(
        re.search(r":\d\d(\.\d*)?(Z|[+-]\d\d(:?\d\d)?)( BC)?$", value)
    )
