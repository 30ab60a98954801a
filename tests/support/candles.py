"""Candle rows as ingest stores them."""

from __future__ import annotations

HOUR = 3_600_000
T0 = 1_600_000_000_000 - 1_600_000_000_000 % HOUR


def candle(ts: int, close: float = 100.0, symbol: str = "BTC/USDT", **overrides) -> dict:
    row = {
        "exchange": "binance",
        "symbol": symbol,
        "timeframe": "1h",
        "ts": ts,
        "open": close - 1,
        "high": close + 2,
        "low": close - 2,
        "close": close,
        "volume": 12.5,
    }
    return row | overrides
