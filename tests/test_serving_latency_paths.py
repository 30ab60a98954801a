"""The shortcuts of a decision's hot path do what the long way did: the equity point
written in the decision's own transaction, and the serving features computed on
unchecked tails of the already checked window."""

from __future__ import annotations

import gzip
import itertools
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from pipeline.learn import features
from pipeline.learn.features import (
    KNOWN_FEATURES,
    Candles,
    FeatureSpec,
    compute_features,
    fill_gaps,
    latest_features,
)
from pipeline.settings import TrainingSettings
from serving import store
from tests.support.serving_rows import MARKET, decision, paper_buy

H = 3_600_000


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
    writer = store.DecisionWriter(engine)
    try:
        writer.record(
            decision(3_600_000, "cb-mark-1"),
            order,
            execution,
            durable=False,
            mark=store.Mark(3_600_000, after, 101.0),
        )
        writer.record(decision(7_200_000, None), mark=store.Mark(7_200_000, after, 99.0))
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
    store.record_equity(engine, "paper", MARKET, 3_600_000, held, 100.0)
    store.record_decision(
        engine, decision(3_600_000, None), mark=store.Mark(3_600_000, held, 120.0)
    )
    assert equity_rows(engine) == [(3_600_000, 5_100.0, 1.0, 5_000.0, 100.0)]


def test_a_refused_decision_writes_no_equity_point_either(engine: Engine) -> None:
    held = store.Position(1.0, 5_000.0, 0.5)
    store.record_decision(engine, decision(3_600_000, None))
    with pytest.raises(sa.exc.IntegrityError):
        store.record_decision(
            engine, decision(3_600_000, None), mark=store.Mark(3_600_000, held, 100.0)
        )
    assert equity_rows(engine) == []


def recorded_hours(data_dir: Path, rows: int) -> Candles:
    with gzip.open(data_dir / "binance_BTC-USDT_1h.csv.gz", "rt") as file:
        next(file)
        table = [[float(v) for v in line.split(",")] for line in itertools.islice(file, rows)]
    return fill_gaps(Candles.from_rows(table), H)[0]


def checked_tail(candles: Candles, size: int) -> Candles:
    """The tail as it was taken before: a slice, every row checked again."""
    return candles.slice(len(candles) - size, len(candles))


@pytest.mark.parametrize(
    "spec",
    [FeatureSpec(features=TrainingSettings().features), FeatureSpec(features=KNOWN_FEATURES)],
    ids=["training", "every-known"],
)
def test_serving_features_are_the_same_bytes_as_with_checked_tails(
    data_dir: Path, spec: FeatureSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    candles = recorded_hours(data_dir, spec.window + 60)
    windows = [
        candles.slice(t - spec.window + 1, t + 1) for t in range(spec.window - 1, len(candles))
    ]
    fast = [latest_features(window, spec).tobytes() for window in windows]
    monkeypatch.setattr(features, "_tail", checked_tail)
    checked = [latest_features(window, spec).tobytes() for window in windows]
    assert fast == checked
    matrix = compute_features(candles, spec)
    served = np.array([np.frombuffer(row) for row in fast])
    np.testing.assert_allclose(served, matrix[spec.window - 1 :], rtol=1e-10, atol=1e-12)
