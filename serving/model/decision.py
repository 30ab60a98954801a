"""One decision of the model trader: the newest closed candle of a market, its features,
the policy's target, the order the risk gate lets through, the paper fill, and one
write of it all (`serving.model.decision_store`); then the champion watch.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from pipeline.errors import CryptobotsError, DataValidationError, TemporaryExchangeError
from pipeline.exchanges.client import ExchangeClient
from pipeline.learn.features import Candles, fill_gaps, latest_features
from pipeline.settings import Market
from serving.kernel.broker import client_order_id
from serving.kernel.execution import Execution
from serving.kernel.lease import LeaseLost
from serving.kernel.market_rules import MarketRules
from serving.model import equity_store, store
from serving.model.policy import Policy
from serving.model.risk_rules import OrderIntent
from serving.model.state import MarketState
from serving.model.watchdog import Watchdog

log = logging.getLogger("serving.trader")


class Deciding(Watchdog):
    """A decision per market and newly closed candle (the champion watch follows it)."""

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
        target = self._short_allowed(decision, broker, target)
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
        mark = None if after is None else equity_store.Mark(last, after, price)
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

    def _short_allowed(self, decision: dict[str, Any], broker: Any, target: float) -> float:
        """The target a live account may take: a short needs `serving.margin`, and margin
        at or below `serving.margin_close_level` buys shorts back (held at 0)."""
        if target >= 0 or not broker.live:
            return target
        serving = self.settings.serving
        if not broker.margin:
            decision["reason"] = (
                "short targets need a margin account (serving.margin=false live): held at 0"
            )
            return 0.0
        try:
            level = broker.margin_level()
        except CryptobotsError as error:
            decision["reason"] = f"margin level unknown ({error}): short held at 0"
            return 0.0
        if level <= serving.margin_close_level:
            decision["reason"] = (
                f"margin level {level:.3f} at or below serving.margin_close_level "
                f"{serving.margin_close_level:g}: short held at 0"
            )
            return 0.0
        return target

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
            if state.stale_warned != last:  # once a candle, not on every poll
                state.stale_warned = last
                self.metrics.stale.labels(key).inc()
                log.warning(
                    "%s: newest closed candle %d is stale at %d: no trade until a newer one",
                    key, last, now,
                )  # fmt: skip
            return None
        self.risk.on_candle(key, last, float(candles.open[-1]), float(candles.close[-1]), tf, now)
        broker = self.brokers[market.exchange]
        if not broker.live:
            self._carry(state, exchange, candles, now)
        elif broker.margin:
            self._carry_margin(state, exchange)
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
        execution: Execution | None,
        live: bool,
        mark: equity_store.Mark | None,
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

    def _fetch_into(
        self,
        exchange: ExchangeClient,
        state: MarketState,
        known: dict[int, Any],
        since: int,
        closed: int,
    ) -> dict[int, Any]:
        """`known` rows with the closed candles from `since` up to `closed` added (the
        exchange's last word for each open time); TemporaryExchangeError when none."""
        market, tf = state.market, state.market.timeframe_ms
        limit = exchange.ohlcv_page_limit()
        for _ in range(8):  # pages: recorded data may repeat open times
            page = exchange.fetch_ohlcv(market.symbol, market.timeframe, since, limit)
            known.update((int(r[0]), r) for r in page if r[0] <= closed)
            if len(page) < limit or page[-1][0] >= closed:
                break
            since = int(page[-1][0]) + tf
        if not known:
            raise TemporaryExchangeError(f"{market}: no closed candle up to {closed} yet")
        return known

    def _window(
        self, exchange: ExchangeClient, state: MarketState, window: int, closed: int
    ) -> Candles:
        """The newest `window` closed candles up to `closed`, gaps filled (flat, no volume).

        Candles seen before are kept; only the newest few are fetched again (an exchange
        may still revise the candle that just closed), so a decision costs one small
        request instead of a whole window."""
        market, tf = state.market, state.market.timeframe_ms
        known = state.rows
        incremental = len(known) >= window and max(known) >= closed - 8 * tf
        # a sparse market (Kraken's minutes without a trade) has no candle at the start of
        # a window: reach further back, so that the gaps fill from a candle before it
        for reach in (1, 2, 4):
            if incremental:
                since = max(known) - 2 * tf
            else:
                known, since = {}, closed - (reach * window + 2) * tf
            known = self._fetch_into(exchange, state, dict(known), since, closed)
            keep = sorted(known)[-(reach * window + 8) :]
            candles, _ = fill_gaps(Candles.from_rows([known[ts] for ts in keep]), tf)
            if len(candles) >= window or incremental:
                break
        state.rows = {ts: known[ts] for ts in keep}
        if len(candles) < window:
            raise DataValidationError(
                f"{market}: the exchange gave {len(candles)} candles, the model needs {window}"
            )
        return candles.slice(len(candles) - window, len(candles))


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


def position_after(
    position: store.Position,
    outcome: str,
    target: float,
    order: dict[str, Any] | None,
    execution: Execution | None,
    live: bool,
) -> store.Position | None:
    """The position after a decision, known before its write (its equity point then goes
    into the decision's own transaction, one per decision) but for a live order: None,
    the exchange has yet to tell its fills."""
    if order is not None and live:
        return None  # the exchange's answer moves it: read back after sending
    after = (
        dataclasses.replace(position, target=target) if outcome in ("order", "hold") else position
    )
    if order is not None and execution is not None:
        return store.moved(after, order["side"], execution)
    return after
