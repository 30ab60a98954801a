"""Placing, matching and cancelling orders in the simulator's accounts.

Market orders and marketable limit orders fill at once against the synthesized book
(walking its levels) with the taker fee; other limit orders rest, funds locked, and
fill at their price with the maker fee once the book crosses them. What a MARKET or IOC
order cannot fill expires (status EXPIRED, whatever it filled kept); a FOK order fills
whole or expires empty. A client order id already used by an open order is refused
(Binance's -2010 "Duplicate order sent."): like Binance, ids are unique among open
orders, and a trader looks an id up before re-sending it.
"""

from __future__ import annotations

import math
from decimal import ROUND_DOWN, Decimal
from typing import Any

from pipeline.exchanges.simulator.errors import BinanceError
from pipeline.exchanges.simulator.records import (
    MAKER_FEE,
    TAKER_FEE,
    Order,
    Trade,
    Wallet,
    fmt,
    order_json,
)
from pipeline.exchanges.simulator.store import AccountStore


class Matching(AccountStore):
    """Orders in: placed, filled against the book or rested, matched later, cancelled."""

    def create_order(
        self,
        api_key: str,
        params: dict[str, str],
        market: Any,
        book: tuple[list[list[str]], list[list[str]]],
        now: int,
        fill_fraction: float = 1.0,
        wallet: str = "spot",
    ) -> dict[str, Any]:
        """Place an order from the spot or the margin `wallet`; fill what the book allows
        (at most `fill_fraction` of the quantity, down to the lot step); the FULL response."""
        with self.lock:
            account = self.wallet(api_key, wallet)
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
        self, account: Wallet, order: Order, market: Any, levels: list[tuple[float, float]]
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
        account: Wallet,
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
                    "price": fmt(price),
                    "qty": fmt(take),
                    "commission": fmt(commission),
                    "commissionAsset": asset,
                    "tradeId": trade.id,
                }
            )
        return fills

    def _lock_rest(self, account: Wallet, order: Order, market: Any, sign: float = 1.0) -> None:
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
        """Fill resting limit orders the book now crosses, at their price, as maker, in
        the spot wallet and the margin one."""
        with self.lock:
            account = self.account(api_key)
            wallets: list[Wallet] = [account, *([account.margin] if account.margin else [])]
            changed = False
            for wallet, order in ((w, o) for w in wallets for o in w.orders):
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
                self._lock_rest(wallet, order, market, sign=-1.0)
                rest = order.orig_qty - order.executed_qty
                self._fill_levels(
                    wallet, order, market, [(order.price, rest)], MAKER_FEE, now, maker=True
                )
                order.status = "FILLED"
                changed = True
            if changed:
                self._save()

    def cancel(
        self, api_key: str, params: dict[str, str], market: Any, now: int, wallet: str = "spot"
    ) -> dict:
        with self.lock:
            try:
                order = self.find(api_key, params, wallet)
            except BinanceError:
                raise BinanceError(400, -2011, "Unknown order sent.") from None
            if order.status not in ("NEW", "PARTIALLY_FILLED"):
                raise BinanceError(400, -2011, "Unknown order sent.")
            self._lock_rest(self.wallet(api_key, wallet), order, market, sign=-1.0)
            order.status, order.update_time = "CANCELED", now
            self._save()
            return order_json(order)


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
