"""What the leg traders (the arbitrage and the cross trader) share beyond the loop: the
clock, the database's state in the metrics, the gate's transitions written down, and the
readiness reasons of `/readyz`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from serving.kernel.lease import Role
from serving.kernel.risk_events import record_transitions
from serving.kernel.risk_state import RISK_CODES

FRESH_BOOKS_SECONDS = 30.0  # books older than this (or 10 polls) make the trader unready


class LegTraderParts:
    """Mixed into a leg trader, which sets the attributes below."""

    clock: Callable[[], float]
    engine: Any
    account: str
    metrics: Any  # its db_up and risk_state gauges
    risk: Any  # a gate: drain_transitions() and state
    role: Role
    started: bool
    reconciled: bool
    last_books_ms: int | None
    last_error: str | None
    lock: Any  # held while a step or an operator's call runs

    def pause(self) -> None:
        """Operator pause: nothing new starts (what is open is still closed)."""
        with self.lock:
            self.risk.pause(self._now())
            self._drain_risk()

    def resume(self) -> None:
        """Operator resume."""
        with self.lock:
            self.risk.resume(self._now())
            self._drain_risk()

    def _now(self) -> int:
        return int(self.clock() * 1000)

    def _db_up(self, up: bool) -> None:
        """The state database answered (or not): a lost one means reconciling again."""
        self.metrics.db_up.set(int(up))
        if not up:
            self.reconciled = False

    def _drain_risk(self) -> None:
        """The gate's state into the metrics, its transitions into `risk_events`."""
        transitions = self.risk.drain_transitions()
        self.metrics.risk_state.set(RISK_CODES[str(self.risk.state)])
        if transitions:
            record_transitions(self.engine, self.account, transitions)

    def _unready(self, poll_seconds: float, what: str) -> tuple[list[str], float | None]:
        """Why the trader is not ready (empty: ready), and its books' age in seconds;
        `what` names what a reconciliation still has open (a cycle, a trade)."""
        reasons = []
        if not self.started:
            reasons.append("not started")
        if standby := self.role.reason():
            reasons.append(standby)
        if not self.reconciled:
            reasons.append(f"reconciling: an earlier {what} is still open")
        age = None if self.last_books_ms is None else (self._now() - self.last_books_ms) / 1000
        if age is None or age > max(FRESH_BOOKS_SECONDS, 10 * poll_seconds):
            reasons.append("no fresh order books")
        if self.last_error:
            reasons.append(f"exchange: {self.last_error}")
        return reasons, age
