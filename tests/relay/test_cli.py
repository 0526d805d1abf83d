"""`nexus-relay check-policy`, `diagnose` and `explain`, as an operator runs them."""

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import psycopg
import pytest

from portal import migrations
from relay.client import RelayClient
from tests.support import (
    ALICE,
    BOB,
    GRACE,
    JWT_SECRET,
    POLICY_FILE,
    WAIT,
    RelayProcess,
    eventually,
    mint,
)

CLI = str(Path(sys.executable).parent / "nexus-relay")


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``nexus-relay`` with these arguments (and this environment, if given)."""
    return subprocess.run(
        [CLI, *args], capture_output=True, text=True, timeout=4 * WAIT, check=False, env=env
    )


def diagnose(url: str, relay: RelayProcess) -> subprocess.CompletedProcess[str]:
    return run(
        "diagnose", "--database-url", url, "--policy-file", POLICY_FILE, "--ops-url", relay.ops_url
    )


def test_version_is_the_installed_packages() -> None:
    result = run("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"nexus-relay {metadata.version('nexus-relay')}\n"


def test_check_policy_lists_the_policies() -> None:
    result = run("check-policy", POLICY_FILE)
    assert result.returncode == 0, result.stderr
    assert (
        "public.nexus_payments: visible when from_id = claims.tenant_id or to_id = claims.tenant_id"
        in result.stdout
    )
    assert (
        "topic case:{case_id}: broadcast read, write; presence read, write;"
        " check SELECT 1 FROM public.nexus_cases WHERE id = :case_id" in result.stdout
    )


def test_check_policy_against_the_database(relay_database: str, tmp_path: Path) -> None:
    assert run("check-policy", POLICY_FILE, "--database-url", relay_database).returncode == 0
    wrong = tmp_path / "wrong.toml"
    wrong.write_text(Path(POLICY_FILE).read_text().replace("from_id = claims", "payer_id = claims"))
    result = run("check-policy", str(wrong), "--database-url", relay_database)
    assert result.returncode == 1
    assert "policy of public.nexus_payments: no column 'payer_id'" in result.stdout


def wrong_policy(tmp_path: Path, misspelt: str = "payer_id") -> Path:
    """The portal's policy file with a misspelt column in nexus_payments' policy,
    and without the policy of nexus_tenant_relationships (which is published)."""
    text = Path(POLICY_FILE).read_text().replace("from_id = claims", f"{misspelt} = claims")
    start = text.index('[tables."public.nexus_tenant_relationships"]')
    end = text.index("\n\n", start)
    wrong = tmp_path / "wrong.toml"
    wrong.write_text(text[:start] + text[end + 2 :])
    return wrong


def test_check_policy_names_the_table_policy_and_column_of_each_problem(
    relay_database: str, tmp_path: Path
) -> None:
    result = run("check-policy", str(wrong_policy(tmp_path)), "--database-url", relay_database)
    assert result.returncode == 1
    problems = [line for line in result.stdout.splitlines() if "problem:" in line]
    assert problems == [
        "  problem: policy of public.nexus_payments: no column 'payer_id' (table"
        " public.nexus_payments, column payer_id, policy"
        ' "payer_id = claims.tenant_id or to_id = claims.tenant_id")',
        "  problem: public.nexus_tenant_relationships is published but has no policy:"
        " nobody may subscribe to it (table public.nexus_tenant_relationships)",
    ]
    # A parent's columns too: the case has client_id, not client.
    parent = tmp_path / "parent.toml"
    parent.write_text(
        Path(POLICY_FILE).read_text().replace("parents.case.client_id", "parents.case.client")
    )
    result = run("check-policy", str(parent), "--database-url", relay_database)
    assert result.returncode == 1
    assert (
        "  problem: policy of public.nexus_case_messages: no column 'client' in its parent"
        " 'case' (table public.nexus_case_messages, column parents.case.client, policy"
    ) in result.stdout
    # Without the database, the file alone is checked: it is valid.
    assert run("check-policy", str(wrong_policy(tmp_path))).returncode == 0


def logged(relay: RelayProcess) -> list[dict[str, Any]]:
    assert relay.process is not None
    return [json.loads(line) for line in relay.process.output if line.startswith("{")]


def problems_logged(relay: RelayProcess) -> list[tuple[Any, ...]]:
    return [
        (line["level"], line["table"], line["policy"], line["column"], line["reason"])
        for line in logged(relay)
        if "subscriptions to this table are refused" in line["message"]
    ]


def test_the_relay_logs_the_same_problems_at_start_and_on_reload(
    relay_database: str, tmp_path: Path
) -> None:
    policy_file = wrong_policy(tmp_path)
    relay = RelayProcess(
        relay_database, RELAY_LOG_FORMAT="json", RELAY_POLICY_FILE=str(policy_file)
    ).start()
    try:
        payments = "public.nexus_payments"
        at_start = [
            (
                "warning",
                payments,
                "payer_id = claims.tenant_id or to_id = claims.tenant_id",
                "payer_id",
                "no_column",
            ),
            ("warning", "public.nexus_tenant_relationships", None, None, "no_policy"),
        ]
        assert problems_logged(relay) == at_start
        [line] = [entry for entry in logged(relay) if entry.get("column") == "payer_id"]
        assert line["message"] == (
            "policy of public.nexus_payments: no column 'payer_id':"
            " subscriptions to this table are refused"
        )
        policy_file.write_text(wrong_policy(tmp_path, "payor_id").read_text())
        assert relay.process is not None
        relay.process.popen.send_signal(signal.SIGHUP)
        relay.process.wait_for("reloaded the policy file")
        assert problems_logged(relay)[2:] == [
            (
                "warning",
                payments,
                "payor_id = claims.tenant_id or to_id = claims.tenant_id",
                "payor_id",
                "no_column",
            ),
            at_start[1],
        ]
    finally:
        relay.stop()


def test_a_broken_policy_file_is_a_clear_error(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text('version = 1\n[tables.x]\nvisible = "a = claims.who"\n')
    result = run("check-policy", str(broken))
    assert result.returncode == 2
    assert result.stderr == (
        f"nexus-relay: policy file {broken}: "
        '[tables."x"] visible: claims.who is not declared in [claims]\n'
    )


def test_serve_without_settings_says_which_is_missing() -> None:
    result = run("serve", env={"PATH": ""})
    assert result.returncode == 2
    assert "RELAY_DATABASE_URL (or DATABASE_URL) is not set" in result.stderr


def test_diagnose_a_healthy_deployment_then_a_broken_one(new_database: Callable[[], str]) -> None:
    url = new_database()
    migrations.upgrade(url)
    relay = RelayProcess(url).start()
    try:
        result = diagnose(url, relay)
        assert result.returncode == 0, result.stdout
        assert "ok       public.nexus_payments publishes DELETE, INSERT, UPDATE" in result.stdout
        assert "ok       the change log:" in result.stdout
        assert "No problem found." in result.stdout

        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE open_secrets (id int PRIMARY KEY)")
            conn.execute("SELECT relay.publish('open_secrets')")
        result = diagnose(url, relay)
        assert result.returncode == 1
        assert "PROBLEM  public.open_secrets is published but has no policy" in result.stdout
    finally:
        relay.stop()
    result = diagnose(url, relay)
    assert "no relay is connected to this database" in result.stdout
    assert f"cannot reach {relay.ops_url}" in result.stdout
    with psycopg.connect(url, autocommit=True) as conn:  # written, and nobody reads
        conn.execute("INSERT INTO open_secrets VALUES (1)")
        conn.execute("UPDATE relay.ticks SET at = at - interval '1 minute'")
    result = diagnose(url, relay)
    assert "1 committed changes wait in the log" in result.stdout
    with psycopg.connect(url, autocommit=True) as conn:  # and nobody prunes it
        conn.execute("UPDATE relay.changes SET at = at - interval '3 hours'")
    result = diagnose(url, relay)
    assert "PROBLEM  the log's oldest entry is 3.0 h old, the retention 60 min" in result.stdout


async def test_diagnose_reports_the_gaps_and_refusals_a_relay_counted(
    new_database: Callable[[], str],
) -> None:
    url = new_database()
    migrations.upgrade(url)
    relay = RelayProcess(url).start()
    try:
        result = diagnose(url, relay)
        assert "ok       no gap, refusal, error, nor connection ended by the relay" in result.stdout
        assert "no entry, resumable back" in result.stdout and "(retention 60 min)" in result.stdout

        forged = mint(*ALICE, secret="another-secret-of-at-least-32-bytes!!")
        with pytest.raises(Exception, match="signature"):
            await RelayClient.connect(relay.url, forged, timeout=WAIT)
        client = await RelayClient.connect(relay.url, mint(*ALICE), timeout=WAIT)
        try:
            await client.subscribe("nexus_notifications")
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("TRUNCATE nexus_notifications CASCADE")
            gap = await client.next_event(WAIT)
            assert (gap["type"], gap["reason"]) == ("gap", "truncate")
        finally:
            await client.close()
        eventually(lambda: relay.metrics().get('relay_gaps_total{reason="truncate"}'))

        result = diagnose(url, relay)
        assert result.returncode == 0, result.stdout  # warnings: what happened, not a fault
        assert "WARNING  relay_gaps_total {reason=truncate}: 1" in result.stdout
        assert "WARNING  relay_refusals_total {reason=signature, stage=auth}: 1" in result.stdout
        # The forged token's connection, which the relay closed.
        assert "WARNING  relay_disconnects_total {reason=invalid_token}: 1" in result.stdout
        assert "No problem found; 3 warning(s)." in result.stdout
    finally:
        relay.stop()


# --- explain ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def explained_payment(relay_database: str) -> str:
    """A payment of the test's own, from Alpha to Beta: no other test changes it."""
    with psycopg.connect(relay_database, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO nexus_payments (id, from_id, to_id, amount, status)"
            " VALUES ('PAY-EXPLAIN1', 'TNT-ALPHA001', 'TNT-BETA0001', 12, 'pending')"
            " ON CONFLICT DO NOTHING"
        )
    return "PAY-EXPLAIN1"


def explain(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RELAY_JWT_SECRET": JWT_SECRET, "RELAY_POLICY_FILE": POLICY_FILE}
    return run("explain", "--database-url", url, *args, env=env)


def test_explain_a_row_the_users_tenant_may_see(
    relay_database: str, explained_payment: str
) -> None:
    result = explain(
        relay_database,
        "--token",
        mint(*BOB),
        "--table",
        "nexus_payments",
        "--key",
        explained_payment,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1] == "DELIVERED"
    assert "  yes     true: to_id = claims.tenant_id  ('TNT-BETA0001' = 'TNT-BETA0001')" in lines


def test_explain_another_tenants_row(relay_database: str, explained_payment: str) -> None:
    result = explain(
        relay_database,
        "--token",
        mint(*GRACE),
        "--table",
        "nexus_payments",
        "--key",
        explained_payment,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1] == "NOT DELIVERED (policy_denied)"
    assert (
        "  FAIL  the policy is false: from_id = claims.tenant_id or to_id = claims.tenant_id"
        in lines
    )
    assert "  no      false: to_id = claims.tenant_id  ('TNT-BETA0001' = 'TNT-GAMMA001')" in lines


def test_explain_a_filter_that_does_not_match(relay_database: str, explained_payment: str) -> None:
    result = explain(
        relay_database,
        "--token",
        mint(*BOB),
        "--table",
        "nexus_payments",
        "--key",
        f"id={explained_payment}",
        "--filter",
        "status=eq.paid",
    )
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert "  FAIL  the filter status=eq.paid is false  (status = 'pending')" in lines
    assert lines[-1] == "NOT DELIVERED (filter_mismatch)"


def test_explain_an_unpublished_table_and_a_forged_token(relay_database: str) -> None:
    result = explain(
        relay_database, "--token", mint(*BOB), "--table", "nexus_cases", "--key", "CASE-AB000001"
    )
    assert result.returncode == 1
    assert "  FAIL  public.nexus_cases is not published" in result.stdout
    assert result.stdout.splitlines()[-1] == "NOT DELIVERED (table_unknown)"

    forged = mint(*BOB, secret="another-secret-of-at-least-32-bytes!!")
    result = explain(
        relay_database, "--token", forged, "--table", "nexus_payments", "--key", "PAY-AB000001"
    )
    assert result.returncode == 1
    assert "  FAIL  the relay refuses the token: the token's signature is invalid" in result.stdout
    assert result.stdout.splitlines()[-1] == "NOT DELIVERED (invalid_token)"


def test_explain_a_revoked_token(relay_database: str, explained_payment: str) -> None:
    user = ("USR-EXPLAIN1", BOB[1])  # a user of this test's own: no other test is revoked
    token = mint(*user)
    args = ("--table", "nexus_payments", "--key", explained_payment)
    assert explain(relay_database, "--token", token, *args).returncode == 0
    with psycopg.connect(relay_database, autocommit=True) as conn:
        conn.execute("SELECT relay.revoke(%s, 'explain test')", (user[0],))
    result = explain(relay_database, "--token", token, *args)
    assert result.returncode == 1
    assert result.stdout.splitlines()[-1] == "NOT DELIVERED (token_revoked)"


def test_explain_reads_the_parent_as_the_relay_does(relay_database: str) -> None:
    """A message is visible through its case: explain reads the case, as the
    trigger layer logs it with the message."""
    claims = {
        "sub": GRACE[0],
        "role": "authenticated",
        "app_metadata": {"user_id": GRACE[0], "tenant_id": GRACE[1]},
    }
    args = ("--table", "nexus_case_messages", "--key", "MSG-AB00000001", "--json")
    result = explain(relay_database, "--claims", json.dumps(claims), *args)
    assert result.returncode == 1
    data = json.loads(result.stdout)
    assert (data["delivered"], data["reason"]) == (False, "policy_denied")
    [parents] = [s for s in data["steps"] if s["check"] == "parents"]
    assert parents["values"]["parents"]["case"]["vendor_id"] == "TNT-BETA0001"
    conditions = [s["values"] for s in data["steps"] if s["check"] == "condition"]
    assert conditions[1] == {
        "result": False,
        "parents.case.vendor_id": "TNT-BETA0001",
        "claims.tenant_id": "TNT-GAMMA001",
    }
    result = explain(relay_database, "--token", mint(*BOB), *args)
    assert result.returncode == 0
    assert json.loads(result.stdout)["delivered"] is True


def test_explain_usage_and_connection_errors_exit_2(relay_database: str) -> None:
    token = mint(*BOB)
    result = explain(relay_database, "--token", token, "--table", "nexus_payments", "--key", "x=1")
    assert result.returncode == 2
    assert "primary key is (id)" in result.stderr
    result = explain(
        "postgresql://nobody@127.0.0.1:1/none",
        "--token",
        token,
        "--table",
        "nexus_payments",
        "--key",
        "PAY-1",
    )
    assert result.returncode == 2
    assert "cannot read the database" in result.stderr
    assert run("explain", "--table", "nexus_payments").returncode == 2
