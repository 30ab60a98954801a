"""What the HTTP side asks of the model trader: its readiness and status (/readyz),
and the operator's pause, resume and flatten (/control/*).
"""

from __future__ import annotations

import time
from typing import Any

from pipeline.errors import CryptobotsError
from serving.model.state import TraderState
from serving.model.watch import WATCH_REASON, RunningDrawdown


class Control(TraderState):
    """Readiness, status and the operator's controls."""

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
