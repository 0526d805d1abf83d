"""``nexus-portal serve``: the portal on uvicorn; settings from the environment."""

import argparse
import os
import sys
from collections.abc import Sequence
from importlib import metadata

import uvicorn

from portal.settings import SettingsError, from_env


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nexus-portal", description="The Nexus portal.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the portal (settings: NEXUS_* and DATABASE_URL)")
    serve.add_argument("--host", default=os.environ.get("NEXUS_HOST", "127.0.0.1"))
    serve.add_argument("--port", type=int, default=int(os.environ.get("NEXUS_PORT", "8000")))
    args = parser.parse_args(argv)
    try:
        settings = from_env()
    except SettingsError as exc:
        print(f"nexus-portal: {exc}", file=sys.stderr)
        return 2
    from portal.app import create_app

    uvicorn.run(
        create_app(settings),
        host=args.host,
        port=args.port,
        proxy_headers=True,
        log_level=os.environ.get("NEXUS_LOG_LEVEL", "info").lower(),
        server_header=False,
    )
    return 0


def version() -> str:
    """The installed package's version (its metadata, from pyproject.toml)."""
    try:
        return metadata.version("nexus-relay")
    except metadata.PackageNotFoundError:  # pragma: no cover - run from a checkout, not installed
        return "unknown (not installed)"


if __name__ == "__main__":
    sys.exit(main())
