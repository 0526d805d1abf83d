"""`nexus-relay check-policy` and `nexus-relay diagnose`, as an operator runs them."""

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import psycopg

from portal import migrations
from tests.support import POLICY_FILE, WAIT, RelayProcess

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


def test_check_policy_lists_the_policies() -> None:
    result = run("check-policy", POLICY_FILE)
    assert result.returncode == 0, result.stderr
    assert (
        "public.nexus_payments: visible when from_id = claims.tenant_id or to_id = claims.tenant_id"
        in result.stdout
    )


def test_check_policy_against_the_database(relay_database: str, tmp_path: Path) -> None:
    assert run("check-policy", POLICY_FILE, "--database-url", relay_database).returncode == 0
    wrong = tmp_path / "wrong.toml"
    wrong.write_text(Path(POLICY_FILE).read_text().replace("from_id = claims", "payer_id = claims"))
    result = run("check-policy", str(wrong), "--database-url", relay_database)
    assert result.returncode == 1
    assert "policy of public.nexus_payments: no column 'payer_id'" in result.stdout


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
