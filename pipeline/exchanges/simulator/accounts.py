"""The simulator's signed side: API keys, balances, orders and trades, per key.

Requests are authenticated like Binance's: the `X-MBX-APIKEY` header names the
key, `signature` is the HMAC-SHA256 (hex) of the query string (GET, DELETE) or the
form body (POST) up to `&signature=`, and `timestamp` must lie within `recvWindow`
of the simulator's clock. Market orders and marketable limit orders fill at once
against the synthesized book (walking its levels) with the taker fee; other limit
orders rest, funds locked, and fill at their price with the maker fee once the
book crosses them. What a MARKET or IOC order cannot fill expires (status EXPIRED,
whatever it filled kept); a FOK order fills whole or expires empty. A client order
id already used by an open order is refused (Binance's -2010 "Duplicate order
sent."): like Binance, ids are unique among open orders, and a trader looks an id
up before re-sending it. With a state file, every change is written atomically and
reloaded on start.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import threading
from dataclasses import asdict, dataclass, field
from decimal import ROUND_DOWN, Decimal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

TAKER_FEE = 0.001
MAKER_FEE = 0.001
DEFAULT_BALANCES = {"USDT": 10_000.0}


class BinanceError(Exception):
    """An error answered the way Binance does: HTTP status and {"code", "msg"}."""

    def __init__(self, status: int, code: int, msg: str) -> None:
        super().__init__(msg)
        self.status, self.code, self.msg = status, code, msg


@dataclass
class Order:
    """One order as Binance reports it (quantities as floats, formatted on output)."""

    symbol: str
    order_id: int
    client_order_id: str
    side: str  # BUY / SELL
    type: str  # MARKET / LIMIT / LIMIT_MAKER
    price: float
    orig_qty: float
    executed_qty: float = 0.0
    quote_qty: float = 0.0
    status: str = "NEW"
    time_in_force: str = "GTC"
    time: int = 0
    update_time: int = 0


@dataclass
class Trade:
    symbol: str
    id: int
    order_id: int
    price: float
    qty: float
    commission: float
    commission_asset: str
    time: int
    is_buyer: bool
    is_maker: bool


@dataclass
class Account:
    balances: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_BALANCES))
    locked: dict[str, float] = field(default_factory=dict)
    orders: list[Order] = field(default_factory=list)
    trades: list[Trade] = field(default_factory=list)


class Accounts:
    """Every API key's account; thread-safe; persisted to `state_file` when given."""

    def __init__(
        self,
        keys: dict[str, str],
        state_file: Path | None = None,
        initial: dict[str, float] | None = None,
    ) -> None:
        self.keys = dict(keys)
        self.state_file = state_file
        self.initial = dict(initial or DEFAULT_BALANCES)
        self.accounts: dict[str, Account] = {}
        self.next_id = 1
        self.lock = threading.RLock()
        if state_file is not None and state_file.exists():
            self._load(state_file)

    def authenticate(self, api_key: str | None, payload: str, now: int) -> dict[str, str]:
        """The signed parameters of a request, or BinanceError as Binance would answer."""
        if not api_key or api_key not in self.keys:
            raise BinanceError(401, -2015, "Invalid API-key, IP, or permissions for action.")
        unsigned, marker, signature = payload.rpartition("&signature=")
        if not marker:
            unsigned, signature = payload, ""
        expected = hmac.new(self.keys[api_key].encode(), unsigned.encode(), hashlib.sha256)
        if not hmac.compare_digest(expected.hexdigest(), signature):
            raise BinanceError(400, -1022, "Signature for this request is not valid.")
        params = dict(parse_qsl(unsigned, keep_blank_values=True))
        try:
            timestamp = int(params["timestamp"])
            window = int(params.get("recvWindow", 5000))
        except (KeyError, ValueError):
            raise BinanceError(
                400, -1102, "Mandatory parameter 'timestamp' was not sent."
            ) from None
        if not (timestamp - 1000 <= now and now - timestamp <= window):
            raise BinanceError(
                400, -1021, "Timestamp for this request is outside of the recvWindow."
            )
        return params

    def account(self, api_key: str) -> Account:
        with self.lock:
            if api_key not in self.accounts:
                self.accounts[api_key] = Account(balances=dict(self.initial))
            return self.accounts[api_key]

    def create_order(
        self,
        api_key: str,
        params: dict[str, str],
        market: Any,
        book: tuple[list[list[str]], list[list[str]]],
        now: int,
        fill_fraction: float = 1.0,
    ) -> dict[str, Any]:
        """Place an order; fill what the book allows (at most `fill_fraction` of the
        quantity, down to the lot step); the FULL response."""
        with self.lock:
            account = self.account(api_key)
            side = params.get("side", "").upper()
            kind = params.get("type", "").upper()
            if side not in ("BUY", "SELL") or kind not in ("MARKET", "LIMIT", "LIMIT_MAKER"):
                raise BinanceError(400, -1116, "Invalid orderType or side.")
            client_id = params.get("newClientOrderId") or f"sim-{self.next_id}"
            if any(
                o.client_order_id == client_id and o.status in ("NEW", "PARTIALLY_FILLED")
                for o in account.orders
            ):
                raise BinanceError(400, -2010, "Duplicate order sent.")
            qty = _qty(params, market)
            price = float(params.get("price") or 0)
            if kind != "MARKET" and price <= 0:
                raise BinanceError(400, -1013, "Invalid price.")
            order = Order(
                symbol=params["symbol"],
                order_id=self.next_id,
                client_order_id=client_id,
                side=side,
                type=kind,
                price=price,
                orig_qty=qty,
                time_in_force=params.get("timeInForce", "GTC"),
                time=now,
                update_time=now,
            )
            bids, asks = book
            levels = asks if side == "BUY" else bids
            crosses = [
                (float(p), float(q))
                for p, q in levels
                if kind == "MARKET" or (float(p) <= price if side == "BUY" else float(p) >= price)
            ]
            if kind == "LIMIT_MAKER" and crosses:
                raise BinanceError(400, -2010, "Order would immediately match and take.")
            if fill_fraction < 1.0:
                crosses = _capped(crosses, _lots(qty * fill_fraction, market.filters["step"]))
            if order.time_in_force == "FOK" and sum(q for _, q in crosses) < qty - 1e-15:
                crosses = []
            self._check_funds(account, order, market, crosses)
            fills = self._fill_levels(account, order, market, crosses, TAKER_FEE, now)
            if order.executed_qty < order.orig_qty - 1e-15:
                if kind == "MARKET" or order.time_in_force in ("IOC", "FOK"):
                    order.status = "EXPIRED"
                else:
                    self._lock_rest(account, order, market)
                    order.status = "PARTIALLY_FILLED" if order.executed_qty else "NEW"
            else:
                order.status = "FILLED"
            self.next_id += 1
            account.orders.append(order)
            self._save()
            return order_json(order) | {"fills": fills}

    def _check_funds(
        self, account: Account, order: Order, market: Any, levels: list[tuple[float, float]]
    ) -> None:
        """Refuse the whole order when the account cannot pay for it (as Binance does)."""
        base, quote = market.recording.base, market.recording.quote
        if order.side == "SELL":
            need, asset = order.orig_qty, base
        else:
            need, left = 0.0, order.orig_qty
            for price, available in levels:
                take = min(available, left)
                need, left = need + take * price, left - take
            need += left * order.price  # the resting part of a limit order is locked
            asset = quote
        if account.balances.get(asset, 0.0) + 1e-12 < need:
            raise BinanceError(400, -2010, "Account has insufficient balance for requested action.")

    def _fill_levels(
        self,
        account: Account,
        order: Order,
        market: Any,
        levels: list[tuple[float, float]],
        fee: float,
        now: int,
        maker: bool = False,
    ) -> list[dict[str, str]]:
        base, quote = market.recording.base, market.recording.quote
        fills = []
        for price, available in levels:
            take = min(available, order.orig_qty - order.executed_qty)
            if take <= 0:
                break
            cost = take * price
            if order.side == "BUY":
                pay, paid, asset, received, commission = quote, cost, base, take, take * fee
            else:
                pay, paid, asset, received, commission = base, take, quote, cost, cost * fee
            if account.balances.get(pay, 0.0) + 1e-12 < paid:
                break  # new orders were checked whole in _check_funds; this guards the rest
            account.balances[pay] = account.balances.get(pay, 0.0) - paid
            account.balances[asset] = account.balances.get(asset, 0.0) + received - commission
            order.executed_qty += take
            order.quote_qty += cost
            order.update_time = now
            trade = Trade(
                symbol=order.symbol,
                id=len(account.trades) + 1,
                order_id=order.order_id,
                price=price,
                qty=take,
                commission=commission,
                commission_asset=asset,
                time=now,
                is_buyer=order.side == "BUY",
                is_maker=maker,
            )
            account.trades.append(trade)
            fills.append(
                {
                    "price": _fmt(price),
                    "qty": _fmt(take),
                    "commission": _fmt(commission),
                    "commissionAsset": asset,
                    "tradeId": trade.id,
                }
            )
        return fills

    def _lock_rest(self, account: Account, order: Order, market: Any, sign: float = 1.0) -> None:
        """Move the unfilled part's funds from free to locked (sign -1: back to free)."""
        rest = order.orig_qty - order.executed_qty
        if order.side == "BUY":
            asset, amount = market.recording.quote, rest * order.price
        else:
            asset, amount = market.recording.base, rest
        if sign > 0 and account.balances.get(asset, 0.0) + 1e-12 < amount:
            raise BinanceError(400, -2010, "Account has insufficient balance for requested action.")
        account.balances[asset] = account.balances.get(asset, 0.0) - sign * amount
        account.locked[asset] = account.locked.get(asset, 0.0) + sign * amount

    def match_resting(self, api_key: str, markets: dict[str, Any], books: Any, now: int) -> None:
        """Fill resting limit orders the book now crosses, at their price, as maker."""
        with self.lock:
            account = self.account(api_key)
            changed = False
            for order in account.orders:
                if order.status not in ("NEW", "PARTIALLY_FILLED") or order.type == "MARKET":
                    continue
                market = markets.get(order.symbol)
                if market is None:
                    continue
                bids, asks = books(market)
                best = float(asks[0][0]) if order.side == "BUY" else float(bids[0][0])
                crossed = best <= order.price if order.side == "BUY" else best >= order.price
                if not crossed:
                    continue
                self._lock_rest(account, order, market, sign=-1.0)
                rest = order.orig_qty - order.executed_qty
                self._fill_levels(
                    account, order, market, [(order.price, rest)], MAKER_FEE, now, maker=True
                )
                order.status = "FILLED"
                changed = True
            if changed:
                self._save()

    def find(self, api_key: str, params: dict[str, str]) -> Order:
        with self.lock:
            for order in self.account(api_key).orders:
                if order.symbol != params.get("symbol"):
                    continue
                if str(order.order_id) == params.get("orderId") or (
                    order.client_order_id == params.get("origClientOrderId")
                ):
                    return order
        raise BinanceError(400, -2013, "Order does not exist.")

    def cancel(self, api_key: str, params: dict[str, str], market: Any, now: int) -> dict:
        with self.lock:
            try:
                order = self.find(api_key, params)
            except BinanceError:
                raise BinanceError(400, -2011, "Unknown order sent.") from None
            if order.status not in ("NEW", "PARTIALLY_FILLED"):
                raise BinanceError(400, -2011, "Unknown order sent.")
            self._lock_rest(self.account(api_key), order, market, sign=-1.0)
            order.status, order.update_time = "CANCELED", now
            self._save()
            return order_json(order)

    def balances_json(self, api_key: str, now: int) -> dict[str, Any]:
        account = self.account(api_key)
        assets = sorted(set(account.balances) | set(account.locked))
        return {
            "makerCommission": int(MAKER_FEE * 10_000),
            "takerCommission": int(TAKER_FEE * 10_000),
            "buyerCommission": 0,
            "sellerCommission": 0,
            "commissionRates": {
                "maker": _fmt(MAKER_FEE),
                "taker": _fmt(TAKER_FEE),
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
                    "free": _fmt(max(account.balances.get(asset, 0.0), 0.0)),
                    "locked": _fmt(max(account.locked.get(asset, 0.0), 0.0)),
                }
                for asset in assets
            ],
            "permissions": ["SPOT"],
            "uid": abs(hash(api_key)) % 10**9,
        }

    def trades_json(self, api_key: str, symbol: str) -> list[dict[str, Any]]:
        return [
            {
                "symbol": t.symbol,
                "id": t.id,
                "orderId": t.order_id,
                "orderListId": -1,
                "price": _fmt(t.price),
                "qty": _fmt(t.qty),
                "quoteQty": _fmt(t.price * t.qty),
                "commission": _fmt(t.commission),
                "commissionAsset": t.commission_asset,
                "time": t.time,
                "isBuyer": t.is_buyer,
                "isMaker": t.is_maker,
                "isBestMatch": True,
            }
            for t in self.account(api_key).trades
            if t.symbol == symbol
        ]

    def open_orders_json(self, api_key: str, symbol: str | None) -> list[dict[str, Any]]:
        return [
            order_json(o)
            for o in self.account(api_key).orders
            if o.status in ("NEW", "PARTIALLY_FILLED") and (symbol is None or o.symbol == symbol)
        ]

    def all_orders_json(self, api_key: str, params: dict[str, str]) -> list[dict[str, Any]]:
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
                    for o in self.account(api_key).orders
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

    def _save(self) -> None:
        if self.state_file is None:
            return
        state = {
            "next_id": self.next_id,
            "accounts": {key: asdict(account) for key, account in self.accounts.items()},
        }
        temporary = self.state_file.with_suffix(".tmp")
        temporary.write_text(json.dumps(state))
        temporary.replace(self.state_file)

    def _load(self, path: Path) -> None:
        state = json.loads(path.read_text())
        self.next_id = int(state["next_id"])
        for key, data in state["accounts"].items():
            self.accounts[key] = Account(
                balances=data["balances"],
                locked=data["locked"],
                orders=[Order(**o) for o in data["orders"]],
                trades=[Trade(**t) for t in data["trades"]],
            )


def order_json(order: Order) -> dict[str, Any]:
    """An order as Binance's order endpoints answer it."""
    return {
        "symbol": order.symbol,
        "orderId": order.order_id,
        "orderListId": -1,
        "clientOrderId": order.client_order_id,
        "transactTime": order.update_time,
        "time": order.time,
        "updateTime": order.update_time,
        "price": _fmt(order.price),
        "origQty": _fmt(order.orig_qty),
        "executedQty": _fmt(order.executed_qty),
        "cummulativeQuoteQty": _fmt(order.quote_qty),
        "status": order.status,
        "timeInForce": order.time_in_force,
        "type": order.type,
        "side": order.side,
        "workingTime": order.time,
        "isWorking": order.status in ("NEW", "PARTIALLY_FILLED"),
        "selfTradePreventionMode": "NONE",
    }


def _qty(params: dict[str, str], market: Any) -> float:
    try:
        qty = float(params["quantity"])
    except (KeyError, ValueError):
        raise BinanceError(400, -1102, "Mandatory parameter 'quantity' was not sent.") from None
    step = market.filters["step"]
    if qty <= 0 or not math.isfinite(qty):
        raise BinanceError(400, -1013, "Invalid quantity.")
    if qty < market.filters["min_qty"] - 1e-15:
        raise BinanceError(400, -1013, "Filter failure: LOT_SIZE")
    if abs(_lots(qty, step) - qty) > 1e-12:
        raise BinanceError(400, -1013, "Filter failure: LOT_SIZE")
    return qty


def _lots(qty: float, step: float) -> float:
    """`qty` rounded down to a whole number of lot steps."""
    return float(Decimal(str(qty)).quantize(Decimal(str(step)), rounding=ROUND_DOWN))


def _capped(levels: list[tuple[float, float]], qty: float) -> list[tuple[float, float]]:
    """The first levels of a book holding `qty` in all, the last one cut short."""
    capped, left = [], qty
    for price, available in levels:
        if left <= 0:
            break
        capped.append((price, min(available, left)))
        left -= available
    return capped


def _fmt(value: float) -> str:
    return f"{value:.8f}"
