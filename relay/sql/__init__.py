"""SQL of the relay's trigger layer, applied by the application's migrations."""

from importlib.resources import files


def read(name: str) -> str:
    """The text of ``relay/sql/<name>.sql``, e.g. ``read("v1_install")``."""
    return files(__name__).joinpath(f"{name}.sql").read_text(encoding="utf-8")
