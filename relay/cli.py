"""``nexus-relay``: serve, install the trigger layer, check a policy file, diagnose a
deployment, explain a decision."""

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

from relay import logs
from relay.core import policy, topic_rules
from relay.core.errors import ConfigError, first_line


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="nexus-relay",
        description="Nexus Relay: PostgreSQL changes over WebSocket, authorized like RLS.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "serve", help="run the relay; settings come from RELAY_* environment variables"
    )
    install = commands.add_parser(
        "install",
        help="install the trigger layer (schema relay) on a database, or upgrade it; idempotent",
    )
    install.add_argument("--database-url", help="default: RELAY_DATABASE_URL or DATABASE_URL")
    uninstall = commands.add_parser(
        "uninstall",
        help="remove the trigger layer: its triggers, its change log, schema relay",
    )
    uninstall.add_argument("--database-url", help="default: RELAY_DATABASE_URL or DATABASE_URL")
    uninstall.add_argument(
        "--yes", action="store_true", help="confirm: the change log and what is published are lost"
    )
    check = commands.add_parser(
        "check-policy",
        help="check a policy file, and with --database-url, against what is published",
    )
    check.add_argument("file", type=Path)
    check.add_argument("--database-url")
    diagnose = commands.add_parser(
        "diagnose", help="check the database, the trigger layer, the policies and a running relay"
    )
    diagnose.add_argument("--database-url", help="default: RELAY_DATABASE_URL or DATABASE_URL")
    diagnose.add_argument("--policy-file", type=Path, help="default: RELAY_POLICY_FILE")
    diagnose.add_argument("--ops-url", help="the relay's ops endpoint, e.g. http://127.0.0.1:8766")
    diagnose.add_argument(
        "--metrics-url", help="the relay's Prometheus metrics; default: <ops-url>/metrics"
    )
    explain = commands.add_parser(
        "explain",
        help="why a user does or does not receive a row: the relay's decisions, step by step",
    )
    from relay import explain as explanation

    explanation.add_arguments(explain)
    args = parser.parse_args(argv)

    try:
        if args.command == "serve":
            return _serve()
        if args.command in ("install", "uninstall"):
            return _layer(args.command, args.database_url, getattr(args, "yes", False))
        if args.command == "check-policy":
            return _check_policy(args.file, args.database_url)
        if args.command == "explain":
            return explanation.run(args, os.environ)
        from relay import diagnose as diagnosis

        return diagnosis.run(args.database_url, args.policy_file, args.ops_url, args.metrics_url)
    except ConfigError as exc:
        print(f"nexus-relay: {exc}", file=sys.stderr)
        return 2


def version() -> str:
    """The installed package's version (its metadata, from pyproject.toml)."""
    try:
        return metadata.version("nexus-relay")
    except metadata.PackageNotFoundError:  # pragma: no cover - run from a checkout, not installed
        return "unknown (not installed)"


def _serve() -> int:
    from relay import service, settings

    config = settings.from_env()
    logs.configure(config.log_level, config.log_format)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is installed where it builds
        run = asyncio.run
    else:
        run = uvloop.run
    try:
        run(service.serve(config))
    except service.TaskFailed as exc:
        print(f"nexus-relay: stopped: {exc}", file=sys.stderr)
        return 1
    return 0


def _layer(command: str, database_url: str | None, confirmed: bool) -> int:
    """``install`` or ``uninstall`` the trigger layer; print what was done."""
    import psycopg

    from relay import trigger_layer

    url = database_url or os.environ.get("RELAY_DATABASE_URL") or os.environ.get("DATABASE_URL")
    if not url:
        raise ConfigError("no database: pass --database-url or set RELAY_DATABASE_URL")
    try:
        with psycopg.connect(url, connect_timeout=5, autocommit=True) as conn:
            if command == "install":
                print(f"nexus-relay: {trigger_layer.install(conn)}")
                return 0
            layer = trigger_layer.found(conn)
            if layer.version is not None and not confirmed:
                print(
                    f"nexus-relay: this removes schema relay with its change log, and stops"
                    f" publishing {layer.published} table(s); run again with --yes to do it",
                    file=sys.stderr,
                )
                return 1
            print(f"nexus-relay: {trigger_layer.uninstall(conn)}")
            return 0
    except psycopg.errors.InsufficientPrivilege as exc:
        raise ConfigError(
            f"cannot {command} the trigger layer: {first_line(exc)}: {_WHO[command]}"
        ) from exc
    except psycopg.Error as exc:
        raise ConfigError(f"cannot {command} the trigger layer: {first_line(exc)}") from exc


# Who may run them (README, "The relay in your own application").
_WHO = {
    "install": "run it as the relay's role, with CREATE on the database"
    " (it becomes the owner of schema relay)",
    "uninstall": "run it as a role that owns the published tables and is a member"
    " of the owner of schema relay",
}


def _check_policy(path: Path, database_url: str | None) -> int:
    policies = policy.load(path)
    print(f"{path}: {len(policies.tables)} tables, claims {', '.join(policies.claims) or 'none'}")
    for name, table_policy in sorted(policies.tables.items()):
        print(f"  {name}: visible when {table_policy.source}")
    for rule in policies.topics.rules:
        print(f"  {topic_rules.describe(rule)}")
    if database_url is None:
        return 0
    import psycopg
    from psycopg.rows import dict_row

    from relay import catalog

    try:
        with psycopg.connect(database_url, connect_timeout=5, row_factory=dict_row) as conn:
            published, parents = catalog.published(conn)
    except psycopg.Error as exc:
        raise ConfigError(f"cannot read what is published: {first_line(exc)}") from exc
    problems = policy.find_problems(policies, published, parents)
    for problem in problems:
        print(f"  problem: {catalog.describe(problem)}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
