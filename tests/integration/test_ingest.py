"""Ingest and backfill: ccxt over HTTP to the simulator, validated, stored in Postgres."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from pipeline.data.backfill import backfill
from pipeline.data.ingest import ingest
from pipeline.errors import DataValidationError, ExchangeRejected
from pipeline.settings import Market, ValidationSettings
from tests.support.exchange import exchange_client

pytestmark = pytest.mark.postgres

BTC_1H = Market.model_validate("binance:BTC/USDT:1h")


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


def contents(engine: Engine) -> dict[str, list[tuple]]:
    """The three market-data tables, without the columns that record when."""
    queries = {
        "ohlcv": "SELECT exchange, symbol, timeframe, ts, open, high, low, close, volume "
        "FROM ohlcv ORDER BY 1, 2, 3, 4",
        "quarantine": "SELECT exchange, symbol, timeframe, ts, open, high, low, close, volume, "
        "raw, reason FROM ohlcv_quarantine ORDER BY 1, 2, 3, 4, 10, 11",
        "gaps": "SELECT exchange, symbol, timeframe, start_ts, end_ts, missing "
        "FROM ohlcv_gaps ORDER BY 1, 2, 3, 4",
    }
    with engine.connect() as conn:
        return {name: [tuple(r) for r in conn.execute(sa.text(q))] for name, q in queries.items()}


def test_every_closed_candle_is_stored_once(simulator, fresh_pg) -> None:
    engine = fresh_pg()
    start, end = ms("2019-01-01"), ms("2019-03-01")
    with simulator() as sim:
        summary = ingest(exchange_client(sim.url), engine, BTC_1H, start, end)
    stored = contents(engine)["ohlcv"]
    assert [row[3] for row in stored] == list(range(start, end, 3_600_000))
    assert summary.inserted == len(stored) == 59 * 24
    assert summary.gaps == 0


def test_running_an_interval_again_changes_nothing(simulator, fresh_pg) -> None:
    engine = fresh_pg()
    start, end = ms("2020-11-15"), ms("2020-11-25")
    with simulator() as sim:
        exchange = exchange_client(sim.url)
        first = ingest(exchange, engine, BTC_1H, start, end)
        before = contents(engine)
        again = ingest(exchange, engine, BTC_1H, start, end)
    assert (again.inserted, again.updated, again.unchanged) == (0, 0, first.inserted)
    assert contents(engine) == before


def test_a_real_exchange_gap_is_recorded_not_invented(simulator, fresh_pg) -> None:
    engine = fresh_pg()
    with simulator() as sim:
        summary = ingest(
            exchange_client(sim.url), engine, BTC_1H, ms("2017-09-22"), ms("2017-09-24")
        )
    assert contents(engine)["gaps"] == [
        ("binance", "BTC/USDT", "1h", ms("2017-09-22T20:00"), ms("2017-09-23T00:00"), 4)
    ]
    assert summary.gaps == 4
    assert len(contents(engine)["ohlcv"]) == 48 - 4


def test_the_recorded_duplicates_keep_the_precise_copy_and_quarantine_the_other(
    simulator, fresh_pg
) -> None:
    engine = fresh_pg()
    with simulator() as sim:
        ingest(exchange_client(sim.url), engine, BTC_1H, ms("2020-11-20"), ms("2020-11-21"))
    tables = contents(engine)
    stored = {row[3]: row for row in tables["ohlcv"]}
    assert stored[ms("2020-11-20T07:00")][7] == 18212.0  # the full-precision copy's close
    superseded = [row for row in tables["quarantine"] if row[3] == ms("2020-11-20T07:00")]
    assert [row[7] for row in superseded] == [18143.03]
    assert "superseded" in superseded[0][10]


@pytest.mark.parametrize(
    ("exchange", "market", "start", "end"),
    [
        ("binance", "binance:BTC/USDT:1h", "2020-10-25", "2020-11-24"),
        ("binanceus", "binanceus:BTC/USDT:1m", "2023-03-05", "2023-03-07"),
    ],
    ids=["30 days of 1h", "2 days of 1m"],
)
def test_a_backfill_under_faults_ends_exactly_like_one_without(
    simulator, fresh_pg, exchange: str, market: str, start: str, end: str
) -> None:
    target = Market.model_validate(market)
    clean_db, faulty_db = fresh_pg(), fresh_pg()
    with simulator(exchange=exchange) as sim:
        clean = backfill(exchange_client(sim.url, exchange), clean_db, target, ms(start), ms(end))
    with simulator(exchange=exchange, fault_rate=0.2, seed=5, fault_timeout_seconds=1.5) as sim:
        faulty_client = exchange_client(sim.url, exchange, timeout_ms=1000)
        faulty = backfill(faulty_client, faulty_db, target, ms(start), ms(end))
        again = backfill(faulty_client, faulty_db, target, ms(start), ms(end))
        injected = sum(sim.exchange.faults.injected.values())
    assert injected > 0
    assert contents(faulty_db) == contents(clean_db)
    assert faulty.total("inserted") == clean.total("inserted") > 0
    assert again.skipped == again.chunks  # a second run finds every chunk complete


def test_a_second_backfill_after_an_interruption_fetches_only_what_is_missing(
    simulator, fresh_pg
) -> None:
    engine = fresh_pg()
    market = Market.model_validate("binance:ETH/USDT:1h")
    week = 7 * 24
    with simulator() as sim:
        exchange = exchange_client(sim.url)
        # "interrupted" after 19 days: two whole weeks and five days of the third
        backfill(exchange, engine, market, ms("2019-01-01"), ms("2019-01-20"), chunk_candles=week)
        resumed = backfill(
            exchange, engine, market, ms("2019-01-01"), ms("2019-03-15"), chunk_candles=week
        )
    assert resumed.skipped == 2
    assert resumed.summaries[0].unchanged == 5 * 24
    assert resumed.summaries[0].inserted == 2 * 24
    assert len(contents(engine)["ohlcv"]) == (ms("2019-03-15") - ms("2019-01-01")) // 3_600_000


def test_a_batch_with_too_many_bad_rows_fails_after_quarantining(simulator, fresh_pg) -> None:
    engine = fresh_pg()
    gemini = Market.model_validate("gemini:BTC/USD:1h")
    strict = ValidationSettings(max_bad_fraction=0.0)
    expected = r"nothing was stored; first reasons: \['open <= 0"
    with simulator(exchange="gemini") as sim, pytest.raises(DataValidationError, match=expected):
        ingest(
            exchange_client(sim.url, "gemini"),
            engine,
            gemini,
            ms("2015-10-08T13:00"),
            ms("2015-10-09"),
            policy=strict,
        )
    tables = contents(engine)
    assert tables["ohlcv"] == []
    assert [row[3] for row in tables["quarantine"]] == [ms("2015-10-08T13:00")]


def test_candles_that_have_not_closed_are_not_stored(simulator, fresh_pg) -> None:
    engine = fresh_pg()
    with simulator(shift_to_now=True) as sim:
        exchange = exchange_client(sim.url)
        now = exchange.server_time()
        summary = ingest(exchange, engine, BTC_1H, now - 5 * 3_600_000, now + 3 * 3_600_000)
    assert summary.end <= now
    assert all(row[3] + 3_600_000 <= now for row in contents(engine)["ohlcv"])
    assert summary.inserted >= 4


def test_an_unlisted_symbol_fails_fast_naming_the_market(simulator, fresh_pg) -> None:
    engine = fresh_pg()
    with simulator() as sim:
        exchange = exchange_client(sim.url)
        with pytest.raises(ExchangeRejected, match="binance:DOGE/USDT"):
            ingest(exchange, engine, Market.model_validate("binance:DOGE/USDT:1h"), 0, 3_600_000)
    assert exchange.retries == 0
