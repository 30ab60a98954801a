"""Exposure: what a cycle that did not finish leaves in currencies other than home,
closed at once at market by whichever exit returns more home at the current books
(straight back to home, or the rest of the cycle); then the cycle's outcome, realized
profit against the expected one, is recorded.
"""

from __future__ import annotations

import logging
from typing import Any

import sqlalchemy as sa

from pipeline.arbitrage import Leg, leg_receives
from pipeline.db.schema import arb_opportunities
from serving.arbitrage import dust, store
from serving.arbitrage.base import ArbitrageBase
from serving.arbitrage.ids import leg_client_id

log = logging.getLogger("serving.arbitrage")

UNWIND_SEQ = 10  # unwind legs are numbered from here, after the cycle's own
MAX_EXIT_LEGS = 8  # an exit never needs more than the cycle's length; this bounds a loop
MAX_REFUSED_EXITS = 3  # then the exposure is recorded as left open, for a person to close


class Exits(ArbitrageBase):
    """Closing what an opportunity still holds, and recording its outcome."""

    def _close_or_recheck(self, oid: str) -> bool:
        """`_close`; when something is left open, nothing new starts until it is closed."""
        closed = self._close(oid)
        if not closed:
            self.reconciled = False
        return closed

    def _close(self, oid: str) -> bool:
        """Trade every currency the opportunity still holds back to home, then record its
        outcome. False when an exit leg could not be settled (tried again next step)."""
        if not self.tops:  # after a restart: the minimums need prices
            self._observe(self._books(self.config.symbols))
        for _ in range(MAX_EXIT_LEGS):
            legs = store.legs_of(self.engine, oid)
            if any(leg["status"] == "pending" for leg in legs):
                return False
            refusals = sum(1 for g in legs if g["kind"] == "unwind" and g["status"] == "rejected")
            if refusals >= MAX_REFUSED_EXITS:
                held = ", ".join(f"{a} {c}" for c, a in self._exposure(legs).items())
                log.error(
                    "cycle %s: exits refused %d times; %s left open", oid[:12], refusals, held
                )
                self._record_outcome(
                    oid,
                    legs,
                    stuck=f"exits refused {refusals} times: {held} left open, close it by hand",
                )
                return True
            exposure = self._exposure(legs)
            if not exposure:
                self._record_outcome(oid, legs)
                return True
            currency, amount = next(iter(exposure.items()))
            cycle = self._cycle_of(oid)
            refused = {leg["symbol"] for leg in legs if leg["status"] == "rejected"}
            exit_leg = self._cheapest_exit(currency, amount, cycle, avoid=refused)
            if exit_leg is None:
                self._record_outcome(oid, legs, stuck=f"{amount} {currency}: no exit")
                return True
            seq = max(UNWIND_SEQ - 1, *(leg["seq"] for leg in legs)) + 1
            if not self._send_exit(oid, seq, exit_leg, amount):
                return False
        return False

    def _exposure(self, legs: list[dict[str, Any]]) -> dict[str, float]:
        """Currencies other than home the opportunity holds, above the exits' minimums."""
        held: dict[str, float] = {}
        for leg in legs:
            held[leg["source"]] = held.get(leg["source"], 0.0) - leg["spent"]
            held[leg["target"]] = held.get(leg["target"], 0.0) + leg["received"]
        held.pop(self.config.home, None)
        return {c: a for c, a in held.items() if a > 0 and self._tradable(c, a)}

    def _tradable(self, currency: str, amount: float) -> bool:
        """Whether `amount` of `currency` is above dust: some market can sell or spend it."""
        return any(self._spendable(symbol, currency, amount) for symbol in self.rules)

    def _spendable(self, symbol: str, currency: str, amount: float) -> bool:
        return dust.spendable(symbol, self.rules[symbol], currency, amount, self._mid(symbol))

    def _cycle_of(self, oid: str) -> list[list[str]]:
        with self.engine.connect() as conn:
            return conn.execute(
                sa.select(arb_opportunities.c.cycle).where(arb_opportunities.c.id == oid)
            ).scalar_one()

    def _cheapest_exit(
        self, currency: str, amount: float, cycle: list[list[str]], avoid: set[str] = frozenset()
    ) -> tuple[str, str, str, str] | None:
        """The first market leg of the exit that returns the most home for `amount`:
        straight to home, or the rest of the cycle from `currency` on.

        A market that rejected one of this cycle's orders is not used while another exit
        exists: whatever made it refuse (a halt, a filter) may refuse the next order too."""
        home = self.config.home
        paths: list[list[tuple[str, str, str, str]]] = []
        for symbol in self.config.symbols:
            base, quote = symbol.split("/")
            if (base, quote) == (currency, home):
                paths.append([(symbol, "sell", currency, home)])
            elif (base, quote) == (home, currency):
                paths.append([(symbol, "buy", currency, home)])
        starts = [i for i, leg in enumerate(cycle) if leg[2] == currency]
        if starts:
            rest = [tuple(leg) for leg in cycle[starts[0] :]]
            if rest not in paths:
                paths.append(rest)  # type: ignore[arg-type]
        usable = [path for path in paths if not any(leg[0] in avoid for leg in path)]
        paths = usable or paths
        # an exit whose first order is below its market's minimums would only be refused
        paths = [p for p in paths if self._spendable(p[0][0], currency, amount)] or paths
        if not paths:
            return None
        symbols = sorted({leg[0] for path in paths for leg in path})
        books = self._books(symbols)
        best, best_value = None, -1.0
        for path in paths:
            value = amount
            for symbol, side, source, target in path:
                leg = Leg(symbol, side, source, target, self.fees[symbol])  # type: ignore[arg-type]
                value = leg_receives(leg, books[symbol], value)
            if value > best_value:
                best, best_value = path[0], value
        return best

    def _send_exit(
        self, oid: str, seq: int, exit_leg: tuple[str, str, str, str], have: float
    ) -> bool:
        symbol, side, source, target = exit_leg
        rules = self.rules[symbol]
        if side == "sell":
            amount = rules.round_amount(have)
        else:
            book = self._books([symbol])[symbol]
            at_market = Leg(symbol, "buy", source, target, 0.0)  # base before the fee
            amount = rules.round_amount(leg_receives(at_market, book, have) * (1 - 1e-6))
        row = {
            "client_order_id": leg_client_id(oid, seq),
            "opportunity_id": oid,
            "seq": seq,
            "kind": "unwind",
            "symbol": symbol,
            "side": side,
            "type": "market",
            "source": source,
            "target": target,
            "amount": amount,
            "price": None,
        }
        store.add_leg(self.engine, row, fence=self._fence())
        log.info("cycle %s: unwind %s %s %s", oid[:12], side, amount, symbol)
        execution = self.broker.execute(symbol, side, amount, row["client_order_id"], self._now())
        if execution.status == "pending":
            self.reconciled = False
            return False
        self._settle(row, execution)
        return execution.filled > 0 or execution.status == "filled"

    def _record_outcome(
        self, oid: str, legs: list[dict[str, Any]], stuck: str | None = None
    ) -> None:
        home = self.config.home
        start = sum(leg["spent"] for leg in legs if leg["source"] == home)
        end = sum(leg["received"] for leg in legs if leg["target"] == home)
        failed = any(leg["kind"] == "unwind" for leg in legs) or any(
            leg["kind"] in ("cycle", dust.SWEEP) and leg["status"] != "filled" for leg in legs
        )
        values: dict[str, Any] = {
            "status": "unwound" if failed else "done",
            "latency_ms": None if (lat := self.latency.pop(oid, None)) is None else lat * 1000,
            "realized_start": start,
            "realized_end": end,
            "realized_profit": end - start,
        }
        if stuck:
            values["reason"] = stuck
        store.finish_opportunity(self.engine, oid, **values)
        self.realized_total += end - start
        self.metrics.realized.set(self.realized_total)
        outcome = values["status"]
        if dust.is_sweep(legs):
            outcome = "sweep_failed" if failed else "swept"
        self.metrics.opportunities.labels(outcome).inc()
        now = self._now()
        hold = now + int(self.config.breaker_cooldown_seconds * 1000)
        self.dust.finished(legs, left_open=stuck is not None, failed=failed, hold_until=hold)
        self.risk.finished(end - start, failed, now)
        self._drain_risk()
        log.info(
            "cycle %s %s: %.6f %s in, %.6f back, profit %.6f",
            oid[:12],
            values["status"],
            start,
            home,
            end,
            end - start,
        )
