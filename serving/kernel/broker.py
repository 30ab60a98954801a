"""Brokers: where the trader's orders go.

`PaperBroker` (the default) fills a market order against the exchange's current
order book, walking its levels, with the taker fee; nothing is sent. `ExchangeBroker`
sends it through ccxt (`--live`, or the simulator's signed endpoints) with a client
order id derived from the decision, and never re-sends an id without first asking
the exchange whether it already has it: a timeout after the exchange accepted an
order must not become a second order.
"""

from __future__ import annotations

import contextlib
import hashlib
from datetime import UTC, datetime
from typing import Any, Protocol

from pipeline.errors import ExchangeRejected, OrderNotFound, TemporaryExchangeError
from pipeline.exchanges.client import ExchangeClient
from serving.kernel.execution import Execution, Fill

CLIENT_ID_PREFIX = "cb"
LATE_ARRIVAL_MARGIN_SECONDS = 2.0  # clock skew between us, the database and the exchange


def client_order_id(model: str, version: int, market: str, candle_ts: int, intent: str) -> str:
    """Deterministic id of the order a decision makes (Binance allows 36 of [A-Za-z0-9-_]),
    so a restart that re-decides the same candle finds the same order."""
    key = f"{model}|{version}|{market}|{candle_ts}|{intent}"
    return f"{CLIENT_ID_PREFIX}{hashlib.sha256(key.encode()).hexdigest()[:30]}"


class Broker(Protocol):
    """Executes market orders, or limit IOC orders when given a price; `lookup` finds an
    order by its client id, `cancel` cancels one."""

    live: bool
    margin: bool

    def execute(
        self,
        symbol: str,
        side: str,
        amount: float,
        client_id: str,
        now_ms: int,
        price: float | None = None,
        fresh: bool = False,
    ) -> Execution: ...

    def lookup(self, symbol: str, client_id: str) -> Execution | None: ...

    def cancel(self, symbol: str, client_id: str) -> Execution | None: ...

    def may_still_arrive(self, created_at: datetime) -> bool: ...


def final_state(
    broker: Broker, symbol: str, client_id: str, created_at: datetime
) -> Execution | None:
    """What became of an order written at `created_at` whose answer was never recorded
    (a leg trader's restart): the exchange's final state, an order still open canceled
    first (what filled counts), `expired` once a request never found could no longer
    arrive; None while that cannot be decided yet (ask again on the next step)."""
    found = broker.lookup(symbol, client_id)
    if found is None:
        if broker.may_still_arrive(created_at):
            return None
        return Execution("expired", 0.0, 0.0, error="never reached the exchange")
    if found.status in ("open", "partial"):
        found = broker.cancel(symbol, client_id) or found
        if found.status in ("open", "partial"):
            return None
    return found


class PaperBroker:
    """Fills against the exchange's public book with fees; the account lives in our DB
    (a paper short's margin too: `serving.model.account`)."""

    live = False
    margin = False

    def __init__(self, exchange: ExchangeClient, fee_bps: float, depth: int = 100) -> None:
        self.exchange, self.fee, self.depth = exchange, fee_bps / 10_000, depth

    def execute(
        self,
        symbol: str,
        side: str,
        amount: float,
        client_id: str,
        now_ms: int,
        price: float | None = None,
        fresh: bool = False,
    ) -> Execution:
        """Fill at once against the book; with `price`, an IOC limit order: only levels at
        that price or better fill, the rest expires."""
        book = self.exchange.call(
            f"{symbol} order book",
            lambda: self.exchange.client.fetch_order_book(symbol, self.depth),
            kind="depth",
        )
        levels = book["asks"] if side == "buy" else book["bids"]
        if price is not None:
            levels = [lv for lv in levels if (lv[0] <= price if side == "buy" else lv[0] >= price)]
        fills, left, cost = [], amount, 0.0
        for index, level in enumerate(levels):
            price, available = float(level[0]), float(level[1])
            take = min(left, available)
            if take <= 0:
                break
            fee = take * self.fee if side == "buy" else take * price * self.fee
            fills.append(
                Fill(
                    f"{client_id}-{index}",
                    now_ms,
                    price,
                    take,
                    fee,
                    "base" if side == "buy" else "quote",
                )
            )
            left -= take
            cost += take * price
        filled = amount - left
        if not fills:
            where = "" if price is None else f" at {price} or better"
            return Execution("expired", 0.0, 0.0, error=f"{symbol}: no {side} liquidity{where}")
        return Execution(
            status="filled" if left <= amount * 1e-12 else "expired",
            filled=filled,
            cost=cost,
            fee=sum(f.fee for f in fills),
            fee_asset="base" if side == "buy" else "quote",
            exchange_order_id=None,
            fills=tuple(fills),
            error=None if left <= amount * 1e-12 else f"book depth filled {filled} of {amount}",
        )

    def lookup(self, symbol: str, client_id: str) -> Execution | None:
        """Paper orders are executed and stored in one transaction: nothing to find."""
        return None

    def cancel(self, symbol: str, client_id: str) -> Execution | None:
        """Paper orders are final at once: nothing to cancel."""
        return None

    def may_still_arrive(self, created_at: datetime) -> bool:
        """Paper orders never travel."""
        return False


class ExchangeBroker:
    """Market orders through ccxt with deterministic client order ids, from the spot
    wallet (`serving.kernel.margin.MarginBroker`: the cross-margin one)."""

    live = True
    margin = False

    def __init__(self, exchange: ExchangeClient) -> None:
        self.exchange = exchange

    def order_params(self, side: str) -> dict[str, Any]:
        """ccxt params of every order this broker places (beside the client id)."""
        return {}

    def lookup_params(self) -> dict[str, Any]:
        """ccxt params that pick this broker's wallet when an order is looked up."""
        return {}

    def before_send(self, symbol: str, side: str, amount: float) -> Execution | None:
        """What must happen on the exchange before an order is sent; an Execution when
        the order must not be sent (spot: nothing)."""
        return None

    def may_still_arrive(self, created_at: datetime) -> bool:
        """Whether an order written at `created_at` and not found on the exchange could
        still reach it: a request delayed on the way is accepted until its timestamp is
        older than the exchange's recvWindow, so only after that is "not found" final."""
        window_ms = float(self.exchange.client.options.get("recvWindow") or 10_000)
        if created_at.tzinfo is None:  # SQLite keeps UTC without a zone
            created_at = created_at.replace(tzinfo=UTC)
        age = (datetime.now(UTC) - created_at).total_seconds()
        return age < window_ms / 1000 + LATE_ARRIVAL_MARGIN_SECONDS

    def execute(
        self,
        symbol: str,
        side: str,
        amount: float,
        client_id: str,
        now_ms: int,
        price: float | None = None,
        fresh: bool = False,
    ) -> Execution:
        """Send once (a market order, or a limit IOC order at `price`); on an ambiguous
        failure ask the exchange before anything else. `fresh`: the id was made just now
        and never sent, so the exchange is not asked about it first (a round trip saved).

        Returns the order's state; `pending` means the exchange did not answer and the
        order could not be found either: reconciliation decides later."""
        existing = None if fresh else self.lookup(symbol, client_id)
        if existing is not None:
            return existing
        market = self.exchange.market(symbol)
        refused = self.before_send(symbol, side, amount)
        if refused is not None:
            return refused
        params: dict[str, Any] = self.order_params(side) | self.exchange.new_order_params(client_id)
        if price is not None:
            params["timeInForce"] = "IOC"
        try:
            order = self.exchange.call(
                f"{symbol} {side} order {client_id}",
                lambda: self.exchange.client.create_order(
                    symbol, "limit" if price is not None else "market", side, amount, price, params
                ),
                kind="order",
                retry=False,
            )
        except ExchangeRejected as error:
            return Execution("rejected", 0.0, 0.0, error=str(error))
        except TemporaryExchangeError as error:
            found = self.lookup(symbol, client_id)
            if found is not None:
                return found
            return Execution("pending", 0.0, 0.0, error=str(error))
        return parse_order(order, market)

    def cancel(self, symbol: str, client_id: str) -> Execution | None:
        """Cancel an open order by client id; its final state (what filled before the
        cancel counts), or None when the exchange has no such order."""
        params = self.exchange.by_client_id(client_id) | self.lookup_params()
        # not found: already final or never arrived; the lookup below says which
        with contextlib.suppress(OrderNotFound):
            self.exchange.call(
                f"{symbol} cancel {client_id}",
                lambda: self.exchange.client.cancel_order(None, symbol, params),
                kind="order",
            )
        return self.lookup(symbol, client_id)

    def lookup(self, symbol: str, client_id: str) -> Execution | None:
        """The exchange's state of an order by client id; None when it has no such order."""
        market = self.exchange.market(symbol)
        order = self.exchange.find_order(symbol, client_id, self.lookup_params())
        if order is None:
            return None
        if order.get("filled") and not _priced(order) and not order.get("fee"):
            trades = self.exchange.call(
                f"{symbol} trades of order {client_id}",
                lambda: self.exchange.client.fetch_my_trades(symbol, params=self.lookup_params()),
                kind="my_trades",
            )
            order = {
                **order,
                "trades": [t for t in trades if str(t.get("order")) == str(order["id"])],
            }
            order["fees"] = [t["fee"] for t in order["trades"] if t.get("fee")]
        return parse_order(order, market)


STATUS = {"closed": "filled", "canceled": "canceled", "expired": "expired", "rejected": "rejected"}
"""ccxt's order status -> ours; an open order is `open`, or `partial` once something filled."""


def parse_order(order: dict[str, Any], market: dict[str, Any]) -> Execution:
    """A ccxt order as an Execution; fees are summed per asset (base or quote)."""
    filled = float(order.get("filled") or 0.0)
    cost = float(order.get("cost") or 0.0)
    status = STATUS.get(order.get("status") or "open", "partial" if filled else "open")
    fees = order.get("fees") or ([order["fee"]] if order.get("fee") else [])
    fee, fee_asset = 0.0, None
    for item in fees:
        if item and item.get("cost"):
            fee += float(item["cost"])
            fee_asset = "base" if item.get("currency") == market["base"] else "quote"
    fills = tuple(
        Fill(
            str(trade.get("id") or f"{order.get('id')}-{index}"),
            int(trade.get("timestamp") or order.get("timestamp") or 0),
            float(trade["price"]),
            float(trade["amount"]),
            float((trade.get("fee") or {}).get("cost") or 0.0),
            (trade.get("fee") or {}).get("currency"),
        )
        for index, trade in enumerate(_priced(order))
    )
    return Execution(
        status=status,
        filled=filled,
        cost=cost,
        fee=fee,
        fee_asset=fee_asset,
        exchange_order_id=str(order.get("id")) if order.get("id") else None,
        fills=fills,
    )


def _priced(order: dict[str, Any]) -> list[dict[str, Any]]:
    """The order's trades that carry their price and amount (Kraken's order answers
    list only the trades' ids)."""
    return [t for t in order.get("trades") or [] if t.get("price") is not None and t.get("amount")]
