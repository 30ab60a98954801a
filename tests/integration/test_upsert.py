"""upsert_ohlcv: idempotent, last-wins inside a batch, all-or-nothing, exact values."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import hypothesis.strategies as st
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from sqlalchemy.engine import Engine

from pipeline.db.engine import create_engine
from pipeline.db.migrate import upgrade
from pipeline.db.upsert import UpsertResult, upsert_ohlcv
from pipeline.db.upsert import postgres as postgres_merge
from pipeline.errors import DataValidationError
from tests.support.candles import HOUR, T0, candle


def stored(engine: Engine) -> dict[tuple, tuple]:
    with engine.connect() as conn:
        result = conn.execute(
            sa.text(
                "SELECT exchange, symbol, timeframe, ts, open, high, low, close, volume "
                "FROM ohlcv ORDER BY exchange, symbol, timeframe, ts"
            )
        )
        return {tuple(row[:4]): tuple(row[4:]) for row in result}


@pytest.fixture
def engine(migrated_engine: Engine) -> Engine:
    """The module's migrated database with an empty ohlcv table."""
    with migrated_engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM ohlcv"))
    return migrated_engine


def test_first_upsert_inserts_every_row(engine: Engine) -> None:
    result = upsert_ohlcv(engine, [candle(T0 + i * HOUR) for i in range(5)])
    assert result == UpsertResult(inserted=5, updated=0, unchanged=0)
    assert len(stored(engine)) == 5


def test_upserting_the_same_rows_again_changes_nothing(engine: Engine) -> None:
    rows = [candle(T0 + i * HOUR) for i in range(5)]
    upsert_ohlcv(engine, rows)
    with engine.connect() as conn:
        first_seen = conn.execute(sa.text("SELECT ts, ingested_at FROM ohlcv")).all()
    assert upsert_ohlcv(engine, rows) == UpsertResult(inserted=0, updated=0, unchanged=5)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT ts, ingested_at FROM ohlcv")).all() == first_seen


def test_changed_values_are_updated_and_counted(engine: Engine) -> None:
    upsert_ohlcv(engine, [candle(T0), candle(T0 + HOUR)])
    result = upsert_ohlcv(
        engine, [candle(T0), candle(T0 + HOUR, close=101.0), candle(T0 + 2 * HOUR)]
    )
    assert result == UpsertResult(inserted=1, updated=1, unchanged=1)
    assert stored(engine)[("binance", "BTC/USDT", "1h", T0 + HOUR)][3] == 101.0


def test_duplicate_keys_inside_a_batch_resolve_to_the_last(engine: Engine) -> None:
    rows = [candle(T0, close=1.0), candle(T0 + HOUR), candle(T0, close=3.0), candle(T0, close=2.0)]
    result = upsert_ohlcv(engine, rows)
    assert result == UpsertResult(inserted=2, updated=0, unchanged=0, duplicates=2)
    assert stored(engine)[("binance", "BTC/USDT", "1h", T0)][3] == 2.0


def test_several_markets_in_one_batch_stay_apart(engine: Engine) -> None:
    rows = [
        candle(T0, close=1.0, symbol="ETH/BTC"),
        candle(T0, close=2.0),
        candle(T0, close=3.0, symbol="ETH/USDT", timeframe="1m", exchange="kraken"),
    ]
    assert upsert_ohlcv(engine, rows).inserted == 3
    assert {key: value[3] for key, value in stored(engine).items()} == {
        ("binance", "BTC/USDT", "1h", T0): 2.0,
        ("binance", "ETH/BTC", "1h", T0): 1.0,
        ("kraken", "ETH/USDT", "1m", T0): 3.0,
    }


def test_dataframe_and_arrow_table_are_accepted(engine: Engine) -> None:
    frame = pd.DataFrame([candle(T0 + i * HOUR) for i in range(3)])
    assert upsert_ohlcv(engine, frame).inserted == 3
    table = pa.Table.from_pandas(frame.assign(close=frame["close"] + 1))
    assert upsert_ohlcv(engine, table) == UpsertResult(inserted=0, updated=3, unchanged=0)


@pytest.mark.parametrize(
    ("bad", "named"),
    [
        ({"symbol": None}, "symbol missing"),
        ({"exchange": ""}, "exchange missing"),
        ({"ts": None}, "ts None is not an integer timestamp"),
        ({"close": math.nan}, "close nan is not finite"),
        ({"high": math.inf}, "high inf is not finite"),
        ({"volume": None}, "volume None is not finite"),
    ],
)
def test_invalid_rows_are_listed_and_nothing_of_the_batch_is_written(
    engine: Engine, bad: dict, named: str
) -> None:
    rows = [candle(T0), candle(T0 + HOUR) | bad, candle(T0 + 2 * HOUR)]
    with pytest.raises(DataValidationError) as raised:
        upsert_ohlcv(engine, rows)
    assert "row 1 " in str(raised.value)
    assert named in str(raised.value)
    assert stored(engine) == {}


def test_missing_column_is_named(engine: Engine) -> None:
    row = candle(T0)
    del row["volume"]
    with pytest.raises(DataValidationError, match=r"lack column\(s\) \['volume'\]"):
        upsert_ohlcv(engine, [row])


def test_empty_batch_writes_nothing(engine: Engine) -> None:
    assert upsert_ohlcv(engine, []) == UpsertResult(0, 0, 0)


def test_recorded_precision_round_trips_exactly(engine: Engine) -> None:
    # values as the exchanges print them, including float artefacts from the sources
    prints = [
        19158.999999999996,
        19159.000000000004,
        0.00012345,
        0.04029,
        16199.91,
        1e-08,
        123456789.12345678,
        2.2250738585072014e-308,
    ]
    rows = [
        candle(T0 + i * HOUR, close=p, open=p, high=p, low=p, volume=p)
        for i, p in enumerate(prints)
    ]
    upsert_ohlcv(engine, rows)
    assert [value[3] for value in stored(engine).values()] == prints


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(st.floats(allow_nan=False, allow_infinity=False, width=64), min_size=1, max_size=20)
)
def test_any_finite_float_round_trips_exactly(engine: Engine, prices: list[float]) -> None:
    rows = [candle(T0 + i * HOUR, close=p) for i, p in enumerate(prices)]
    upsert_ohlcv(engine, rows)
    got = {key[3]: value[3] for key, value in stored(engine).items()}
    assert [got[T0 + i * HOUR] for i in range(len(prices))] == prices


@pytest.fixture
def pg_engine(pg_url: str) -> Iterator[Engine]:
    """A migrated Postgres database with an empty ohlcv table."""
    engine = create_engine(pg_url)
    upgrade(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM ohlcv"))
    yield engine
    engine.dispose()


@pytest.mark.postgres
def test_rows_stored_by_a_concurrent_writer_after_the_read_back_are_merged(
    pg_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    upsert_ohlcv(pg_engine, [candle(T0), candle(T0 + HOUR)])
    # as if another writer committed those two rows just after this upsert read the range
    empty = np.zeros(0, dtype=postgres_merge.STORED_DTYPE)
    monkeypatch.setattr(postgres_merge, "_read_back", lambda cursor, markets: empty)
    result = upsert_ohlcv(
        pg_engine, [candle(T0), candle(T0 + HOUR, close=101.0), candle(T0 + 2 * HOUR)]
    )
    assert result == UpsertResult(inserted=1, updated=1, unchanged=1)
    assert [value[3] for value in stored(pg_engine).values()] == [100.0, 101.0, 100.0]


@pytest.mark.postgres
def test_two_writers_upserting_the_same_new_rows_at_once_store_them_once(
    pg_engine: Engine,
) -> None:
    rows = pd.DataFrame([candle(T0 + i * HOUR, close=100.0 + i) for i in range(2000)])
    barrier = threading.Barrier(2)

    def write() -> UpsertResult:
        barrier.wait()
        return upsert_ohlcv(pg_engine, rows)

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: write(), range(2)))
    assert sum(r.inserted for r in results) == 2000
    assert sum(r.unchanged for r in results) == 2000
    assert len(stored(pg_engine)) == 2000
