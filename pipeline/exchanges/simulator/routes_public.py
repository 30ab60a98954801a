"""The simulator's Binance public market data endpoints: ping, time, exchangeInfo, klines,
depth and the tickers (no key; limited and faulted like every `/api/` call)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from fastapi import FastAPI, Request

from pipeline.exchanges.simulator.errors import BinanceError
from pipeline.timeutil import DAY_MS

if TYPE_CHECKING:
    from pipeline.exchanges.simulator.app import Exchange

MAX_KLINES = 1000
DEPTH_LIMITS = (5, 10, 20, 50, 100, 500, 1000, 5000)


class PublicRoutes:
    """Binance's public market data endpoints over `exchange`'s recorded markets."""

    def __init__(self, exchange: Exchange) -> None:
        self.exchange = exchange

    def register(self, app: FastAPI) -> None:
        app.get("/api/v3/ping")(self.ping)
        app.get("/api/v3/time")(self.server_time)
        app.get("/api/v3/exchangeInfo")(self.exchange_info)
        app.get("/api/v3/klines")(self.klines)
        app.get("/api/v3/depth")(self.depth)
        app.get("/api/v3/ticker/bookTicker")(self.book_ticker)
        app.get("/api/v3/ticker/24hr")(self.ticker_24hr)

    async def ping(self) -> dict:
        return {}

    async def server_time(self) -> dict:
        return {"serverTime": self.exchange.clock.now_ms()}

    async def exchange_info(self) -> dict:
        return _exchange_info(self.exchange)

    async def klines(
        self,
        request: Request,
        symbol: str,
        interval: str,
        startTime: int | None = None,  # noqa: N803 - Binance's parameter names
        endTime: int | None = None,  # noqa: N803
        limit: int = 500,
    ) -> list:
        exchange = self.exchange
        if not 1 <= limit <= MAX_KLINES:
            raise BinanceError(400, -1130, "Data sent for parameter 'limit' is not valid.")
        feed = exchange.feed(symbol, interval)
        now = exchange.clock.now_ms()
        end = endTime if endTime is not None else now
        fault = getattr(request.state, "fault", None)
        start = startTime if startTime is not None else end - end % feed.tf - (limit - 1) * feed.tf
        if fault == "repeat":
            start -= (1 + int(exchange.faults.latency() * 10)) * feed.tf
        rows = feed.candles(start, end, limit, now)
        if fault == "truncated" and len(rows) > 1:
            rows = rows[: max(1, len(rows) // 2)]
        return rows

    async def depth(self, symbol: str, limit: int = 100) -> dict:
        if limit not in DEPTH_LIMITS:
            raise BinanceError(400, -1130, "Data sent for parameter 'limit' is not valid.")
        feed = self.exchange.market(symbol)
        now = self.exchange.clock.now_ms()
        bids, asks = feed.book(now, limit)
        return {"lastUpdateId": now // 1000, "bids": bids, "asks": asks}

    async def book_ticker(self, symbol: str | None = None) -> Any:
        symbols = [symbol] if symbol else sorted(self.exchange.markets())
        tickers = [_book_ticker(self.exchange, s) for s in symbols]
        return tickers[0] if symbol else tickers

    async def ticker_24hr(self, symbol: str | None = None) -> Any:
        symbols = [symbol] if symbol else sorted(self.exchange.markets())
        tickers = [ticker_24hr(self.exchange, s) for s in symbols]
        return tickers[0] if symbol else tickers


def _exchange_info(exchange: Exchange) -> dict:
    now = exchange.clock.now_ms()
    symbols = []
    for market_id, feed in sorted(exchange.markets().items()):
        f = feed.filters
        rec = feed.recording
        symbols.append(
            {
                "symbol": market_id,
                "status": "TRADING",
                "baseAsset": rec.base,
                "baseAssetPrecision": 8,
                "quoteAsset": rec.quote,
                "quotePrecision": 8,
                "quoteAssetPrecision": 8,
                "baseCommissionPrecision": 8,
                "quoteCommissionPrecision": 8,
                "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET"],
                "icebergAllowed": False,
                "ocoAllowed": False,
                "quoteOrderQtyMarketAllowed": True,
                "allowTrailingStop": False,
                "cancelReplaceAllowed": False,
                "isSpotTradingAllowed": True,
                "isMarginTradingAllowed": False,
                "filters": [
                    {
                        "filterType": "PRICE_FILTER",
                        "minPrice": _num(f["tick"]),
                        "maxPrice": "10000000",
                        "tickSize": _num(f["tick"]),
                    },
                    {
                        "filterType": "LOT_SIZE",
                        "minQty": _num(f["min_qty"]),
                        "maxQty": "9000000",
                        "stepSize": _num(f["step"]),
                    },
                    {
                        "filterType": "NOTIONAL",
                        "minNotional": _num(f["min_notional"]),
                        "applyMinToMarket": True,
                        "maxNotional": "9000000000",
                        "applyMaxToMarket": False,
                        "avgPriceMins": 5,
                    },
                ],
                "permissions": [],
                "permissionSets": [["SPOT"]],
                "defaultSelfTradePreventionMode": "NONE",
                "allowedSelfTradePreventionModes": ["NONE"],
            }
        )
    return {
        "timezone": "UTC",
        "serverTime": now,
        "rateLimits": [
            {
                "rateLimitType": "REQUEST_WEIGHT",
                "interval": "MINUTE",
                "intervalNum": 1,
                "limit": exchange.config.weight_budget,
            },
            {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 100},
            {"rateLimitType": "ORDERS", "interval": "DAY", "intervalNum": 1, "limit": 200000},
        ],
        "exchangeFilters": [],
        "symbols": symbols,
    }


def _book_ticker(exchange: Exchange, symbol: str) -> dict:
    bids, asks = exchange.market(symbol).book(exchange.clock.now_ms(), 5)
    return {
        "symbol": symbol,
        "bidPrice": bids[0][0],
        "bidQty": bids[0][1],
        "askPrice": asks[0][0],
        "askQty": asks[0][1],
    }


def ticker_24hr(exchange: Exchange, symbol: str) -> dict:
    feed = exchange.market(symbol)
    now = exchange.clock.now_ms()
    rows = feed.candles(now - DAY_MS, now, MAX_KLINES * 2, now)
    values = np.array([[float(v) for v in row[1:6]] for row in rows]) if rows else None
    bids, asks = feed.book(now, 5)
    last = feed.mid(now)
    first = float(values[0, 0]) if values is not None else last
    volume = float(values[:, 4].sum()) if values is not None else 0.0
    high = float(np.nanmax(values[:, 1])) if values is not None else last
    low = float(np.nanmin(values[:, 2])) if values is not None else last
    if last != feed.last_price(now):  # a book centred off its candles still lies in the range
        high, low = max(high, last), min(low, last)
    return {
        "symbol": symbol,
        "priceChange": _num(last - first),
        "priceChangePercent": _num(round(100 * (last / first - 1), 3) if first else 0.0),
        "weightedAvgPrice": _num(last),
        "prevClosePrice": _num(first),
        "lastPrice": _num(last),
        "lastQty": "0",
        "bidPrice": bids[0][0],
        "bidQty": bids[0][1],
        "askPrice": asks[0][0],
        "askQty": asks[0][1],
        "openPrice": _num(first),
        "highPrice": _num(high),
        "lowPrice": _num(low),
        "volume": _num(volume),
        "quoteVolume": _num(volume * last),
        "openTime": now - DAY_MS,
        "closeTime": now,
        "firstId": -1,
        "lastId": -1,
        "count": 0,
    }


def _num(value: float) -> str:
    return np.format_float_positional(float(value), precision=10, unique=True, trim="0")
