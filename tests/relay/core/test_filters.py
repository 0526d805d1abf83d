"""Subscription filters: every operator, not., AND, OR groups, types, errors; Supabase's dialect."""

import re
from typing import Any

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.core import filters, values
from relay.core.tables import Collation, Column, Table

OWNER = "0f0e0d0c-0b0a-4908-8706-050403020100"
C_UTF8 = Collation("default", "c", "C.UTF-8", "C.UTF-8", None)

TABLE = Table(
    name="public.payments",
    events=frozenset({"INSERT"}),
    primary_key=("id",),
    columns={
        c.name: c
        for c in (
            Column("id", "text", "S"),
            Column("status", "text", "S", C_UTF8),
            Column("reference", "text", "S", C_UTF8),
            Column("amount", "numeric(14,2)", "N"),
            Column("urgent", "boolean", "B"),
            Column("due_at", "timestamp with time zone", "D"),
            Column("owner", "uuid", "U"),
            Column("tags", "text[]", "A"),
            Column("meta", "jsonb", "U"),
        )
    },
    parents={},
)

ROW = {
    "id": "P1",
    "status": "pending",
    "reference": "Invoice, March (2026)",
    "amount": 120.5,
    "urgent": True,
    "due_at": "2026-03-01T12:00:00+01:00",
    "owner": None,
}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("status=eq.pending", True),
        ("status=eq.paid", False),
        ("status=neq.paid", True),
        ("amount=gt.120", True),
        ("amount=gt.120.5", False),
        ("amount=gte.120.5", True),
        ("amount=lt.121", True),
        ("amount=lte.120", False),
        ("amount=eq.120.50", True),
        ("status=in.(paid,pending)", True),
        ("status=in.(paid,approved)", False),
        ('reference=in.("Invoice, March (2026)",other)', True),
        ('reference=eq."Invoice, March (2026)"', True),
        ("reference=like.Invoice%", True),
        ("reference=like.invoice%", False),
        ("reference=ilike.invoice%", True),
        ("reference=ilike.*march*", True),
        ("reference=like.Invoice_ March%", True),
        ("status=like.pend_ng", True),
        ("owner=is.null", True),
        ("status=is.null", False),
        ("urgent=is.true", True),
        ("urgent=is.false", False),
        ("urgent=eq.true", True),
        ("due_at=gt.2026-03-01T10:59:00Z", True),
        ("due_at=gt.2026-03-01T11:00:00Z", False),
        ("due_at=lt.2026-03-02", True),
        ("status=not.eq.paid", True),
        ("status=not.in.(pending)", False),
        ("owner=not.is.null", False),
        ("status=eq.pending&amount=gt.100", True),
        ("status=eq.pending&amount=gt.200", False),
        ("or=(status.eq.paid,amount.gt.100)", True),
        ("or=(status.eq.paid,amount.gt.200)", False),
        ("and=(status.eq.pending,amount.gt.100)", True),
        ("or=(status.eq.paid,and(amount.gt.100,urgent.is.true))", True),
        ("or=(status.eq.paid,not.and(amount.gt.100,urgent.is.true))", False),
        ("not.or=(status.eq.paid,amount.gt.200)", True),
        ("status=eq.pending&or=(amount.lt.10,urgent.is.true)", True),
        ("status=match.^pe.d", True),
        ("status=match.^PE", False),
        ("status=imatch.^PE", True),
        ("status=not.match.ing$", False),
        # Unquoted, a backslash is itself; in double quotes, one is written as two.
        ("reference=match.\\(\\d{4}\\)$", True),
        ('reference=match."\\\\(\\\\d{4}\\\\)$"', True),
        ('reference=match."\\(\\d{4}\\)$"', False),
        ("reference=match.March|April", True),
        ("status=isdistinct.paid", True),
        ("status=isdistinct.pending", False),
        ("status=not.isdistinct.pending", True),
        ("owner=isdistinct." + OWNER, True),
        ("owner=not.isdistinct." + OWNER, False),
        ("amount=isdistinct.120.50", False),
        ("or=(status.match.^x,status.isdistinct.paid)", True),
    ],
)
def test_operators(text: str, expected: bool) -> None:
    assert filters.parse(text, TABLE).match(ROW) is expected


@pytest.mark.parametrize(
    ("text", "row", "expected"),
    [
        # SQL: a comparison with NULL is unknown, and so is its negation.
        (f"owner=eq.{OWNER}", {"owner": None}, None),
        (f"owner=not.eq.{OWNER}", {"owner": None}, None),
        ("owner=in.(" + OWNER + ")", {"owner": None}, None),
        ("amount=gt.1", {"amount": None}, None),
        (
            "or=(owner.eq." + OWNER + ",status.eq.pending)",
            {"owner": None, "status": "pending"},
            True,
        ),
        ("or=(owner.eq." + OWNER + ",status.eq.paid)", {"owner": None, "status": "pending"}, None),
        ("reference=like.x%", {"reference": None}, None),
        ("reference=match.x", {"reference": None}, None),
        ("reference=not.imatch.x", {"reference": None}, None),
        # IS DISTINCT FROM takes NULL for a value: never unknown.
        ("reference=isdistinct.x", {"reference": None}, True),
        ("reference=not.isdistinct.x", {"reference": None}, False),
        ("or=(owner.isdistinct." + OWNER + ",status.eq.paid)", {"owner": None}, True),
    ],
)
def test_null_is_unknown(text: str, row: dict[str, Any], expected: bool | None) -> None:
    assert filters.parse(text, TABLE).match(row) is expected


def test_equality_on_text_bounds_the_rows() -> None:
    assert filters.parse("status=eq.pending&amount=gt.1", TABLE).bounds == [
        (("row", "status"), "pending")
    ]
    assert filters.parse("status=not.eq.pending", TABLE).bounds == []
    assert filters.parse("amount=eq.1", TABLE).bounds == []
    assert filters.parse("or=(status.eq.a,status.eq.b)", TABLE).bounds == []
    assert filters.parse("status=not.isdistinct.a", TABLE).bounds == [(("row", "status"), "a")]
    assert filters.parse("status=isdistinct.a", TABLE).bounds == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "the filter is empty"),
        ("nope=eq.1", "public.payments has no column 'nope'"),
        ("status=equals.1", "'equals' is not an operator"),
        ("status", "write column=operator.value"),
        ("status=eq", "eq needs a value"),
        ("amount=gt.lots", "amount is numeric(14,2): 'lots' is not a number"),
        ("amount=gt.-nan", "a NaN has no sign"),
        ("urgent=eq.yes", "urgent is boolean: use true or false"),
        ("due_at=gt.soon", "'soon' is not a timestamp with time zone the relay reads"),
        ("status=is.maybe", "is takes null, true, false or unknown"),
        ("status=in.pending", "write in.(a,b,c)"),
        ("status=in.(" + ",".join(str(n) for n in range(101)) + ")", "at most 100 values"),
        ("amount=like.1%", "amount is numeric(14,2): like needs a text column"),
        ("or=(status.eq.a", "unbalanced '('"),
        ("or=(status.eq.a))", "unbalanced ')'"),
        ("or=()", "empty condition"),
        ('status=eq."open', "unterminated double quote"),
        ("status=eq.a&&amount=gt.1", "empty condition"),
        ("or=(statuseqa)", "inside a group, write column.operator.value"),
        ("x" * 5000, "longer than 4096"),
        ("&".join(["status=eq.a"] * 33), "more than 32 conditions"),
        ("tags=eq.x", "tags is text[]: filters compare scalar columns only"),
        ("meta=in.(a,b)", "meta is jsonb: filters compare scalar columns only"),
        ("or=(" + "or(" * 8 + "status.eq.a" + ")" * 9, "groups nest at most 8 deep"),
        ("or=(" + "or(" * 1000 + "status.eq.a" + ")" * 1001, "groups nest at most 8 deep"),
        ("reference=like.abc\\", "must not end with its escape character"),
        ('status=eq."a"b', "a value that starts with '\"' ends at its closing quote"),
        ("amount=match.1", "amount is numeric(14,2): match needs a text column"),
        ("urgent=imatch.t", "urgent is boolean: imatch needs a text column"),
        ('status=match."(a"', "status=match: unbalanced '('"),
        ("status=match.a{3,2}", "minimum exceeds its maximum"),
        ("amount=isdistinct.lots", "amount is numeric(14,2): 'lots' is not a number"),
    ],
)
def test_errors_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(filters.FilterError, match=re.escape(message)) as excinfo:
        filters.parse(text, TABLE)
    assert not isinstance(excinfo.value, filters.UnsupportedFilter)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("status=match.a\\b", "status=match: the escape \\b"),
        ("status=match.a{,3}", "does not start a bound"),
        ("status=imatch.é", "ignoring the case of 'é'"),
        ("status=match.\\w", "\\w: which characters are in it depends on the column's ctype"),
        ("id=imatch.p", "imatch ignores case as an unknown collation does"),
    ],
)
def test_patterns_postgresql_reads_otherwise_are_unsupported(text: str, message: str) -> None:
    with pytest.raises(filters.UnsupportedFilter, match=re.escape(message)):
        filters.parse(text, TABLE)


# --- Supabase's dialect: commas between conditions (protocol document, section 11) ----


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("status=eq.pending", True),
        ("status=eq.pending,amount=gt.100", True),
        ("status=eq.pending,amount=gt.200", False),
        ("status=in.(paid,pending),urgent=is.true", True),
        ("status=in.(paid, pending)", True),  # an array literal to Supabase: spaces go
        ('reference=eq."Invoice, March (2026)"', True),
        ('reference=in.("Invoice, March (2026)",other)', True),
        ("status=eq.pending , amount=gt.100 ", True),
        ("status=not.in.(draft,archived),owner=is.null", True),
        ("owner=not.is.null", False),
        ("status=match.^pend,status=imatch.ING$", True),
        ("status=not.isdistinct.pending,owner=isdistinct." + OWNER, True),
        # Our groups, kept as an extension.
        ("or=(status.eq.paid,amount.gt.100),urgent=is.true", True),
        ("or=(status.eq.paid, amount.gt.200)", False),
        # & is no separator here: a character of the value.
        ("status=eq.pending&amount=gt.1", False),
    ],
)
def test_supabase_dialect(text: str, expected: bool) -> None:
    parsed = filters.parse_supabase(text, TABLE)
    assert parsed is not None
    assert parsed.match(ROW) is expected


def test_supabase_dialect_reads_what_its_builder_writes() -> None:
    """Values as realtime-js's RealtimePostgresFilterBuilder quotes them (2.119.1):
    in double quotes if they hold , ( ) " \\ or surrounding spaces, \\ and " escaped."""

    def quote(value: str) -> str:
        if re.search(r'[,()"\\]', value) or value != value.strip():
            return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
        return value

    for value in ["a,b", 'say "hi"', "back\\slash", " padded ", "(x)", "a&b=c", "plain"]:
        parsed = filters.parse_supabase(f"status=eq.{quote(value)},urgent=is.true", TABLE)
        assert parsed is not None
        assert parsed.match({**ROW, "status": value}) is True, value
        assert parsed.match({**ROW, "status": value + "x"}) is False, value
    pattern = filters.parse_supabase("status=match." + quote("^\\(a\\)$"), TABLE)
    assert pattern is not None
    assert pattern.match({"status": "(a)"}) is True


@pytest.mark.parametrize("text", ["", " ", "\t\n"])
def test_supabase_blank_filter_is_no_filter(text: str) -> None:
    assert filters.parse_supabase(text, TABLE) is None
    with pytest.raises(filters.FilterError, match="the filter is empty"):
        filters.parse(text, TABLE)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("status=eq.a,,amount=gt.1", "empty condition around ','"),
        ("status=eq.a,", "empty condition around ','"),
        (",status=eq.a", "empty condition around ','"),
        ("status=eq.a, ,amount=gt.1", "empty condition around ','"),
        ("status=eq.a&&amount=gt.1", "'a&&amount' is not"),  # no separator: a value
        ("status", "write column=operator.value"),
        ("status=in.(a,,b)", "empty condition around ','"),
        ('status=eq."open', "unterminated double quote"),
        ("or=(status.eq.a", "unbalanced '('"),
        ("nope=eq.1,status=eq.a", "public.payments has no column 'nope'"),
        (",".join(["status=eq.a"] * 33), "more than 32 conditions"),
    ],
)
def test_supabase_errors_say_what_is_wrong(text: str, message: str) -> None:
    if "'a&&amount' is not" in message:
        # A text column takes any value: the & stays in it.
        parsed = filters.parse_supabase(text, TABLE)
        assert parsed is not None
        assert parsed.match({"status": "a&&amount=gt.1"}) is True
        return
    with pytest.raises(filters.FilterError, match=re.escape(message)):
        filters.parse_supabase(text, TABLE)


@pytest.mark.parametrize(
    "text",
    ["status=in.(a,null)", "status=in.(NULL)", "status=in.(a\\,b)", "status=in.({a})"],
)
def test_supabase_in_items_it_reads_otherwise_are_unsupported(text: str) -> None:
    with pytest.raises(filters.UnsupportedFilter, match="write it in double quotes"):
        filters.parse_supabase(text, TABLE)
    quoted = filters.parse_supabase('status=in.("null","a\\\\,b")', TABLE)
    assert quoted is not None
    assert quoted.match({"status": "null"}) is True
    assert quoted.match({"status": "a\\,b"}) is True


def test_supabase_filter_must_be_a_string() -> None:
    with pytest.raises(filters.FilterError, match="the filter is not a string"):
        filters.parse_supabase(None, TABLE)  # type: ignore[arg-type]


# --- LIKE: PostgreSQL's own answer, and no catastrophic backtracking -------------------

BACKSLASH = "\\"
LOWER = values.kind(TABLE.columns["status"]).lower
LIKE_CHARACTERS = st.sampled_from(["a", "b", "%", "_", BACKSLASH, "é", "Ä"])


@settings(max_examples=300, deadline=None)
@given(
    pattern=st.text(LIKE_CHARACTERS, max_size=8),
    text=st.text(st.sampled_from(["a", "b", "%", "_", BACKSLASH, "é", "Ä"]), max_size=10),
)
def test_like_answers_what_postgresql_answers(database_url: str, pattern: str, text: str) -> None:
    trailing_escapes = len(pattern) - len(pattern.rstrip(BACKSLASH))
    if trailing_escapes % 2:
        # A pattern ending with its escape character is invalid; PostgreSQL says
        # so only when matching reaches the end, the relay when it is subscribed.
        with pytest.raises(filters.FilterError, match="escape character"):
            filters.LikePattern(pattern)
        return
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT %s LIKE %s, %s ILIKE %s", (text, pattern, text, pattern)
        ).fetchone()
    assert row is not None
    assert filters.LikePattern(pattern).matches(text) is row[0]
    assert filters.LikePattern(pattern, lower=LOWER).matches(text) is row[1]


@pytest.mark.parametrize(
    ("pattern", "text"),
    [
        ("%a%a%a%a%a%a%a%a%b", "a" * 60),
        ("%a%a%b", "a" * 10_000),
        ("%" + "_%" * 30 + "b", "a" * 100_000),
    ],
)
def test_like_takes_linear_time_on_hostile_patterns(pattern: str, text: str) -> None:
    import time

    started = time.process_time()
    assert filters.LikePattern(pattern).matches(text) is False
    # A backtracking matcher takes seconds to hours here; this one, milliseconds.
    assert time.process_time() - started < 1.0
