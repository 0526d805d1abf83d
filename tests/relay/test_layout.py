"""The architecture on disk: a core without I/O under ``relay/core/``, and no import cycle.

Checked by walking the source, not by a list of names: a module added to the
core is held to the rule the day it is added (STYLE.md).
"""

import ast
import graphlib
from pathlib import Path

import pytest

RELAY = Path(__file__).resolve().parents[2] / "relay"
# What a core module may not import: the event loop, the database, the network.
FORBIDDEN = {
    "asyncio",
    "psycopg",
    "starlette",
    "websockets",
    "uvicorn",
    "uvloop",
    "socket",
    "selectors",
    "threading",
}


def module_name(path: Path) -> str:
    parts = path.relative_to(RELAY.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(RELAY.rglob("*.py"))}
CORE = sorted(name for name in MODULES if name.startswith("relay.core"))


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports, TYPE_CHECKING blocks and function bodies included.

    ``from relay.core import policy`` imports the module ``relay.core.policy``.
    """
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                names.add(submodule if submodule in MODULES else node.module)
    return names


def graph() -> dict[str, set[str]]:
    """The package's own import graph: module -> the package's modules it imports."""
    return {name: {i for i in imports(path) if i in MODULES} for name, path in MODULES.items()}


def test_the_core_is_a_folder() -> None:
    assert len(CORE) > 10, CORE  # the walk finds it


@pytest.mark.parametrize("module", CORE)
def test_the_core_does_no_io(module: str) -> None:
    for name in imports(MODULES[module]):
        assert name.split(".")[0] not in FORBIDDEN, f"{module} imports {name}"
        if name.startswith("relay") and name in MODULES:
            assert name.startswith("relay.core"), f"{module} imports the shell {name}"


@pytest.mark.parametrize("module", ["relay.core.errors", "relay.core.types"])
def test_the_vocabulary_imports_nothing_of_the_package(module: str) -> None:
    assert not any(name.startswith("relay") for name in imports(MODULES[module]))


def test_no_import_cycle() -> None:
    edges = graph()
    sorter = graphlib.TopologicalSorter(edges)
    try:
        sorter.prepare()
    except graphlib.CycleError as exc:
        pytest.fail(f"import cycle: {' -> '.join(exc.args[1])}")
