"""The simulator's signed Binance cross-margin endpoints (`/sapi/v1/margin/...`) and the
spot <-> margin transfer, as ccxt calls them: `fetch_balance({"type": "margin"})`,
`borrow_cross_margin`, `repay_cross_margin`, `create_order(..., {"marginMode": "cross"})`,
`fetch_borrow_interest`, `fetch_cross_borrow_rate`, `transfer(code, x, "spot", "margin")`.

Every call is authenticated like the spot ones, then charges the interest due and
liquidates an account at or below its liquidation level (`margin.Margin.settle`). Leg
faults apply to margin orders as to spot ones; a `refuse-borrow` leg fault planted on an
asset refuses its next borrows (Binance's -3045, the lending pool is empty).
"""

from __future__ import annotations

from fastapi import FastAPI, Request

from pipeline.exchanges.simulator.errors import BinanceError
from pipeline.exchanges.simulator.margin import amount_of, valuation
from pipeline.exchanges.simulator.margin_queries import (
    account_json,
    interest_json,
    liquidations_json,
    loans_json,
    rates_json,
)
from pipeline.exchanges.simulator.records import order_json
from pipeline.exchanges.simulator.routes_private import SignedRoutes, book_of

MARGIN = "/sapi/v1/margin"
# Binance's answer when its lending pool for an asset is empty
POOL_EMPTY = (400, -3045, "The system doesn't have enough asset now.")


class MarginRoutes(SignedRoutes):
    """Binance's cross-margin account, loan and order endpoints over `exchange`'s accounts."""

    def register(self, app: FastAPI) -> None:
        app.get(f"{MARGIN}/account")(self.account)
        app.post(f"{MARGIN}/borrow-repay")(self.borrow_repay)
        app.get(f"{MARGIN}/borrow-repay")(self.loans)
        app.get(f"{MARGIN}/maxBorrowable")(self.max_borrowable)
        app.get(f"{MARGIN}/interestHistory")(self.interest_history)
        app.get(f"{MARGIN}/interestRateHistory")(self.rate_history)
        app.get(f"{MARGIN}/forceLiquidationRec")(self.liquidations)
        app.post(f"{MARGIN}/order")(self.create_order)
        app.get(f"{MARGIN}/order")(self.query_order)
        app.delete(f"{MARGIN}/order")(self.cancel_order)
        app.get(f"{MARGIN}/openOrders")(self.open_orders)
        app.get(f"{MARGIN}/allOrders")(self.all_orders)
        app.get(f"{MARGIN}/myTrades")(self.my_trades)
        app.post("/sapi/v1/asset/transfer")(self.transfer)

    async def settled(self, request: Request) -> tuple[str, dict[str, str], int]:
        """`signed`, then the margin wallet settled: interest charged, liquidated if due."""
        api_key, params, now = await self.signed(request)
        if params.get("isIsolated", "FALSE").upper() == "TRUE":
            raise BinanceError(400, -1102, "Isolated margin is not simulated: cross only.")
        exchange = self.exchange
        exchange.accounts.settle(api_key, now, exchange.markets(), book_of(exchange))
        return api_key, params, now

    def prices(self, now: int) -> dict[str, float]:
        accounts = self.exchange.accounts
        return valuation(self.exchange.markets(), now, accounts.terms.quote)

    async def account(self, request: Request) -> dict:
        api_key, _, now = await self.settled(request)
        accounts = self.exchange.accounts
        wallet = accounts.margin_wallet(api_key)
        return account_json(wallet, self.prices(now), accounts.terms)

    async def borrow_repay(self, request: Request) -> dict:
        api_key, params, now = await self.settled(request)
        accounts, asset = self.exchange.accounts, params.get("asset", "")
        kind, amount = params.get("type", ""), amount_of(params)
        if kind == "BORROW":
            fault = self.exchange.leg_faults.take(asset)
            if fault is not None and fault.kind == "refuse-borrow":
                raise BinanceError(*POOL_EMPTY)
            return accounts.borrow(api_key, asset, amount, now, self.prices(now))
        if kind == "REPAY":
            return accounts.repay(api_key, asset, amount, now)
        raise BinanceError(400, -1102, "Mandatory parameter 'type' was not sent.")

    async def loans(self, request: Request) -> dict:
        api_key, params, _ = await self.settled(request)
        return loans_json(self.exchange.accounts.margin_wallet(api_key), params)

    async def max_borrowable(self, request: Request) -> dict:
        api_key, params, now = await self.settled(request)
        accounts = self.exchange.accounts
        wallet, prices = accounts.margin_wallet(api_key), self.prices(now)
        amount = accounts.max_borrowable(wallet, params.get("asset", ""), prices)
        return {"amount": f"{amount:.8f}", "borrowLimit": f"{amount:.8f}"}

    async def interest_history(self, request: Request) -> dict:
        api_key, params, _ = await self.settled(request)
        return interest_json(self.exchange.accounts.margin_wallet(api_key), params)

    async def rate_history(self, request: Request) -> list:
        _, params, now = await self.settled(request)
        return rates_json(params.get("asset", ""), self.exchange.accounts.terms, now)

    async def liquidations(self, request: Request) -> dict:
        api_key, _, _ = await self.settled(request)
        return liquidations_json(self.exchange.accounts.margin_wallet(api_key))

    async def create_order(self, request: Request) -> dict:
        api_key, params, now = await self.settled(request)
        effect = params.get("sideEffectType", "NO_SIDE_EFFECT")
        if effect not in ("NO_SIDE_EFFECT", "AUTO_REPAY"):
            raise BinanceError(
                400,
                -1102,
                f"sideEffectType {effect} is not simulated: borrow first "
                "(POST /sapi/v1/margin/borrow-repay), then order with NO_SIDE_EFFECT.",
            )
        placed = await self.place(api_key, params, now, "margin")
        if effect == "AUTO_REPAY":
            self.exchange.accounts.auto_repay(api_key, placed, now)
        return placed | {"isIsolated": False}

    async def query_order(self, request: Request) -> dict:
        api_key, params, _ = await self.settled(request)
        return order_json(self.exchange.accounts.find(api_key, params, "margin")) | {
            "isIsolated": False
        }

    async def cancel_order(self, request: Request) -> dict:
        api_key, params, now = await self.settled(request)
        feed = self.exchange.market(params.get("symbol", ""))
        return self.exchange.accounts.cancel(api_key, params, feed, now, "margin")

    async def open_orders(self, request: Request) -> list:
        api_key, params, _ = await self.settled(request)
        return self.exchange.accounts.open_orders_json(api_key, params.get("symbol"), "margin")

    async def all_orders(self, request: Request) -> list:
        api_key, params, _ = await self.settled(request)
        if not params.get("symbol"):
            raise BinanceError(400, -1102, "Mandatory parameter 'symbol' was not sent.")
        self.exchange.market(params["symbol"])
        return self.exchange.accounts.all_orders_json(api_key, params, "margin")

    async def my_trades(self, request: Request) -> list:
        api_key, params, _ = await self.settled(request)
        self.exchange.market(params.get("symbol", ""))
        return self.exchange.accounts.trades_json(api_key, params["symbol"], "margin")

    async def transfer(self, request: Request) -> dict:
        api_key, params, now = await self.signed(request)
        return self.exchange.accounts.transfer(api_key, params, now, self.prices(now))
