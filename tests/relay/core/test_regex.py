"""Regular expressions: PostgreSQL's answer on what the relay accepts, refusals, linear time.

For random patterns built from the subset the relay reads, and random texts,
PostgreSQL evaluates ``text ~ pattern`` and ``text ~* pattern`` under the
collations ``C`` and ``C.utf8``, and the relay's ``Regex`` must agree. A pattern
the relay refuses is not compared; one it finds invalid must be invalid to
PostgreSQL too.
"""

import os
import re
import time
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from psycopg import sql

from relay.core import regex
from relay.core.values import Ctype

EXAMPLES = int(os.environ.get("REGEX_EXAMPLES", "60"))
PAIRS = 30  # per example, in one statement
KELVIN = "\N{KELVIN SIGN}"
ARABIC_THREE = "\N{ARABIC-INDIC DIGIT THREE}"
CHARACTERS = ["a", "b", "A", "B", "k", "K", KELVIN, "é", "É", "ß", "1", ARABIC_THREE, "_", " "]
CHARACTERS += ["\n", "\t", "\u00a0", ".", "-", "]", "}"]
ATOMS = [
    *CHARACTERS,
    ".",
    "[ab]",
    "[^a]",
    "[a-c]",
    "[A-Z]",
    "[]a]",
    "[a-]",
    "[-é]",
    "[\\]\\-]",
    "[[:alpha:]]",
    "[[:upper:]1]",
    "[^[:lower:]]",
    "[[:space:]]",
    "[[:xdigit:]]",
    "[[:digit:]]",
    "[\\d_]",
    "\\d",
    "\\w",
    "\\s",
    "\\D",
    "\\W",
    "\\S",
    "\\.",
    "\\-",
    "\\n",
    "\\t",
    "(a|b)",
    "(?:ab|k)",
    "()",
    "(a|)",
    "^",
    "$",
]
QUANTIFIERS = ["", "", "", "*", "+", "?", "{2}", "{1,2}", "{0,}", "*?", "+?", "{1,2}?"]


@st.composite
def patterns(draw: st.DrawFn) -> str:
    branches = [
        "".join(
            draw(st.sampled_from(ATOMS)) + draw(st.sampled_from(QUANTIFIERS))
            for _ in range(draw(st.integers(0, 4)))
        )
        for _ in range(draw(st.integers(1, 2)))
    ]
    return "|".join(branches)


TEXTS = st.text(st.sampled_from(CHARACTERS), max_size=8)
MODES: list[tuple[str, bool, Ctype]] = [
    ("C", False, "C"),
    ("C", True, "C"),
    ("C.utf8", False, "C.UTF-8"),
    ("C.utf8", True, "C.UTF-8"),
]


def _expression(collation: str, ignore_case: bool) -> sql.Composable:
    return sql.SQL("(t COLLATE {}) {} p").format(
        sql.Identifier(collation), sql.SQL("~*" if ignore_case else "~")
    )


def postgresql(
    conn: psycopg.Connection[Any], pairs: list[tuple[str, str]]
) -> list[tuple[Any, ...]]:
    """Each pair's answers, in the order of MODES."""
    rows = sql.SQL(", ").join(
        sql.SQL("({}, {}, {})").format(sql.Literal(n), sql.Literal(t), sql.Literal(p))
        for n, (t, p) in enumerate(pairs)
    )
    columns = sql.SQL(", ").join(_expression(c, i) for c, i, _ in MODES)
    statement = sql.SQL("SELECT {} FROM (VALUES {}) AS v (n, t, p) ORDER BY n").format(
        columns, rows
    )
    return conn.execute(statement).fetchall()


def _valid(conn: psycopg.Connection[Any], pair: tuple[str, str]) -> bool:
    """Whether PostgreSQL reads the pattern; if not, the relay must refuse it too."""
    try:
        postgresql(conn, [pair])
    except psycopg.errors.InvalidRegularExpression as exc:
        refused = exc
    else:
        return True
    accepted = [m for m in MODES if relay(pair[1], m[1], m[2]) is not None]
    assert not accepted, f"{pair[1]!r}: PostgreSQL refuses it: {refused}"
    return False


def relay(pattern: str, ignore_case: bool, ctype: Ctype) -> regex.Regex | None:
    try:
        return regex.Regex(pattern, ignore_case=ignore_case, ctype=ctype)
    except regex.Unsupported:
        return None


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(pairs=st.lists(st.tuples(TEXTS, patterns()), min_size=PAIRS, max_size=PAIRS))
def test_regex_answers_what_postgresql_answers(
    database_url: str, pairs: list[tuple[str, str]]
) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        valid = []
        for text, pattern in pairs:
            try:
                regex.Regex(pattern, ctype="C")
            except regex.Invalid:
                with pytest.raises(psycopg.errors.InvalidRegularExpression):
                    conn.execute("SELECT 'x' ~ %s", (pattern,))
                continue
            except regex.Unsupported:
                pass
            valid.append((text, pattern))
        try:
            answers = postgresql(conn, valid)
        except psycopg.errors.InvalidRegularExpression:
            valid = [pair for pair in valid if _valid(conn, pair)]
            answers = postgresql(conn, valid) if valid else []
    compared = 0
    for (text, pattern), answer in zip(valid, answers, strict=True):
        for (collation, ignore_case, ctype), expected in zip(MODES, answer, strict=True):
            compiled = relay(pattern, ignore_case, ctype)
            if compiled is not None:
                compared += 1
                assert compiled.search(text) is expected, (
                    f"{text!r} {'~*' if ignore_case else '~'} {pattern!r} under {collation}"
                )
    event(f"compared {compared // 20 * 20}+ of {len(pairs) * len(MODES)}")


HARD = [
    # $ is the end of the text only; . matches a newline (not newline-sensitive).
    ("a\n", "a$"),
    ("a\nb", "a.b"),
    ("a\nb", "^b"),
    # \d is 0-9, not every Unicode digit; \w is alphanumeric or _.
    (ARABIC_THREE, "\\d"),
    ("é", "\\w"),
    ("_", "^\\w$"),
    ("\u00a0", "\\s"),
    # Ignoring case: ASCII letters only, and not the Kelvin sign for k.
    (KELVIN, "k"),
    ("K", "k"),
    ("É", "é"),
    ("k", "[A-Z]"),
    ("A", "[^a]"),
    ("a", "[[:upper:]]"),
    # Characters that are special elsewhere, and ranges by code point.
    ("]}", "]}"),
    ("é", "[a-ö]"),
    ("", "$^"),
    ("ab", "a{1}b{0,}c{0}"),
    ("x", "(|a)x"),
]


def test_hard_cases_answer_what_postgresql_answers(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        answers = postgresql(conn, HARD)
    compared = 0
    for (text, pattern), answer in zip(HARD, answers, strict=True):
        for (collation, ignore_case, ctype), expected in zip(MODES, answer, strict=True):
            compiled = relay(pattern, ignore_case, ctype)
            if compiled is not None:
                compared += 1
                assert compiled.search(text) is expected, (
                    f"{text!r} {'~*' if ignore_case else '~'} {pattern!r} under {collation}"
                )
    assert compared >= 2 * len(HARD)


@pytest.mark.parametrize(
    ("pattern", "ignore_case", "ctype", "message"),
    [
        ("a\\b", False, "C", "the escape \\b"),
        ("\\y", False, "C", "the escape \\y"),
        ("(a)\\1", False, "C", "the escape \\1"),
        ("\\x41", False, "C", "the escape \\x"),
        ("\\é", False, "C", "the escape \\é"),
        ("a{,3}", False, "C", "does not start a bound"),
        ("a{1, 2}", False, "C", "does not start a bound"),
        ("{", False, "C", "'{' at position 0 repeats nothing"),
        ("*a", False, "C", "'*' at position 0 repeats nothing"),
        ("***:a", False, "C", "repeats nothing"),
        ("a**", False, "C", "a quantifier after a quantifier"),
        ("^*", False, "C", "a quantifier after ^"),
        ("(?i)a", False, "C", "only (?:...) is supported"),
        ("(?=a)", False, "C", "only (?:...) is supported"),
        ("[[.a.]]", False, "C", "'[.' at position 1"),
        ("[[=a=]]", False, "C", "'[=' at position 1"),
        ("[[:word:]]", False, "C", "the class [:word:]"),
        ("[a-c-e]", False, "C", "'-' at position 4 inside [...]"),
        ("[\\D]", False, "C", "\\D inside [...]"),
        ("[\\d-z]", False, "C", "'-' at position 3 inside [...]"),
        ("\\w", False, "C.UTF-8", "\\w: which characters are in it depends on the column's ctype"),
        ("\\s", False, None, "\\s: which characters"),
        ("\\d", False, None, "\\d: which characters"),
        ("[[:alpha:]]", False, "C.UTF-8", "[:alpha:]: which characters"),
        ("é", True, "C.UTF-8", "ignoring the case of 'é' (U+00E9)"),
        ("[à-é]", True, "C.UTF-8", "ignoring the case of 'à'"),
        ("\U00010d50", True, "C.UTF-8", "U+10D50"),
        ("a", True, None, "ignoring case under a ctype the relay does not know"),
        ("(" * 33 + ")" * 33, False, "C", "parentheses nest at most 32 deep"),
        ("(a{255}){5}", False, "C", "more than 200 states"),
        ("x" * 200, False, "C", "more than 200 states"),
    ],
)
def test_what_postgresql_reads_otherwise_is_unsupported(
    pattern: str, ignore_case: bool, ctype: Ctype, message: str
) -> None:
    with pytest.raises(regex.Unsupported, match=re.escape(message)):
        regex.Regex(pattern, ignore_case=ignore_case, ctype=ctype)


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("a\\", "must not end with \\"),
        ("(a", "unbalanced '('"),
        ("a)", "unbalanced ')' at position 1"),
        ("[ab", "the '[' at position 0 is not closed"),
        ("[]", "the '[' at position 0 is not closed"),
        ("[z-a]", "the range z-a is out of order"),
        ("a{256}", "a bound above 255"),
        ("a{3,2}", "minimum exceeds its maximum"),
    ],
)
def test_what_postgresql_refuses_is_invalid(database_url: str, pattern: str, message: str) -> None:
    with pytest.raises(regex.Invalid, match=re.escape(message)):
        regex.Regex(pattern, ctype="C")
    with (
        psycopg.connect(database_url) as conn,
        pytest.raises(psycopg.errors.InvalidRegularExpression),
    ):
        conn.execute("SELECT 'x' ~ %s", (pattern,))


@pytest.mark.parametrize(
    ("pattern", "text"),
    [
        ("(a+)+$", "a" * 100_000 + "b"),
        ("(a|aa)*c", "a" * 100_000),
        (".*.*.*.*.*x", "y" * 100_000),
        ("(.*a){20}", "a" * 19 + "b" * 100_000),
    ],
)
def test_regex_takes_linear_time_on_hostile_patterns(pattern: str, text: str) -> None:
    started = time.process_time()
    assert regex.Regex(pattern, ctype="C").search(text) is False
    # A backtracking matcher takes hours here; this one, a fraction of a second.
    assert time.process_time() - started < 2.0
