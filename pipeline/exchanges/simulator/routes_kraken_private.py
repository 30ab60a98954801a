"""The simulator's Kraken private endpoints (`/0/private/`): BalanceEx, AddOrder,
CancelOrder, QueryOrders, OpenOrders, ClosedOrders and TradesHistory, over the same
accounts, matching engine and leg faults as the Binance dialect.

Each call is authenticated as Kraken does: `API-Key`, and `API-Sign` = base64 of
HMAC-SHA512 (keyed with the base64-decoded secret) of the URI path and SHA-256 of the
nonce and the POST body; a nonce below the key's last one is refused. Orders carry
Kraken's identifiers: the transaction id (OXXXXX-XXXXX-XXXXXX) and the client's
`cl_ord_id` (a UUID, 32 hex digits, or up to 18 characters of free text) or `userref`.
Errors are Kraken's strings, in its envelope, with HTTP 200."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from fastapi import FastAPI, Request

from pipeline.exchanges.simulator.errors import BinanceError, KrakenError
from pipeline.exchanges.simulator.kraken_names import Names, Pair, asset_id, number_of, txid
from pipeline.exchanges.simulator.records import Order, Trade, fmt
from pipeline.exchanges.simulator.routes_kraken_public import ok
from pipeline.exchanges.simulator.routes_private import REJECT_MSG, SignedRoutes, book_of

if TYPE_CHECKING:
    from pipeline.exchanges.simulator.app import Exchange

CLIENT_ID = re.compile(
    r"^([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
    r"|[0-9a-fA-F]{32}|[\x21-\x7e]{1,18})$"
)
STATUS = {
    "NEW": "open",
    "PARTIALLY_FILLED": "open",
    "FILLED": "closed",
    "CANCELED": "canceled",
    "EXPIRED": "expired",
}


def kraken_error(error: BinanceError) -> KrakenError:
    """The Kraken error a Binance-dialect refusal of the shared engine stands for."""
    text = error.msg.lower()
    if "insufficient balance" in text:
        return KrakenError("EOrder:Insufficient funds")
    if error.msg == REJECT_MSG:
        return KrakenError("EGeneral:Invalid arguments:volume")
    if error.code in (-2011, -2013):
        return KrakenError("EOrder:Unknown order")
    if error.code == -1121:
        return KrakenError("EQuery:Invalid asset pair")
    if "duplicate" in text:
        return KrakenError("EOrder:Duplicate order")
    if "price" in text:
        return KrakenError("EGeneral:Invalid arguments:price")
    if "notional" in text or "lot" in text or "quantity" in text:
        return KrakenError("EOrder:Order minimum not met")
    return KrakenError("EGeneral:Invalid arguments")


class KrakenPrivateRoutes:
    """Kraken's private endpoints over `exchange`'s accounts."""

    def __init__(self, exchange: Exchange) -> None:
        self.exchange = exchange
        self.names = Names(exchange.markets())
        self.engine = SignedRoutes(exchange)  # placing orders, leg faults included
        self.nonces: dict[str, int] = {}
        self.userrefs: dict[int, str | None] = {}  # order number -> the userref it was sent with

    def register(self, app: FastAPI) -> None:
        for name in (
            "BalanceEx", "AddOrder", "CancelOrder", "QueryOrders", "OpenOrders",
            "ClosedOrders", "TradesHistory",
        ):  # fmt: skip
            app.post(f"/0/private/{name}")(getattr(self, name.lower()))

    async def signed(self, request: Request) -> tuple[str, dict[str, str], int]:
        """The caller's API key, its parameters and the market clock's now; Kraken's
        error for a bad key, signature or nonce."""
        body = await request.body()
        key = request.headers.get("api-key", "")
        secret = self.exchange.accounts.keys.get(key)
        params = dict(parse_qsl(body.decode(), keep_blank_values=True))
        nonce = params.get("nonce", "")
        if secret is None or not nonce.isdigit():
            raise KrakenError("EAPI:Invalid key")
        try:
            secret_bytes = base64.b64decode(secret, validate=True)
        except binascii.Error:
            raise KrakenError("EAPI:Invalid key") from None
        digest = hashlib.sha256(nonce.encode() + body).digest()
        expected = hmac.new(secret_bytes, request.url.path.encode() + digest, hashlib.sha512)
        if not hmac.compare_digest(
            base64.b64encode(expected.digest()).decode(), request.headers.get("api-sign", "")
        ):
            raise KrakenError("EAPI:Invalid key")
        with self.exchange.accounts.lock:
            if int(nonce) < self.nonces.get(key, 0):
                raise KrakenError("EAPI:Invalid nonce")
            self.nonces[key] = int(nonce)
        now = self.exchange.clock.now_ms()
        accounts = self.exchange.accounts
        accounts.match_resting(key, self.exchange.markets(), book_of(self.exchange), now)
        return key, params, now

    async def balanceex(self, request: Request) -> dict:
        key, _, _ = await self.signed(request)
        account = self.exchange.accounts.account(key)
        assets = sorted(set(account.balances) | set(account.locked))
        return ok(
            {
                asset_id(asset): {
                    "balance": fmt(
                        max(account.balances.get(asset, 0.0), 0.0)
                        + max(account.locked.get(asset, 0.0), 0.0)
                    ),
                    "hold_trade": fmt(max(account.locked.get(asset, 0.0), 0.0)),
                }
                for asset in assets
            }
        )

    def trading(self, key: str) -> None:
        """Kraken's refusal for a key without the permission to trade."""
        if key in self.exchange.config.read_only_keys:
            raise KrakenError("EGeneral:Permission denied")

    async def addorder(self, request: Request) -> dict:
        key, params, now = await self.signed(request)
        self.trading(key)
        pair = self.names.pair(params.get("pair"))
        if pair is None:
            raise KrakenError("EQuery:Invalid asset pair")
        client_id = params.get("cl_ord_id")
        if client_id is not None and not CLIENT_ID.match(client_id):
            raise KrakenError("EGeneral:Invalid arguments")  # ccxt: BadRequest
        kind = params.get("ordertype", "")
        if kind not in ("market", "limit") or params.get("type") not in ("buy", "sell"):
            raise KrakenError("EGeneral:Invalid arguments:ordertype")
        binance = {
            "symbol": pair.market_id,
            "side": params["type"].upper(),
            "type": "LIMIT_MAKER" if "post" in params.get("oflags", "") else kind.upper(),
            "quantity": params.get("volume", ""),
            "newClientOrderId": client_id or f"kr-{params.get('userref') or ''}-{params['nonce']}",
        }
        if kind == "limit":
            binance |= {"price": params.get("price", ""), "timeInForce": _tif(params)}
        try:
            placed = await self.engine.place(key, binance, now, "spot")
        except BinanceError as error:
            raise kraken_error(error) from None
        order = self._order(key, int(placed["orderId"]))
        self.userrefs[order.order_id] = params.get("userref")
        return ok(
            {
                "descr": {"order": self._describe(order, pair)},
                "txid": [txid(order.order_id)],
            }
            | self._order_json(key, order)
        )

    async def cancelorder(self, request: Request) -> dict:
        key, params, now = await self.signed(request)
        self.trading(key)
        order = self._find(key, params.get("txid"), params.get("cl_ord_id"))
        if order is None or order.status not in ("NEW", "PARTIALLY_FILLED"):
            raise KrakenError("EOrder:Unknown order")
        try:
            self.exchange.accounts.cancel(
                key, {"symbol": order.symbol, "orderId": str(order.order_id)},
                self.exchange.market(order.symbol), now,
            )  # fmt: skip
        except BinanceError as error:
            raise kraken_error(error) from None
        return ok({"count": 1, "pending": False})

    async def queryorders(self, request: Request) -> dict:
        key, params, _ = await self.signed(request)
        found = {}
        for name in (params.get("txid") or "").split(","):
            order = self._find(key, name, None)
            if order is not None:
                found[name] = self._order_json(key, order)
        return ok(found)

    async def openorders(self, request: Request) -> dict:
        key, params, _ = await self.signed(request)
        orders = self._listed(key, params, open_=True)
        return ok({"open": {txid(o.order_id): self._order_json(key, o) for o in orders}})

    async def closedorders(self, request: Request) -> dict:
        key, params, _ = await self.signed(request)
        orders = self._listed(key, params, open_=False)
        start = float(params.get("start") or 0)
        end = float(params.get("end") or 0)
        end = end / 1000 if end > 1e11 else end  # ccxt sends `end` in ms
        orders = [
            o for o in orders if o.update_time / 1000 >= start and (not end or o.time / 1000 <= end)
        ]
        closed = {txid(o.order_id): self._order_json(key, o) for o in orders}
        return ok({"closed": closed, "count": len(closed)})

    async def tradeshistory(self, request: Request) -> dict:
        key, params, _ = await self.signed(request)
        start = float(params.get("start") or 0)
        trades = [t for t in self.exchange.accounts.account(key).trades if t.time / 1000 >= start]
        listed = {txid(t.id, "T"): self._trade_json(t) for t in trades}
        return ok({"trades": listed, "count": len(listed)})

    # -- the records in Kraken's words ----------------------------------------------

    def _order(self, key: str, number: int) -> Order:
        orders = self.exchange.accounts.account(key).orders
        return next(o for o in orders if o.order_id == number)

    def _find(self, key: str, name: str | None, client_id: str | None) -> Order | None:
        """The order a txid, a cl_ord_id or a userref names (the newest one)."""
        number = number_of(name or "")
        for order in reversed(self.exchange.accounts.account(key).orders):
            if number is not None and order.order_id == number:
                return order
            if client_id and order.client_order_id == client_id:
                return order
            if name and number is None and self.userrefs.get(order.order_id) == name:
                return order
        return None

    def _listed(self, key: str, params: dict[str, str], open_: bool) -> list[Order]:
        client_id, userref = params.get("cl_ord_id"), params.get("userref")
        chosen = []
        for order in self.exchange.accounts.account(key).orders:
            if (order.status in ("NEW", "PARTIALLY_FILLED")) != open_:
                continue
            if client_id and order.client_order_id != client_id:
                continue
            if userref and self.userrefs.get(order.order_id) != userref:
                continue
            chosen.append(order)
        return chosen

    def _describe(self, order: Order, pair: Pair) -> str:
        how = "market" if order.type == "MARKET" else f"limit {fmt(order.price)}"
        return f"{order.side.lower()} {order.orig_qty:.8f} {pair.altname} @ {how}"

    def _order_json(self, key: str, order: Order) -> dict[str, Any]:
        pair = self.names.by_market[order.symbol]
        trades = [
            t for t in self.exchange.accounts.account(key).trades if t.order_id == order.order_id
        ]
        fee = sum(t.commission for t in trades)
        in_base = any(t.commission_asset == pair.base for t in trades)
        final = order.status not in ("NEW", "PARTIALLY_FILLED")
        client_id = order.client_order_id
        userref = self.userrefs.get(order.order_id)
        return {
            "refid": None,
            "userref": int(userref) if userref and userref.lstrip("-").isdigit() else 0,
            "cl_ord_id": None if client_id.startswith("kr-") else client_id,
            "status": STATUS.get(order.status, "open"),
            "opentm": order.time / 1000,
            "starttm": 0,
            "expiretm": 0,
            **({"closetm": order.update_time / 1000} if final else {}),
            "descr": {
                "pair": pair.altname,
                "type": order.side.lower(),
                "ordertype": "market" if order.type == "MARKET" else "limit",
                "price": fmt(order.price) if order.type != "MARKET" else "0",
                "price2": "0",
                "leverage": "none",
                "order": self._describe(order, pair),
                "close": "",
            },
            "vol": fmt(order.orig_qty),
            "vol_exec": fmt(order.executed_qty),
            "cost": fmt(order.quote_qty),
            "fee": fmt(fee),
            "price": fmt(order.quote_qty / order.executed_qty) if order.executed_qty else "0",
            "stopprice": "0",
            "limitprice": "0",
            "misc": "",
            "oflags": "fcib" if in_base else "fciq",
            "trades": [txid(t.id, "T") for t in trades],
        }

    def _trade_json(self, trade: Trade) -> dict[str, Any]:
        pair = self.names.by_market[trade.symbol]
        return {
            "ordertxid": txid(trade.order_id),
            "postxid": txid(trade.id, "P"),
            "pair": pair.id,
            "time": trade.time / 1000,
            "type": "buy" if trade.is_buyer else "sell",
            "ordertype": "limit",
            "price": fmt(trade.price),
            "cost": fmt(trade.price * trade.qty),
            "fee": fmt(trade.commission),
            "vol": fmt(trade.qty),
            "margin": "0",
            "misc": "",
            "trade_id": trade.id,
            "maker": trade.is_maker,
        }


def _tif(params: dict[str, str]) -> str:
    tif = params.get("timeinforce", "GTC").upper()
    if tif not in ("GTC", "IOC", "GTD"):
        raise KrakenError("EGeneral:Invalid arguments:timeinforce")
    return "GTC" if tif == "GTD" else tif
