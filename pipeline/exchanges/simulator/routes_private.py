"""The simulator's signed Binance endpoints: the account, placing, querying and cancelling
orders, and trades. Each call is authenticated (API key, HMAC signature, recvWindow) and
first matches the caller's resting orders against the books; a leg fault planted through
`/sim/leg-fault` makes the next orders on a market be rejected, partly filled or late."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request

from pipeline.exchanges.simulator.errors import BinanceError
from pipeline.exchanges.simulator.records import order_json

if TYPE_CHECKING:
    from pipeline.exchanges.simulator.app import Exchange

# A leg-fault reject: Binance's NEW_ORDER_REJECTED, which ccxt raises as InvalidOrder
REJECT_CODE = -2010
REJECT_MSG = "Order book liquidity is less than symbol minimum quantity."


class SignedRoutes:
    """Binance's signed account and order endpoints over `exchange`'s accounts."""

    def __init__(self, exchange: Exchange) -> None:
        self.exchange = exchange

    def register(self, app: FastAPI) -> None:
        app.get("/api/v3/account")(self.account)
        app.post("/api/v3/order")(self.create_order)
        app.get("/api/v3/order")(self.query_order)
        app.delete("/api/v3/order")(self.cancel_order)
        app.get("/api/v3/openOrders")(self.open_orders)
        app.get("/api/v3/allOrders")(self.all_orders)
        app.get("/api/v3/myTrades")(self.my_trades)

    async def signed(self, request: Request) -> tuple[str, dict[str, str], int]:
        """The caller's API key, its signed parameters and the market clock's now."""
        exchange = self.exchange
        api_key = request.headers.get("x-mbx-apikey")
        payload = request.url.query
        if request.method == "POST":
            payload = (await request.body()).decode() or payload
        now = exchange.clock.now_ms()
        # recvWindow guards against replays in real time: it compares the client's wall
        # clock with ours, even when the market clock runs faster than real time
        params = exchange.accounts.authenticate(api_key, payload, int(time.time() * 1000))
        exchange.accounts.match_resting(api_key, exchange.markets(), book_of(exchange), now)
        return api_key, params, now  # type: ignore[return-value]

    async def account(self, request: Request) -> dict:
        api_key, _, now = await self.signed(request)
        return self.exchange.accounts.balances_json(api_key, now)

    async def create_order(self, request: Request) -> dict:
        api_key, params, now = await self.signed(request)
        return await self.place(api_key, params, now, "spot")

    async def place(self, api_key: str, params: dict[str, str], now: int, wallet: str) -> dict:
        """Place an order from `wallet`, acting out a leg fault planted on its market."""
        exchange = self.exchange
        feed = exchange.market(params.get("symbol", ""))
        fault = exchange.leg_faults.take(feed.recording.market_id)
        accounts = exchange.accounts
        if fault is None:
            return accounts.create_order(
                api_key, params, feed, feed.book(now, 100), now, wallet=wallet
            )
        if fault.kind == "reject":
            raise BinanceError(400, REJECT_CODE, REJECT_MSG)
        if fault.kind == "partial":
            return accounts.create_order(
                api_key, params, feed, feed.book(now, 100), now, fault.fraction, wallet
            )

        async def land_late() -> dict:
            await asyncio.sleep(fault.seconds)
            later = exchange.clock.now_ms()
            return accounts.create_order(
                api_key, params, feed, feed.book(later, 100), later, wallet=wallet
            )

        # shielded: the order lands even when the client gave up and hung up
        late = asyncio.ensure_future(land_late())
        late.add_done_callback(lambda task: task.cancelled() or task.exception())
        return await asyncio.shield(late)

    async def query_order(self, request: Request) -> dict:
        api_key, params, _ = await self.signed(request)
        return order_json(self.exchange.accounts.find(api_key, params))

    async def cancel_order(self, request: Request) -> dict:
        api_key, params, now = await self.signed(request)
        feed = self.exchange.market(params.get("symbol", ""))
        return self.exchange.accounts.cancel(api_key, params, feed, now)

    async def open_orders(self, request: Request) -> list:
        api_key, params, _ = await self.signed(request)
        return self.exchange.accounts.open_orders_json(api_key, params.get("symbol"))

    async def all_orders(self, request: Request) -> list:
        api_key, params, _ = await self.signed(request)
        if not params.get("symbol"):
            raise BinanceError(400, -1102, "Mandatory parameter 'symbol' was not sent.")
        self.exchange.market(params["symbol"])
        return self.exchange.accounts.all_orders_json(api_key, params)

    async def my_trades(self, request: Request) -> list:
        api_key, params, _ = await self.signed(request)
        self.exchange.market(params.get("symbol", ""))
        return self.exchange.accounts.trades_json(api_key, params["symbol"])


def book_of(exchange: Exchange) -> Any:
    """A feed's book at the simulator's now, five levels deep."""
    now = exchange.clock.now_ms()
    return lambda feed: feed.book(now, 5)
