"""The champion watch, acted on: judge each champion's record since it took a market
over (`serving.model.watch`), and on a breach roll back to the previous champion, or
flatten and pause when there is none.
"""

from __future__ import annotations

import logging

from pipeline.models.registry import (
    MOVES,
    PromotionConflict,
    VersionNotFound,
    alias,
    get_version,
    move_alias,
    promotion_history,
)
from serving.model import equity_store
from serving.model.account import Account
from serving.model.policy import Policy
from serving.model.state import MarketState
from serving.model.watch import WATCH_REASON, Expectations, RunningDrawdown, Verdict, judge

log = logging.getLogger("serving.trader")


class Watchdog(Account):
    """The champion watch of every market the trader decides on."""

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
        equity = equity_store.equity_since_version(
            self.engine,
            self.account,
            key,
            policy.name,
            policy.version,
            since=equity_store.watch_resumed_at(self.engine, self.account),
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
