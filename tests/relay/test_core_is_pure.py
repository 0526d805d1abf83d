"""The core imports no I/O library: it is fed data and returns data (STYLE.md)."""

import ast
from pathlib import Path

import pytest

RELAY = Path(__file__).resolve().parents[2] / "relay"
CORE = [
    "changes",
    "errors",
    "fanout",
    "filters",
    "history",
    "ids",
    "index",
    "logic",
    "policy",
    "protocol",
    "session",
    "tables",
    "tokens",
]
FORBIDDEN = {
    "asyncio",
    "psycopg",
    "starlette",
    "websockets",
    "uvicorn",
    "socket",
    "selectors",
    "threading",
}


def imports(module: str) -> set[str]:
    tree = ast.parse((RELAY / f"{module}.py").read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("module", CORE)
def test_the_core_does_no_io(module: str) -> None:
    for name in imports(module):
        assert name.split(".")[0] not in FORBIDDEN, f"relay/{module}.py imports {name}"
        if name.startswith("relay."):
            assert name.removeprefix("relay.") in CORE, (
                f"relay/{module}.py imports the shell {name}"
            )


def test_errors_imports_nothing_of_the_package() -> None:
    assert not any(name.startswith("relay") for name in imports("errors"))
