"""The model trader's risk gate: one state machine that every order passes.

Each market has a state, and so does the whole trader (the global state):

- `ACTIVE`: any order within the limits passes.
- `REDUCING`: only orders that bring the absolute position toward zero pass, capped so
  that they never flip past zero. A market enters it for a few candles after a flash
  move (`on_candle`) and leaves it by itself.
- `HALTED`: nothing passes except orders flagged `flatten=True` that reduce (the
  operator's flatten, or `flatten_on_halt`). The global state halts on an operator
  pause or on the daily loss limit; a market is halted while the circuit breaker of its
  exchange is open.

The effective state of a market is the worst (`HALTED` > `REDUCING` > `ACTIVE`) of its
own state, of the global state, and `HALTED` while its exchange's breaker is open.

A refusal is a `Verdict(allowed=False, ...)` that the caller records as denied; the gate
never raises for an order it does not like. Time is always passed in as `now_ms` (the
exchange clock in milliseconds), never read from the system clock: the gate is
deterministic in tests and follows an accelerated simulator clock. The breaker
cool-down is measured on that clock too, so on a simulator running at 60x a 60 s
cool-down lasts one wall-clock second.

Every change of state is queued as a `Transition` until `drain_transitions`. Global
changes are recorded once with `market=None`; a market's transitions record its own
layer (flash pause and breaker), not the global state it inherits.

The per-order rules `check` applies are in `serving.model.risk_rules`, the exchanges'
circuit breakers in `serving.model.risk_breaker`; this module holds the states.

Stdlib only (no numpy, ccxt, DB or network): the trader calls it on every decision and
tests drive it directly. Not thread-safe: one trader loop owns one gate.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pipeline.timeutil import DAY_MS, HOUR_MS, iso
from serving.kernel.market_rules import MarketRules
from serving.kernel.risk_state import RESUMED_REASON, RiskState, Transition, worst
from serving.model.risk_breaker import Breaker
from serving.model.risk_rules import (
    Draft,
    OrderIntent,
    Verdict,
    base_text,
    cap_reduce_only,
    invalid_order,
    limits_denial,
    quote_text,
    rounded_verdict,
    state_denial,
)

if TYPE_CHECKING:
    from pipeline.settings import RiskSettings


@dataclass
class _Book:
    """What the gate keeps per market."""

    pause_until_ts_ms: int | None = None  # REDUCING while the latest candle opened before it
    pause_reason: str = ""
    orders: deque[int] = field(default_factory=deque)  # send times, oldest first


class RiskGate:
    """Market, global and per-exchange risk state; judges every order (see the module doc)."""

    def __init__(self, settings: RiskSettings, markets: Iterable[str]) -> None:
        self.settings = settings
        self._books: dict[str, _Book] = {}
        self._breakers: dict[str, Breaker] = {}
        for market in markets:
            self._book(str(market))
        self._paused_reason: str | None = None
        self._loss_reason: str | None = None
        self._day: int | None = None
        self._day_start_equity: float | None = None
        self._last_equity: float | None = None
        self._transitions: list[Transition] = []
        self._last_now_ms = 0

    # --- state -------------------------------------------------------------------------

    def state(self, market: str | None = None) -> RiskState:
        """The effective state of `market`, or the global state when `market` is None."""
        global_state = self._global_state()
        if market is None:
            return global_state
        return worst(self._market_level(market), global_state)

    def _global_state(self) -> RiskState:
        if self._paused_reason is not None or self._loss_reason is not None:
            return RiskState.HALTED
        return RiskState.ACTIVE

    def _global_reason(self) -> str:
        reasons = [r for r in (self._paused_reason, self._loss_reason) if r is not None]
        return "; ".join(reasons) or "ok"

    def _market_level(self, market: str) -> RiskState:
        """A market's own state (flash pause, breaker), without the global state."""
        book = self._book(market)
        state = RiskState.REDUCING if book.pause_until_ts_ms is not None else RiskState.ACTIVE
        if self._breaker(_exchange_of(market)).status == "open":
            state = RiskState.HALTED
        return state

    def _market_reason(self, market: str) -> str:
        reasons = []
        if self._global_state() is not RiskState.ACTIVE:
            reasons.append(self._global_reason())
        breaker = self._breaker(_exchange_of(market))
        if breaker.status == "open":
            reasons.append(breaker.reason)
        book = self._book(market)
        if book.pause_until_ts_ms is not None:
            reasons.append(book.pause_reason)
        return "; ".join(reasons) or "ok"

    def _book(self, market: str) -> _Book:
        """A market's book; a market not named at start is registered on first sight."""
        book = self._books.get(market)
        if book is None:
            book = self._books[market] = _Book()
            self._breaker(_exchange_of(market))
        return book

    def _breaker(self, exchange: str) -> Breaker:
        return self._breakers.setdefault(exchange, Breaker())

    def _levels_of(self, exchange: str) -> dict[str, RiskState]:
        """The own state of every market of `exchange` (before a breaker changes)."""
        return {m: self._market_level(m) for m in self._books if _exchange_of(m) == exchange}

    def _seen(self, now_ms: int) -> None:
        self._last_now_ms = max(self._last_now_ms, int(now_ms))

    def _record_market_changes(
        self, before: Mapping[str, RiskState], reason: str, now_ms: int
    ) -> None:
        for market, old in before.items():
            new = self._market_level(market)
            if new is not old:
                self._transitions.append(Transition(market, old, new, reason, int(now_ms)))

    def _record_global_change(self, old: RiskState, reason: str, now_ms: int) -> None:
        new = self._global_state()
        if new is not old:
            self._transitions.append(Transition(None, old, new, reason, int(now_ms)))

    # --- orders ------------------------------------------------------------------------

    def check(self, intent: OrderIntent, rules: MarketRules, now_ms: int) -> Verdict:
        """Judge one order; the limits apply in the order of the module's rules, first denial wins.

        0. an order with a non-finite number, or an amount or price <= 0, is invalid;
        1. state: HALTED passes only reducing flatten orders, REDUCING only reducing ones;
        2. reduce-only orders (REDUCING, HALTED, flatten) are capped at |position|;
        3. max_order_notional caps; 4. max_position_notional and 5. max_leverage cap the
        position after the order, and deny when there is no room at all; 6.
        max_orders_per_hour denies; 7. rounding down to the step, then min amount and min
        cost deny. Reducing orders (including flatten) skip 3-6. Caps are named in the
        reason of an allowed verdict. Each rule is one helper below, called in this order.
        """
        self._seen(now_ms)
        draft = Draft(intent.amount)
        why = invalid_order(intent)
        if why is not None:
            return draft.deny(why)
        state = self.state(intent.market)
        why = state_denial(intent, state, self._market_reason)
        if why is not None:
            return draft.deny(why)
        cap_reduce_only(intent, state, draft)
        if not (intent.reduces and draft.amount <= abs(intent.position)):
            why = limits_denial(
                self.settings, intent, draft, lambda: self._rate_limit_denial(intent.market, now_ms)
            )
            if why is not None:
                return draft.deny(why)
        return rounded_verdict(intent, rules, draft)

    def _rate_limit_denial(self, market: str, now_ms: int) -> str | None:
        """Rule 6: max_orders_per_hour denies once the sliding hour holds that many orders."""
        sent = self._orders_last_hour(market, now_ms)
        limit = self.settings.max_orders_per_hour
        if sent >= limit:
            return (
                f"max_orders_per_hour {limit}: {sent} orders sent on "
                f"{market} in the hour before {iso(now_ms)}"
            )
        return None

    def record_order(self, market: str, now_ms: int) -> None:
        """Count one sent order toward max_orders_per_hour (a sliding hour before now_ms)."""
        self._seen(now_ms)
        self._book(market).orders.append(int(now_ms))

    def _orders_last_hour(self, market: str, now_ms: int) -> int:
        orders = self._book(market).orders
        cutoff = now_ms - HOUR_MS
        while orders and orders[0] <= cutoff:
            orders.popleft()
        return sum(1 for t in orders if cutoff < t <= now_ms)

    # --- market data -------------------------------------------------------------------

    def on_candle(
        self,
        market: str,
        ts_ms: int,
        open: float,
        close: float,
        timeframe_ms: int,
        now_ms: int,
    ) -> None:
        """Watch each closed candle for a flash move, and end a flash pause when it is over.

        A candle moving more than `flash_move` (|close/open - 1|) makes the market REDUCING
        for `flash_pause_candles` candles counted by open time: the flash candle and the next
        ones, until the first candle opening at `ts + flash_pause_candles * timeframe`, whose
        `on_candle` lifts the pause by itself. A later flash extends the pause; 0 candles
        disables it. Counting by timestamp makes repeated or missing calls harmless.
        """
        self._seen(now_ms)
        book = self._book(market)
        before = {market: self._market_level(market)}
        reason = ""
        if book.pause_until_ts_ms is not None and ts_ms >= book.pause_until_ts_ms:
            reason = f"flash pause over: candle {iso(ts_ms)} is past the pause"
            book.pause_until_ts_ms = None
            book.pause_reason = ""
        s = self.settings
        move = close / open - 1.0 if open > 0 else 0.0
        if abs(move) > s.flash_move and s.flash_pause_candles > 0:
            until = ts_ms + s.flash_pause_candles * timeframe_ms
            if book.pause_until_ts_ms is None or until > book.pause_until_ts_ms:
                book.pause_until_ts_ms = until
                reason = book.pause_reason = (
                    f"flash move: candle {iso(ts_ms)} open {base_text(open)} close "
                    f"{base_text(close)} moved {move:+.2%} (flash_move {s.flash_move:.2%}); "
                    f"reduce-only for {s.flash_pause_candles} candles, until the candle at "
                    f"{iso(until)}"
                )
        self._record_market_changes(before, reason, now_ms)

    def data_fresh(
        self, market: str, last_closed_ts_ms: int, timeframe_ms: int, now_ms: int
    ) -> bool:
        """Whether the latest closed candle is recent enough to decide on.

        The candle opened at `last_closed_ts_ms` closed one timeframe later; it is stale
        when it closed more than `stale_after_timeframes` timeframes before `now_ms`. The
        trader skips the decision then; no state changes (a pure check).
        """
        closed_at = last_closed_ts_ms + timeframe_ms
        return now_ms - closed_at <= self.settings.stale_after_timeframes * timeframe_ms

    # --- circuit breaker ---------------------------------------------------------------

    def on_exchange_error(self, exchange: str, now_ms: int, error: str) -> None:
        """Count a consecutive error of `exchange`; at `breaker_errors` the breaker opens.

        An open breaker halts every market of the exchange for `breaker_cooldown_seconds`
        (on the passed clock). An error during the half-open trial re-opens it for another
        cool-down. Errors while it is open are counted but do not extend the cool-down.
        """
        self._seen(now_ms)
        breaker = self._breaker(exchange)
        before = self._levels_of(exchange)
        if breaker.on_error(exchange, now_ms, error, self.settings):
            self._record_market_changes(before, breaker.reason, now_ms)

    def on_exchange_ok(self, exchange: str, now_ms: int) -> None:
        """A call to `exchange` succeeded: reset the error count and close the breaker if it may.

        Half-open -> closed. Open with the cool-down elapsed -> closed (the success is the
        trial). Open within the cool-down stays open.
        """
        self._seen(now_ms)
        breaker = self._breaker(exchange)
        before = self._levels_of(exchange)
        if breaker.on_ok(now_ms, self.settings):
            self._record_market_changes(
                before, f"circuit breaker of {exchange} closed: a call succeeded", now_ms
            )

    def breaker_open(self, exchange: str, now_ms: int) -> bool:
        """Whether calls to `exchange` must wait; after the cool-down the breaker goes half-open.

        Half-open lets the trader try again (this returns False and its markets leave
        HALTED); the next `on_exchange_ok` closes the breaker, the next `on_exchange_error`
        re-opens it for another cool-down.
        """
        self._seen(now_ms)
        breaker = self._breaker(exchange)
        before = self._levels_of(exchange)
        if breaker.try_half_open(now_ms, self.settings):
            self._record_market_changes(
                before,
                f"circuit breaker of {exchange} half-open after the "
                f"{self.settings.breaker_cooldown_seconds:g}s cool-down: trying again",
                now_ms,
            )
        return breaker.status == "open"

    # --- global ------------------------------------------------------------------------

    def on_equity(self, total_equity: float, now_ms: int) -> None:
        """Apply the daily loss limit to the total equity.

        The first equity seen in a UTC day (of `now_ms`) is the day's start; equity below
        `start * (1 - daily_loss_limit)` halts globally until the next UTC day (recovering
        within the day does not lift it) or the operator's `resume`. A new day lifts a
        daily-loss halt, though not an operator pause. Non-finite values are ignored.
        """
        self._seen(now_ms)
        if not math.isfinite(total_equity):
            return
        before = self._global_state()
        reason = ""
        day = now_ms // DAY_MS
        if day != self._day:
            if self._loss_reason is not None:
                reason = f"new UTC day {iso(day * DAY_MS)[:10]}: daily loss halt lifted"
                self._loss_reason = None
            self._day = day
            self._day_start_equity = total_equity
        self._last_equity = total_equity
        start = self._day_start_equity
        limit = self.settings.daily_loss_limit
        if start is not None and self._loss_reason is None:
            floor = start * (1.0 - limit)
            if total_equity < floor:
                reason = self._loss_reason = (
                    f"daily_loss_limit {limit:.2%}: equity {quote_text(total_equity)} fell below "
                    f"{quote_text(floor)} ({quote_text(start)} at the start of UTC day "
                    f"{iso(day * DAY_MS)[:10]})"
                )
        self._record_global_change(before, reason, now_ms)

    def should_flatten(self) -> bool:
        """Whether to close positions: halted by the daily loss limit and `flatten_on_halt`."""
        return self._loss_reason is not None and self.settings.flatten_on_halt

    def pause(self, now_ms: int, reason: str = "paused by operator") -> None:
        """Halt everything (global HALTED) until `resume`."""
        self._seen(now_ms)
        before = self._global_state()
        self._paused_reason = reason
        self._record_global_change(before, reason, now_ms)

    def resume(self, now_ms: int) -> None:
        """Lift the operator pause and a daily-loss halt (the operator decided): global ACTIVE.

        After lifting a daily-loss halt, the day's start becomes the last equity seen, so
        the limit counts from here instead of halting again on the next `on_equity`.
        """
        self._seen(now_ms)
        before = self._global_state()
        if self._loss_reason is not None and self._last_equity is not None:
            self._day_start_equity = self._last_equity
        self._paused_reason = None
        self._loss_reason = None
        self._record_global_change(before, RESUMED_REASON, now_ms)

    # --- reporting ---------------------------------------------------------------------

    def drain_transitions(self) -> list[Transition]:
        """Every transition since the last call, oldest first (the caller persists them)."""
        drained, self._transitions = self._transitions, []
        return drained

    def snapshot(self, now_ms: int | None = None) -> dict[str, Any]:
        """The gate's state as plain JSON-able values, for the trader's status page and DB.

        Orders in the last hour count back from `now_ms`, by default the latest time the
        gate was given.
        """
        now = self._last_now_ms if now_ms is None else int(now_ms)
        markets = {}
        for market, book in self._books.items():
            markets[market] = {
                "state": str(self.state(market)),
                "own_state": str(self._market_level(market)),
                "reason": self._market_reason(market),
                "flash_pause_until_ts_ms": book.pause_until_ts_ms,
                "orders_last_hour": self._orders_last_hour(market, now),
            }
        breakers = {}
        cooldown_ms = self.settings.breaker_cooldown_seconds * 1000
        for exchange, b in self._breakers.items():
            breakers[exchange] = {
                "status": b.status,
                "consecutive_errors": b.errors,
                "last_error": b.last_error,
                "opened_at_ms": b.opened_at_ms,
                "cooldown_ends_ms": (
                    None if b.opened_at_ms is None else int(b.opened_at_ms + cooldown_ms)
                ),
            }
        return {
            "at_ms": now,
            "global": {
                "state": str(self._global_state()),
                "reason": self._global_reason(),
                "operator_paused": self._paused_reason is not None,
                "daily_loss_halted": self._loss_reason is not None,
                "day_start_equity": self._day_start_equity,
                "last_equity": self._last_equity,
                "should_flatten": self.should_flatten(),
            },
            "markets": markets,
            "breakers": breakers,
        }


def _exchange_of(market: str) -> str:
    """`binance` of `binance:BTC/USDT:1h`: the breaker is per exchange."""
    return market.split(":", 1)[0]
