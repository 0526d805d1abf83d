"""Filter values as PostgreSQL reads and compares them, type by type.

A condition ``column=op.value`` means what PostgreSQL means by ``column op
'value'``: the literal is read as the column's type, as its input function
reads it, and compared with that type's operators. The row's value arrives as
``row_to_json`` renders it. Each supported type turns both into a *key*, and
values compare as their keys compare.

What the relay cannot decide exactly as PostgreSQL would, it refuses
(``Unsupported``) rather than approximate: a type it does not know, an
operator a type's collation decides differently, a value it cannot read
exactly. A literal PostgreSQL itself would reject is ``Invalid``.
"""

import math
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any, Literal

from relay.core.tables import Collation, Column

Key = tuple[Any, ...]
# Whose character classes and case a text column has: "C" (ASCII's), "C.UTF-8"
# (libc's); None: another, or not known.
Ctype = Literal["C", "C.UTF-8"] | None


class Invalid(ValueError):
    """A literal that PostgreSQL would not read as the column's type either."""


class Unsupported(ValueError):
    """A comparison the relay cannot decide exactly as PostgreSQL would."""


@dataclass(frozen=True)
class Kind:
    """How one column's values read and compare."""

    name: str
    literal: Callable[[str], Key]  # raises Invalid or Unsupported
    row: Callable[[Any], Key | None]  # a row's JSON value (not null); None: unreadable
    ordered: bool = True  # lt, lte, gt, gte decide as PostgreSQL does
    text: bool = False  # like and ilike apply
    lower: Callable[[str], str] | None = None  # PostgreSQL's lower(), for ilike
    # A character of the text whose lower() the relay may not know, if any.
    unknown_case: Callable[[str], str | None] = lambda text: None
    ctype: Ctype = None  # for match and imatch


def kind(column: Column) -> Kind:
    """The kind of ``column``; ``Unsupported`` if the relay cannot compare its values."""
    base = re.sub(r"\(\d+(?:,-?\d+)?\)", "", column.type)
    if base in _INTEGERS:
        return _integer(base, *_INTEGERS[base])
    if base == "numeric":
        return _numeric(column.type)
    if base == "double precision":
        return Kind("double precision", _float_literal, _float_row)
    if base == "boolean":
        return Kind("boolean", _boolean_literal, _boolean_row)
    if base in _DATETIMES:
        return _DATETIMES[base]
    if base == "uuid":
        return Kind("uuid", _uuid_literal, _uuid_row)
    if base in _TEXTS:
        return _text(column.collation)
    if column.category == "E":  # an enum: equal labels are equal values
        return Kind(column.type, _label, _label_row, ordered=False)
    raise Unsupported(f"the relay does not compare values of type {column.type}")


# --- Numbers -------------------------------------------------------------------------

_INTEGERS = {
    "smallint": (-(2**15), 2**15 - 1),
    "integer": (-(2**31), 2**31 - 1),
    "bigint": (-(2**63), 2**63 - 1),
}
_INTEGER = re.compile(r"[+-]?[0-9]+")
# numeric_in and float8in, without the spaces and spellings the relay does not take.
_NUMBER = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE](?P<exponent>[+-]?[0-9]+))?")
_SPECIAL = re.compile(r"(?i)(?P<sign>[+-]?)(?P<word>inf|infinity|nan)")
# A double represents every decimal of at most 15 significant digits exactly
# enough to give it back (DBL_DIG): numeric(p,s) with p <= 15 survives the
# row's trip through a 64-bit float (orjson) unchanged.
_EXACT_DIGITS = 15
_MAX_LITERAL_DIGITS = 1000


def _integer(name: str, low: int, high: int) -> Kind:
    def literal(raw: str) -> Key:
        if not _INTEGER.fullmatch(raw):
            raise Invalid(f"{raw!r} is not an integer (digits, with an optional sign)")
        value = int(raw)
        if not low <= value <= high:
            raise Invalid(f"{raw!r} is out of range for type {name}")
        return (value,)

    def row(value: Any) -> Key | None:
        return (value,) if isinstance(value, int) and not isinstance(value, bool) else None

    return Kind(name, literal, row)


def _numeric(type_: str) -> Kind:
    precision = re.fullmatch(r"numeric\((\d+)(?:,-?\d+)?\)", type_)
    if precision is None or int(precision.group(1)) > _EXACT_DIGITS:
        raise Unsupported(
            f"the relay compares numeric(p,s) with p at most {_EXACT_DIGITS}, not {type_}:"
            " longer values reach it rounded"
        )
    return Kind(type_, _numeric_literal, _numeric_row)


# PostgreSQL orders numeric: -Infinity < numbers < Infinity < NaN, and NaN = NaN.
def _numeric_key(value: Decimal) -> Key:
    if value.is_nan():
        return (3,)
    if value.is_infinite():
        return (0,) if value < 0 else (2,)
    return (1, value)


def _numeric_literal(raw: str) -> Key:
    special = _SPECIAL.fullmatch(raw)
    if special:
        return _numeric_key(Decimal(_special(special)))
    number = _NUMBER.fullmatch(raw)
    if not number:
        raise Invalid(f"{raw!r} is not a number")
    value = Decimal(raw)
    exponent = int(number["exponent"] or 0)
    if abs(exponent) > _MAX_LITERAL_DIGITS:
        # numeric_in refuses exponents beyond NUMERIC_MAX_PRECISION (1000).
        raise Invalid(f"{raw[:20]!r}: an exponent beyond {_MAX_LITERAL_DIGITS}")
    if len(raw) > _MAX_LITERAL_DIGITS or abs(value.adjusted()) > _MAX_LITERAL_DIGITS:
        raise Unsupported(f"{raw[:20]!r}...: the relay reads numbers of up to 1000 digits")
    return _numeric_key(value)


def _special(match: "re.Match[str]") -> str:
    """NaN, Infinity or -Infinity; a signed NaN is refused (numeric_in does too)."""
    if match["word"].lower() == "nan":
        if match["sign"]:
            raise Invalid(f"{match[0]!r}: a NaN has no sign")
        return "NaN"
    return "-Infinity" if match["sign"] == "-" else "Infinity"


def _numeric_row(value: Any) -> Key | None:
    # row_to_json renders NaN and infinities as strings, numbers as numbers.
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return (1, Decimal(value))
    if isinstance(value, float):
        return _numeric_key(Decimal(repr(value)))
    if value in ("NaN", "Infinity", "-Infinity"):
        return _numeric_key(Decimal(value))
    return None


# PostgreSQL orders float8 with NaN above everything, and NaN = NaN (float8_cmp_internal).
def _float_key(value: float) -> Key:
    return (1,) if math.isnan(value) else (0, value)


def _float_literal(raw: str) -> Key:
    special = _SPECIAL.fullmatch(raw)
    if special:
        return _float_key(float(_special(special)))
    if not _NUMBER.fullmatch(raw):
        raise Invalid(f"{raw!r} is not a number")
    value = float(raw)  # correctly rounded, as strtod
    mantissa = raw.lower().split("e")[0]
    if math.isinf(value) or (value == 0 and mantissa.strip("+-.0")):
        raise Invalid(f"{raw!r} is out of range for type double precision")
    return _float_key(value)


def _float_row(value: Any) -> Key | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return _float_key(float(value))
    if value in ("NaN", "Infinity", "-Infinity"):
        return _float_key(float(value))
    return None


def _boolean_literal(raw: str) -> Key:
    if raw not in ("true", "false"):
        raise Invalid(f"use true or false, not {raw!r}")
    return (raw == "true",)


def _boolean_row(value: Any) -> Key | None:
    return (value,) if isinstance(value, bool) else None


# --- Dates and times -----------------------------------------------------------------

# ISO 8601 as PostgreSQL reads and row_to_json writes it: years of 4 digits or
# more, " BC" after the rest, an offset only for timestamptz.
_DATETIME = re.compile(
    r"(?P<year>[0-9]{4,})-(?P<month>[0-9]{2})-(?P<day>[0-9]{2})"
    r"(?:[T ](?P<hour>[0-9]{2}):(?P<minute>[0-9]{2})"
    r"(?::(?P<second>[0-9]{2})(?:\.(?P<fraction>[0-9]+))?)?)?"
    r"(?P<offset>Z|[+-][0-9]{2}(?::[0-9]{2}(?::[0-9]{2})?|[0-9]{2})?)?"
    r"(?P<bc> BC)?"
)
_INFINITY = re.compile(r"(?i)(?P<sign>-?)infinity")  # "+infinity" only from PostgreSQL 18
# The years whose every day each type holds (PostgreSQL docs, "Date/Time Types":
# timestamps from 4713 BC to 294276 AD).
_FIRST_YEAR, _LAST_YEAR = -4712, 294275  # astronomical: 4713 BC is -4712
_DAYS_PER_400_YEARS = 146097
# PostgreSQL takes offsets up to 15:59:59 (MAX_TZDISP_HOUR); local mean times
# before time zones come close (Asia/Manila until 1844: -15:56:08).
_MAX_OFFSET_HOURS = 15
_READS = "ISO 8601, as 2026-03-01, 2026-03-01T12:00:00.5+01:00 or 0044-03-15 BC; or infinity"


@dataclass(frozen=True)
class _Moment:
    year: int  # astronomical
    days: int  # since 0001-01-01 (proleptic Gregorian), which is day 1
    microseconds: int  # into the day, before the offset
    offset: int | None  # seconds east of UTC, if written


def _days(year: int, month: int, day: int) -> int:
    """Day number of an astronomical year's date: the calendar repeats every 400 years."""
    shifted = year % 400 or 400
    return date(shifted, month, day).toordinal() + (year - shifted) // 400 * _DAYS_PER_400_YEARS


def _moment(text: str) -> _Moment | None:
    match = _DATETIME.fullmatch(text)
    if match is None:
        return None
    written = int(match["year"])
    year = 1 - written if match["bc"] else written  # astronomical: 1 BC is year 0
    hour, minute, second = (int(match[f] or 0) for f in ("hour", "minute", "second"))
    if written == 0 or hour > 23 or minute > 59 or second > 59:
        return None
    try:
        days = _days(year, int(match["month"]), int(match["day"]))
    except ValueError:
        return None
    # ParseFractionalSecond (src/backend/utils/adt/datetime.c): rint(strtod(".f") * 1e6),
    # which rounds a seventh digit half to even.
    fraction = round(float("0." + match["fraction"]) * 1_000_000) if match["fraction"] else 0
    micro = ((hour * 60 + minute) * 60 + second) * 1_000_000 + fraction
    offset = None
    if match["offset"]:
        sign, digits = match["offset"][:1], match["offset"][1:].replace(":", "")
        parts = [int(digits[i : i + 2]) for i in range(0, len(digits), 2)]
        hours, minutes, seconds = [*parts, 0, 0, 0][:3]
        if hours > _MAX_OFFSET_HOURS or minutes > 59 or seconds > 59:
            return None
        offset = (hours * 3600 + minutes * 60 + seconds) * (-1 if sign == "-" else 1)
        offset = 0 if match["offset"] == "Z" else offset
    return _Moment(year, days, micro, offset)


def _datetime_kind(name: str, key: Callable[[_Moment], Key]) -> Kind:
    def literal(raw: str) -> Key:
        infinite = _INFINITY.fullmatch(raw)
        if infinite:
            return (0,) if infinite["sign"] == "-" else (2,)
        moment = _moment(raw)
        if moment is None:
            raise Invalid(f"{raw!r} is not a {name} the relay reads: {_READS}")
        if not _FIRST_YEAR <= moment.year <= _LAST_YEAR:
            raise Unsupported(f"{raw!r}: the relay reads years from 4713 BC to {_LAST_YEAR} AD")
        return key(moment)

    def row(value: Any) -> Key | None:
        if value in ("infinity", "-infinity"):
            return (0,) if value == "-infinity" else (2,)
        moment = _moment(value) if isinstance(value, str) else None
        return None if moment is None else key(moment)

    return Kind(name, literal, row)


def _timestamptz(moment: _Moment) -> Key:
    # A literal without an offset is UTC: the relay's "session time zone".
    utc = moment.microseconds - (moment.offset or 0) * 1_000_000
    return (1, moment.days * 86_400_000_000 + utc)


def _timestamp(moment: _Moment) -> Key:
    # timestamp without time zone reads an offset and ignores it, as PostgreSQL does.
    return (1, moment.days * 86_400_000_000 + moment.microseconds)


def _date(moment: _Moment) -> Key:
    return (1, moment.days)  # a time of day and an offset are read and ignored


_DATETIMES = {
    "timestamp with time zone": _datetime_kind("timestamp with time zone", _timestamptz),
    "timestamp without time zone": _datetime_kind("timestamp without time zone", _timestamp),
    "date": _datetime_kind("date", _date),
}


# --- Text ------------------------------------------------------------------------------

_TEXTS = frozenset(("text", "character varying", "name"))
# Locales whose order is the code points' (byte order of UTF-8): libc's C and
# POSIX, glibc's C.UTF-8 (strict code point order), the builtin provider's.
_CODE_POINT_ORDER = {
    "c": frozenset(("C", "POSIX", "C.UTF-8", "C.utf8")),
    "b": frozenset(("C", "C.UTF-8", "PG_UNICODE_FAST")),
}
_ASCII_CTYPES = {"c": frozenset(("C", "POSIX")), "b": frozenset(("C",))}
# Not the builtin provider's C.UTF-8: its own Unicode tables (15.1 in PostgreSQL
# 17, 16.0 in 18) map characters that the relay's Python does not know.
_UNICODE_CTYPES = {"c": frozenset(("C.UTF-8", "C.utf8"))}
_ASCII_LOWER = {ord(c): ord(c) + 32 for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ"}
# Python's str.lower() is Unicode's full mapping; PostgreSQL's lower() under a
# C.UTF-8 ctype is the simple one, character by character (towlower). They differ
# only where the full mapping is longer (İ: i̇) or looks at the context (final Σ: ς).
_SIMPLE_ONLY = {0x130: "i", 0x3A3: "\N{GREEK SMALL LETTER SIGMA}"}


def _ascii_lower(text: str) -> str:
    return text.translate(_ASCII_LOWER)


def _simple_lower(text: str) -> str:
    return text.translate(_SIMPLE_ONLY).lower()


def _unassigned(text: str) -> str | None:
    """A character that Python's Unicode database does not assign: a C library of
    a later Unicode may know a lower case of it."""
    if text.isascii():
        return None
    return next((c for c in text if unicodedata.category(c) == "Cn"), None)


def _text(collation: Collation | None) -> Kind:
    if collation is not None and not collation.deterministic:
        raise Unsupported(f"the relay does not compare text of collation {collation.name}")
    ordered, lower = False, None
    ctype: Ctype = None
    if collation is not None:
        locale = collation.ctype if collation.provider == "c" else collation.locale
        order = collation.collate if collation.provider == "c" else collation.locale
        ordered = order in _CODE_POINT_ORDER.get(collation.provider, ())
        if locale in _ASCII_CTYPES.get(collation.provider, ()):
            lower, ctype = _ascii_lower, "C"
        elif locale in _UNICODE_CTYPES.get(collation.provider, ()):
            return Kind(
                "text",
                _text_literal,
                _text_row,
                ordered=ordered,
                text=True,
                lower=_simple_lower,
                unknown_case=_unassigned,
                ctype="C.UTF-8",
            )
    return Kind(
        "text", _text_literal, _text_row, ordered=ordered, text=True, lower=lower, ctype=ctype
    )


def _text_literal(raw: str) -> Key:
    if "\0" in raw:
        raise Invalid("text cannot hold the character U+0000")
    return (raw,)


def _text_row(value: Any) -> Key | None:
    return (value,) if isinstance(value, str) else None


def _label(raw: str) -> Key:
    return (raw,)


_label_row = _text_row

_UUID = re.compile(r"\{?(?:[0-9a-fA-F]{4}-?){7}[0-9a-fA-F]{4}\}?")


def _uuid_literal(raw: str) -> Key:
    if not _UUID.fullmatch(raw) or raw.startswith("{") != raw.endswith("}"):
        raise Invalid(f"{raw!r} is not a uuid")
    return (int(re.sub(r"[{}-]", "", raw), 16),)


def _uuid_row(value: Any) -> Key | None:
    return (int(value.replace("-", ""), 16),) if isinstance(value, str) else None
