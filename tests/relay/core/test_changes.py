"""Net changes: what other sessions see of one row written several times in one transaction."""

import orjson
import pytest

from relay.core import changes
from relay.core.changes import Change, TableReset
from relay.core.errors import ChangeError

A = '{"id": "r1", "n": 1}'
B = '{"id": "r1", "n": 2}'
PARENT_A = '{"case": {"id": "c1"}}'
PARENT_B = '{"case": {"id": "c2"}}'


def net(first: str, last: str, old: str | None, new: str | None) -> Change | TableReset | None:
    return changes.net("public.t", first, last, old, new, PARENT_A, PARENT_B, "7", "ts")


@pytest.mark.parametrize(
    ("first", "last", "old", "new", "expected"),
    [
        ("INSERT", "INSERT", None, B, ("INSERT", None, B)),
        ("INSERT", "UPDATE", None, B, ("INSERT", None, B)),  # a draft nobody saw
        ("INSERT", "DELETE", None, None, None),
        ("UPDATE", "UPDATE", A, B, ("UPDATE", A, B)),  # from the first old to the last new
        ("UPDATE", "DELETE", A, None, ("DELETE", A, None)),
        ("DELETE", "DELETE", A, None, ("DELETE", A, None)),
        ("DELETE", "INSERT", A, B, ("UPDATE", A, B)),  # the same key again
        ("DELETE", "UPDATE", A, B, ("UPDATE", A, B)),
    ],
)
def test_the_net_of_first_and_last(
    first: str,
    last: str,
    old: str | None,
    new: str | None,
    expected: tuple[str, str | None, str | None] | None,
) -> None:
    change = net(first, last, old, new)
    if expected is None:
        assert change is None
        return
    op, expected_old, expected_new = expected
    assert isinstance(change, Change)
    assert change.op == op
    assert change.old == (orjson.loads(expected_old) if expected_old else None)
    assert change.new == (orjson.loads(expected_new) if expected_new else None)
    assert (change.table, change.xid, change.timestamp) == ("public.t", "7", "ts")


def test_parents_follow_the_rows() -> None:
    update = net("UPDATE", "UPDATE", A, B)
    assert isinstance(update, Change)
    assert update.parents == {"case": {"id": "c2"}}  # of the new row
    assert update.parents_of_old == {"case": {"id": "c1"}}  # of the first old row
    delete = net("UPDATE", "DELETE", A, None)
    assert isinstance(delete, Change)
    assert delete.parents == {"case": {"id": "c1"}}  # of the old row: the one it authorizes by
    insert = net("INSERT", "UPDATE", None, B)
    assert isinstance(insert, Change)
    assert (insert.parents, insert.old_parents) == ({"case": {"id": "c2"}}, None)


def test_truncate_is_a_reset() -> None:
    assert changes.net("public.t", "TRUNCATE", "TRUNCATE", None, None, None, None, "7", "ts") == (
        TableReset("public.t", "truncate")
    )


@pytest.mark.parametrize(
    ("first", "last", "old", "new"),
    [
        ("SELECT", "INSERT", None, B),
        ("INSERT", "INSERT", None, None),
        ("UPDATE", "UPDATE", None, B),
        ("INSERT", "INSERT", None, "[1, 2]"),
        ("INSERT", "INSERT", None, "{not json"),
    ],
)
def test_what_is_not_a_change_is_refused(
    first: str, last: str, old: str | None, new: str | None
) -> None:
    with pytest.raises(ChangeError):
        net(first, last, old, new)


def test_a_number_beyond_a_double_is_read_as_infinity() -> None:
    assert changes.row('{"id": 1, "n": 1e400}') == {"id": 1, "n": float("inf")}


def test_a_huge_integer_beside_a_huge_number_is_read_as_orjson_reads_it() -> None:
    huge = "9" * 400
    row = changes.row(f'{{"id": 1, "n": 1e400, "m": {huge}}}')
    assert row == {"id": 1, "n": float("inf"), "m": float("inf")}
    assert orjson.dumps(row)  # encodable: frames carry it
