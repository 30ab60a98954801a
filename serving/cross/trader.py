"""The cross trader (`python -m serving --strategy cross`): the same asset bought on one
venue and sold on another at once, on the inventory each already holds, on paper
unless told otherwise.

Each step reads the top of every venue's book (`arbitrage.cross_markets`), prices every
ordered pair of venues after both taker fees (`pipeline.arbitrage.cross`) and, when the
best pays at least `arbitrage.min_edge_bps` and the gate allows, trades it:

1. the trade and both legs are written (pending) in one transaction, under the lease;
2. both legs are handed to one thread each (`serving.cross.pair`) as limit IOC orders
   with client order ids derived from the trade's id;
3. what one leg filled and the other did not is closed by the cheaper exit within
   `arbitrage.unwind_seconds` (`serving.cross.exposure`), each exit written before it is
   sent;
4. every leg is settled with what its venue said; the realized profit is the fills'.

A restart first settles every pending leg with its venue and closes every exposure
left open, before anything new is sent. The inventory on each venue is read after every
trade (and every `inventory.READ_SECONDS`); when an asset's share on a venue leaves its band
(`arbitrage.inventory_band`) a rebalance is proposed on `/readyz`, the log and
`/metrics` (report only: nothing is ever withdrawn). Its markets' lease is keyed
`cross:<venue>:<symbol>`; the gate is the arbitrage trader's (`CycleGate`).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from pipeline.arbitrage.cross import CrossCosts, CrossOpportunity, VenueQuote
from pipeline.arbitrage.cross import cross_opportunities as priced
from pipeline.errors import ConfigurationError, CryptobotsError, TemporaryExchangeError
from pipeline.timeutil import DAY_MS
from serving.arbitrage import store
from serving.cross import ledger
from serving.cross.base import CrossBase
from serving.cross.exposure import EXIT_SEQ, close_exposure
from serving.cross.pair import Leg, Sent, plan_legs, trade_id
from serving.kernel.broker import final_state
from serving.kernel.lease import LeaseLost
from serving.kernel.loop import run_steps
from serving.kernel.market_rules import MarketRules

log = logging.getLogger("serving.cross")


class CrossTrader(CrossBase):
    """Trades one asset's spreads across venues; see the module docstring."""

    # -- start and reconcile ---------------------------------------------------------

    def start(self) -> None:
        """Load each venue's markets, check the group trades there, restore the gate,
        read the inventory, then settle whatever a previous run left open."""
        fees = []
        self.rules = {}
        for venue, symbol in self.symbols.items():
            markets = self.exchanges[venue].load_markets()
            if symbol not in markets:
                raise ConfigurationError(
                    f"arbitrage.cross_markets: {venue}:{symbol}: {venue} does not list "
                    f"{symbol}: fix CRYPTOBOTS_ARBITRAGE__CROSS_MARKETS (some of "
                    f"{', '.join(sorted(markets)[:10])})"
                )
            mode = getattr(self.exchanges[venue].client, "precisionMode", None)
            self.rules[venue] = MarketRules.from_ccxt(
                markets[symbol], *(() if mode is None else (mode,))
            )
            fees.append(float(markets[symbol].get("taker") or 0.001))
        fee_bps = self.config.taker_fee_bps
        self.fee = max(fees) if fee_bps is None else fee_bps / 10_000
        self.costs = CrossCosts(
            self.fee, self.config.max_cycle_notional, {}, self.config.quote_rates
        )
        for symbol in self.symbols.values():
            self.costs.quote_value(symbol.split("/")[1])  # names the setting when missing
        past = store.history(self.engine, self.account, ledger.EXCHANGE, self._now() - DAY_MS)
        self.risk.restore(
            (p["detected_ms"] for p in past),
            ((p["detected_ms"], p["realized_profit"] or 0.0) for p in past),
        )
        if not self.live:
            self._load_paper()
        self.started = True
        self.inventory.read(self.exchanges, self._now(), force=True)
        if self.role.hold(self._took_over):
            self.reconcile()

    def _load_paper(self) -> None:
        """The paper holdings on each venue from the database (seeded the first time)."""
        for venue in self.venues:
            self.inventory.holdings[venue] = store.paper_balances(
                self.engine, self.account, ledger.paper_key(venue),
                self.config.cross_paper_balances,
            )  # fmt: skip
        self.inventory.report()

    def _took_over(self) -> None:
        self.reconciled = False

    def reconcile(self) -> bool:
        """Settle every pending leg with its venue and close every open exposure of this
        group's trades; True when nothing is left open."""
        with self.lock:
            for trade in store.open_opportunities(self.engine, self.account, ledger.EXCHANGE):
                if any(leg["venue"] not in self.brokers for leg in trade["legs"]):
                    continue  # another group's trade: its own trader settles it
                for leg in trade["legs"]:
                    if leg["status"] == "pending" and not self._settle_pending(trade["id"], leg):
                        self.reconciled = False
                        return False
                sent = [ledger.sent_from_row(r) for r in store.legs_of(self.engine, trade["id"])]
                legs = [s for s in sent if s.leg.seq < EXIT_SEQ]
                exits = [s for s in sent if s.leg.seq >= EXIT_SEQ]
                if self._close(trade["id"], legs, exits) == "unwinding":
                    self.reconciled = False
                    return False
            if not self.live:  # the paper holdings as the settled legs left them
                self._load_paper()
            self.reconciled = True
            return True

    def _reconcile_now(self) -> bool:
        """`reconcile`, a venue that cannot be asked yet (down) counting as not done."""
        try:
            return self.reconcile()
        except TemporaryExchangeError as error:
            self.last_error = str(error)
            log.warning("reconciling waits for a venue: %s", error)
            return False

    def _settle_pending(self, trade: str, leg: dict[str, Any]) -> bool:
        broker, created = self.brokers[leg["venue"]], store.as_utc(leg["created_at"])
        found = final_state(broker, leg["symbol"], leg["client_order_id"], created)
        if found is None:
            log.info("leg %s not settled yet: it may still arrive", leg["client_order_id"])
            return False
        sent = ledger.sent_from_row(leg)
        ledger.settle(self.engine, trade, [Sent(sent.leg, found, 0.0)], self._paper())
        log.info("leg %s settled on restart: %s", leg["client_order_id"], found.status)
        return True

    # -- the loop -----------------------------------------------------------------------

    def step(self) -> str:
        """One poll: reconcile if needed, else read the books and trade the best spread.

        Returns standby, reconciling, idle, seen (paper: these books were traded),
        refused, done, unwound or unwinding."""
        with self.lock:
            if not self.started:
                self.start()
            if not self.role.hold(self._took_over):
                return "standby"
            try:
                if not self.reconciled and not self._reconcile_now():
                    return "reconciling"
                self.inventory.read(self.exchanges, self._now())  # before the books: not
                books = self._books()  # in the time from books seen to legs sent
                seen = time.perf_counter()
                return self.on_books(books, seen, self._now())
            except LeaseLost as error:
                self.role.lost(error)
                self.reconciled = False
                return "standby"

    def on_books(self, books: dict[str, Any], seen: float, now_ms: int) -> str:
        """Price every pair of venues, gate the best spread, then trade it."""
        self.last_books_ms = now_ms
        quotes = [
            VenueQuote(venue, self.symbols[venue], book["bids"][0][0], book["asks"][0][0])
            for venue, book in books.items()
            if book.get("bids") and book.get("asks")
        ]
        found = priced(self.costs, quotes, self.config.min_edge_bps)
        if not found:
            return "idle"
        best = found[0]
        mark = None if self.live else _mark(best, books)
        if mark is not None and mark == self.acted_on:
            self.metrics.opportunities.labels("already_traded").inc()
            return "seen"  # paper fills leave the books as they were: the spread is not new
        trade = trade_id(self.account, best, now_ms)
        held = (
            self.inventory.held(best.buy_venue, best.buy_symbol.split("/")[1]),
            self.inventory.held(best.sell_venue, best.asset),
        )
        try:
            legs = plan_legs(
                trade, best, self.rules, self.fee, held,
                (books[best.buy_venue]["asks"], books[best.sell_venue]["bids"]),
            )  # fmt: skip
        except CryptobotsError as error:
            return self._refuse(str(error))
        notional = legs[0].amount * (legs[0].price or best.buy_price)
        value = notional * self.costs.quote_value(best.buy_symbol.split("/")[1])
        refused = self.risk.check(value, now_ms)
        self._drain_risk()
        if refused is not None:
            return self._refuse(f"{best.asset} {best.buy_venue} > {best.sell_venue}: {refused}")
        self.acted_on, self.last_refusal = mark, None
        return self._trade(trade, best, legs, seen, now_ms)

    def _trade(
        self, trade: str, best: CrossOpportunity, legs: tuple[Leg, Leg], seen: float, now_ms: int
    ) -> str:
        row = ledger.trade_row(trade, self.account, best, legs, self.fee, now_ms)
        first, second = (ledger.leg_row(trade, leg) for leg in legs)
        store.open_opportunity(
            self.engine, row, first, durable=self.live, fence=self._fence(), more_legs=[second]
        )
        self.risk.started(now_ms)
        sent = list(self.dispatcher.send_both(legs, self._now()))
        latency = max(s.handed_at for s in sent) - seen  # books seen -> both legs handed
        self.metrics.detection.observe(latency)
        store.finish_opportunity(self.engine, trade, latency_ms=latency * 1000)
        log.info(
            "cross %s: buy %s %s on %s, sell %s on %s (%.1f bps)",
            trade[:12], legs[0].amount, legs[0].symbol, legs[0].venue, legs[1].amount,
            legs[1].venue, best.spread_bps,
        )  # fmt: skip
        result = self._close(trade, sent, [], fresh=True)
        self.inventory.read(self.exchanges, self._now(), force=True)
        return result

    def _close(self, trade: str, legs: list[Sent], exits: list[Sent], fresh: bool = False) -> str:
        """Close what the legs left exposed, settle every answered leg, and record the
        outcome once nothing is pending: done, unwound, or unwinding (the next step
        retries). `fresh`: a trade just sent, whose fills move the paper holdings here (a
        restart's reconciliation reloads them from the database instead)."""
        self.trading = trade
        closing = close_exposure(
            self.dispatcher, trade, legs, self._tops, self.rules, self.fee,
            self.config.unwind_seconds, self._now, exits=exits,
        )  # fmt: skip
        self.trading = None
        if closing.exits or any(s.execution.status != "filled" for s in closing.legs):
            self.metrics.exposure.observe(closing.seconds)
        waiting = ledger.settle(self.engine, trade, closing.legs + closing.exits, self._paper())
        if fresh:
            self.inventory.apply(closing.legs + closing.exits)
        if waiting or not closing.closed:
            why = (
                f"{len(waiting)} leg(s) unanswered" if waiting
                else f"{closing.residual:.8g} base still exposed after "
                f"{self.config.unwind_seconds:g} s"
            )  # fmt: skip
            store.finish_opportunity(self.engine, trade, status="unwinding", reason=why)
            self.reconciled = False
            log.warning("cross %s: %s: retried before anything new", trade[:12], why)
            return "unwinding"
        buy_quote = closing.legs[0].leg.symbol.split("/")[1]
        sell_quote = closing.legs[1].leg.symbol.split("/")[1]
        conversion = self.costs.configured_conversion(sell_quote, buy_quote)
        values = ledger.outcome(closing.legs, closing.exits, conversion)
        handed = [s.handed_at for s in legs if s.handed_at > 0]  # 0: rebuilt on a restart
        values["exposure_seconds"] = (
            time.perf_counter() - min(handed) if handed else closing.seconds
        )
        store.finish_opportunity(self.engine, trade, **values)
        failed = values["status"] != "done"
        if failed:
            self.metrics.leg_failures.inc()
        self.realized_total += values["realized_profit"]
        self.metrics.realized.set(self.realized_total)
        self.metrics.opportunities.labels(values["status"]).inc()
        for s in closing.legs + closing.exits[len(exits) :]:
            status = (
                "partial"
                if s.execution.status == "expired" and s.execution.filled
                else (s.execution.status)
            )
            self.metrics.legs.labels("unwind" if s.leg.seq >= EXIT_SEQ else "cross", status).inc()
        self.risk.finished(values["realized_profit"], failed, self._now())
        self._drain_risk()
        log.info(
            "cross %s %s: profit %.6f %s", trade[:12], values["status"],
            values["realized_profit"], buy_quote,
        )  # fmt: skip
        return str(values["status"])

    def _refuse(self, reason: str) -> str:
        self.metrics.opportunities.labels("refused").inc()
        if reason != self.last_refusal:
            log.info("cross spread refused, nothing sent: %s", reason)
        self.last_refusal = reason
        return "refused"

    def run(self, stop: threading.Event) -> None:
        """Step until `stop` is set; the current trade always finishes."""
        try:
            run_steps(
                self.step, stop, poll_seconds=self.config.poll_seconds, lease=self.lease,
                db_up=self._db_up, log=log,
            )  # fmt: skip
        finally:
            self.dispatcher.close()

    def flatten(self) -> None:
        """Close every open exposure now (trades are closed as they go; this re-checks)."""
        with self.lock:
            self.reconcile()


def _mark(best: CrossOpportunity, books: dict[str, Any]) -> tuple[Any, ...]:
    """The spread and both venues' books: equal marks are the same spread (paper)."""
    return (
        best.buy_venue,
        best.sell_venue,
        tuple(tuple(level[:2]) for level in books[best.buy_venue].get("asks") or ()),
        tuple(tuple(level[:2]) for level in books[best.sell_venue].get("bids") or ()),
    )
