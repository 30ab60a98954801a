"""The trader's decision writes: one atomic write per decision on both backends, and a
writer that outlives a dropped database connection."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from serving.model import decision_store, store
from tests.support.serving_rows import MARKET, decision, paper_buy


@pytest.fixture
def engine(migrated_engine: Engine) -> Engine:
    with migrated_engine.begin() as conn:
        for table in ("decisions", "orders", "fills", "positions"):
            conn.execute(sa.text(f"DELETE FROM {table}"))
    store.ensure_position(migrated_engine, "paper", MARKET, 10_000.0)
    return migrated_engine


def test_a_paper_decision_writes_its_order_fills_and_position_together(engine: Engine) -> None:
    writer = decision_store.DecisionWriter(engine)
    order, execution = paper_buy("cb-order-1")
    try:
        writer.record(decision(3_600_000, "cb-order-1"), order, execution, durable=False)
    finally:
        writer.close()
    with engine.connect() as conn:
        row = conn.execute(sa.text("SELECT status, filled, fee FROM orders")).one()
        trades = conn.execute(sa.text("SELECT trade_id, price, amount FROM fills ORDER BY ts"))
        assert tuple(row) == ("filled", 2.0, pytest.approx(0.2005))
        assert [tuple(t) for t in trades] == [("t1", 100.0, 1.5), ("t2", 101.0, 0.5)]
    position = store.get_position(engine, "paper", MARKET)
    assert position.base == pytest.approx(2.0)
    assert position.quote == pytest.approx(10_000.0 - 200.5 - 0.2005)
    assert position.target == 1.0


def test_a_candle_decided_twice_is_refused_and_moves_nothing_twice(engine: Engine) -> None:
    writer = decision_store.DecisionWriter(engine)
    order, execution = paper_buy("cb-order-2")
    try:
        writer.record(decision(7_200_000, "cb-order-2"), order, execution, durable=False)
        with pytest.raises(sa.exc.IntegrityError):
            writer.record(decision(7_200_000, "cb-order-2"), order, execution, durable=False)
        writer.record(decision(10_800_000, None))  # the writer goes on after the refusal
    finally:
        writer.close()
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM fills")).scalar() == 2
        assert conn.execute(sa.text("SELECT count(*) FROM decisions")).scalar() == 2
    assert store.get_position(engine, "paper", MARKET).base == pytest.approx(2.0)


def test_the_writer_reconnects_after_the_server_drops_its_connection(
    fresh_pg, pg_server: Engine
) -> None:
    engine = fresh_pg()
    store.ensure_position(engine, "paper", MARKET, 10_000.0)
    writer = decision_store.DecisionWriter(engine)
    try:
        writer.record(decision(3_600_000, None))
        with pg_server.connect() as admin:
            admin.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = :db AND pid <> pg_backend_pid()"
                ),
                {"db": engine.url.database},
            )
        with pytest.raises(sa.exc.OperationalError):
            writer.record(decision(7_200_000, None))
        writer.record(decision(7_200_000, None))
    finally:
        writer.close()
    assert decision_store.last_decided_candle(engine, "paper", MARKET) == 7_200_000
