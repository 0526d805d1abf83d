"""Decoding what the trigger layer sends."""

import dataclasses

import orjson
import pytest

from relay.core import changes
from relay.core.errors import ChangeError


def test_a_change() -> None:
    change = changes.decode(
        '{"v":1,"table":"public.t","op":"UPDATE","xid":"9","ts":"2026-01-01T00:00:00+00:00",'
        '"new":{"id":1,"a":"x"},"old":{"id":1,"a":"y"},"parents":{"p":{"id":2}},"old_parents":{"p":null}}'
    )
    assert dataclasses.replace(change, size=0) == changes.Change(  # type: ignore[type-var]
        table="public.t",
        op="UPDATE",
        new={"id": 1, "a": "x"},
        old={"id": 1, "a": "y"},
        parents={"p": {"id": 2}},
        old_parents={"p": None},
        xid="9",
        timestamp="2026-01-01T00:00:00+00:00",
    )
    assert isinstance(change, changes.Change)
    assert change.parents_of_old == {"p": None}


def test_a_reference_and_resets() -> None:
    assert changes.decode('{"v":1,"table":"public.t","ref":42}') == changes.LargeChangeRef(
        42, "public.t"
    )
    assert changes.decode('{"v":1,"table":"public.t","op":"TRUNCATE"}') == changes.TableReset(
        "public.t", "truncate"
    )
    assert changes.decode('{"v":1,"table":"public.t","op":"OVERFLOW"}') == changes.TableReset(
        "public.t", "overflow"
    )


@pytest.mark.parametrize(
    "payload",
    [
        "not json",
        "[1]",
        '{"v":2,"table":"t","op":"INSERT"}',
        '{"v":1,"op":"INSERT","new":{}}',
        '{"v":1,"table":"t","op":"MERGE","xid":"1","ts":"x"}',
        '{"v":1,"table":"t","op":"INSERT","xid":"1","ts":"x"}',
        '{"v":1,"table":"t","op":"DELETE","xid":"1","ts":"x","new":{}}',
        '{"v":1,"table":"t","ref":"x"}',
    ],
)
def test_what_is_not_a_change(payload: str) -> None:
    with pytest.raises(ChangeError):
        changes.decode(payload)


def test_a_number_beyond_a_double_still_decodes() -> None:
    change = changes.decode(
        '{"v":1,"table":"public.t","op":"INSERT","xid":"1","ts":"t","new":{"id":1,"n":1e400}}'
    )
    assert isinstance(change, changes.Change)
    assert change.new == {"id": 1, "n": float("inf")}


def test_a_huge_integer_beside_a_huge_number_is_read_as_orjson_reads_it() -> None:
    huge = "9" * 400
    change = changes.decode(
        '{"v":1,"table":"public.t","op":"INSERT","xid":"1","ts":"t",'
        f'"new":{{"id":1,"n":1e400,"m":{huge}}}}}'
    )
    assert isinstance(change, changes.Change)
    assert change.new == {"id": 1, "n": float("inf"), "m": float("inf")}
    assert orjson.dumps(change.new)  # encodable: frames carry it
