"""What the benchmarks share: a scratch Postgres database on the test server."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa

from pipeline.db.engine import create_engine
from pipeline.db.migrate import upgrade
from pipeline.settings import normalize_db_url


@contextmanager
def scratch_database(prefix: str) -> Iterator[sa.Engine]:
    """A fresh, migrated database on CRYPTOBOTS_TEST_PG_URL's server, dropped afterwards."""
    server_url = normalize_db_url(
        os.environ.get("CRYPTOBOTS_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    )
    server = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with server.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    engine = create_engine(
        sa.make_url(server_url).set(database=name).render_as_string(hide_password=False)
    )
    try:
        upgrade(engine)
        yield engine
    finally:
        engine.dispose()
        with server.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        server.dispose()
