"""SQL's three-valued logic, for predicates compiled to functions.

A predicate returns True, False or None (SQL's "unknown"). As in SQL (and so
in PostgreSQL's evaluation of an RLS policy or a WHERE clause): ``and`` is
false if any part is false, else unknown if any is unknown; ``or`` is true if
any part is true, else unknown if any is unknown; ``not unknown`` is unknown.
Policies and filters alike treat only True as a match.
"""

from collections.abc import Callable, Sequence
from typing import ParamSpec

P = ParamSpec("P")
Truth = bool | None


def all_of(parts: Sequence[Callable[P, Truth]]) -> Callable[P, Truth]:
    if len(parts) == 1:
        return parts[0]

    def all_(*args: P.args, **kwargs: P.kwargs) -> Truth:
        result: Truth = True
        for part in parts:
            value = part(*args, **kwargs)
            if value is False:
                return False
            if value is None:
                result = None
        return result

    return all_


def any_of(parts: Sequence[Callable[P, Truth]]) -> Callable[P, Truth]:
    if len(parts) == 1:
        return parts[0]

    def any_(*args: P.args, **kwargs: P.kwargs) -> Truth:
        result: Truth = False
        for part in parts:
            value = part(*args, **kwargs)
            if value is True:
                return True
            if value is None:
                result = None
        return result

    return any_


def negation(part: Callable[P, Truth]) -> Callable[P, Truth]:
    def not_(*args: P.args, **kwargs: P.kwargs) -> Truth:
        value = part(*args, **kwargs)
        return None if value is None else not value

    return not_
