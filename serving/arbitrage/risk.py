"""The arbitrage trader's risk gate: what may start a cycle, and when to stop starting.

Four limits, all in the home currency and UTC time:

- a cycle puts in at most `max_cycle_notional` (the sizing is capped by it);
- at most `max_cycles_per_hour` cycles start in any rolling hour;
- once the day's realized losses reach `daily_loss_limit`, nothing starts until the next
  UTC day (HALTED);
- `breaker_leg_failures` leg failures in a row open a circuit breaker for
  `breaker_cooldown_seconds`; after it, one cycle may try (half-open); a success closes
  it, a failure opens it again.

An operator pause holds everything until resume. The gate is pure: the trader feeds it
what happened and persists `drain_transitions()` as risk events; `restore` rebuilds the
hour's starts and the day's loss from the database after a restart.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pipeline.settings import ArbitrageSettings
from pipeline.timeutil import DAY_MS, HOUR_MS
from serving.kernel.risk_state import RiskState, Transition


@dataclass
class CycleGate:
    """Limits on starting arbitrage cycles on one exchange."""

    settings: ArbitrageSettings
    scope: str  # the risk event's market column, e.g. "arbitrage:binance"
    starts: deque[int] = field(default_factory=deque)
    day: int = -1
    day_loss: float = 0.0
    failures_in_a_row: int = 0
    breaker_open_until: int | None = None
    half_open: bool = False
    paused: bool = False
    state: RiskState = RiskState.ACTIVE
    _transitions: list[Transition] = field(default_factory=list)

    def restore(self, starts_ms: Iterable[int], losses: Iterable[tuple[int, float]]) -> None:
        """Cycles started (ms) and realized profits (ms, home) from the database."""
        self.starts = deque(sorted(starts_ms))
        for at_ms, profit in losses:
            self._roll_day(at_ms)
            if at_ms // DAY_MS == self.day and profit < 0:
                self.day_loss -= profit

    def check(self, notional: float, now_ms: int) -> str | None:
        """None when a cycle putting in `notional` home may start now, else why not."""
        self._roll_day(now_ms)
        if self.paused:
            return "paused by operator"
        if self.day_loss >= self.settings.daily_loss_limit:
            self._move(RiskState.HALTED, "daily loss limit reached", now_ms)
            return (
                f"daily loss {self.day_loss:.2f} reached the limit "
                f"{self.settings.daily_loss_limit:.2f}: halted until the next UTC day"
            )
        if self.breaker_open_until is not None:
            if now_ms < self.breaker_open_until:
                left = (self.breaker_open_until - now_ms) / 1000
                return f"circuit breaker open after repeated leg failures ({left:.0f} s left)"
            self.breaker_open_until, self.half_open = None, True
            self._move(RiskState.ACTIVE, "breaker half-open: one cycle may try", now_ms)
        if notional > self.settings.max_cycle_notional * (1 + 1e-9):
            return (
                f"cycle notional {notional:.2f} is above max_cycle_notional "
                f"{self.settings.max_cycle_notional:.2f}"
            )
        while self.starts and self.starts[0] <= now_ms - HOUR_MS:
            self.starts.popleft()
        if len(self.starts) >= self.settings.max_cycles_per_hour:
            return f"{len(self.starts)} cycles started in the last hour (max_cycles_per_hour)"
        return None

    def started(self, now_ms: int) -> None:
        """A cycle started."""
        self.starts.append(now_ms)

    def finished(self, profit: float, leg_failed: bool, now_ms: int) -> None:
        """A cycle ended with `profit` realized (home), a leg having failed or not."""
        self._roll_day(now_ms)
        if profit < 0:
            self.day_loss -= profit
        if not leg_failed:
            self.failures_in_a_row, self.half_open = 0, False
            return
        self.failures_in_a_row += 1
        if self.half_open or self.failures_in_a_row >= self.settings.breaker_leg_failures:
            self.half_open = False
            self.breaker_open_until = now_ms + int(self.settings.breaker_cooldown_seconds * 1000)
            self._move(
                RiskState.HALTED,
                f"circuit breaker open: {self.failures_in_a_row} leg failure(s) in a row",
                now_ms,
            )
        if self.day_loss >= self.settings.daily_loss_limit:
            self._move(RiskState.HALTED, "daily loss limit reached", now_ms)

    def pause(self, now_ms: int) -> None:
        """Operator pause: nothing starts until `resume`."""
        self.paused = True
        self._move(RiskState.HALTED, "paused by operator", now_ms)

    def resume(self, now_ms: int) -> None:
        """Operator resume (the loss limit and the breaker still apply)."""
        self.paused = False
        self._move(RiskState.ACTIVE, "resumed by operator", now_ms)

    def drain_transitions(self) -> list[Transition]:
        """State changes since the last call, for the caller to persist."""
        out, self._transitions = self._transitions, []
        return out

    def snapshot(self, now_ms: int | None = None) -> dict[str, Any]:
        """The gate as JSON, for `/readyz` and the control endpoints."""
        return {
            "state": str(self.state),
            "paused": self.paused,
            "cycles_last_hour": len(self.starts),
            "day_loss": self.day_loss,
            "daily_loss_limit": self.settings.daily_loss_limit,
            "leg_failures_in_a_row": self.failures_in_a_row,
            "breaker_open_until_ms": self.breaker_open_until,
        }

    def _roll_day(self, now_ms: int) -> None:
        day = now_ms // DAY_MS
        if day > self.day:
            if self.day >= 0 and self.day_loss >= self.settings.daily_loss_limit:
                self._move(RiskState.ACTIVE, "new UTC day: loss limit reset", now_ms)
            self.day, self.day_loss = day, 0.0

    def _move(self, to: RiskState, reason: str, now_ms: int) -> None:
        if to != self.state:
            self._transitions.append(Transition(self.scope, self.state, to, reason, now_ms))
            self.state = to
