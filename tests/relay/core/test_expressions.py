"""The policy language: parsing, three-valued evaluation, claim bounds."""

from typing import Any

import pytest

from relay.core import expressions

CLAIMS = {"tenant_id": "T1", "user_id": "U1"}


@pytest.mark.parametrize(
    ("expression", "row", "parents", "claims", "expected"),
    [
        ("tenant_id = claims.tenant_id", {"tenant_id": "T1"}, {}, CLAIMS, True),
        ("tenant_id = claims.tenant_id", {"tenant_id": "T2"}, {}, CLAIMS, False),
        ("tenant_id = claims.tenant_id", {"tenant_id": None}, {}, CLAIMS, None),
        ("tenant_id = claims.tenant_id", {"tenant_id": "T1"}, {}, {"tenant_id": None}, None),
        ("tenant_id <> claims.tenant_id", {"tenant_id": "T2"}, {}, CLAIMS, True),
        ("tenant_id != claims.tenant_id", {"tenant_id": "T1"}, {}, CLAIMS, False),
        ("user_id is null", {"user_id": None}, {}, CLAIMS, True),
        ("user_id is not null", {"user_id": None}, {}, CLAIMS, False),
        ("status = 'open'", {"status": "open"}, {}, CLAIMS, True),
        ("status = 'it''s'", {"status": "it's"}, {}, CLAIMS, True),
        # Three-valued logic, as PostgreSQL: unknown OR true is true, unknown AND false is false.
        ("a = claims.tenant_id or b = claims.tenant_id", {"a": None, "b": "T1"}, {}, CLAIMS, True),
        ("a = claims.tenant_id or b = claims.tenant_id", {"a": None, "b": "X"}, {}, CLAIMS, None),
        ("a = claims.tenant_id and b = claims.tenant_id", {"a": None, "b": "X"}, {}, CLAIMS, False),
        ("a = claims.tenant_id and b = claims.tenant_id", {"a": None, "b": "T1"}, {}, CLAIMS, None),
        ("not a = claims.tenant_id", {"a": None}, {}, CLAIMS, None),
        ("not a = claims.tenant_id", {"a": "T2"}, {}, CLAIMS, True),
        ("NOT (a = claims.tenant_id OR a IS NULL)", {"a": "T2"}, {}, CLAIMS, True),
        (
            "tenant_id = claims.tenant_id and (user_id = claims.user_id or user_id is null)",
            {"tenant_id": "T1", "user_id": None},
            {},
            CLAIMS,
            True,
        ),
        (
            "tenant_id = claims.tenant_id and (user_id = claims.user_id or user_id is null)",
            {"tenant_id": "T1", "user_id": "U2"},
            {},
            CLAIMS,
            False,
        ),
        (
            "parents.case.client_id = claims.tenant_id",
            {},
            {"case": {"client_id": "T1"}},
            CLAIMS,
            True,
        ),
        ("parents.case.client_id = claims.tenant_id", {}, {"case": None}, CLAIMS, None),
        ("parents.case.client_id = claims.tenant_id", {}, {}, CLAIMS, None),
    ],
)
def test_evaluation_follows_sql(
    expression: str,
    row: dict[str, Any],
    parents: dict[str, Any],
    claims: dict[str, Any],
    expected: bool | None,
) -> None:
    assert expressions.compile_expr(expressions.parse(expression))(row, parents, claims) is expected


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("", "empty expression"),
        ("tenant_id =", "expected a column, a claim or a string, found the end"),
        ("tenant_id", "expected =, <> or 'is', found the end"),
        ("tenant_id = claims.tenant_id or", "expected a column"),
        ("(tenant_id = 'x'", "expected ), found the end"),
        ("tenant_id = 'x')", "unexpected ')' at position 15"),
        ("tenant_id = 'x' ; drop", "unexpected ';' at position 16"),
        ("tenant_id = claims.a.b", "write column, parents.<alias>.<column> or claims.<name>"),
        ("tenant_id is 'x'", "expected null"),
        ("true", "expected =, <> or 'is'"),
    ],
)
def test_parse_errors_say_where(expression: str, message: str) -> None:
    with pytest.raises(
        expressions.ExpressionError, match=message.replace("(", r"\(").replace(")", r"\)")
    ):
        expressions.parse(expression)


@pytest.mark.parametrize(
    ("expression", "bounds"),
    [
        ("tenant_id = claims.tenant_id", [(("row", "tenant_id"), "tenant_id")]),
        ("claims.tenant_id = tenant_id", [(("row", "tenant_id"), "tenant_id")]),
        (
            "from_id = claims.tenant_id or to_id = claims.tenant_id",
            [(("row", "from_id"), "tenant_id"), (("row", "to_id"), "tenant_id")],
        ),
        (
            "tenant_id = claims.tenant_id and (user_id = claims.user_id or user_id is null)",
            [(("row", "tenant_id"), "tenant_id")],
        ),
        (
            "parents.case.vendor_id = claims.tenant_id",
            [(("parent", "case", "vendor_id"), "tenant_id")],
        ),
        ("a = claims.tenant_id or a is null", None),
        ("not a = claims.tenant_id", None),
        ("a <> claims.tenant_id", None),
        ("a = 'x'", None),
    ],
)
def test_claim_bounds(expression: str, bounds: list[Any] | None) -> None:
    assert expressions.claim_bounds(expressions.parse(expression)) == bounds
