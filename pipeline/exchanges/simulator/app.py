"""The simulator's HTTP server: Binance's spot and cross-margin endpoints over recorded
candles, or (`dialect="kraken"`) Kraken's spot endpoints over the same markets, clock,
accounts and matching engine.

Every response carries `X-MBX-USED-WEIGHT-1M`; past the weight budget requests
get 429 with Retry-After, and a client that keeps going gets 418. Faults are
injected by an ASGI middleware before the request reaches the endpoint.

Under `/sim/` (not Binance's API; never limited, never faulted) the simulator is
steered at run time: `/sim/stats` counts, `/sim/plant` plants mispricings in the
books, `/sim/leg-fault` makes the next orders on a market fail in a chosen way.

The endpoints live beside this module, one class per group: `routes_public` (market
data), `routes_private` (signed account and orders), `routes_margin` (the cross-margin
account, loans and orders), `routes_control` (`/sim/`); Kraken's in `routes_kraken_public`
and `routes_kraken_private`, its names in `kraken_names`.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from pipeline.exchanges.simulator.accounts import Accounts
from pipeline.exchanges.simulator.errors import BinanceError, KrakenError
from pipeline.exchanges.simulator.faults import (
    FAULT_KINDS,
    CounterLimiter,
    FaultPlan,
    LegFaults,
    WeightLimiter,
    request_weight,
)
from pipeline.exchanges.simulator.market import Clock, MarketFeed, Plant, Pricing
from pipeline.exchanges.simulator.recordings import Recording, find_recordings
from pipeline.exchanges.simulator.records import MarginTerms
from pipeline.exchanges.simulator.routes_control import ControlRoutes
from pipeline.exchanges.simulator.routes_kraken_private import KrakenPrivateRoutes
from pipeline.exchanges.simulator.routes_kraken_public import KrakenPublicRoutes
from pipeline.exchanges.simulator.routes_margin import MarginRoutes
from pipeline.exchanges.simulator.routes_private import SignedRoutes
from pipeline.exchanges.simulator.routes_public import PublicRoutes
from pipeline.settings import timeframe_ms

DEFAULT_MARGIN = MarginTerms()
DIALECTS = ("binance", "kraken")
API_PREFIXES = ("/api/", "/sapi/", "/0/")  # Binance's spot and margin APIs, Kraken's


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
    margin: MarginTerms | None = DEFAULT_MARGIN  # None: no key has a cross-margin account
    # centre a cross X/Y's book on mid(X/Q) / mid(Y/Q) when X/Q and Y/Q are served;
    # klines stay as recorded
    consistent_books: bool = False
    plants: tuple[Plant, ...] = ()  # mispricings live from the start, for real seconds
    dialect: str = "binance"  # whose REST API it speaks: binance or kraken
    read_only_keys: tuple[str, ...] = ()  # API keys that may read but not trade (Kraken)
    # Kraken's API counter (limit, decay a second), e.g. (15, 0.33); None: not limited
    kraken_counter: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if self.dialect not in DIALECTS:
            raise ValueError(
                f"simulator dialect {self.dialect!r} is unknown: use one of {', '.join(DIALECTS)}"
            )


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
            self.config.margin,
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
        counter = self.config.kraken_counter
        self.counter = None if counter is None else CounterLimiter(*counter)

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

    def market(self, symbol: str) -> MarketFeed:
        """The feed for books and tickers of Binance symbol id `symbol`."""
        feed = self.markets().get(symbol)
        if feed is None:
            raise BinanceError(400, -1121, "Invalid symbol.")
        return feed


def create_app(config: SimulatorConfig) -> FastAPI:
    """The FastAPI application of one simulated exchange."""
    exchange = Exchange(config)
    app = FastAPI(title=f"cryptobots exchange simulator ({config.exchange})", docs_url=None)
    app.state.exchange = exchange

    @app.exception_handler(BinanceError)
    async def _binance_error(_request: Request, error: BinanceError) -> JSONResponse:
        return JSONResponse({"code": error.code, "msg": error.msg}, status_code=error.status)

    @app.exception_handler(KrakenError)
    async def _kraken_error(_request: Request, error: KrakenError) -> JSONResponse:
        return JSONResponse({"error": [error.text]}, status_code=200)

    if config.dialect == "kraken":
        KrakenPublicRoutes(exchange).register(app)
        KrakenPrivateRoutes(exchange).register(app)
    else:
        PublicRoutes(exchange).register(app)
        SignedRoutes(exchange).register(app)
        MarginRoutes(exchange).register(app)
    ControlRoutes(exchange).register(app)
    return FaultsAndLimits(app, exchange)  # type: ignore[return-value]


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
        kind = self.exchange.faults.draw(path)
        if await self._fault(kind, scope, send):
            return
        if not path.startswith(API_PREFIXES):
            await self.app(scope, receive, send)
            return
        await self._charged(path, kind == "malformed", scope, receive, send)

    async def _fault(self, kind: str | None, scope: dict, send: Any) -> bool:
        """Act out the fault `kind` drawn for a request: whether it answered the request."""
        faults = self.exchange.faults
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
            return True
        elif kind in ("500", "502", "503"):
            await _answer(send, int(kind), "<html><body>Service unavailable</body></html>")
            return True
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
            return True
        elif kind in ("truncated", "repeat"):
            scope.setdefault("state", {})["fault"] = kind
        return False

    async def _charged(
        self, path: str, malformed: bool, scope: dict, receive: Any, send: Any
    ) -> None:
        """Charge an `/api/` or `/sapi/` request its weight: past the budget answer 429 or 418, else
        pass it on with the weight used in its headers (its body cut short if `malformed`).
        A Kraken `/0/` request counts on Kraken's API counter instead, when configured."""
        if path.startswith("/0/"):
            if not self._within_counter(path, scope):
                await _answer(send, 200, {"error": ["EAPI:Rate limit exceeded"]})
                return
            await self._passed(malformed, scope, receive, send, [])
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

        headers = [weight_header, (b"x-mbx-used-weight", str(verdict.used).encode())]
        await self._passed(malformed, scope, receive, send, headers)

    def _within_counter(self, path: str, scope: dict) -> bool:
        """Kraken's API counter (when configured) allows this call."""
        counter = self.exchange.counter
        if counter is None:
            return True
        key = "public"
        if path.startswith("/0/private/"):
            found = dict(scope.get("headers") or []).get(b"api-key", b"")
            key = "key:" + found.decode(errors="replace")
        return counter.charge(key, path)

    async def _passed(
        self, malformed: bool, scope: dict, receive: Any, send: Any, headers: list
    ) -> None:
        """The request through the app, with `headers` added to the answer (its body cut
        short if `malformed`)."""
        held: list[dict] = []

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *headers]
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
