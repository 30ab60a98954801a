"""The model trader's recovery: settle every order not known to be final with the
exchange before anything new is sent (on start, after a takeover, after a database
outage), cancel what is open on exit, and flatten every position when asked.
"""

from __future__ import annotations

import logging
from functools import partial

from pipeline.errors import CryptobotsError
from pipeline.settings import Market
from serving.kernel.broker import client_order_id
from serving.kernel.execution import Execution
from serving.kernel.lease import LeaseLost
from serving.kernel.market_rules import MarketRules
from serving.model import store
from serving.model.account import Account
from serving.model.risk_rules import OrderIntent

log = logging.getLogger("serving.trader")


class Recovery(Account):
    """Reconciliation with the exchange, and the operator's flatten."""

    def reconcile(self) -> int:
        """Settle every order not known to be final with what the exchange knows; an order
        that never reached the exchange is expired, never sent late. Returns how many."""
        settled = 0
        for state in self.markets.values():
            state.position = None
        for order in store.open_orders(self.engine, self.account):
            state = self.markets.get(order["market"])
            market = state.market if state else Market.model_validate(order["market"])
            broker = self.brokers[market.exchange]
            try:
                found = broker.lookup(market.symbol, order["client_order_id"])
            except CryptobotsError as error:
                self._exchange_error(market.exchange, None, error)
                return settled  # try again on the next step
            if found is None:
                if broker.may_still_arrive(order["created_at"]):
                    log.info(
                        "%s: not on the exchange yet but could still arrive: asking again",
                        order["client_order_id"],
                    )
                    return settled  # reconciled stays False: nothing new is sent meanwhile
                found = Execution(
                    "expired", 0.0, 0.0, error="never reached the exchange (found on restart)"
                )
            store.apply_execution(self.engine, order["client_order_id"], found)
            self._count(order["market"], found)
            settled += 1
        if self.account == "live":
            try:
                self._reconcile_balances()
            except CryptobotsError as error:
                self._exchange_error(next(iter(self.exchanges)), None, error)
                return settled  # try again on the next step
        self.reconciled = True
        if settled:
            log.info("reconciled %d order(s) with the exchange", settled)
        return settled

    def cancel_open_orders(self) -> int:
        """Cancel every order of ours still open on an exchange and record its final
        state (fills before the cancel count); returns how many were settled."""
        settled = 0
        with self.lock:
            for order in store.open_orders(self.engine, self.account):
                market = Market.model_validate(order["market"])
                try:
                    found = self.brokers[market.exchange].cancel(
                        market.symbol, order["client_order_id"]
                    )
                except CryptobotsError as error:
                    log.error("%s: could not cancel: %s", order["client_order_id"], error)
                    continue
                if found is not None:
                    store.apply_execution(self.engine, order["client_order_id"], found)
                    self._count(order["market"], found)
                    settled += 1
        log.info("open orders canceled on exit: %d", settled)
        return settled

    def _flatten(self) -> None:
        self.flatten_requested = False
        for key, state in self.markets.items():
            state.position = None
            position = store.get_position(self.engine, self.account, key)
            if position is None or position.base == 0:
                continue
            exchange = self.exchanges[state.market.exchange]
            now = exchange.server_time()
            rules = MarketRules.from_ccxt(exchange.market(state.market.symbol))
            side = "sell" if position.base > 0 else "buy"
            symbol = state.market.symbol
            ticker = exchange.call(
                f"{symbol} ticker", partial(exchange.client.fetch_ticker, symbol), kind="ticker"
            )
            price = float(ticker["last"])
            verdict = self.risk.check(
                OrderIntent(
                    key,
                    side,
                    abs(position.base),
                    price,
                    position.base,
                    position.equity(price),
                    flatten=True,
                ),
                rules,
                now,
            )
            if not verdict.allowed:
                log.warning("%s: flatten refused: %s", key, verdict.reason)
                continue
            order = self._market_order(
                client_order_id("flatten", 0, key, now, side), key, side, verdict.amount
            )
            broker = self.brokers[state.market.exchange]
            try:
                store.record_order(self.engine, order, fence=self._fence(key))
            except LeaseLost as error:
                self._lease_lost(error)
                return
            execution = self._send(broker, state.market, order, now)
            self._count(key, execution)
            log.info("%s: flattened %s %s (%s)", key, side, verdict.amount, execution.status)
