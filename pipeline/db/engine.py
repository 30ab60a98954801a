"""Engines for the configured database, with one clear error when it is unreachable."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

from pipeline.errors import ConfigurationError
from pipeline.settings import mask_url, normalize_db_url

DB_URL_SETTING = "CRYPTOBOTS_DB_URL"


def create_engine(url: str, *, check: bool = True) -> Engine:
    """An engine for `url` (SQLite or Postgres); with `check`, prove it answers.

    SQLite gets its folder created, WAL journaling and a busy timeout so that
    Airflow tasks and the trader can share the file; Postgres gets a short connect
    timeout so that a missing server fails in seconds, not minutes.
    """
    url = normalize_db_url(url)
    try:
        parsed = make_url(url)
    except sa.exc.ArgumentError:
        raise ConfigurationError(
            f"database URL {mask_url(url)!r} (setting {DB_URL_SETTING}) is not a valid "
            "SQLAlchemy URL; write e.g. postgresql://user:password@host:5432/dbname"
        ) from None
    if parsed.get_backend_name() == "sqlite":
        engine = _sqlite_engine(parsed)
    else:
        engine = sa.create_engine(parsed, pool_pre_ping=True, connect_args={"connect_timeout": 5})
    if check:
        check_connection(engine)
    return engine


@contextmanager
def opened(url: str) -> Iterator[Engine]:
    """An engine for `url` (see `create_engine`), disposed when the block ends: what a
    task opens, it closes."""
    engine = create_engine(url)
    try:
        yield engine
    finally:
        engine.dispose()


def check_connection(engine: Engine) -> None:
    """Raise ConfigurationError, naming the masked URL and the setting, unless the DB answers."""
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.DBAPIError as error:
        reason = str(error.orig).strip().splitlines()[0] if error.orig else str(error)
        raise ConfigurationError(
            f"cannot connect to database {mask_url(engine.url.render_as_string(False))} "
            f"(setting {DB_URL_SETTING}): {reason}; start the server or fix {DB_URL_SETTING}"
        ) from None


def _sqlite_engine(url: sa.URL) -> Engine:
    if url.database and url.database != ":memory:":
        Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url, connect_args={"timeout": 30})

    @sa.event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return engine
