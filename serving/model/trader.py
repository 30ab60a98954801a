"""The trader: on every newly closed candle of each market, decide with the champion,
size, pass the risk gate, execute through the broker and persist everything.

One `step()` is one pass over the markets; `run()` repeats it until told to stop.
Time is the exchange's clock (its candles close on it, and the simulator's clock may
run faster than ours). A decision is recorded once per market and candle, so a
restart never decides a candle twice; a live order is written (`pending`) before it
is sent and reconciled with the exchange after a crash or a database outage, before
anything new is sent.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from pipeline.errors import CryptobotsError
from pipeline.models.registry import model_name
from pipeline.settings import Market, Settings
from serving.kernel.database import DB_ERRORS, first_line
from serving.kernel.lease import Renewer, Role
from serving.kernel.risk_events import record_transitions
from serving.kernel.risk_state import RISK_CODES
from serving.model import decision_store
from serving.model.control import Control
from serving.model.decision import Deciding
from serving.model.recovery import Recovery
from serving.model.state import MarketState

log = logging.getLogger("serving.trader")


@dataclass
class Trader(Deciding, Recovery, Control):
    """Trades `settings.serving.markets` (or the first market) with their champions.

    Its fields are `TraderState`'s (`serving.model.state`); its parts, one job per module:
    a decision and the champion watch (`decision`, `watchdog`), accounts and orders
    (`account`), reconciliation and flatten (`recovery`), readiness and the operator's
    controls (`control`). This module holds the loop. (A dataclass itself, so that its
    `__init__` runs `__post_init__`.)"""

    def __post_init__(self) -> None:
        self.writer = decision_store.DecisionWriter(self.engine)
        self.role = Role(self.lease, self.metrics.active)
        for market in traded_markets(self.settings):
            self.markets[str(market)] = MarketState(market, model_name(str(market)))

    def step(self) -> int:
        """Poll models when due, reconcile when needed, then decide every market whose
        candle closed; returns the number of decisions recorded."""
        with self.lock:
            if not self._database_ready():
                return 0
            try:
                if not self.role.hold(self._took_over):
                    return 0
                self._poll_models()
                if not self.reconciled:
                    self.reconcile()
                    if not self.reconciled:
                        return 0  # nothing is sent before every open order is settled
                decided = 0
                for state in self.markets.values():
                    decided += self._step_market(state)
                if self.flatten_requested or self.risk.should_flatten():
                    self._flatten()
                self._flush_transitions()
                return decided
            except DB_ERRORS as error:
                self._database_lost(error)
                return 0

    def _took_over(self) -> None:
        """Just took the lease over: reconcile with the exchange before anything is sent."""
        self.reconciled = False
        for state in self.markets.values():
            state.position = None

    def _database_ready(self) -> bool:
        if self.db_ok:
            return True
        try:
            with self.engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        except DB_ERRORS:
            return False
        log.warning("state database is back: reconciling before trading resumes")
        self.db_ok, self.reconciled = True, False
        self.metrics.db_up.set(1)
        return True

    def _database_lost(self, error: Exception) -> None:
        log.error(
            "state database unreachable, trading halted until it answers: %s", first_line(error)
        )
        self.db_ok, self.reconciled = False, False
        self.writer.close()
        self.metrics.db_up.set(0)

    def _poll_models(self) -> None:
        """Ask the registry every `model_poll_seconds`, and at once for a model whose
        alias a notification says moved."""
        now = self.clock()
        names = self.notifications.moved() & self.watches.keys() if self.notifications else set()
        if now - self.last_model_poll >= self.settings.serving.model_poll_seconds:
            self.last_model_poll = now
            names = set(self.watches)
        for name in sorted(names):
            watch = self.watches[name]
            policy = watch.poll()
            if policy is not None:
                self.metrics.model_version.labels(name).set(policy.version)

    def _step_market(self, state: MarketState) -> int:
        market = state.market
        exchange = self.exchanges[market.exchange]
        tf = market.timeframe_ms
        try:
            now = exchange.server_time()
        except CryptobotsError as error:
            self._exchange_error(market.exchange, self.exchange_now.get(market.exchange), error)
            return 0
        self.exchange_now[market.exchange] = now
        if self.risk.breaker_open(market.exchange, now):
            return 0  # cooling down; after it, one half-open try decides
        closed = now // tf * tf - tf  # open time of the newest closed candle
        if state.handled is None:
            state.handled = decision_store.last_decided_candle(
                self.engine, self.account, str(market)
            )
        if state.handled is not None and closed <= state.handled:
            if state.last_closed is None:
                state.last_closed = state.handled  # decided before a restart: seen
            return 0
        policy = self.watches[state.model].current()
        if policy is None:
            return 0
        return self._decide(state, policy, exchange, closed, now)

    def _flush_transitions(self) -> None:
        self.pending_transitions.extend(self.risk.drain_transitions())
        for transition in self.pending_transitions:
            self.metrics.risk_state.labels(transition.market or "*").set(
                RISK_CODES[str(transition.to_state)]
            )
        record_transitions(self.engine, self.account, self.pending_transitions)
        self.pending_transitions = []

    def run(self, stop: threading.Event) -> None:
        """Step until `stop` is set; the current step always finishes."""
        interval = self.settings.serving.loop_seconds
        if self.lease is not None:
            Renewer(self.lease, stop).start()
        try:
            while not stop.is_set():
                try:
                    self.step()
                except Exception:  # a daemon logs what it did not foresee and goes on
                    log.exception("step failed, going on")
                stop.wait(interval)
            if self.settings.serving.cancel_on_exit:
                try:
                    self.cancel_open_orders()
                except DB_ERRORS as error:
                    log.error(
                        "open orders not canceled, the database is down: %s", first_line(error)
                    )
        finally:
            self.writer.close()
            if self.notifications is not None:
                self.notifications.close()
            if self.lease is not None:
                try:
                    self.lease.release()  # a standby takes over now, not a lease later
                except DB_ERRORS as error:
                    log.error("lease not released, the database is down: %s", first_line(error))


def traded_markets(settings: Settings) -> tuple[Market, ...]:
    """The markets the trader trades: serving.markets, else the first configured one."""
    return settings.serving.markets or settings.markets[:1]


def cache_dir(settings: Settings) -> Path:
    """Where verified model files are kept locally."""
    return settings.var_dir / "serving" / "models"
