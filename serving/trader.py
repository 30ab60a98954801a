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

import dataclasses
import gc
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from pipeline.errors import CryptobotsError, DataValidationError, TemporaryExchangeError
from pipeline.exchanges.client import ExchangeClient
from pipeline.learn.features import Candles, fill_gaps, latest_features
from pipeline.models.registry import (
    MOVES,
    PromotionConflict,
    VersionNotFound,
    alias,
    get_version,
    model_name,
    move_alias,
    promotion_history,
)
from pipeline.settings import Market, Settings
from pipeline.timeutil import HOUR_MS
from serving import store
from serving.allocation import split_balances
from serving.broker import Broker, client_order_id
from serving.decision import position_after
from serving.lease import Lease, LeaseLost, Renewer, Role
from serving.metrics import RISK_CODES, Metrics
from serving.model import AliasNotifications, ModelWatch, Policy
from serving.risk import MarketRules, OrderIntent, RiskGate
from serving.watch import WATCH_REASON, Expectations, RunningDrawdown, Verdict, judge

log = logging.getLogger(__name__)

DB_ERRORS = (sa.exc.OperationalError, sa.exc.InterfaceError)


@dataclass
class MarketState:
    """What the trader remembers about one market between steps."""

    market: Market
    model: str
    handled: int | None = None  # open time of the newest candle dealt with
    last_closed: int | None = None
    last_decision_ms: float | None = None  # latency of the last decision
    last_price: float | None = None
    timings: dict[str, float] = field(default_factory=dict)  # ms per stage, last decision
    position: store.Position | None = None  # cached: this process is the only writer
    rows: dict[int, list] = field(default_factory=dict)  # recent candles by open time
    watched: int | None = None  # the model version the champion watch follows
    # its equity since that version took over: running peak, deepest fall, decisions
    watch_record: RunningDrawdown = field(default_factory=RunningDrawdown)
    watch_blind: str | None = None  # why the watch cannot judge that version, if it cannot
    expectations: Expectations | None = None  # what its backtest makes usual
    verdict: Verdict | None = None  # the watch's latest judgement


@dataclass
class Trader:
    """Trades `settings.serving.markets` (or the first market) with their champions."""

    settings: Settings
    engine: Engine
    exchanges: Mapping[str, ExchangeClient]
    brokers: Mapping[str, Broker]
    watches: Mapping[str, ModelWatch]
    risk: RiskGate
    metrics: Metrics = field(default_factory=Metrics)
    clock: Callable[[], float] = time.perf_counter
    markets: dict[str, MarketState] = field(default_factory=dict)
    db_ok: bool = True
    reconciled: bool = False
    flatten_requested: bool = False
    pending_transitions: list[Any] = field(default_factory=list)
    last_model_poll: float = float("-inf")
    exchange_now: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    notifications: AliasNotifications | None = None  # LISTEN/NOTIFY: swaps sooner
    lease: Lease | None = None  # None: trades without one (a library user, a test)
    writer: store.DecisionWriter = field(init=False)
    role: Role = field(init=False)

    def __post_init__(self) -> None:
        self.writer = store.DecisionWriter(self.engine)
        self.role = Role(self.lease, self.metrics.active)
        for market in traded_markets(self.settings):
            self.markets[str(market)] = MarketState(market, model_name(str(market)))

    @property
    def account(self) -> str:
        """`live` or `paper`: the two never share rows."""
        return "live" if any(b.live for b in self.brokers.values()) else "paper"

    # -- one pass ---------------------------------------------------------------------

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

    def _fence(self, key: str) -> tuple[str, int] | None:
        if self.lease is None:
            return None
        token = self.lease.token(key)
        if token is None:
            raise LeaseLost(f"{key}: this trader holds no lease on it")
        return (self.lease.holder, token)

    def _lease_lost(self, error: LeaseLost) -> None:
        self.role.lost(error)
        self.reconciled = False

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
        log.error("state database unreachable, trading halted until it answers: %s", _first(error))
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
            state.handled = store.last_decided_candle(self.engine, self.account, str(market))
        if state.handled is not None and closed <= state.handled:
            if state.last_closed is None:
                state.last_closed = state.handled  # decided before a restart: seen
            return 0
        policy = self.watches[state.model].current()
        if policy is None:
            return 0
        return self._decide(state, policy, exchange, closed, now)

    # -- a decision ---------------------------------------------------------------------

    def _decide(
        self, state: MarketState, policy: Policy, exchange: ExchangeClient, closed: int, now: int
    ) -> int:
        market = state.market
        try:
            candles = self._window(exchange, state, policy.spec.window, closed)
        except CryptobotsError as error:
            self._exchange_error(market.exchange, now, error)
            return 0
        self.risk.on_exchange_ok(market.exchange, now)
        gc.disable()  # a garbage-collection pause must not land inside a decision
        try:
            return self._decide_on(state, policy, exchange, candles, now)
        finally:
            gc.enable()

    def _decide_on(
        self,
        state: MarketState,
        policy: Policy,
        exchange: ExchangeClient,
        candles: Candles,
        now: int,
    ) -> int:
        market, key = state.market, str(state.market)
        started = self.clock()
        last = self._decision_candle(state, policy, exchange, candles, now)
        if last is None:
            return 0
        position = self._position(market, exchange)
        lap = Laps(self.clock, started)
        lap("state")
        price = float(candles.close[-1])
        features = latest_features(candles, policy.spec)
        lap("features")
        equity = position.equity(price)
        held = position.base * price / equity if equity > 0 else 0.0
        scale = policy.scale(features)
        snapped = min(policy.action_map, key=lambda p: abs(p - held / scale))
        action, scores, obs_hash = policy.decide(features, snapped)
        target = policy.position(scores) * scale
        lap("inference")
        decision: dict[str, Any] = {
            "account": self.account,
            "market": key,
            "candle_ts": last,
            "model_name": policy.name,
            "model_version": policy.version,
            "inputs_sha256": obs_hash,
            "outputs": [float(x) for x in scores],
            "action": action,
            "target": target,
            "price": price,
            "reason": None,
            "client_order_id": None,
        }
        broker = self.brokers[market.exchange]
        if target < 0 and broker.live:
            decision["reason"] = "short targets need a margin account, disabled live: held at 0"
            target = 0.0
        delta = target * equity / price - position.base if equity > 0 else -position.base
        order = self._gate_order(
            decision, policy, market, exchange, delta, position.base, equity, now
        )
        execution = None
        lap("risk")
        decision["latency_ms"] = lap.total_ms()  # candle available -> broker (before the write)
        if order is not None and not broker.live:
            execution = broker.execute(
                market.symbol, order["side"], order["amount"], order["client_order_id"], now
            )
        lap("broker")
        after = position_after(position, decision["outcome"], target, order, execution, broker.live)
        mark = None if after is None else store.Mark(last, after, price)
        if not self._write_decision(state, decision, order, execution, broker.live, mark):
            return 0
        lap("persistence")
        state.timings = dict(lap.ms)
        state.last_decision_ms = sum(ms for stage, ms in lap.ms.items() if stage != "broker")
        self.metrics.decisions.labels(key, decision["outcome"]).inc()
        self.metrics.decision_latency.labels(key).observe(state.last_decision_ms / 1000)
        if order is not None:
            self.risk.record_order(key, now)
            if broker.live:
                execution = self._send(broker, market, order, now)
            self._count(key, execution)
        state.handled = last
        self._mark(key, price, last, after, recorded=mark is not None)
        if self.settings.serving.watch_enabled:
            self._watch(state, policy, now)
        return 1

    def _decision_candle(
        self,
        state: MarketState,
        policy: Policy,
        exchange: ExchangeClient,
        candles: Candles,
        now: int,
    ) -> int | None:
        """The open time of the newest closed candle when the model decides on it now; None
        when it was handled already, is stale or is no decision candle of the model. The
        candle goes to the risk gate and a paper short pays its margin on the way."""
        market, tf, key = state.market, state.market.timeframe_ms, str(state.market)
        last = int(candles.ts[-1])
        state.last_closed = last
        if state.handled is not None and last <= state.handled:
            return None  # the exchange has not published the closed candle yet
        if not self.risk.data_fresh(key, last, tf, now):
            self.metrics.stale.labels(key).inc()
            log.warning("%s: newest closed candle %d is stale at %d: no trade", key, last, now)
            return None
        self.risk.on_candle(key, last, float(candles.open[-1]), float(candles.close[-1]), tf, now)
        if not self.brokers[market.exchange].live:
            self._carry(state, exchange, candles, now)
        if (last // tf + 1) % policy.decision_every:
            state.handled = last  # not a decision candle of this model
            return None
        return last

    def _gate_order(
        self,
        decision: dict[str, Any],
        policy: Policy,
        market: Market,
        exchange: ExchangeClient,
        delta: float,
        base: float,
        equity: float,
        now: int,
    ) -> dict[str, Any] | None:
        """The market order moving the position by `delta` base, rounded and capped by the
        risk gate, or None: a hold or a denial. Sets the decision's outcome and reason."""
        key, last, price = decision["market"], decision["candle_ts"], decision["price"]
        rules = MarketRules.from_ccxt(exchange.market(market.symbol))
        if rules.round_amount(abs(delta)) <= 0:
            decision["outcome"] = "hold"
            return None
        side = "buy" if delta > 0 else "sell"
        verdict = self.risk.check(
            OrderIntent(key, side, abs(delta), price, base, equity), rules, now
        )
        if not verdict.allowed:
            decision["outcome"], decision["reason"] = "denied", verdict.reason
            return None
        decision["outcome"] = "order"
        if verdict.reason != "ok":
            decision["reason"] = verdict.reason
        cid = client_order_id(policy.name, policy.version, key, last, side)
        decision["client_order_id"] = cid
        return self._market_order(cid, key, side, verdict.amount)

    def _write_decision(
        self,
        state: MarketState,
        decision: dict[str, Any],
        order: dict[str, Any] | None,
        execution: store.Execution | None,
        live: bool,
        mark: store.Mark | None,
    ) -> bool:
        """Record the decision (and its order, execution and equity point) in one write;
        False when this trader lost the market's lease or the candle was decided already."""
        key, last = decision["market"], decision["candle_ts"]
        try:
            self.writer.record(
                decision, order, execution, durable=live, fence=self._fence(key), mark=mark
            )
        except LeaseLost as error:
            self._lease_lost(error)
            return False
        except sa.exc.IntegrityError:
            log.warning("%s: candle %d was already decided (another trader?): skipped", key, last)
            state.handled, state.position = last, None
            return False
        return True

    # -- the champion watch ---------------------------------------------------------------

    def _watch(self, state: MarketState, policy: Policy, now: int) -> None:
        """Judge the champion's record since it took over this market; on a breach roll
        back to the previous champion, or flatten and pause when there is none.

        The record is read from the database once, when the version changes; after
        that each decision adds its equity point in constant time."""
        key = str(state.market)
        if state.watched != policy.version:
            self._watch_version(state, policy)
        elif state.position is not None and state.last_price is not None:
            state.watch_record.add(state.position.equity(state.last_price))
        if state.verdict is not None and state.verdict.breached:
            return  # acted on already; waiting for the model to change
        label = f"{policy.name} v{policy.version} on {key}"
        record = state.watch_record
        if state.watch_blind is not None:
            verdict = Verdict(
                False, True, record.drawdown, None, record.decisions, state.watch_blind
            )
        else:
            verdict = judge(
                label,
                record.drawdown,
                record.decisions,
                state.expectations,
                self.settings.serving.watch_max_drawdown,
            )
        state.verdict = verdict
        self.metrics.watch_drawdown.labels(key).set(verdict.drawdown)
        if verdict.limit is not None:
            self.metrics.watch_limit.labels(key).set(verdict.limit)
        if verdict.breached:
            self.metrics.watch_breaches.labels(key).inc()
            self._watch_breach(state, policy, verdict, now)

    def _watch_version(self, state: MarketState, policy: Policy) -> None:
        """Start following a version that took the market over: its record so far (a
        restart goes on where it was) and its backtest's expectations. A version the
        registry does not know leaves the watch blind to it (said once, here)."""
        key = str(state.market)
        equity = store.equity_since_version(
            self.engine,
            self.account,
            key,
            policy.name,
            policy.version,
            since=store.watch_resumed_at(self.engine, self.account),
        )
        blind = None
        try:
            metrics = get_version(self.engine, policy.name, policy.version)["metrics"]
        except VersionNotFound as error:
            metrics = None
            blind = (
                f"{policy.name} v{policy.version} on {key} is not in the registry ({error}): "
                "the watch is blind to it"
            )
            log.warning("%s%s", WATCH_REASON, blind)
        state.watch_record = RunningDrawdown.of(equity)
        state.expectations = Expectations.from_metrics(metrics)
        state.watch_blind = blind
        state.watched = policy.version  # last: a database error above tries again next time

    def _watch_breach(self, state: MarketState, policy: Policy, verdict: Verdict, now: int) -> None:
        reason = f"{WATCH_REASON}{verdict.reason}"
        current = alias(self.engine, policy.name)
        history = promotion_history(self.engine, policy.name, actions=MOVES)
        previous = history[0]["from_version"] if history else None
        if current is not None and current["version"] == policy.version and previous is not None:
            try:
                move_alias(
                    self.engine,
                    policy.name,
                    previous,
                    seen_generation=current["generation"],
                    who="watchdog",
                    reason=reason,
                    gates={"watch": verdict.to_dict()},
                    action="rollback",
                )
            except PromotionConflict:
                log.warning("%s: the champion moved meanwhile; the watch leaves it", reason)
                return
            log.error("%s: rolled back to v%d", reason, previous)
            self.last_model_poll = float("-inf")  # load the previous champion before deciding
            return
        log.error("%s: no earlier champion to roll back to: flattening and pausing", reason)
        self.risk.pause(now, reason)
        self.flatten_requested = True

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

    def _window(
        self, exchange: ExchangeClient, state: MarketState, window: int, closed: int
    ) -> Candles:
        """The newest `window` closed candles up to `closed`, gaps filled (flat, no volume).

        Candles seen before are kept; only the newest few are fetched again (an exchange
        may still revise the candle that just closed), so a decision costs one small
        request instead of a whole window."""
        market, tf = state.market, state.market.timeframe_ms
        known = state.rows
        if len(known) >= window and max(known) >= closed - 8 * tf:
            since = max(known) - 2 * tf
        else:
            known, since = {}, closed - (window + 2) * tf
        limit = exchange.ohlcv_page_limit()
        for _ in range(8):  # pages: recorded data may repeat open times
            page = exchange.fetch_ohlcv(market.symbol, market.timeframe, since, limit)
            # one row per open time, the exchange's last word
            known.update((int(r[0]), r) for r in page if r[0] <= closed)
            if len(page) < limit or page[-1][0] >= closed:
                break
            since = int(page[-1][0]) + tf
        if not known:
            raise TemporaryExchangeError(f"{market}: no closed candle up to {closed} yet")
        keep = sorted(known)[-(window + 8) :]
        state.rows = {ts: known[ts] for ts in keep}
        candles, _ = fill_gaps(Candles.from_rows([known[ts] for ts in keep]), tf)
        if len(candles) < window:
            raise DataValidationError(
                f"{market}: the exchange gave {len(candles)} candles, the model needs {window}"
            )
        return candles.slice(len(candles) - window, len(candles))

    def _send(self, broker: Broker, market: Market, order: dict, now: int) -> store.Execution:
        try:
            execution = broker.execute(
                market.symbol, order["side"], order["amount"], order["client_order_id"], now
            )
        except CryptobotsError as error:
            self._exchange_error(market.exchange, now, error)
            self.reconciled = False  # settle it before anything else is sent
            return store.Execution("pending", 0.0, 0.0, error=str(error))
        if execution.status == "pending":
            self._exchange_error(market.exchange, now, execution.error or "no answer")
            self.reconciled = False
            return execution
        store.apply_execution(self.engine, order["client_order_id"], execution)
        return execution

    def _count(self, key: str, execution: store.Execution | None) -> None:
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
            store.record_equity(self.engine, self.account, key, ts, position, price)
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

    def _exchange_error(self, exchange: str, now: int | None, error: Any) -> None:
        self.metrics.exchange_errors.labels(exchange).inc()
        log.warning("%s: exchange call failed: %s", exchange, _first(error))
        self.risk.on_exchange_error(exchange, now or 0, str(error))

    # -- recovery and operations ---------------------------------------------------------

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
                found = store.Execution(
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

    def _reconcile_balances(self) -> None:
        """Share each live exchange account's balances among its markets (creating their
        sub-accounts the first time); take the exchange's figures where ours differ (a
        fill we missed, a fee, a manual trade)."""
        by_exchange: dict[str, list[Market]] = {}
        for state in self.markets.values():
            if self.brokers[state.market.exchange].live:
                by_exchange.setdefault(state.market.exchange, []).append(state.market)
        for name, markets in by_exchange.items():
            exchange = self.exchanges[name]
            totals = exchange_totals(exchange, name)
            assets = {}
            held = {}
            for market in markets:
                info = exchange.market(market.symbol)
                assets[str(market)] = (info["base"], info["quote"])
                found = store.get_position(self.engine, self.account, str(market))
                if found is not None:
                    held[str(market)] = (found.base, found.quote)
            for key, (base, quote) in split_balances(totals, assets, held).items():
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

    def _flush_transitions(self) -> None:
        self.pending_transitions.extend(self.risk.drain_transitions())
        for transition in self.pending_transitions:
            self.metrics.risk_state.labels(transition.market or "*").set(
                RISK_CODES[str(transition.to_state)]
            )
        store.record_transitions(self.engine, self.account, self.pending_transitions)
        self.pending_transitions = []

    def pause(self, reason: str = "paused by operator") -> None:
        """HALT new orders (operator)."""
        with self.lock:
            self.risk.pause(self._now(), reason)

    def resume(self) -> None:
        """Lift the operator's pause; a champion watch that paused judges afresh from here."""
        with self.lock:
            self.risk.resume(self._now())
            for state in self.markets.values():
                if state.verdict is not None and state.verdict.breached:
                    state.verdict = None
                    state.watch_record = RunningDrawdown.of(
                        [state.position.equity(state.last_price)]
                        if state.position is not None and state.last_price is not None
                        else []
                    )

    def flatten(self) -> None:
        """Close every position on the next step (reducing orders pass a HALT)."""
        self.flatten_requested = True

    def _now(self) -> int:
        exchange = next(iter(self.exchanges.values()))
        try:
            return exchange.server_time()
        except CryptobotsError:
            return int(time.time() * 1000)

    def readiness(self) -> tuple[bool, list[str]]:
        """(ready, reasons it is not): a model per market, fresh data, a database."""
        reasons = []
        if not self.db_ok:
            reasons.append("state database unreachable")
        if standby := self.role.reason():
            reasons.append(standby)
        for key, state in self.markets.items():
            policy = self.watches[state.model].current()
            if policy is None:
                reasons.append(f"{key}: no champion model loaded")
            if state.verdict is not None and state.verdict.breached:
                reasons.append(f"{key}: {WATCH_REASON}{state.verdict.reason}")
            now = self.exchange_now.get(state.market.exchange)
            if state.last_closed is None:
                reasons.append(f"{key}: no candle seen yet")
            elif now is not None and not self.risk.data_fresh(
                key, state.last_closed, state.market.timeframe_ms, now
            ):
                reasons.append(f"{key}: newest candle {state.last_closed} is stale at {now}")
        return not reasons, reasons

    def status(self) -> dict[str, Any]:
        """What /readyz and the logs report."""
        ready, reasons = self.readiness()
        return {
            "ready": ready,
            "reasons": reasons,
            "account": self.account,
            "role": self.role.name,
            "lease": self.role.describe(),
            "risk": self.risk.snapshot(),
            "models": {
                name: (
                    None
                    if (p := w.current()) is None
                    else {"version": p.version, "provider": p.provider}
                )
                for name, w in self.watches.items()
            },
            "markets": {
                key: {
                    "last_closed": s.last_closed,
                    "handled": s.handled,
                    "watch": None if s.verdict is None else s.verdict.to_dict(),
                }
                for key, s in self.markets.items()
            },
        }

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
                    log.error("open orders not canceled, the database is down: %s", _first(error))
        finally:
            self.writer.close()
            if self.notifications is not None:
                self.notifications.close()
            if self.lease is not None:
                try:
                    self.lease.release()  # a standby takes over now, not a lease later
                except DB_ERRORS as error:
                    log.error("lease not released, the database is down: %s", _first(error))


class Laps:
    """Milliseconds per named stage since the previous lap."""

    def __init__(self, clock: Callable[[], float], start: float) -> None:
        self.clock, self.start, self.last = clock, start, start
        self.ms: dict[str, float] = {}

    def __call__(self, stage: str) -> None:
        now = self.clock()
        self.ms[stage] = (now - self.last) * 1000
        self.last = now

    def total_ms(self) -> float:
        """Since the start."""
        return (self.last - self.start) * 1000


def exchange_totals(exchange: ExchangeClient, name: str) -> dict[str, float]:
    """Every asset's total the exchange account holds.

    An answer listing no asset at all is taken for a garbled one and asked again: ccxt
    parses a truncated body into an empty balance, and trusting it would zero our books.
    """

    def fetch() -> dict[str, Any]:
        balance = exchange.client.fetch_balance()
        totals = balance.get("total")
        if not isinstance(totals, dict) or not totals:
            raise TemporaryExchangeError(f"{name}: the balance answer lists no asset")
        return totals

    totals = exchange.call(f"{name} balances", fetch)
    return {asset: float(v or 0.0) for asset, v in totals.items()}


def traded_markets(settings: Settings) -> tuple[Market, ...]:
    """The markets the trader trades: serving.markets, else the first configured one."""
    return settings.serving.markets or settings.markets[:1]


def _first(error: Any) -> str:
    return str(getattr(error, "orig", None) or error).strip().splitlines()[0][:300]


def cache_dir(settings: Settings) -> Path:
    """Where verified model files are kept locally."""
    return settings.var_dir / "serving" / "models"
