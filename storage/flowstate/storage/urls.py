"""Database URLs: accept what operators write, hand SQLAlchemy the asyncpg form."""

from __future__ import annotations

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

__all__ = ["normalize_database_url", "redact_database_url"]

_POSTGRES_SCHEMES = frozenset({"postgres", "postgresql"})


def _parse(database_url: str) -> URL:
    try:
        url = make_url(database_url)
    except ArgumentError as exc:
        raise ValueError(f"not a database URL: {redact_database_url(database_url)}") from exc
    if url.get_backend_name() not in _POSTGRES_SCHEMES:
        raise ValueError(f"not a PostgreSQL URL: {url.render_as_string(hide_password=True)}")
    return url


def normalize_database_url(database_url: str) -> str:
    """`database_url` as a ``postgresql+asyncpg://`` URL, password kept.

    Accepts ``postgres://``, ``postgresql://`` and any ``postgresql+driver://`` URL; a libpq
    ``sslmode`` query parameter becomes asyncpg's ``ssl``; ``?host=/dir`` selects a unix socket.
    Raises ValueError for anything that is not a PostgreSQL URL.
    """
    url = _parse(database_url).set(drivername="postgresql+asyncpg")
    if "sslmode" in url.query and "ssl" not in url.query:
        url = url.update_query_dict({"ssl": url.query["sslmode"]}).difference_update_query(
            ["sslmode"]
        )
    return url.render_as_string(hide_password=False)


def redact_database_url(database_url: str) -> str:
    """`database_url` with the password masked, for logs and error messages."""
    try:
        return make_url(database_url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable database URL>"
