"""The shortcuts of a decision's hot path do what the long way did: the equity point
written in the decision's own transaction, and the serving features computed on
unchecked tails of the already checked window."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from serving.model import decision_store, equity_store, store
from tests.support.serving_rows import MARKET, decision, paper_buy


@pytest.fixture
def engine(migrated_engine: Engine) -> Engine:
    with migrated_engine.begin() as conn:
        for table in ("decisions", "orders", "fills", "positions", "equity"):
            conn.execute(sa.text(f"DELETE FROM {table}"))
    store.ensure_position(migrated_engine, "paper", MARKET, 10_000.0)
    return migrated_engine


def equity_rows(engine: Engine) -> list[tuple]:
    with engine.connect() as conn:
        return [
            tuple(row)
            for row in conn.execute(
                sa.text("SELECT ts, equity, base, quote, price FROM equity ORDER BY ts")
            )
        ]


def test_a_decision_writes_its_equity_point_in_its_own_transaction(engine: Engine) -> None:
    order, execution = paper_buy("cb-mark-1")
    after = store.moved(store.Position(0.0, 10_000.0, 1.0), "buy", execution)
    writer = decision_store.DecisionWriter(engine)
    try:
        writer.record(
            decision(3_600_000, "cb-mark-1"),
            order,
            execution,
            durable=False,
            mark=equity_store.Mark(3_600_000, after, 101.0),
        )
        writer.record(decision(7_200_000, None), mark=equity_store.Mark(7_200_000, after, 99.0))
    finally:
        writer.close()

    written = [
        (ts, after.equity(price), after.base, after.quote, price)
        for ts, price in ((3_600_000, 101.0), (7_200_000, 99.0))
    ]
    assert equity_rows(engine) == written, "the same figures record_equity writes"
    position = store.get_position(engine, "paper", MARKET)
    assert (position.base, position.quote) == (after.base, after.quote)


def test_an_equity_point_already_on_record_for_the_candle_is_kept(engine: Engine) -> None:
    held = store.Position(1.0, 5_000.0, 0.5)
    equity_store.record_equity(engine, "paper", MARKET, 3_600_000, held, 100.0)
    decision_store.record_decision(
        engine, decision(3_600_000, None), mark=equity_store.Mark(3_600_000, held, 120.0)
    )
    assert equity_rows(engine) == [(3_600_000, 5_100.0, 1.0, 5_000.0, 100.0)]


def test_a_refused_decision_writes_no_equity_point_either(engine: Engine) -> None:
    held = store.Position(1.0, 5_000.0, 0.5)
    decision_store.record_decision(engine, decision(3_600_000, None))
    with pytest.raises(sa.exc.IntegrityError):
        decision_store.record_decision(
            engine, decision(3_600_000, None), mark=equity_store.Mark(3_600_000, held, 100.0)
        )
    assert equity_rows(engine) == []
