"""ccxt clients on the exchange simulator, with retries quick enough for tests."""

from __future__ import annotations

from pipeline.exchanges.client import ExchangeClient, RetryPolicy
from pipeline.exchanges.factory import create_ccxt
from pipeline.settings import ExchangeConfig


def fast_retry() -> RetryPolicy:
    """Retries quick enough for tests (the simulator's Retry-After is 1 s)."""
    return RetryPolicy(attempts=12, initial_seconds=0.05, max_seconds=0.5, total_seconds=120)


def exchange_client(url: str, name: str = "binance", timeout_ms: int = 2000) -> ExchangeClient:
    """A ccxt.binance client for the simulator at `url`, behind the cryptobots adapter."""
    client = create_ccxt(name, ExchangeConfig(ccxt_id="binance", url=url), timeout_ms=timeout_ms)
    exchange = ExchangeClient(name, client, fast_retry())
    exchange.load_markets()
    return exchange
