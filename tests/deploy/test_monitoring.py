"""The Prometheus alert rules and the Grafana dashboard: checked and unit-tested by
promtool (Debian's prometheus), and tied to the metrics a running relay exports, so
that neither can name a metric the relay does not have.
"""

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from tests.deploy.tools import ROOT, executable, run
from tests.relay.test_several_relays import RedisServer
from tests.support import WAIT, RelayProcess, eventually

PROMETHEUS = ROOT / "deploy" / "prometheus"
ALERTS = PROMETHEUS / "alerts.yml"
ALERT_TESTS = PROMETHEUS / "alerts.test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "nexus-relay.json"

# What Prometheus adds to every scrape, not the relay.
SCRAPE_METRICS = {"up"}
# The sample names of a metric family, by its type, as the text format names the
# family: a counter's already ends in _total; a histogram's is its base name.
SUFFIXES = {"gauge": ("",), "counter": ("",), "histogram": ("_bucket", "_sum", "_count")}


def promtool(*args: str) -> tuple[int, str]:
    result = run(executable("promtool", "apt-get install prometheus"), *args)
    return result.returncode, result.stdout + result.stderr


def rules() -> list[dict[str, Any]]:
    loaded = yaml.safe_load(ALERTS.read_text())
    return [rule for group in loaded["groups"] for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels() -> list[dict[str, Any]]:
    return [panel for panel in dashboard()["panels"] if panel["type"] != "row"]


def dashboard_exprs() -> list[str]:
    return [target["expr"] for panel in panels() for target in panel["targets"]]


def as_promql(expr: str) -> str:
    """A dashboard query with Grafana's variables filled in, as Prometheus receives it."""
    for variable, value in {
        "$__rate_interval": "1m",
        "$job": "nexus-relay",
        "$instance": ".*",
    }.items():
        expr = expr.replace(variable, value)
    return expr


def metric_names(expr: str) -> set[str]:
    """The metric names an expression reads (ours all start with relay_; and up)."""
    without_strings = re.sub(r'"[^"]*"', '""', expr)
    return set(re.findall(r"\b(?:relay_[a-z_]+|up)\b(?=\s*[{\[)\s]|$)", without_strings))


# --- The alert rules -------------------------------------------------------------------


def test_alert_rules_pass_promtool_check() -> None:
    code, output = promtool("check", "rules", str(ALERTS))
    assert code == 0, output
    assert f"SUCCESS: {len(rules())} rules found" in output


def test_the_prometheus_configuration_is_valid_and_loads_the_rules() -> None:
    code, output = promtool("check", "config", str(PROMETHEUS / "prometheus.yml"))
    assert code == 0, output
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    assert [job["job_name"] for job in config["scrape_configs"]] == ["nexus-relay"]
    assert all('job="nexus-relay"' in rule["expr"] for rule in rules() if "up{" in rule["expr"])


def test_alert_rules_pass_their_unit_tests() -> None:
    code, output = promtool("test", "rules", str(ALERT_TESTS))
    assert code == 0, output
    assert "SUCCESS" in output


def test_every_alert_is_tested_both_firing_and_quiet() -> None:
    cases = [
        case
        for test in yaml.safe_load(ALERT_TESTS.read_text())["tests"]
        for case in test["alert_rule_test"]
    ]
    for rule in rules():
        mine = [case for case in cases if case["alertname"] == rule["alert"]]
        assert any(case["exp_alerts"] for case in mine), (
            f"{rule['alert']} is never expected to fire"
        )
        assert any(not case["exp_alerts"] for case in mine), (
            f"{rule['alert']} is never expected quiet"
        )


def test_every_alert_has_a_severity_and_says_what_to_do() -> None:
    for rule in rules():
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]


@pytest.mark.parametrize("alert", [rule["alert"] for rule in rules()])
def test_the_unit_tests_notice_an_alert_that_never_fires(tmp_path: Path, alert: str) -> None:
    loaded = yaml.safe_load(ALERTS.read_text())
    for group in loaded["groups"]:
        for rule in group["rules"]:
            if rule["alert"] == alert:
                rule["expr"] = "vector(0) > 1"
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(loaded))
    (tmp_path / "alerts.test.yml").write_text(ALERT_TESTS.read_text())
    code, output = promtool("test", "rules", str(tmp_path / "alerts.test.yml"))
    assert code == 1
    assert f"alertname: {alert}," in output


# --- The dashboard ---------------------------------------------------------------------


def test_dashboard_panels_are_laid_out_on_the_grid_without_overlapping() -> None:
    ids = [panel["id"] for panel in dashboard()["panels"]]
    assert len(ids) == len(set(ids))
    taken: set[tuple[int, int]] = set()
    for panel in dashboard()["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        cells = {
            (x, y)
            for x in range(pos["x"], pos["x"] + pos["w"])
            for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not cells & taken, panel["title"]
        taken |= cells


def test_dashboard_queries_use_its_variables_and_data_source() -> None:
    variables = {variable["name"] for variable in dashboard()["templating"]["list"]}
    assert variables == {"datasource", "job", "instance"}
    for panel in panels():
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"]
            assert 'job="$job"' in target["expr"], panel["title"]
            if "up{" not in target["expr"]:
                assert 'instance=~"$instance"' in target["expr"], panel["title"]
            used = set(re.findall(r"\$(\w+)", target["expr"])) - {"__rate_interval"}
            assert used <= variables, panel["title"]


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    # promtool parses PromQL in rule files: each query becomes a recording rule.
    recorded = [
        {"record": f"dashboard:query_{index}", "expr": as_promql(expr)}
        for index, expr in enumerate(dashboard_exprs())
    ]
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": recorded}]}))
    code, output = promtool("check", "rules", str(path))
    assert code == 0, output


# --- Against a running relay -----------------------------------------------------------


@pytest.fixture(scope="module")
def exported(new_demo_database: Callable[[], str]) -> Iterator[dict[str, str]]:
    """The metric families a relay exports, by name: their type.

    A relay with a Redis (its metrics between relays are there only then). Some
    gauges appear only once the relay has measured the log (within a few
    seconds of starting), its oldest tick once it has taken one: a change is
    written so that it does.
    """
    url = new_demo_database()
    redis = RedisServer().start()
    relay = RelayProcess(url, RELAY_REDIS_URL=redis.url).start()
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO nexus_notifications (tenant_id, notification_type, title)"
                " SELECT id, 'metrics', 'metrics' FROM nexus_tenants LIMIT 1"
            )

        def families() -> dict[str, str] | None:
            status, text = relay.get("/metrics")
            assert status == 200
            found = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE))
            return found if "relay_log_oldest_seconds" in found else None

        yield eventually(families, timeout=4 * WAIT)
    finally:
        relay.stop()
        redis.stop()


def resolves(name: str, families: dict[str, str]) -> bool:
    return name in SCRAPE_METRICS or any(
        name == family + suffix for family, kind in families.items() for suffix in SUFFIXES[kind]
    )


def test_metric_names_are_extracted_from_queries() -> None:
    assert metric_names('sum by (le) (rate(relay_x_bucket{job="relay_not_a_metric"}[1m]))') == {
        "relay_x_bucket"
    }
    assert metric_names("relay_a == 0 and relay_b") == {"relay_a", "relay_b"}
    assert metric_names('absent(up{job="nexus-relay"})') == {"up"}


def test_alerts_read_only_metrics_the_relay_exports(exported: dict[str, str]) -> None:
    for rule in rules():
        names = metric_names(rule["expr"])
        assert names, rule["alert"]
        unknown = {name for name in names if not resolves(name, exported)}
        assert not unknown, (rule["alert"], unknown)


def test_alert_unit_tests_feed_only_metrics_the_relay_exports(exported: dict[str, str]) -> None:
    for test in yaml.safe_load(ALERT_TESTS.read_text())["tests"]:
        for series in test["input_series"]:
            name = series["series"].split("{")[0]
            assert resolves(name, exported), (test["name"], name)


def test_the_dashboard_shows_every_metric_the_relay_exports_and_no_other(
    exported: dict[str, str],
) -> None:
    used = set().union(*(metric_names(expr) for expr in dashboard_exprs()))
    unknown = {name for name in used if not resolves(name, exported)}
    assert not unknown
    # prometheus_client's *_created gauges say when a series started: nothing to show.
    relay_families = {
        family
        for family in exported
        if family.startswith("relay_") and not family.endswith("_created")
    }
    shown = {
        family
        for family in relay_families
        if any(resolves(n, {family: exported[family]}) for n in used)
    }
    assert shown == relay_families
