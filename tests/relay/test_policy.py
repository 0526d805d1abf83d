"""The policy language: parsing, three-valued evaluation, index keys, the file."""

from pathlib import Path
from typing import Any

import pytest

from relay import policy
from relay.errors import ConfigError
from relay.tables import Column, Table
from tests.support import POLICY_FILE

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
    assert policy.compile_expr(policy.parse(expression))(row, parents, claims) is expected


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
        policy.ExpressionError, match=message.replace("(", r"\(").replace(")", r"\)")
    ):
        policy.parse(expression)


@pytest.mark.parametrize(
    ("expression", "keys"),
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
def test_index_keys(expression: str, keys: list[Any] | None) -> None:
    assert policy.index_keys(policy.parse(expression)) == keys


VALID = """
version = 1
[claims.tenant_id]
path = "app_metadata.tenant_id"
pattern = "^TNT-[A-Z0-9]+$"
[tables.items]
visible = "tenant_id = claims.tenant_id"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(text)
    return path


def test_a_policy_file_loads(tmp_path: Path) -> None:
    policies = policy.load(write(tmp_path, VALID))
    assert set(policies.tables) == {"public.items"}  # a bare name is in public
    assert policies.claims["tenant_id"].path == ("app_metadata", "tenant_id")
    assert policies.bypass_roles == frozenset({"service_role"})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("version = [", "is not valid TOML"),
        ("[tables.x]\nvisible = \"a = 'b'\"", "'version = 1' is required"),
        ("version = 1\nunknown = 2", "unknown top-level keys"),
        ('version = 1\n[tables.x]\nvisible = "a = claims.nope"', "claims.nope is not declared"),
        ('version = 1\n[tables.x]\nvisible = "a ="', "visible: expected a column"),
        ("version = 1\n[tables.x]\nusing = \"a = 'b'\"", "needs exactly visible"),
        ('version = 1\n[claims.t]\npath = "a.b"\npattern = "("', "pattern"),
        ("version = 1\n[claims.t]\nwhere = 1", "needs path"),
        ('version = 1\n[roles]\nbypass = "service_role"', "bypass must be a list"),
    ],
)
def test_a_bad_policy_file_says_what_and_where(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as excinfo:
        policy.load(write(tmp_path, text))
    assert str(tmp_path / "policy.toml") in str(excinfo.value)


def test_a_missing_policy_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read policy file"):
        policy.load(tmp_path / "nope.toml")


def table(**columns: str) -> Table:
    return Table(
        name="public.items",
        events=frozenset({"INSERT"}),
        primary_key=("id",),
        columns={
            name: Column(name, kind, "N" if kind == "integer" else "S")
            for name, kind in columns.items()
        },
        parents={},
    )


def test_policies_are_checked_against_the_published_tables(tmp_path: Path) -> None:
    policies = policy.load(write(tmp_path, VALID.replace("tenant_id = claims", "owner = claims")))
    assert policies.check_against({"public.items": table(id="integer", owner="text")}) == []
    assert policies.check_against({"public.items": table(id="integer")}) == [
        "policy of public.items: no column 'owner'"
    ]
    assert policies.check_against({"public.items": table(id="integer", owner="integer")}) == [
        "policy of public.items: column 'owner' is integer: policies compare text columns"
    ]
    # "is null" takes a column of any type.
    nullable = policy.load(
        write(tmp_path, VALID.replace("tenant_id = claims.tenant_id", "id is null"))
    )
    assert nullable.check_against({"public.items": table(id="integer")}) == []
    parent = policy.load(
        write(tmp_path, VALID.replace("tenant_id = claims", "parents.p.owner = claims"))
    )
    [problem] = parent.check_against({"public.items": table(id="integer")})
    assert "no parent 'p'" in problem


def test_the_nexus_policy_file_loads() -> None:
    policies = policy.load(Path(POLICY_FILE))
    assert {
        "public.nexus_notifications",
        "public.nexus_case_messages",
        "public.nexus_payments",
        "public.nexus_tenant_relationships",
    } <= set(policies.tables)
    assert all(p.keys for p in policies.tables.values())  # every Nexus policy is indexable
