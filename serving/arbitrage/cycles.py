"""A cycle, from the books to its legs: detection (every 3-cycle through home, and the
cycle search past 3 legs), sizing against depth, the gate, then each leg written
(pending) before it is sent, the next spending what the previous one received; and the
dust sweep, traded as a one-leg cycle.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from pipeline.arbitrage import Cycle, CycleSize, size_cycle
from serving.arbitrage import dust, store
from serving.arbitrage.exits import Exits
from serving.arbitrage.ids import leg_client_id, opportunity_id
from serving.kernel.balances import exchange_totals

log = logging.getLogger("serving.arbitrage")

CANDIDATES = 5  # best cycles at the top of the books that are sized against depth
FILLED = 1 - 1e-9


class Cycles(Exits):
    """Finding, gating and trading cycles (and dust sweeps)."""

    def on_books(self, books: Mapping[str, Any], seen: float, now_ms: int) -> str:
        """Detection, sizing, the gate, then the cycle (the part bench (c) times)."""
        self.last_books_ms = now_ms
        self._observe(books)
        cycles = [self.triangles.cycle(int(i)) for i in self.triangles.evaluate()]
        if self.search is not None:
            cycles += [c for c in self.search.run() if len(c.legs) > 3]
        if not cycles:
            return "idle"
        cap = self.config.max_cycle_notional
        if not self.broker.live:
            cap = min(cap, self.balances.get(self.config.home, 0.0))
        best: tuple[Cycle, CycleSize] | None = None
        for cycle in sorted(cycles, key=lambda c: c.weight)[:CANDIDATES]:
            size = size_cycle(cycle, books, self.rules, max_start=cap) if cap > 0 else None
            pays = size is not None and size.profit_bps >= self.config.min_edge_bps
            if pays and (best is None or size.profit > best[1].profit):  # type: ignore[union-attr]
                best = (cycle, size)  # type: ignore[assignment]
        if best is None:
            self.metrics.opportunities.labels("too_small").inc()
            return "small"
        cycle, size = best
        mark = None if self.broker.live else _book_mark(cycle, books)
        if mark is not None and mark == self.acted_on:
            self.metrics.opportunities.labels("already_traded").inc()
            return "seen"  # paper fills leave the books as they were: the edge is not new
        refused = self.risk.check(size.start, now_ms)
        if refused is None and self.broker.live:
            free = exchange_totals(self.exchange, self.venue).get(self.config.home, 0.0)
            if free < size.start:
                refused = f"{self.config.home} balance {free} is below the {size.start} needed"
        self._drain_risk()
        if refused is not None:
            self.metrics.opportunities.labels("refused").inc()
            log.info("cycle %s refused: %s", _path(cycle), refused)
            return "refused"
        self.acted_on = mark
        return self._trade(cycle, size, seen, now_ms)

    def _trade(self, cycle: Cycle, size: CycleSize, seen: float, now_ms: int) -> str:
        oid = opportunity_id(self.account, self.venue, cycle, now_ms)
        opportunity = {
            "id": oid,
            "account": self.account,
            "exchange": self.venue,
            "home": self.config.home,
            "cycle": [[g.symbol, g.side, g.source, g.target] for g in cycle.legs],
            "detected_ms": now_ms,
            "edge_bps": cycle.edge_bps,
            "expected_start": size.start,
            "expected_end": size.end,
            "expected_bps": size.profit_bps,
            "status": "executing",
        }
        have = 0.0
        for seq, planned in enumerate(size.legs):
            leg = cycle.legs[seq]
            amount = planned.amount if seq == 0 else self._leg_amount(leg, planned.price, have)
            if amount <= 0.0:
                return self._fail(oid, seq, f"leg {seq}: {have} {leg.source} is below the minimum")
            row = {
                "client_order_id": leg_client_id(oid, seq),
                "opportunity_id": oid,
                "seq": seq,
                "kind": "cycle",
                "symbol": leg.symbol,
                "side": leg.side,
                "type": "limit",
                "source": leg.source,
                "target": leg.target,
                "amount": amount,
                "price": planned.price,
            }
            if seq == 0:
                store.open_opportunity(
                    self.engine, opportunity, row, durable=self.broker.live, fence=self._fence()
                )
                self.risk.started(now_ms)
                self.latency[oid] = time.perf_counter() - seen
            else:
                store.add_leg(self.engine, row, fence=self._fence())
            execution = self.broker.execute(
                leg.symbol, leg.side, amount, row["client_order_id"], self._now(), planned.price
            )
            if seq == 0:
                self.metrics.detection.observe(self.latency[oid])
                log.info(
                    "cycle %s %s: %.6f %s in, %.6f expected back (%.1f bps)",
                    oid[:12],
                    _path(cycle),
                    size.start,
                    self.config.home,
                    size.end,
                    size.profit_bps,
                )
            if execution.status == "pending":
                self.reconciled = False
                log.warning("leg %s unanswered: reconciling before anything else", seq)
                return "pending"
            _, received = self._settle(row, execution)
            if execution.status != "filled" or execution.filled < amount * FILLED:
                why = execution.error or f"{execution.status}, {execution.filled} of {amount}"
                return self._fail(oid, seq, f"leg {seq} {leg.symbol} {leg.side}: {why}")
            have = received
        return "done" if self._close_or_recheck(oid) else "unwinding"

    def _leg_amount(self, leg: Any, price: float, have: float) -> float:
        """The base amount a leg trades with `have` of its source currency: all of it for
        a sell, what it buys at the limit price for a buy; rounded down, 0 below minimums."""
        rules = self.rules[leg.symbol]
        amount = rules.round_amount(have if leg.side == "sell" else have / price)
        if amount < (rules.min_amount or 0.0) or amount * price < (rules.min_cost or 0.0):
            return 0.0
        return amount

    def _fail(self, oid: str, seq: int, reason: str) -> str:
        self.metrics.leg_failures.inc()
        log.warning("cycle %s: %s; unwinding", oid[:12], reason)
        store.finish_opportunity(
            self.engine, oid, status="unwinding", failed_leg=seq, reason=reason
        )
        return "unwound" if self._close_or_recheck(oid) else "unwinding"

    def _sweep(self, books: Mapping[str, Any], now_ms: int) -> str | None:
        """Send one dust sweep when some currency's dust passes the minimums of a market
        that converts it to home (`serving.arbitrage.dust`), through the cycles' gate;
        None when there is none to send or the gate refuses it."""
        if not self.config.sweep_dust:
            return None
        sweep = self.dust.next_sweep(self.rules, books, self.fees, now_ms)
        if sweep is None:
            return None
        refused = self.risk.check(sweep.home, now_ms)
        self._drain_risk()
        if refused is not None:
            log.debug("dust sweep of %s refused: %s", sweep.currency, refused)
            return None
        oid = dust.sweep_id(
            self.account, self.venue, sweep.currency, self.dust.number(sweep.currency)
        )
        opportunity, row = dust.sweep_rows(
            oid, leg_client_id(oid, 0), self.account, self.venue, self.config.home, sweep, now_ms
        )
        store.open_opportunity(
            self.engine, opportunity, row, durable=self.broker.live, fence=self._fence()
        )
        self.dust.sent(sweep.currency)
        self.risk.started(now_ms)
        log.info("dust sweep %s: %s %s %s", oid[:12], sweep.side, sweep.amount, sweep.symbol)
        execution = self.broker.execute(
            sweep.symbol, sweep.side, sweep.amount, row["client_order_id"], self._now()
        )
        if execution.status == "pending":
            self.reconciled = False
            return "pending"
        self._settle(row, execution)
        filled = execution.status == "filled"
        if not filled:
            why = execution.error or f"{execution.status}, {execution.filled} of {sweep.amount}"
            store.finish_opportunity(self.engine, oid, failed_leg=0, reason=f"sweep: {why}")
        if not self._close_or_recheck(oid):
            return "reconciling"
        return "swept" if filled else "sweep_failed"


def _path(cycle: Cycle) -> str:
    return " -> ".join(cycle.currencies)


def _book_mark(cycle: Cycle, books: Mapping[str, Any]) -> tuple[Any, ...]:
    """The cycle and every level of its markets' books: equal marks are the same edge."""
    return tuple(
        (
            leg.symbol,
            leg.side,
            tuple(tuple(level[:2]) for level in books[leg.symbol].get("bids") or ()),
            tuple(tuple(level[:2]) for level in books[leg.symbol].get("asks") or ()),
        )
        for leg in cycle.legs
    )
