"""What the figures were measured on: the machine, the software, the commit."""

import contextlib
import os
import platform
import resource
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

from bench.common import ROOT


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def os_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text(encoding="utf-8").splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip().strip('"')
    return platform.system()


def describe() -> dict[str, Any]:
    packages = {}
    for name in ("websockets", "uvloop", "psycopg", "orjson", "PyJWT", "numpy", "psutil", "py-spy"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            packages[name] = metadata.version(name)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return {
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
        "os": os_name(),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "packages": packages,
        "open_files_limit": soft if soft == hard else [soft, hard],
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def git() -> dict[str, Any]:
    def run(*args: str, strip: bool = True) -> str:
        out = subprocess.run(  # noqa: S603
            ["git", "-C", str(ROOT), *args],  # noqa: S607
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        return out.strip() if strip else out

    import hashlib

    digest = hashlib.sha256()
    for path in sorted((ROOT / "relay").rglob("*")):
        if path.suffix in (".py", ".sql", ".toml") and path.is_file():
            digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    status = [
        line for line in run("status", "--porcelain", strip=False).splitlines() if line.strip()
    ]
    outside = [line[3:] for line in status if not line[3:].startswith("bench/")]
    return {
        "commit": run("rev-parse", "HEAD") or None,
        "branch": run("rev-parse", "--abbrev-ref", "HEAD") or None,
        "dirty": bool(status),
        "dirty_outside_bench": outside,
        # The relay's source as run: other people edit the tree while a run goes on.
        "relay_source_sha256": digest.hexdigest(),
    }
