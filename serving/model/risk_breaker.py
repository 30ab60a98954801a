"""The circuit breaker of one exchange, for the model trader's risk gate.

`closed` until `breaker_errors` consecutive errors open it; `open` halts every market of
the exchange for `breaker_cooldown_seconds` (on the exchange clock the gate is given);
then `half_open` lets one try through: a success closes it, an error opens it again.
The gate (`serving.model.risk.RiskGate`) owns one per exchange and records what each
change does to its markets' states. Stdlib only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from pipeline.settings import RiskSettings

BreakerStatus = Literal["closed", "open", "half_open"]


@dataclass
class Breaker:
    """One exchange's breaker: its status, consecutive errors and why it is open."""

    status: BreakerStatus = "closed"
    errors: int = 0  # consecutive
    last_error: str | None = None
    opened_at_ms: int | None = None
    reason: str = ""

    def on_error(self, exchange: str, now_ms: int, error: str, s: RiskSettings) -> bool:
        """Count a consecutive error; True when it opened (or re-opened) the breaker."""
        self.errors += 1
        self.last_error = error
        if self.status == "half_open":
            why = (
                f"circuit breaker of {exchange} re-opened: error during the half-open trial "
                f"({self.errors} consecutive errors), last: {error}"
            )
        elif self.status == "closed" and self.errors >= s.breaker_errors:
            why = (
                f"circuit breaker of {exchange} open: {self.errors} consecutive errors "
                f"(breaker_errors {s.breaker_errors}), last: {error}"
            )
        else:
            return False
        self.status = "open"
        self.opened_at_ms = int(now_ms)
        self.reason = f"{why}; cool-down {s.breaker_cooldown_seconds:g}s"
        return True

    def on_ok(self, now_ms: int, s: RiskSettings) -> bool:
        """A call succeeded: reset the count; True when that closed the breaker."""
        self.errors = 0
        if self.status == "half_open" or (self.status == "open" and self.cooled_down(now_ms, s)):
            self.status = "closed"
            self.opened_at_ms = None
            self.reason = ""
            return True
        return False

    def try_half_open(self, now_ms: int, s: RiskSettings) -> bool:
        """Open with the cool-down over: go half-open and return True."""
        if self.status == "open" and self.cooled_down(now_ms, s):
            self.status = "half_open"
            self.reason = ""
            return True
        return False

    def cooled_down(self, now_ms: int, s: RiskSettings) -> bool:
        """Whether the cool-down since it opened is over."""
        opened = self.opened_at_ms if self.opened_at_ms is not None else now_ms
        return now_ms - opened >= s.breaker_cooldown_seconds * 1000
