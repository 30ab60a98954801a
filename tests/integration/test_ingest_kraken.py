"""Ingest of a Kraken market through ccxt's own `kraken` class against the simulator's
Kraken dialect: the recent candles stored as on Binance (and the same under a fifth of
requests faulted), and history older than Kraken's 720-candle window refused by name
with nothing stored, never taken for gaps."""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from pipeline.data.backfill import backfill
from pipeline.data.ingest import ingest
from pipeline.errors import HistoryOutOfReach
from pipeline.exchanges.client import ExchangeClient
from pipeline.exchanges.factory import create_ccxt
from pipeline.settings import ExchangeConfig, Market
from tests.support.exchange import fast_retry

pytestmark = pytest.mark.postgres

MARKET = Market.model_validate("kraken:BTC/USDC:1m")
MINUTE = 60_000


def kraken_client(url: str) -> ExchangeClient:
    config = ExchangeConfig(ccxt_id="kraken", url=url, rate_limit_ms=10)
    exchange = ExchangeClient("kraken", create_ccxt("kraken", config), fast_retry())
    exchange.load_markets()
    return exchange


def count(engine: Engine, table: str) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one()


@pytest.fixture
def kraken(simulator):
    with simulator(exchange="kraken", dialect="kraken", shift_to_now=True) as sim:
        yield kraken_client(sim.url)


def test_the_recent_hours_of_a_kraken_market_are_stored_as_the_exchange_serves_them(
    kraken, fresh_pg
) -> None:
    engine = fresh_pg()
    now = kraken.server_time()
    end = now - now % MINUTE
    start = end - 6 * 60 * MINUTE
    summary = ingest(kraken, engine, MARKET, start, end)
    served = [row[0] for row in kraken.fetch_ohlcv("BTC/USDC", "1m", start, 720) if row[0] < end]
    with engine.connect() as conn:
        stored = [
            r[0]
            for r in conn.execute(
                sa.text("SELECT ts FROM ohlcv WHERE exchange = 'kraken' ORDER BY ts")
            )
        ]
    assert stored == served
    assert summary.inserted == len(served) > 0
    assert summary.gaps == 360 - len(served), "minutes Kraken has no candle for are gaps"


def test_a_sparse_markets_missing_minutes_are_asked_for_again_a_page_at_a_time(
    kraken, fresh_pg
) -> None:
    now = kraken.server_time()
    end = now - now % MINUTE
    summary = ingest(kraken, fresh_pg(), MARKET, end - 6 * 60 * MINUTE, end)
    assert summary.gaps > 10, "the recorded Kraken minutes are sparse enough to show it"
    assert kraken.requests["klines"] == 2, "the page, then one page of the missing minutes"


def test_history_older_than_the_720_candle_window_is_refused_by_name_and_nothing_stored(
    kraken, fresh_pg
) -> None:
    engine = fresh_pg()
    now = kraken.server_time()
    start = now - now % MINUTE - 2 * 24 * 60 * MINUTE
    with pytest.raises(HistoryOutOfReach, match="720 most recent candles") as refused:
        ingest(kraken, engine, MARKET, start, start + 60 * MINUTE)
    assert "kraken:BTC/USDC:1m" in str(refused.value)
    assert "Backfill from" in str(refused.value)
    assert count(engine, "ohlcv") == count(engine, "ohlcv_gaps") == 0


def contents(engine: Engine) -> dict[str, list[tuple]]:
    queries = {
        "ohlcv": "SELECT ts, open, high, low, close, volume FROM ohlcv ORDER BY ts",
        "quarantine": "SELECT ts, raw, reason FROM ohlcv_quarantine ORDER BY ts, reason",
        "gaps": "SELECT start_ts, end_ts, missing FROM ohlcv_gaps ORDER BY start_ts",
    }
    with engine.connect() as conn:
        return {name: [tuple(r) for r in conn.execute(sa.text(q))] for name, q in queries.items()}


def test_a_kraken_backfill_under_a_fifth_of_requests_faulted_ends_like_a_clean_one(
    simulator, fresh_pg
) -> None:
    now = int(time.time() * 1000)
    history_end = now - now % MINUTE
    end = history_end - 2 * MINUTE
    start = end - 6 * 60 * MINUTE
    common = {"exchange": "kraken", "dialect": "kraken", "shift_to_now": True}
    common |= {"history_end_ms": history_end}
    clean_db, faulty_db = fresh_pg(), fresh_pg()
    with simulator(**common) as sim:
        clean = backfill(kraken_client(sim.url), clean_db, MARKET, start, end)
    with simulator(**common, fault_rate=0.2, seed=5, fault_timeout_seconds=1.5) as sim:
        faulty_client = kraken_client(sim.url)
        faulty = backfill(faulty_client, faulty_db, MARKET, start, end)
        again = backfill(faulty_client, faulty_db, MARKET, start, end)
        injected = sum(sim.exchange.faults.injected.values())
    assert injected > 0
    assert contents(faulty_db) == contents(clean_db)
    assert faulty.total("inserted") == clean.total("inserted") > 0
    assert again.skipped == again.chunks
