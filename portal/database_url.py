"""PostgreSQL URLs: one setting, the forms that each library wants."""

from sqlalchemy import URL, make_url


def with_database(url: str, database: str) -> str:
    """The same server and credentials as ``url``, another database."""
    return make_url(url).set(database=database).render_as_string(hide_password=False)


def for_sqlalchemy(url: str) -> URL:
    """``url`` for SQLAlchemy with the psycopg 3 driver."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def for_libpq(url: str) -> str:
    """``url`` as libpq (and so psycopg) reads it: no SQLAlchemy driver suffix."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def redacted(url: str) -> str:
    """``url`` fit for a log line or a terminal: the password masked."""
    return make_url(url).render_as_string(hide_password=True)
