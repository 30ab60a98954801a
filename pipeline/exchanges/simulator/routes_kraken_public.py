"""The simulator's Kraken public market data endpoints (`/0/public/`): Time, Assets,
AssetPairs, OHLC, Depth and Ticker over the same recorded markets, clock and books as
the Binance dialect, answered in Kraken's envelope ({"error": [], "result": ...}).

OHLC answers as Kraken does: at most the 720 most recent closed candles of the interval,
those after `since`, whatever `since` asks for; a client wanting deeper history must ask
another endpoint or another venue, and is not told so by the answer."""

from __future__ import annotations

from email.utils import formatdate
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request

from pipeline.exchanges.simulator.errors import BinanceError, KrakenError
from pipeline.exchanges.simulator.kraken_names import Names, Pair, altname, asset_id, decimals
from pipeline.exchanges.simulator.records import MAKER_FEE, TAKER_FEE, fmt
from pipeline.exchanges.simulator.routes_public import ticker_24hr

if TYPE_CHECKING:
    from pipeline.exchanges.simulator.app import Exchange

OHLC_WINDOW = 720  # candles Kraken's OHLC endpoint answers at most: the most recent ones
INTERVALS = {1: "1m", 5: "5m", 15: "15m", 30: "30m", 60: "1h", 240: "4h", 1440: "1d"}
UNKNOWN_PAIR = "EQuery:Invalid asset pair"


def ok(result: Any) -> dict[str, Any]:
    """Kraken's envelope of a successful answer."""
    return {"error": [], "result": result}


class KrakenPublicRoutes:
    """Kraken's public endpoints over `exchange`'s recorded markets."""

    def __init__(self, exchange: Exchange) -> None:
        self.exchange = exchange
        self.names = Names(exchange.markets())

    def register(self, app: FastAPI) -> None:
        for name in ("Time", "Assets", "AssetPairs", "OHLC", "Depth", "Ticker", "SystemStatus"):
            app.get(f"/0/public/{name}")(getattr(self, name.lower()))

    def pair(self, name: str | None) -> Pair:
        """The pair a request names; Kraken's error for an unknown one."""
        pair = self.names.pair(name)
        if pair is None:
            raise KrakenError(UNKNOWN_PAIR)
        return pair

    async def time(self) -> dict:
        seconds = self.exchange.clock.now_ms() // 1000
        return ok({"unixtime": seconds, "rfc1123": formatdate(seconds, usegmt=True)})

    async def systemstatus(self) -> dict:
        return ok({"status": "online", "timestamp": formatdate(usegmt=True)})

    async def assets(self) -> dict:
        codes = {c for p in self.names.by_market.values() for c in (p.base, p.quote)}
        return ok(
            {
                asset_id(code): {
                    "aclass": "currency",
                    "altname": altname(code),
                    "decimals": 10,
                    "display_decimals": 5,
                    "status": "enabled",
                }
                for code in sorted(codes)
            }
        )

    async def assetpairs(self, pair: str | None = None) -> dict:
        wanted = [self.pair(name) for name in pair.split(",")] if pair else None
        pairs = wanted or list(self.names.by_market.values())
        return ok({p.id: self._pair_info(p) for p in pairs})

    def _pair_info(self, pair: Pair) -> dict[str, Any]:
        filters = self.exchange.market(pair.market_id).filters
        return {
            "altname": pair.altname,
            "wsname": pair.wsname,
            "aclass_base": "currency",
            "base": asset_id(pair.base),
            "aclass_quote": "currency",
            "quote": asset_id(pair.quote),
            "lot": "unit",
            "cost_decimals": 5,
            "pair_decimals": decimals(filters["tick"]),
            "lot_decimals": decimals(filters["step"]),
            "lot_multiplier": 1,
            "fees": [[0, TAKER_FEE * 100]],
            "fees_maker": [[0, MAKER_FEE * 100]],
            "fee_volume_currency": "ZUSD",
            "margin_call": 80,
            "margin_stop": 40,
            "ordermin": fmt(filters["min_qty"]),
            "costmin": fmt(filters["min_notional"]),
            "tick_size": fmt(filters["tick"]),
            "status": "online",
        }

    async def ohlc(
        self, request: Request, pair: str, interval: int = 1, since: int | None = None
    ) -> dict:
        market = self.pair(pair)
        timeframe = INTERVALS.get(interval)
        if timeframe is None:
            raise KrakenError("EGeneral:Invalid arguments:interval")
        try:
            feed = self.exchange.feed(market.market_id, timeframe)
        except BinanceError:
            raise KrakenError(f"EGeneral:Invalid arguments:interval {interval}") from None
        now = self.exchange.clock.now_ms()
        last_closed = now - now % feed.tf - feed.tf
        window_start = last_closed - (OHLC_WINDOW - 1) * feed.tf
        start = window_start if since is None else max(window_start, since * 1000 + 1)
        fault = getattr(request.state, "fault", None)
        if fault == "repeat":
            start -= (1 + int(self.exchange.faults.latency() * 10)) * feed.tf
        rows = feed.candles(start, last_closed, OHLC_WINDOW, now)
        if fault == "truncated" and len(rows) > 1:
            rows = rows[: max(1, len(rows) // 2)]
        candles = [
            [row[0] // 1000, row[1], row[2], row[3], row[4], row[4], row[5], 0] for row in rows
        ]
        last = candles[-1][0] if candles else (since or window_start // 1000)
        return ok({market.id: candles, "last": last})

    async def depth(self, pair: str, count: int = 100) -> dict:
        market = self.pair(pair)
        if not 1 <= count <= 500:
            raise KrakenError("EGeneral:Invalid arguments:count")
        now = self.exchange.clock.now_ms()
        bids, asks = self.exchange.market(market.market_id).book(now, count)
        seconds = now // 1000
        return ok(
            {
                market.id: {
                    "asks": [[p, q, seconds] for p, q in asks],
                    "bids": [[p, q, seconds] for p, q in bids],
                }
            }
        )

    async def ticker(self, pair: str | None = None) -> dict:
        pairs = [self.pair(n) for n in pair.split(",")] if pair else self.names.by_market.values()
        return ok({p.id: self._ticker(p) for p in pairs})

    def _ticker(self, pair: Pair) -> dict[str, Any]:
        day = ticker_24hr(self.exchange, pair.market_id)
        return {
            "a": [day["askPrice"], "1", day["askQty"]],
            "b": [day["bidPrice"], "1", day["bidQty"]],
            "c": [day["lastPrice"], "0"],
            "v": [day["volume"], day["volume"]],
            "p": [day["weightedAvgPrice"], day["weightedAvgPrice"]],
            "t": [0, 0],
            "l": [day["lowPrice"], day["lowPrice"]],
            "h": [day["highPrice"], day["highPrice"]],
            "o": day["openPrice"],
        }
