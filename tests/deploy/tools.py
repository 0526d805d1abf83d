"""The deployment checks' tools: each one installed by `make test`, found or failed."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent


def executable(name: str, install: str) -> str:
    """The path of ``name`` (the venv's first, then PATH); fails saying how to install it."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is missing: `make test` installs it ({install})")
    return found


def run(*command: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a checker in the repository; its output comes back for the assertion message."""
    return subprocess.run(
        command, cwd=ROOT, input=stdin, capture_output=True, text=True, timeout=60, check=False
    )
