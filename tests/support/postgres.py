"""The Postgres server the tests create their databases on (CRYPTOBOTS_TEST_PG_URL)."""

from __future__ import annotations

import os

from pipeline.settings import normalize_db_url

PG_SERVER_URL = normalize_db_url(
    os.environ.get("CRYPTOBOTS_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
)
