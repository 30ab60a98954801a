"""Schema: Alembic owns it, on SQLite and on the real Postgres alike."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Engine

from pipeline.db.engine import create_engine
from pipeline.db.migrate import current_revision, downgrade, head_revision, upgrade
from pipeline.db.schema import metadata
from pipeline.errors import ConfigurationError

CONTRACT_TABLES = {
    "ohlcv",
    "ohlcv_quarantine",
    "ohlcv_gaps",
    "training_runs",
    "model_versions",
    "model_aliases",
    "decisions",
    "orders",
    "fills",
    "positions",
    "equity",
    "risk_events",
    "promotion_events",
}


def test_upgrade_creates_the_contract_tables(migrated_engine: Engine) -> None:
    assert set(sa.inspect(migrated_engine).get_table_names()) >= CONTRACT_TABLES
    assert current_revision(migrated_engine) == head_revision()


def test_ohlcv_primary_key_is_market_and_open_time(migrated_engine: Engine) -> None:
    pk = sa.inspect(migrated_engine).get_pk_constraint("ohlcv")
    assert pk["constrained_columns"] == ["exchange", "symbol", "timeframe", "ts"]


def test_second_upgrade_is_a_no_op(migrated_engine: Engine) -> None:
    before, after = upgrade(migrated_engine)
    assert before == after == head_revision()


def test_migrations_match_the_table_definitions(migrated_engine: Engine) -> None:
    with migrated_engine.connect() as conn:
        diff = compare_metadata(
            MigrationContext.configure(conn, opts={"compare_type": True}), metadata
        )
    assert diff == []


def test_downgrade_to_base_and_back(db_url: str) -> None:
    engine = create_engine(db_url)
    try:
        downgrade(engine, "base")
        assert not CONTRACT_TABLES & set(sa.inspect(engine).get_table_names())
        before, after = upgrade(engine)
        assert (before, after) == (None, head_revision())
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_unreachable_server_is_one_clear_line_with_the_password_masked() -> None:
    url = "postgresql://trader:hunter2@127.0.0.1:1/cryptobots"
    with pytest.raises(ConfigurationError) as raised:
        create_engine(url)
    message = str(raised.value)
    assert "trader:***@127.0.0.1:1/cryptobots" in message
    assert "CRYPTOBOTS_DB_URL" in message
    assert "hunter2" not in message
    assert "\n" not in message


def test_sqlite_file_folder_is_created(tmp_path) -> None:  # type: ignore[no-untyped-def]
    engine = create_engine(f"sqlite:///{tmp_path / 'deep' / 'er' / 'cb.db'}")
    engine.dispose()
    assert (tmp_path / "deep" / "er" / "cb.db").exists()
