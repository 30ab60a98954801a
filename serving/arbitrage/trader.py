"""The arbitrage trader (`python -m serving --strategy arbitrage`): cycles inside one
exchange, found on live books and traded leg by leg, on paper unless told otherwise.

Each step polls the book of every configured market, re-weighs the exchange graph,
re-evaluates every 3-cycle through home (and, past 3 legs, runs the cycle search), sizes
the best candidates against the books and, when one pays at least `min_edge_bps` after
fees and rounding and the risk gate allows, trades it:

1. the opportunity is written (id = sha256 of account, exchange, cycle and time);
2. each leg is written (pending) and then sent as a limit IOC order at the price of the
   worst book level the sizing reached, with a client order id derived from
   (opportunity id, leg): a leg is never sent twice under two ids, and a crash between
   writing and sending is settled by asking the exchange for that id;
3. the next leg spends what the previous one actually received.

A leg that is rejected, fills partly or not at all leaves currencies other than home:
the exposure. It is closed at once at market, by whichever exit returns more home at the
current books: straight back to home, or the rest of the cycle. The realized profit
(home received minus home spent; rounding dust valued at zero) is recorded against the
expected one. A restart first settles every pending leg with the exchange and closes
any exposure left open, before anything new is sent.

What rounding leaves behind adds up: the dust per currency is derived from the finished
legs, reported on `/readyz` and `/metrics`, and swept back to home by one order once it
passes a direct market's minimums (`serving.arbitrage.dust`, `arbitrage.sweep_dust`).

Started by `python -m serving`, it trades only while it holds the lease of its markets
(`serving.kernel.lease`, keyed `arbitrage:<exchange>:<symbol>`, apart from the model trader's
markets), and every leg is written under that lease's fencing token: a second trader
stands by (or refuses to start, naming the holder) and takes over within
`serving.failover_seconds`.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from pipeline.arbitrage import ArbitrageConfig, CycleSearch, ExchangeGraph, MarketSpec, Triangles
from pipeline.errors import ConfigurationError
from pipeline.timeutil import DAY_MS
from serving.arbitrage import store
from serving.arbitrage.cycles import Cycles
from serving.kernel.broker import final_state
from serving.kernel.lease import LeaseLost
from serving.kernel.loop import run_steps
from serving.kernel.market_rules import MarketRules

log = logging.getLogger("serving.arbitrage")


class ArbitrageTrader(Cycles):
    """Finds and trades cycles on one exchange; see the module docstring.

    Its parts, one job per module: fields and plumbing (`base`), detection and the legs
    (`cycles`), exposure and outcomes (`exits`). This module holds start, reconciliation,
    the loop and what the HTTP side asks."""

    # -- start and reconcile ---------------------------------------------------------

    def start(self) -> None:
        """Load the markets, build the graph and the searches, restore the gate's limits,
        then settle whatever a previous run left open."""
        markets = self.exchange.load_markets()
        missing = [s for s in self.config.symbols if s not in markets]
        if missing:
            raise ConfigurationError(
                f"arbitrage symbols {missing} are not traded on {self.venue}: fix "
                "CRYPTOBOTS_ARBITRAGE__SYMBOLS (some of "
                f"{', '.join(sorted(markets)[:20])})"
            )
        fee = self.config.taker_fee_bps
        specs = []
        for symbol in self.config.symbols:
            spec = MarketSpec.from_ccxt(markets[symbol])
            if fee is not None:
                spec = MarketSpec(spec.symbol, spec.base, spec.quote, fee / 10_000)
            specs.append(spec)
        self.graph = ExchangeGraph(specs)
        self.fees = {spec.symbol: spec.taker_fee for spec in specs}
        if self.config.home not in self.graph.index:
            raise ConfigurationError(
                f"arbitrage home {self.config.home} is in none of the symbols "
                f"{list(self.config.symbols)}: set CRYPTOBOTS_ARBITRAGE__HOME or add markets"
            )
        search = ArbitrageConfig(
            home=self.config.home,
            max_length=self.config.max_length,
            min_edge_bps=self.config.min_edge_bps,
        )
        self.triangles = Triangles(self.graph, search)
        self.search = CycleSearch(self.graph, search) if self.config.max_length > 3 else None
        mode = getattr(self.exchange.client, "precisionMode", None)
        self.rules = {
            s: MarketRules.from_ccxt(markets[s], *(() if mode is None else (mode,)))
            for s in self.config.symbols
        }
        now = self._now()
        past = store.history(self.engine, self.account, self.venue, now - DAY_MS)
        self.risk.restore(
            (p["detected_ms"] for p in past),
            ((p["detected_ms"], p["realized_profit"] or 0.0) for p in past),
        )
        if not self.broker.live:
            self.balances = store.paper_balances(
                self.engine, self.account, self.venue, self.config.paper_balances
            )
        self.started = True
        if self.role.hold(self._took_over):
            self.reconcile()

    def _took_over(self) -> None:
        """Just took the lease over: settle what is open before anything is sent."""
        self.reconciled = False

    def reconcile(self) -> bool:
        """Settle every pending leg with the exchange and close every open exposure.

        True when nothing is left open; False while an order may still reach the exchange
        or an exit could not be traded yet (the next step tries again).
        """
        with self.lock:
            for opportunity in store.open_opportunities(self.engine, self.account, self.venue):
                for leg in opportunity["legs"]:
                    if leg["status"] == "pending" and not self._settle_pending(leg):
                        self.reconciled = False
                        return False
                if not self._close(opportunity["id"]):
                    self.reconciled = False
                    return False
            self.dust.load(self.engine, self.account, self.venue)
            self.reconciled = True
            return True

    def _settle_pending(self, leg: dict[str, Any]) -> bool:
        created = store.as_utc(leg["created_at"])
        found = final_state(self.broker, leg["symbol"], leg["client_order_id"], created)
        if found is None:
            log.info("leg %s not settled yet: it may still arrive", leg["client_order_id"])
            return False
        self._settle(leg, found)
        log.info("leg %s settled on restart: %s", leg["client_order_id"], found.status)
        return True

    # -- the loop -----------------------------------------------------------------------

    def step(self) -> str:
        """One poll: reconcile if needed, else fetch the books and trade the best cycle.

        Returns what happened: standby, reconciling, idle, small, seen (paper: this edge,
        on these books, was traded already), refused, done, unwound, pending; or, when
        dust was swept back to home instead, swept or sweep_failed.
        """
        with self.lock:
            if not self.started:
                self.start()
            if not self.role.hold(self._took_over):
                return "standby"
            try:
                if not self.reconciled and not self.reconcile():
                    return "reconciling"
                books = self._books(self.config.symbols)
                seen = time.perf_counter()
                swept = self._sweep(books, self._now())
                return swept or self.on_books(books, seen, self._now())
            except LeaseLost as error:
                return self._lease_lost(error)

    def run(self, stop: threading.Event) -> None:
        """Step until `stop` is set; the current step (and its cycle) always finishes.
        The lease, when there is one, is renewed meanwhile and handed back at the end."""
        run_steps(
            self.step,
            stop,
            poll_seconds=self.config.poll_seconds,
            lease=self.lease,
            db_up=self._db_up,
            log=log,
        )

    # -- what serving.kernel.http asks ------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """What /readyz and the logs report."""
        reasons, age = self._unready(self.config.poll_seconds, "cycle")
        return {
            "ready": not reasons,
            "reasons": reasons,
            "strategy": "arbitrage",
            "account": self.account,
            "role": self.role.name,
            "exchange": self.venue,
            "markets": list(self.markets),
            "books_age_seconds": age,
            "realized_profit": self.realized_total,
            "dust": self.dust.snapshot(),
            "risk": self.risk.snapshot(self._now()),
            "lease": self.role.describe(),
        }

    def flatten(self) -> None:
        """Close every open exposure now (cycles are closed as they go; this re-checks)."""
        with self.lock:
            self.reconcile()
