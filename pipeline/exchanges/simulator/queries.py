"""The simulator's account answers: balances, trades, open and past orders."""

from __future__ import annotations

from typing import Any

from pipeline.exchanges.simulator.errors import BinanceError
from pipeline.exchanges.simulator.records import (
    MAKER_FEE,
    TAKER_FEE,
    fmt,
    order_json,
    trade_json,
)
from pipeline.exchanges.simulator.store import AccountStore


class Queries(AccountStore):
    """What Binance's account, myTrades, openOrders and allOrders endpoints answer."""

    def balances_json(self, api_key: str, now: int) -> dict[str, Any]:
        account = self.account(api_key)
        assets = sorted(set(account.balances) | set(account.locked))
        return {
            "makerCommission": int(MAKER_FEE * 10_000),
            "takerCommission": int(TAKER_FEE * 10_000),
            "buyerCommission": 0,
            "sellerCommission": 0,
            "commissionRates": {
                "maker": fmt(MAKER_FEE),
                "taker": fmt(TAKER_FEE),
                "buyer": "0",
                "seller": "0",
            },
            "canTrade": True,
            "canWithdraw": False,
            "canDeposit": False,
            "brokered": False,
            "requireSelfTradePrevention": False,
            "preventSor": False,
            "updateTime": now,
            "accountType": "SPOT",
            "balances": [
                {
                    "asset": asset,
                    "free": fmt(max(account.balances.get(asset, 0.0), 0.0)),
                    "locked": fmt(max(account.locked.get(asset, 0.0), 0.0)),
                }
                for asset in assets
            ],
            "permissions": ["SPOT"],
            "uid": abs(hash(api_key)) % 10**9,
        }

    def trades_json(self, api_key: str, symbol: str, wallet: str = "spot") -> list[dict[str, Any]]:
        trades = self.wallet(api_key, wallet).trades
        return [trade_json(t) for t in trades if t.symbol == symbol]

    def open_orders_json(
        self, api_key: str, symbol: str | None, wallet: str = "spot"
    ) -> list[dict[str, Any]]:
        return [
            order_json(o)
            for o in self.wallet(api_key, wallet).orders
            if o.status in ("NEW", "PARTIALLY_FILLED") and (symbol is None or o.symbol == symbol)
        ]

    def all_orders_json(
        self, api_key: str, params: dict[str, str], wallet: str = "spot"
    ) -> list[dict[str, Any]]:
        """Binance's allOrders: the symbol's orders by id, from `orderId` or `startTime`
        onwards when given, else the most recent `limit` (default 500, at most 1000)."""
        try:
            limit = int(params.get("limit") or 500)
            order_id = int(params["orderId"]) if params.get("orderId") else None
            start = int(params["startTime"]) if params.get("startTime") else None
            end = int(params["endTime"]) if params.get("endTime") else None
        except ValueError:
            raise BinanceError(400, -1100, "Illegal characters found in a parameter.") from None
        if not 1 <= limit <= 1000:
            raise BinanceError(400, -1130, "Data sent for parameter 'limit' is not valid.")
        with self.lock:
            orders = sorted(
                (
                    o
                    for o in self.wallet(api_key, wallet).orders
                    if o.symbol == params.get("symbol")
                    and (order_id is None or o.order_id >= order_id)
                    and (start is None or o.time >= start)
                    and (end is None or o.time <= end)
                ),
                key=lambda o: o.order_id,
            )
            if order_id is None and start is None:
                orders = orders[-limit:]
            return [order_json(o) for o in orders[:limit]]
