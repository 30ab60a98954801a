"""The simulator's HTTP server: Binance spot public endpoints over recorded candles.

Every response carries `X-MBX-USED-WEIGHT-1M`; past the weight budget requests
get 429 with Retry-After, and a client that keeps going gets 418. Faults are
injected by an ASGI middleware before the request reaches the endpoint.

Under `/sim/` (not Binance's API; never limited, never faulted) the simulator is
steered at run time: `/sim/stats` counts, `/sim/plant` plants mispricings in the
books, `/sim/leg-fault` makes the next orders on a market fail in a chosen way.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse

from pipeline.exchanges.simulator.accounts import Accounts, BinanceError, order_json
from pipeline.exchanges.simulator.faults import (
    FAULT_KINDS,
    FaultPlan,
    LegFault,
    LegFaults,
    WeightLimiter,
    request_weight,
)
from pipeline.exchanges.simulator.market import Clock, MarketFeed, Plant, Pricing
from pipeline.exchanges.simulator.recordings import Recording, find_recordings
from pipeline.settings import timeframe_ms
from pipeline.timeutil import DAY_MS

MAX_KLINES = 1000
DEPTH_LIMITS = (5, 10, 20, 50, 100, 500, 1000, 5000)
# A leg-fault reject: Binance's NEW_ORDER_REJECTED, which ccxt raises as InvalidOrder
REJECT_CODE = -2010
REJECT_MSG = "Order book liquidity is less than symbol minimum quantity."


@dataclass(frozen=True)
class SimulatorConfig:
    """Everything the simulator is started with (the CLI's options)."""

    data_dir: Path
    exchange: str = "binance"
    seed: int = 0
    shift_to_now: bool = False
    history_end_ms: int | None = None  # with shift_to_now: end history here, not now
    speed: float = 1.0
    weight_budget: int = 6000
    fault_rate: float = 0.0
    fault_kinds: tuple[str, ...] = FAULT_KINDS
    fault_timeout_seconds: float = 5.0
    fault_retry_after_seconds: int = 1
    ban_after: int = 2
    ban_seconds: int = 120
    api_keys: tuple[tuple[str, str], ...] = ()  # (key, secret) pairs accepted on signed calls
    state_file: Path | None = None  # balances, orders and trades survive restarts here
    initial_balances: tuple[tuple[str, float], ...] = (("USDT", 10_000.0),)
    # centre a cross X/Y's book on mid(X/Q) / mid(Y/Q) when X/Q and Y/Q are served;
    # klines stay as recorded
    consistent_books: bool = False
    plants: tuple[Plant, ...] = ()  # mispricings live from the start, for real seconds


@dataclass
class Exchange:
    """The simulated exchange's state: markets on a clock, limits, faults."""

    config: SimulatorConfig
    feeds: dict[str, MarketFeed] = field(default_factory=dict)
    clock: Clock = field(default_factory=Clock)

    def __post_init__(self) -> None:
        recordings = find_recordings(self.config.data_dir, self.config.exchange)
        self.clock = Clock(speed=self.config.speed)
        step = math.lcm(*(r.timeframe_ms for r in recordings))
        end = self.config.history_end_ms or self.clock.start_real_ms
        now = (end // step) * step

        def offset(recording: Recording) -> int:
            # each series ends now; series that ended together (a triangle) stay aligned
            if not self.config.shift_to_now:
                return 0
            shift = now - (int(recording.ts[-1]) + recording.timeframe_ms)
            return shift - shift % step

        self.feeds = {
            f"{r.market_id}:{r.timeframe}": MarketFeed(r, offset(r), self.config.shift_to_now)
            for r in recordings
        }
        self.limiter = WeightLimiter(
            budget=self.config.weight_budget,
            ban_after=self.config.ban_after,
            ban_seconds=self.config.ban_seconds,
        )
        self.accounts = Accounts(
            dict(self.config.api_keys),
            self.config.state_file,
            dict(self.config.initial_balances),
        )
        self.faults = FaultPlan(
            rate=self.config.fault_rate,
            kinds=self.config.fault_kinds,
            seed=self.config.seed,
            timeout_seconds=self.config.fault_timeout_seconds,
            retry_after_seconds=self.config.fault_retry_after_seconds,
        )
        self.pricing = Pricing(self.markets(), self.config.consistent_books)
        for feed in self.feeds.values():
            feed.pricing = self.pricing
        for plant in self.config.plants:
            self.pricing.plant(plant)
        self.leg_faults = LegFaults()

    def markets(self) -> dict[str, MarketFeed]:
        """One feed per Binance symbol id for books and tickers: its longest recording."""
        chosen: dict[str, MarketFeed] = {}
        for feed in self.feeds.values():
            market_id = feed.recording.market_id
            if market_id not in chosen or feed.span > chosen[market_id].span:
                chosen[market_id] = feed
        return chosen

    def feed(self, symbol: str, interval: str) -> MarketFeed:
        if symbol not in self.markets():
            raise BinanceError(400, -1121, "Invalid symbol.")
        try:
            timeframe_ms(interval)
        except ValueError:
            raise BinanceError(400, -1120, "Invalid interval.") from None
        feed = self.feeds.get(f"{symbol}:{interval}")
        if feed is None:
            raise BinanceError(
                400, -1120, f"Invalid interval: {interval} is not recorded for {symbol}."
            )
        return feed


def create_app(config: SimulatorConfig) -> FastAPI:
    """The FastAPI application of one simulated exchange."""
    exchange = Exchange(config)
    app = FastAPI(title=f"cryptobots exchange simulator ({config.exchange})", docs_url=None)
    app.state.exchange = exchange

    @app.exception_handler(BinanceError)
    async def _binance_error(_request: Request, error: BinanceError) -> JSONResponse:
        return JSONResponse({"code": error.code, "msg": error.msg}, status_code=error.status)

    @app.get("/api/v3/ping")
    async def ping() -> dict:
        return {}

    @app.get("/api/v3/time")
    async def server_time() -> dict:
        return {"serverTime": exchange.clock.now_ms()}

    @app.get("/api/v3/exchangeInfo")
    async def exchange_info() -> dict:
        return _exchange_info(exchange)

    @app.get("/api/v3/klines")
    async def klines(
        request: Request,
        symbol: str,
        interval: str,
        startTime: int | None = None,  # noqa: N803 - Binance's parameter names
        endTime: int | None = None,  # noqa: N803
        limit: int = 500,
    ) -> list:
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

    @app.get("/api/v3/depth")
    async def depth(symbol: str, limit: int = 100) -> dict:
        if limit not in DEPTH_LIMITS:
            raise BinanceError(400, -1130, "Data sent for parameter 'limit' is not valid.")
        feed = _market(exchange, symbol)
        now = exchange.clock.now_ms()
        bids, asks = feed.book(now, limit)
        return {"lastUpdateId": now // 1000, "bids": bids, "asks": asks}

    @app.get("/api/v3/ticker/bookTicker")
    async def book_ticker(symbol: str | None = None) -> Any:
        symbols = [symbol] if symbol else sorted(exchange.markets())
        tickers = [_book_ticker(exchange, s) for s in symbols]
        return tickers[0] if symbol else tickers

    @app.get("/api/v3/ticker/24hr")
    async def ticker_24hr(symbol: str | None = None) -> Any:
        symbols = [symbol] if symbol else sorted(exchange.markets())
        tickers = [_ticker_24hr(exchange, s) for s in symbols]
        return tickers[0] if symbol else tickers

    async def signed(request: Request) -> tuple[str, dict[str, str], int]:
        api_key = request.headers.get("x-mbx-apikey")
        payload = request.url.query
        if request.method == "POST":
            payload = (await request.body()).decode() or payload
        now = exchange.clock.now_ms()
        # recvWindow guards against replays in real time: it compares the client's wall
        # clock with ours, even when the market clock runs faster than real time
        params = exchange.accounts.authenticate(api_key, payload, int(time.time() * 1000))
        exchange.accounts.match_resting(api_key, exchange.markets(), _book_of(exchange), now)
        return api_key, params, now  # type: ignore[return-value]

    @app.get("/api/v3/account")
    async def account(request: Request) -> dict:
        api_key, _, now = await signed(request)
        return exchange.accounts.balances_json(api_key, now)

    @app.post("/api/v3/order")
    async def create_order(request: Request) -> dict:
        api_key, params, now = await signed(request)
        feed = _market(exchange, params.get("symbol", ""))
        fault = exchange.leg_faults.take(feed.recording.market_id)
        if fault is None:
            return exchange.accounts.create_order(api_key, params, feed, feed.book(now, 100), now)
        if fault.kind == "reject":
            raise BinanceError(400, REJECT_CODE, REJECT_MSG)
        if fault.kind == "partial":
            return exchange.accounts.create_order(
                api_key, params, feed, feed.book(now, 100), now, fill_fraction=fault.fraction
            )

        async def land_late() -> dict:
            await asyncio.sleep(fault.seconds)
            later = exchange.clock.now_ms()
            return exchange.accounts.create_order(
                api_key, params, feed, feed.book(later, 100), later
            )

        # shielded: the order lands even when the client gave up and hung up
        late = asyncio.ensure_future(land_late())
        late.add_done_callback(lambda task: task.cancelled() or task.exception())
        return await asyncio.shield(late)

    @app.get("/api/v3/order")
    async def query_order(request: Request) -> dict:
        api_key, params, _ = await signed(request)
        return order_json(exchange.accounts.find(api_key, params))

    @app.delete("/api/v3/order")
    async def cancel_order(request: Request) -> dict:
        api_key, params, now = await signed(request)
        feed = _market(exchange, params.get("symbol", ""))
        return exchange.accounts.cancel(api_key, params, feed, now)

    @app.get("/api/v3/openOrders")
    async def open_orders(request: Request) -> list:
        api_key, params, _ = await signed(request)
        return exchange.accounts.open_orders_json(api_key, params.get("symbol"))

    @app.get("/api/v3/allOrders")
    async def all_orders(request: Request) -> list:
        api_key, params, _ = await signed(request)
        if not params.get("symbol"):
            raise BinanceError(400, -1102, "Mandatory parameter 'symbol' was not sent.")
        _market(exchange, params["symbol"])
        return exchange.accounts.all_orders_json(api_key, params)

    @app.get("/api/v3/myTrades")
    async def my_trades(request: Request) -> list:
        api_key, params, _ = await signed(request)
        _market(exchange, params.get("symbol", ""))
        return exchange.accounts.trades_json(api_key, params["symbol"])

    @app.get("/sim/stats")
    async def stats() -> dict:
        """The simulator's own counters (not part of Binance's API; never limited)."""
        return {
            "answered": {str(k): v for k, v in exchange.limiter.answered.items()},
            "injected": dict(exchange.faults.injected),
            "leg_faults": dict(exchange.leg_faults.consumed),
            "clock_ms": exchange.clock.now_ms(),
        }

    @app.post("/sim/plant")
    async def add_plant(request: Request) -> dict:
        """Plant a mispricing: {"symbol": "ETHBTC", "bps": 40.0, "seconds": 60.0}."""
        plant = await _control(request, Plant)
        try:
            exchange.pricing.plant(plant)
        except ValueError as error:
            raise HTTPException(400, str(error)) from None
        return {"plants": exchange.pricing.plants()}

    @app.get("/sim/plant")
    async def list_plants() -> dict:
        return {"plants": exchange.pricing.plants()}

    @app.delete("/sim/plant")
    async def clear_plants() -> dict:
        exchange.pricing.clear()
        return {"plants": []}

    @app.post("/sim/leg-fault")
    async def add_leg_fault(request: Request) -> dict:
        """Fault the next orders on a market: {"symbol": "ETHBTC", "kind": "reject"|"partial"|
        "delay", "count": 1, "fraction": 0.5, "seconds": 2.0}."""
        fault = await _control(request, LegFault)
        if fault.symbol not in exchange.markets():
            raise HTTPException(
                400,
                f"unknown symbol {fault.symbol!r}: this exchange serves "
                f"{', '.join(sorted(exchange.markets()))}",
            )
        exchange.leg_faults.add(fault)
        return {"leg_faults": exchange.leg_faults.listing()}

    @app.get("/sim/leg-fault")
    async def list_leg_faults() -> dict:
        return {"leg_faults": exchange.leg_faults.listing()}

    @app.delete("/sim/leg-fault")
    async def clear_leg_faults() -> dict:
        exchange.leg_faults.clear()
        return {"leg_faults": []}

    return FaultsAndLimits(app, exchange)  # type: ignore[return-value]


async def _control(request: Request, kind: type) -> Any:
    """A `kind` dataclass from a JSON object body; HTTP 400 saying what is wrong."""
    try:
        body = await request.json()
    except ValueError:
        raise HTTPException(400, "the body is not JSON") from None
    if not isinstance(body, dict):
        raise HTTPException(400, "the body is not a JSON object")
    known = {f.name for f in fields(kind)}
    required = {
        f.name for f in fields(kind) if f.default is MISSING and f.default_factory is MISSING
    }
    if unknown := sorted(set(body) - known):
        raise HTTPException(400, f"unknown field(s) {unknown}; known: {sorted(known)}")
    if missing := sorted(required - set(body)):
        raise HTTPException(400, f"missing field(s) {missing}")
    try:
        return kind(**body)
    except (TypeError, ValueError) as error:
        raise HTTPException(400, str(error)) from None


def _book_of(exchange: Exchange) -> Any:
    now = exchange.clock.now_ms()
    return lambda feed: feed.book(now, 5)


def _market(exchange: Exchange, symbol: str) -> MarketFeed:
    feed = exchange.markets().get(symbol)
    if feed is None:
        raise BinanceError(400, -1121, "Invalid symbol.")
    return feed


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
    bids, asks = _market(exchange, symbol).book(exchange.clock.now_ms(), 5)
    return {
        "symbol": symbol,
        "bidPrice": bids[0][0],
        "bidQty": bids[0][1],
        "askPrice": asks[0][0],
        "askQty": asks[0][1],
    }


def _ticker_24hr(exchange: Exchange, symbol: str) -> dict:
    feed = _market(exchange, symbol)
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


class FaultsAndLimits:
    """ASGI middleware: draws a fault for each request, then charges its weight."""

    def __init__(self, app: FastAPI, exchange: Exchange) -> None:
        self.app = app
        self.exchange = exchange
        self.state = app.state

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        faults = self.exchange.faults
        kind = faults.draw(path)
        if kind == "latency":
            await asyncio.sleep(faults.latency())
        elif kind == "timeout":
            await asyncio.sleep(faults.timeout_seconds)
        elif kind in ("429", "418"):
            await _answer(
                send,
                int(kind),
                {"code": -1003, "msg": "Too many requests."},
                {"retry-after": str(faults.retry_after_seconds)},
            )
            return
        elif kind in ("500", "502", "503"):
            await _answer(send, int(kind), "<html><body>Service unavailable</body></html>")
            return
        elif kind == "drop":
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", b"100000"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": b"[[", "more_body": False})
            return
        elif kind in ("truncated", "repeat"):
            scope.setdefault("state", {})["fault"] = kind

        if not path.startswith("/api/"):
            await self.app(scope, receive, send)
            return
        query = dict(parse_qsl(scope.get("query_string", b"").decode()))
        verdict = self.exchange.limiter.charge(request_weight(path, query))
        weight_header = (b"x-mbx-used-weight-1m", str(verdict.used).encode())
        if verdict.status != 200:
            message = "Too many requests." if verdict.status == 429 else "IP banned."
            await _answer(
                send,
                verdict.status,
                {"code": -1003, "msg": message},
                {
                    "retry-after": str(verdict.retry_after),
                    "x-mbx-used-weight-1m": str(verdict.used),
                },
            )
            return

        malformed = kind == "malformed"
        held: list[dict] = []

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [
                    *message.get("headers", []),
                    weight_header,
                    (b"x-mbx-used-weight", str(verdict.used).encode()),
                ]
            if not malformed:
                await send(message)
                return
            held.append(message)

        await self.app(scope, receive, send_with_headers)
        if malformed:
            start = held[0]
            body = b"".join(m.get("body", b"") for m in held[1:])
            cut = body[: max(1, len(body) // 2)]
            start["headers"] = [
                (k, str(len(cut)).encode() if k == b"content-length" else v)
                for k, v in start["headers"]
            ]
            await send(start)
            await send({"type": "http.response.body", "body": cut})


async def _answer(send: Any, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
    payload = (json.dumps(body) if not isinstance(body, str) else body).encode()
    content_type = b"application/json" if not isinstance(body, str) else b"text/html"
    raw = [(b"content-type", content_type), (b"content-length", str(len(payload)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})


def serve(config: SimulatorConfig, host: str = "127.0.0.1", port: int = 8900) -> None:
    """Run the simulator until interrupted."""
    import uvicorn

    uvicorn.run(create_app(config), host=host, port=port, http="h11", log_level="warning")


@dataclass(frozen=True)
class Running:
    """A simulator started by `running`: its base URL and its exchange (counters, limiter)."""

    url: str
    exchange: Exchange


@contextmanager
def running(config: SimulatorConfig, host: str = "127.0.0.1") -> Iterator[Running]:
    """Run the simulator on a free port in a background thread; yield it."""
    import socket
    import threading

    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    app = create_app(config)
    server = uvicorn.Server(uvicorn.Config(app, http="h11", log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the exchange simulator did not start")
        time.sleep(0.01)
    try:
        yield Running(f"http://{host}:{sock.getsockname()[1]}", app.exchange)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
