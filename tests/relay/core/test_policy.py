"""The policy file: loading, its errors, checks against the published tables."""

from pathlib import Path

import pytest

from relay.core import policy
from relay.core.errors import ConfigError
from relay.core.tables import Column, Table
from tests.support import POLICY_FILE

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


def problems(policies: policy.PolicySet, *tables: Table, **parents: frozenset[str]) -> list[str]:
    """``find_problems`` in words, with the columns of parents by alias."""
    parent_columns = {("public.items", alias): columns for alias, columns in parents.items()}
    found = policy.find_problems(policies, {t.name: t for t in tables}, parent_columns)
    return [str(p) for p in found]


def test_policies_are_checked_against_the_published_tables(tmp_path: Path) -> None:
    policies = policy.load(write(tmp_path, VALID.replace("tenant_id = claims", "owner = claims")))
    assert problems(policies, table(id="integer", owner="text")) == []
    assert problems(policies, table(id="integer")) == ["policy of public.items: no column 'owner'"]
    assert problems(policies, table(id="integer", owner="integer")) == [
        "policy of public.items: column 'owner' is integer: policies compare text columns"
    ]
    # "is null" takes a column of any type.
    nullable = policy.load(
        write(tmp_path, VALID.replace("tenant_id = claims.tenant_id", "id is null"))
    )
    assert problems(nullable, table(id="integer")) == []
    parent = policy.load(
        write(tmp_path, VALID.replace("tenant_id = claims", "parents.p.owner = claims"))
    )
    [problem] = problems(parent, table(id="integer"))
    assert "no parent 'p'" in problem


def test_a_problem_names_its_table_policy_and_column(tmp_path: Path) -> None:
    policies = policy.load(write(tmp_path, VALID.replace("tenant_id = claims", "owner = claims")))
    [problem] = policy.find_problems(policies, {"public.items": table(id="integer")})
    assert problem.fields() == {
        "table": "public.items",
        "policy": "owner = claims.tenant_id",
        "column": "owner",
        "reason": "no_column",
    }
    # A published table without a policy is a problem too (deny by default).
    other = Table("public.other", frozenset({"INSERT"}), ("id",), {}, {})
    [missing] = policy.find_problems(policies, {"public.other": other})
    assert (missing.table, missing.policy, missing.column, missing.reason) == (
        "public.other",
        None,
        None,
        "no_policy",
    )


def test_the_columns_of_a_parent_are_checked_when_known(tmp_path: Path) -> None:
    policies = policy.load(
        write(tmp_path, VALID.replace("tenant_id = claims", "parents.p.owner = claims"))
    )
    child = Table("public.items", frozenset({"INSERT"}), ("id",), {}, {"p": "parent_id"})
    assert problems(policies, child) == []  # the parent's columns are not known
    assert problems(policies, child, p=frozenset({"id", "owner"})) == []
    [problem] = policy.find_problems(
        policies, {"public.items": child}, {("public.items", "p"): frozenset({"id", "ownr"})}
    )
    assert (problem.column, problem.reason) == ("parents.p.owner", "no_parent_column")
    assert str(problem) == "policy of public.items: no column 'owner' in its parent 'p'"


def test_the_nexus_policy_file_loads() -> None:
    policies = policy.load(Path(POLICY_FILE))
    assert {
        "public.nexus_notifications",
        "public.nexus_case_messages",
        "public.nexus_payments",
        "public.nexus_tenant_relationships",
    } <= set(policies.tables)
    assert all(p.claim_bounds for p in policies.tables.values())  # every one is indexed
