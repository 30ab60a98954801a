"""Ingest of a Kraken market through ccxt's own `kraken` class against the simulator's
Kraken dialect: the recent candles stored as on Binance, and history older than Kraken's
720-candle window refused by name with nothing stored, never taken for gaps."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

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
