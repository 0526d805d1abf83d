# ruff: noqa: RUF001 - Greek and other look-alike letters, on purpose: case mapping is tested
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
import unicodedata
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
from relay.core import changes, filters, tables, values

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
        st.sampled_from(
            list("aAbBkKsSiI ß ẞİıΣ\N{GREEK SMALL LETTER SIGMA}ςéÉäÄǅǆ😀%_\\,()&\"'.*")
        ),
        st.characters(exclude_categories=["Cs"], exclude_characters="\0"),
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
# Offsets of every kind: half hours, local mean time in seconds (Amsterdam before
# 1937), the widest (Kiritimati +14, Manila until 1844 -15:56:08).
ZONES = [
    "UTC",
    "Europe/Amsterdam",
    "Asia/Kolkata",
    "America/St_Johns",
    "Pacific/Kiritimati",
    "Asia/Manila",
]


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
            pattern = sql.Literal(_sql_pattern(self.values[0]))
            condition = sql.SQL("{} {} {}").format(column, sql.SQL(self.op.upper()), pattern)
        elif self.op in ("match", "imatch", "isdistinct"):
            operator = {"match": "~", "imatch": "~*", "isdistinct": "IS DISTINCT FROM"}[self.op]
            condition = sql.SQL("{} {} {}").format(column, sql.SQL(operator), literals[0])
        else:
            condition = sql.SQL("{} {} {}").format(column, sql.SQL(SQL_OPS[self.op]), literals[0])
        return sql.SQL("NOT ({})").format(condition) if self.negated else condition


def _sql_pattern(pattern: str) -> str:
    """The filter's pattern in SQL: an unescaped * is % (PostgREST's spelling)."""
    return re.sub(r"(\\.)|\*", lambda m: m[1] or "%", pattern, flags=re.DOTALL)


REGEXES = st.sampled_from(
    ["^a", "ß$", "(?:ab|é)+", "[a-zß]", "\\d", "\\w+", "^.$", "k", "K", "[[:upper:]]", "^$", "s|i"]
)


@st.composite
def cases(draw: st.DrawFn) -> Case:
    column = draw(st.sampled_from(sorted(COLUMNS)))
    value = VALUES[column]
    row = None if draw(st.integers(0, 9)) == 0 else draw(ROWS[column])
    ops = ["eq", "neq", "in", "is", "isdistinct"]
    if column in ORDERED:
        ops += ["lt", "lte", "gt", "gte"] * 2
    if column in ("txt", "txt_c", "vc"):
        ops += ["like", "ilike", "match", "imatch"] * 3
    op = draw(st.sampled_from(ops))
    if op == "is":
        values = [draw(st.sampled_from(["null", "true", "false"] if column == "b" else ["null"]))]
    elif op == "in":
        values = draw(st.lists(value, min_size=1, max_size=4))
    elif op in ("like", "ilike"):
        values = [draw(st.one_of(TEXT, st.sampled_from(["%", "_", "%ß%", "%ς", "%σ", "i%"])))]
    elif op in ("match", "imatch"):
        values = [draw(st.one_of(TEXT, REGEXES))]
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
    except filters.FilterError:
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
    compared = check(database, batch, zone)
    event(f"compared {compared // 10 * 10}+ of {len(batch)}")


def check(database: Database, batch: list[Case], zone: str) -> int:
    """Compare the relay with PostgreSQL on ``batch``; the number of cases compared."""
    parsed = [relay(database, case) for case in batch]
    decided = [(case, f) for case, f in zip(batch, parsed, strict=True) if f is not None]
    # A literal without an offset is UTC to the relay; to PostgreSQL, it is in TimeZone.
    decided = [
        (case, f)
        for case, f in decided
        if zone == "UTC" or case.column != "tstz" or all(_has_offset(v) for v in case.values)
    ]
    if not decided:
        return 0
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
    return len(decided)


def _has_offset(value: str) -> bool:
    return "infinity" in value.lower() or bool(
        re.search(r":\d\d(\.\d*)?(Z|[+-]\d\d(:?\d\d)?)( BC)?$", value)
    )


KELVIN = "\N{KELVIN SIGN}"
SIGMA, FINAL_SIGMA = "\N{GREEK CAPITAL LETTER SIGMA}", "\N{GREEK SMALL LETTER FINAL SIGMA}"
SMALL_SIGMA = "\N{GREEK SMALL LETTER SIGMA}"
HARD = [
    # ilike compares lower() of both sides, character by character, by the ctype.
    Case("txt", "straße", "ilike", False, ["STRASSE"]),
    Case("txt", "STRASSE", "ilike", False, ["straße"]),
    Case("txt", "ẞ", "ilike", False, ["ß"]),
    Case("txt", f"Α{SIGMA}", "ilike", False, [f"α{FINAL_SIGMA}"]),
    Case("txt", f"Α{SIGMA}", "ilike", False, [f"α{SMALL_SIGMA}"]),
    Case("txt", f"{SIGMA}Α", "ilike", False, [f"%{SMALL_SIGMA}_"]),
    Case("txt", "İ", "ilike", False, ["i"]),
    Case("txt", "İstanbul", "ilike", False, ["i_stanbul"]),
    Case("txt", "É", "ilike", False, ["é"]),
    Case("txt_c", "É", "ilike", False, ["é"]),
    Case("txt", KELVIN, "ilike", False, ["k"]),
    Case("txt_c", KELVIN, "ilike", False, ["k"]),
    Case("txt_c", "ABC", "ilike", False, ["abc"]),
    Case("vc", "ǅ", "ilike", False, ["ǆ"]),
    Case("txt", "😀x", "like", False, ["_X"]),
    Case("txt", "😀x", "ilike", False, ["_X"]),
    # Text order is the code points'.
    Case("txt", "a", "lt", False, ["é"]),
    Case("txt", "Z", "lt", False, ["a"]),
    Case("txt_c", "é", "gt", False, ["z"]),
    Case("txt", "😀", "gt", False, ["\uffff"]),
    # Seven digits and more: rounded to the microsecond, half to even.
    Case("ts", "2020-01-01 00:00:00.0000015", "eq", False, ["2020-01-01T00:00:00.000002"]),
    Case("ts", "2020-01-01 00:00:00", "eq", False, ["2020-01-01T00:00:00.0000005"]),
    Case("ts", "2020-01-01 00:00:00.000002", "eq", False, ["2020-01-01T00:00:00.0000025"]),
    Case("ts", "2020-01-01 00:00:01", "eq", False, ["2020-01-01T00:00:00.9999995"]),
    Case(
        "tstz", "2020-01-01 00:00:00.000001+00", "eq", False, ["2020-01-01T00:00:00.00000050001Z"]
    ),
    # Infinities, BC and years after 9999.
    Case("ts", "infinity", "gt", False, ["294275-12-31T23:59:59"]),
    Case("ts", "-infinity", "lt", False, ["4713-01-01 BC"]),
    Case("ts", "infinity", "eq", False, ["Infinity"]),
    Case("tstz", "infinity", "in", False, ["-infinity", "infinity"]),
    Case("tstz", "-infinity", "lt", False, ["4713-01-01T00:00:00+14:00 BC"]),
    Case("tstz", "1800-01-01 00:00:00+00", "eq", False, ["1800-01-01T00:00:00Z"]),
    Case("tstz", "2020-01-01 00:00:00+00", "eq", False, ["2020-01-01T15:59:59+15:59:59"]),
    Case("tstz", "0044-03-15 12:00:00+05 BC", "eq", False, ["0044-03-15T07:00:00+00 BC"]),
    Case("d", "0044-03-15 BC", "lt", False, ["0001-01-01"]),
    Case("d", "0001-12-31 BC", "eq", False, ["0001-12-31 BC"]),
    Case("d", "0005-02-29 BC", "eq", False, ["0005-02-29 BC"]),  # 5 BC is year -4: leap
    Case("d", "20000-01-01", "gt", False, ["9999-12-31"]),
    Case("d", "infinity", "gt", False, ["294275-01-01"]),
    Case("d", "-infinity", "neq", False, ["-infinity"]),
    # A date ignores a time, a timestamp an offset.
    Case("d", "2020-01-01", "eq", False, ["2020-01-01T23:59:59.999999+05"]),
    Case("ts", "2020-01-01 12:00", "eq", False, ["2020-01-01T12:00:00+05:00"]),
    # NaN equals NaN and is above everything, infinity included.
    Case("num", "NaN", "eq", False, ["NaN"]),
    Case("num", "NaN", "gt", False, ["Infinity"]),
    Case("num", "99999999999.9999", "lt", False, ["inf"]),
    Case("num", "-99999999999.9999", "gt", False, ["-Infinity"]),
    Case("num", "1.5", "eq", False, ["1.50000"]),
    Case("num", "0.00005", "eq", False, ["0.0001"]),
    Case("num", "0.1", "eq", False, ["0.1000000000000000000001"]),
    Case("f8", "NaN", "eq", False, ["nan"]),
    Case("f8", "NaN", "gt", False, ["Infinity"]),
    Case("f8", "-0", "eq", False, ["0"]),
    Case("f8", "0.1", "eq", False, ["0.1000000000000000055511151231257827"]),
    Case("f8", "5e-324", "gt", False, ["0"]),
    Case("i8", "9007199254740993", "eq", False, ["9007199254740992"]),
    Case("i8", "9223372036854775807", "in", False, ["9223372036854775807"]),
    Case(
        "u",
        "0f0e0d0c-0b0a-4908-8706-050403020100",
        "eq",
        False,
        ["{0F0E0D0C-0B0A-4908-8706-050403020100}"],
    ),
    Case("mood", "ok", "in", False, ["sad", "ok"]),
    Case("b", None, "is", True, ["true"]),
    # IS DISTINCT FROM: NULL is a value.
    Case("i4", None, "isdistinct", False, ["1"]),
    Case("i4", None, "isdistinct", True, ["1"]),
    Case("num", "NaN", "isdistinct", False, ["NaN"]),
    Case("tstz", "2020-01-01 00:00:00+00", "isdistinct", True, ["2020-01-01T01:00:00+01:00"]),
    # Regular expressions: the ends of the text, ASCII case only, 0-9 only.
    Case("txt", "a\n", "match", False, ["a$"]),
    Case("txt", "a\nb", "match", False, ["a.b"]),
    Case("txt", KELVIN, "imatch", False, ["k"]),
    Case("txt_c", KELVIN, "imatch", False, ["k"]),
    Case("txt_c", "K", "imatch", False, ["[a-z]"]),
    Case("txt_c", "é", "match", False, ["^\\w$"]),
    Case("txt", "\N{ARABIC-INDIC DIGIT THREE}", "match", False, ["\\d"]),
    Case("vc", None, "match", True, ["a"]),
]


@pytest.mark.parametrize("zone", ["UTC", "Asia/Manila"])
def test_hard_cases_decide_what_postgresql_decides(database: Database, zone: str) -> None:
    # Literals without an offset are left out elsewhere than in UTC (see check()).
    hard = [
        c
        for c in HARD
        if zone == "UTC" or c.column != "tstz" or all(_has_offset(v) for v in c.values)
    ]
    assert check(database, hard, zone) == len(hard)


def test_lower_is_postgresqls_for_every_character(database: Database) -> None:
    """ilike's lower() is PostgreSQL's for every code point, by the text columns' ctypes."""
    everything = "".join(chr(c) for c in range(1, 0x110000) if not 0xD800 <= c <= 0xDFFF)
    for column in ("txt", "txt_c"):
        lower = values.kind(database.table.columns[column]).lower
        assert lower is not None
        query = sql.SQL("SELECT lower({} COLLATE {})").format(
            sql.Literal(everything),
            sql.Identifier(database.table.columns[column].collation.name),  # type: ignore[union-attr]
        )
        row = database.conn.execute(query).fetchone()
        database.conn.rollback()
        assert row is not None
        expected = row[0]
        assert len(expected) == len(everything)
        differ = [
            c for c, a, b in zip(everything, expected, lower(everything), strict=True) if a != b
        ]
        # Only where the server's C library knows characters that Python does not
        # (none with glibc 2.36 and Python 3.11: both Unicode 14); ilike refuses
        # patterns with those.
        assert [c for c in differ if unicodedata.category(c) != "Cn"] == [], column


def _column(type_: str, collation: tables.Collation | None = None) -> tables.Column:
    return tables.Column("v", type_, "S" if collation else "N", collation)


C_UTF8 = tables.Collation("default", "c", "C.UTF-8", "C.UTF-8", None)
PG_C_UTF8 = tables.Collation("pg_c_utf8", "b", "", "", "C.UTF-8")
ICU = tables.Collation("und-x-icu", "i", "", "", "und")
EN_US = tables.Collation("en_US", "c", "en_US.UTF-8", "en_US.UTF-8", None)
NONDETERMINISTIC = tables.Collation("ci", "i", "", "", "und-u-ks-level2", deterministic=False)


@pytest.mark.parametrize(
    ("column", "text", "message"),
    [
        (_column("real"), "v=eq.1", "does not compare values of type real"),
        (_column("numeric"), "v=eq.1", "numeric(p,s) with p at most 15"),
        (_column("numeric(20,2)"), "v=eq.1", "numeric(p,s) with p at most 15"),
        (_column("time without time zone"), "v=eq.12:00", "type time without time zone"),
        (_column("interval"), "v=eq.1 day", "type interval"),
        (_column("money"), "v=eq.1", "type money"),
        (_column("character(3)", EN_US), "v=eq.a", "type character(3)"),
        (_column("citext", EN_US), "v=eq.a", "type citext"),
        (_column("text", EN_US), "v=lt.a", "lt orders values as en_US does"),
        (_column("text", EN_US), "v=ilike.a", "lower() of en_US"),
        (_column("text", ICU), "v=gte.a", "gte orders values as und-x-icu does"),
        (_column("text"), "v=gt.a", "gt orders values as an unknown collation does"),
        (_column("text"), "v=ilike.a", "lower() of an unknown collation"),
        (_column("text", PG_C_UTF8), "v=ilike.a", "lower() of pg_c_utf8"),
        (_column("text", C_UTF8), "v=ilike.%\U00010d50%", "lower() of U+10D50"),
        (_column("text", NONDETERMINISTIC), "v=eq.a", "text of collation ci"),
        (_column("timestamp with time zone"), "v=gt.294276-01-01", "years from 4713 BC"),
        (_column("date"), "v=lt.4714-12-01 BC", "years from 4713 BC"),
        (_column("numeric(10,2)"), "v=eq." + "1" * 1001, "up to 1000 digits"),
    ],
)
def test_what_the_relay_cannot_decide_is_refused(
    column: tables.Column, text: str, message: str
) -> None:
    table = tables.Table("public.t", frozenset({"INSERT"}), ("v",), {"v": column}, {})
    with pytest.raises(filters.UnsupportedFilter, match=re.escape(message)):
        filters.parse(text, table)
    assert filters.parse("v=is.null", table).match({"v": None}) is True


@pytest.mark.parametrize(
    ("type_", "text", "message"),
    [
        ("integer", "v=eq.1.5", "not an integer"),
        ("smallint", "v=eq.40000", "out of range for type smallint"),
        ("double precision", "v=eq.1e400", "out of range"),
        ("double precision", "v=eq.1e-400", "out of range"),
        ("numeric(10,2)", "v=eq.-NaN", "a NaN has no sign"),
        ("numeric(10,2)", "v=eq.1e1001", "an exponent beyond 1000"),
        ("date", "v=eq.2023-02-29", "is not a date the relay reads"),
        ("date", "v=eq.0000-01-01", "is not a date the relay reads"),
        ("timestamp with time zone", "v=eq.+infinity", "not a timestamp with time zone"),
        ("timestamp with time zone", "v=eq.2020-01-01T24:00:00", "not a timestamp"),
        ("uuid", "v=eq.0f0e0d0c", "not a uuid"),
        ("integer", "v=like.1%", "like needs a text column"),
        ("integer", "v=is.true", "is.true needs a boolean column"),
    ],
)
def test_what_postgresql_would_refuse_is_invalid(type_: str, text: str, message: str) -> None:
    table = tables.Table("public.t", frozenset({"INSERT"}), ("v",), {"v": _column(type_)}, {})
    with pytest.raises(filters.FilterError, match=re.escape(message)) as excinfo:
        filters.parse(text, table)
    assert not isinstance(excinfo.value, filters.UnsupportedFilter)
