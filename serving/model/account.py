"""The model trader's accounts: each market's position (paper cash, or a share of the
live exchange account's balances), the orders it sends and counts, its equity marks,
and a paper short's margin (borrow interest, liquidation).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import sqlalchemy as sa

from pipeline.errors import CryptobotsError
from pipeline.exchanges.client import ExchangeClient
from pipeline.learn.features import Candles
from pipeline.settings import Market
from pipeline.timeutil import HOUR_MS
from serving.kernel.balances import exchange_totals
from serving.kernel.broker import Broker, client_order_id
from serving.kernel.execution import Execution
from serving.kernel.margin import margin_totals
from serving.model import equity_store, store
from serving.model.allocation import split_balances
from serving.model.state import MarketState, TraderState

log = logging.getLogger("serving.trader")


class Account(TraderState):
    """Positions, orders and equity of the trader's markets."""

    def _position(self, market: Market, exchange: ExchangeClient) -> store.Position:
        """The market's position; a live one starts from the exchange's balances."""
        key = str(market)
        state = self.markets[key]
        if state.position is not None:
            return state.position
        found = store.get_position(self.engine, self.account, key)
        if found is not None:
            state.position = found
            return found
        if not self.brokers[market.exchange].live:
            return store.ensure_position(
                self.engine, self.account, key, self.settings.serving.paper_cash
            )
        self._reconcile_balances()  # a live market's share of the exchange's balances
        found = store.get_position(self.engine, self.account, key)
        if found is None:
            raise CryptobotsError(f"{key}: no balances read from {market.exchange}")
        return found

    def _reconcile_balances(self) -> None:
        """Share each live exchange account's balances among its markets (creating their
        sub-accounts the first time); take the exchange's figures where ours differ (a
        fill we missed, a fee, a manual trade)."""
        by_exchange: dict[str, list[Market]] = {}
        for state in self.markets.values():
            if self.brokers[state.market.exchange].live:
                by_exchange.setdefault(state.market.exchange, []).append(state.market)
        for name, markets in by_exchange.items():
            exchange, broker = self.exchanges[name], self.brokers[name]
            if broker.margin:
                broker.settle_loans()  # no loan left idle by a crash
                totals = margin_totals(broker.wallet())
            else:
                totals = exchange_totals(exchange, name)
            assets = {}
            held = {}
            for market in markets:
                info = exchange.market(market.symbol)
                assets[str(market)] = (info["base"], info["quote"])
                found = store.get_position(self.engine, self.account, str(market))
                if found is not None:
                    held[str(market)] = (found.base, found.quote)
            shares = split_balances(totals, assets, held, signed=broker.margin)
            for key, (base, quote) in shares.items():
                self.markets[key].position = None
                if key not in held:
                    store.ensure_position(self.engine, self.account, key, quote, base)
                    continue
                had_base, had_quote = held[key]
                if abs(base - had_base) > 1e-9 or abs(quote - had_quote) > 1e-6:
                    log.warning(
                        "%s: balances differ from its share of the exchange's (base %s vs "
                        "%s, quote %s vs %s): taking the exchange's",
                        key,
                        had_base,
                        base,
                        had_quote,
                        quote,
                    )
                    store.set_balances(self.engine, self.account, key, base, quote)
            if broker.margin:
                self._interest_reconciled(broker, assets)

    def _interest_reconciled(self, broker: Any, assets: dict[str, tuple[str, str]]) -> None:
        """The exchange's balances just taken include every interest charge so far: mark
        them carried, so that `_carry_margin` charges only later ones."""
        for base in {pair[0] for pair in assets.values()}:
            charged = broker.interest_since(base, None)
            if charged:
                for key in (k for k, pair in assets.items() if pair[0] == base):
                    store.set_carried(self.engine, self.account, key, charged[-1][0])

    def _carry_margin(self, state: MarketState, exchange: ExchangeClient) -> None:
        """Live margin, once per candle: the interest the exchange charged on the base
        asset's loan since the books last took it, shared by the markets short of it (by
        the markets using the asset when none is short any more)."""
        key, broker = str(state.market), self.brokers[state.market.exchange]
        position = self._position(state.market, exchange)
        base = exchange.market(state.market.symbol)["base"]
        since = store.carried_to(self.engine, self.account, key)
        charged = broker.interest_since(base, since)
        if not charged:
            return
        shorts = {
            k: -(s.position or store.get_position(self.engine, self.account, k)).base
            for k, s in self.markets.items()
            if s.market.exchange == state.market.exchange
            and exchange.market(s.market.symbol)["base"] == base
        }
        total = sum(v for v in shorts.values() if v > 0)
        share = max(-position.base, 0.0) / total if total > 0 else 1 / len(shorts)
        interest = sum(amount for _, amount in charged) * share
        if store.charge_interest(self.engine, self.account, key, charged[-1][0], interest):
            state.position = None

    def _market_order(self, cid: str, key: str, side: str, amount: float) -> dict[str, Any]:
        return {
            "client_order_id": cid,
            "account": self.account,
            "market": key,
            "side": side,
            "type": "market",
            "amount": amount,
            "price": None,
        }

    def _send(self, broker: Broker, market: Market, order: dict, now: int) -> Execution:
        try:
            execution = broker.execute(
                market.symbol, order["side"], order["amount"], order["client_order_id"], now
            )
        except CryptobotsError as error:
            self._exchange_error(market.exchange, now, error)
            self.reconciled = False  # settle it before anything else is sent
            return Execution("pending", 0.0, 0.0, error=str(error))
        if execution.status == "pending":
            self._exchange_error(market.exchange, now, execution.error or "no answer")
            self.reconciled = False
            return execution
        store.apply_execution(self.engine, order["client_order_id"], execution)
        return execution

    def _count(self, key: str, execution: Execution | None) -> None:
        if execution is None:
            return
        self.metrics.orders.labels(key, execution.status).inc()
        if execution.fills:
            self.metrics.fills.labels(key).inc(len(execution.fills))

    def _mark(
        self,
        key: str,
        price: float,
        ts: int,
        position: store.Position | None = None,
        *,
        recorded: bool = False,
    ) -> None:
        """Record the equity point (unless the decision's write `recorded` it already);
        `position` is the market's, when known without a read."""
        position = position or store.get_position(self.engine, self.account, key)
        if position is None:
            return
        self.markets[key].last_price = price
        self.markets[key].position = position
        if not recorded:
            equity_store.record_equity(self.engine, self.account, key, ts, position, price)
        self.metrics.equity.labels(key).set(position.equity(price))
        self.metrics.position.labels(key).set(position.base)
        self.risk.on_equity(self._total_equity(), ts)

    def _total_equity(self) -> float:
        total = 0.0
        for key, state in self.markets.items():
            position = state.position or store.get_position(self.engine, self.account, key)
            if position is not None and state.last_price is not None:
                total += position.equity(state.last_price)
        return total

    def _carry(
        self, state: MarketState, exchange: ExchangeClient, candles: Candles, now: int
    ) -> None:
        """Paper margin, once per candle: borrow interest on a short, and liquidation when
        the candle's high reached the price where equity falls to the maintenance margin."""
        key, last = str(state.market), int(candles.ts[-1])
        position = self._position(state.market, exchange)
        if position.base >= 0:
            return
        serving = self.settings.serving
        price, high = float(candles.close[-1]), float(candles.high[-1])
        short = -position.base
        hours = state.market.timeframe_ms / HOUR_MS
        fee = short * price * serving.borrow_rate_hourly * hours
        if fee > 0 and store.charge_borrow(self.engine, self.account, key, last, fee):
            position = dataclasses.replace(position, quote=position.quote - fee)
            state.position = position
        liquidation = position.quote / (short * (1 + serving.maintenance_margin))
        if high < liquidation:
            return
        log.warning(
            "%s: short of %s liquidated: the candle's high %s reached %s",
            key,
            short,
            high,
            liquidation,
        )
        cover = short / (1 - serving.fee_bps / 10_000)  # the paper fee is taken in base
        order = self._market_order(
            client_order_id("liquidation", 0, key, last, "buy"), key, "buy", cover
        )
        try:
            store.record_order(self.engine, order)
        except sa.exc.IntegrityError:
            return  # this candle's liquidation is already on record
        execution = self._send(self.brokers[state.market.exchange], state.market, order, now)
        self._count(key, execution)
        state.position = None
