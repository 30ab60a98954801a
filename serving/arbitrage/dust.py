"""Rounding dust: what finished cycles leave in currencies other than home, and its sweep.

Every leg is rounded down to its market's amount step, and a cycle or an exit stops at
the market's minimums: a few units of the last step stay behind in the middle currencies
(`pipeline/arbitrage/sizing.py` values them at zero in a cycle's profit). They add up.

**Tracking.** Nothing new is stored: the dust of a currency is what the legs of every
finished opportunity (`done` or `unwound`) of the account and exchange received in it
minus what they spent of it, leaving out each opportunity's own home currency and every
opportunity whose exposure was recorded as left open for a person to close (its reason
says so: that is a position, not dust). `dust_by_currency` sums it in one query of
`arb_legs` joined to `arb_opportunities`; the trader loads it when it reconciles and adds
each opportunity as it finishes (`DustLedger`).

**Sweep.** When a currency's dust, rounded down to the step of a market that converts it
straight to home (`C/HOME`: sell it; `HOME/C`: spend it on a buy), passes that market's
minimum amount and minimum cost at the current book (`plan_sweep`), the trader sends one
market order of the rounded amount, under the same gate as a cycle (`CycleGate.check`
with the home it should fetch; it counts as a cycle started). It is recorded exactly as
a one-leg cycle would be, in the same tables: an `arb_opportunities` row whose `cycle` is
that one leg (`[[symbol, side, C, HOME]]`, `expected_start` 0 since no home is put in,
`expected_end` the home the book should pay, `edge_bps` and `expected_bps` 0), written
with its leg (`arb_legs.kind = 'sweep'`, seq 0, status pending) before the order is sent,
then settled like any leg: the swept amount is spent out of the dust, and the home
received is the opportunity's `realized_end` and `realized_profit`, so it counts in the
P&L. Its id is derived from (account, exchange, currency, how many sweeps of that
currency are recorded) and its client order id from that id like any leg's: a restart
finds a sweep that was written and maybe sent by that id, as it finds cycle legs, and
never sends it again. A sweep that does not fill holds that currency's sweeps for
`breaker_cooldown_seconds` and counts as a leg failure for the breaker.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from pipeline.arbitrage import AmountRules, Leg, leg_receives
from pipeline.db.schema import arb_legs, arb_opportunities

SWEEP = "sweep"  # arb_legs.kind of a sweep's one leg (beside cycle and unwind)
FINISHED = ("done", "unwound")
# what `ArbitrageTrader._close` writes in the reason of an exposure it could not close
LEFT_OPEN_MARKS = ("left open", ": no exit")
BUY_MARGIN = 1e-6  # a buy asks for this much less than the dust pays, for the book's noise
NOISE = 1e-12  # a currency whose dust is smaller than this (float sums) is not reported


@dataclass(frozen=True)
class Sweep:
    """One order that returns a currency's dust to home."""

    currency: str
    symbol: str
    side: str  # sell: the currency is the market's base; buy: its quote
    amount: float  # base amount ordered, rounded down to the step
    spends: float  # the currency it should spend, at most the dust
    home: float  # the home it should return at the book, net of the taker fee


def sweep_id(account: str, exchange: str, currency: str, number: int) -> str:
    """Deterministic id of the `number`-th sweep (from 0) of `currency` on an account."""
    key = f"{account}|{exchange}|{SWEEP}|{currency}|{number}"
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def leftovers(legs: Iterable[Mapping[str, Any]], home: str) -> dict[str, float]:
    """Per currency other than `home`: what `legs` received in it minus what they spent."""
    held: dict[str, float] = {}
    for leg in legs:
        held[leg["source"]] = held.get(leg["source"], 0.0) - float(leg["spent"])
        held[leg["target"]] = held.get(leg["target"], 0.0) + float(leg["received"])
    held.pop(home, None)
    return held


def _walk(levels: Sequence[Sequence[float]], amount: float) -> float:
    """Quote paid or received for `amount` base at market over `levels`, fee aside (what
    the book cannot carry is priced at its last level)."""
    left, quote, price = amount, 0.0, 0.0
    for level in levels:
        price, size = float(level[0]), float(level[1])
        take = min(left, size)
        quote, left = quote + take * price, left - take
        if left <= 0:
            break
    return quote + max(left, 0.0) * price


def _passes(rules: AmountRules, amount: float, cost: float) -> bool:
    return amount > 0 and amount >= (rules.min_amount or 0.0) and cost >= (rules.min_cost or 0.0)


def spendable(
    symbol: str, rules: AmountRules, currency: str, amount: float, price: float | None
) -> bool:
    """Whether one market order on `symbol` can spend `amount` of `currency` above the
    market's minimums at `price`: sell it (the base, rounded down to the step), or buy
    the base with it (the quote). Without a price only the amount rules are known."""
    base, _, quote = symbol.partition("/")
    if base == currency:
        lots = rules.round_amount(amount)
        return _passes(rules, lots, lots * price if price else float("inf"))
    if quote == currency and price:
        return amount >= (rules.min_cost or 0.0) and rules.round_amount(amount / price) > 0
    return False


def plan_sweep(
    currency: str,
    dust: float,
    home: str,
    rules: Mapping[str, AmountRules],
    books: Mapping[str, Mapping[str, Any]],
    fees: Mapping[str, float],
) -> Sweep | None:
    """The order returning `dust` of `currency` to `home` through a market that converts
    it directly (the one paying more home when there are two), or None: no such market,
    no book, or the amount rounded down to the step is below the minimum amount or the
    minimum cost at the book."""
    best: Sweep | None = None
    for symbol, rule in rules.items():
        base, _, quote = symbol.partition("/")
        book = books.get(symbol)
        if book is None or dust <= 0 or {base, quote} != {currency, home}:
            continue
        fee = fees.get(symbol, 0.0)
        if base == currency:
            plan = _sell(currency, dust, symbol, rule, book, fee, home)
        else:
            plan = _buy(currency, dust, symbol, rule, book, fee, home)
        if plan is not None and (best is None or plan.home > best.home):
            best = plan
    return best


def _sell(
    currency: str,
    dust: float,
    symbol: str,
    rule: AmountRules,
    book: Mapping[str, Any],
    fee: float,
    home: str,
) -> Sweep | None:
    """Sell the dust (the market's base) for home (its quote)."""
    bids = book.get("bids") or ()
    amount = rule.round_amount(dust)
    if not bids or not _passes(rule, amount, proceeds := _walk(bids, amount)):
        return None
    return Sweep(currency, symbol, "sell", amount, amount, proceeds * (1 - fee))


def _buy(
    currency: str,
    dust: float,
    symbol: str,
    rule: AmountRules,
    book: Mapping[str, Any],
    fee: float,
    home: str,
) -> Sweep | None:
    """Spend the dust (the market's quote) on home (its base)."""
    asks = book.get("asks") or ()
    if not asks:
        return None
    at_market = Leg(symbol, "buy", currency, home, 0.0)  # base bought, before the fee
    amount = rule.round_amount(leg_receives(at_market, book, dust) * (1 - BUY_MARGIN))
    cost = _walk(asks, amount)
    if cost > dust or not _passes(rule, amount, cost):
        return None
    return Sweep(currency, symbol, "buy", amount, cost, amount * (1 - fee))


def sweep_rows(
    opportunity_id: str,
    client_order_id: str,
    account: str,
    exchange: str,
    home: str,
    sweep: Sweep,
    now_ms: int,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The `arb_opportunities` row and the `arb_legs` row of a sweep: a one-leg cycle."""
    opportunity = {
        "id": opportunity_id,
        "account": account,
        "exchange": exchange,
        "home": home,
        "cycle": [[sweep.symbol, sweep.side, sweep.currency, home]],
        "detected_ms": now_ms,
        "edge_bps": 0.0,
        "expected_start": 0.0,
        "expected_end": sweep.home,
        "expected_bps": 0.0,
        "status": "executing",
    }
    leg = {
        "client_order_id": client_order_id,
        "opportunity_id": opportunity_id,
        "seq": 0,
        "kind": SWEEP,
        "symbol": sweep.symbol,
        "side": sweep.side,
        "type": "market",
        "source": sweep.currency,
        "target": home,
        "amount": sweep.amount,
        "price": None,
    }
    return opportunity, leg


def _finished(account: str, exchange: str) -> sa.ColumnElement[bool]:
    o = arb_opportunities.c
    left_open = [o.reason.contains(mark, autoescape=True) for mark in LEFT_OPEN_MARKS]
    return sa.and_(
        o.account == account,
        o.exchange == exchange,
        o.status.in_(FINISHED),
        sa.or_(o.reason.is_(None), sa.not_(sa.or_(*left_open))),
    )


def dust_by_currency(engine: Engine, account: str, exchange: str) -> dict[str, float]:
    """The dust per currency, from the legs of every finished opportunity (module doc)."""
    legs, o = arb_legs.c, arb_opportunities.c
    joined = arb_legs.join(arb_opportunities, o.id == legs.opportunity_id)
    finished = _finished(account, exchange)
    received = (
        sa.select(legs.target.label("currency"), legs.received.label("amount"))
        .select_from(joined)
        .where(finished, legs.target != o.home)
    )
    spent = (
        sa.select(legs.source.label("currency"), (-legs.spent).label("amount"))
        .select_from(joined)
        .where(finished, legs.source != o.home)
    )
    flows = sa.union_all(received, spent).subquery()
    query = sa.select(flows.c.currency, sa.func.sum(flows.c.amount)).group_by(flows.c.currency)
    with engine.connect() as conn:
        return {currency: float(total or 0.0) for currency, total in conn.execute(query)}


def sweep_counts(engine: Engine, account: str, exchange: str) -> dict[str, int]:
    """How many sweeps of each currency are recorded, whatever became of them."""
    legs, o = arb_legs.c, arb_opportunities.c
    query = (
        sa.select(legs.source, sa.func.count())
        .select_from(arb_legs.join(arb_opportunities, o.id == legs.opportunity_id))
        .where(o.account == account, o.exchange == exchange, legs.kind == SWEEP)
        .group_by(legs.source)
    )
    with engine.connect() as conn:
        return {currency: int(n) for currency, n in conn.execute(query)}


def is_sweep(legs: Iterable[Mapping[str, Any]]) -> bool:
    """Whether an opportunity's legs are a sweep's."""
    return any(leg["kind"] == SWEEP for leg in legs)


@dataclass
class DustLedger:
    """The dust per currency (home excluded), the sweeps recorded per currency, and the
    currencies whose last sweep failed, held until a time; `gauge` (labelled by currency)
    follows the amounts."""

    home: str
    gauge: Any = None  # prometheus_client Gauge with a `currency` label, or None
    amounts: dict[str, float] = field(default_factory=dict)
    sweeps: dict[str, int] = field(default_factory=dict)
    held_until: dict[str, int] = field(default_factory=dict)

    def load(self, engine: Engine, account: str, exchange: str) -> None:
        """Rebuild the amounts and the sweep counts from the database."""
        amounts = dust_by_currency(engine, account, exchange)
        amounts.pop(self.home, None)
        for currency in self.amounts.keys() - amounts.keys():
            amounts[currency] = 0.0
        self.amounts = amounts
        self.sweeps = sweep_counts(engine, account, exchange)
        self._publish(amounts)

    def finished(
        self, legs: Sequence[Mapping[str, Any]], left_open: bool, failed: bool, hold_until: int
    ) -> None:
        """An opportunity finished: its leftovers are dust unless its exposure was left
        open; a sweep that failed holds its currency until `hold_until` (ms)."""
        if is_sweep(legs) and failed:
            for leg in legs:
                self.held_until[leg["source"]] = hold_until
        if left_open:
            return
        changed = leftovers(legs, self.home)
        for currency, delta in changed.items():
            self.amounts[currency] = self.amounts.get(currency, 0.0) + delta
        self._publish({c: self.amounts[c] for c in changed})

    def next_sweep(
        self,
        rules: Mapping[str, AmountRules],
        books: Mapping[str, Mapping[str, Any]],
        fees: Mapping[str, float],
        now_ms: int,
    ) -> Sweep | None:
        """The sweep returning the most home now, of the currencies not held; or None."""
        best: Sweep | None = None
        for currency, amount in self.amounts.items():
            if self.held_until.get(currency, 0) > now_ms:
                continue
            plan = plan_sweep(currency, amount, self.home, rules, books, fees)
            if plan is not None and (best is None or plan.home > best.home):
                best = plan
        return best

    def number(self, currency: str) -> int:
        """The number of the next sweep of `currency` (0 for the first)."""
        return self.sweeps.get(currency, 0)

    def sent(self, currency: str) -> None:
        """A sweep of `currency` was written: the next one gets the next number."""
        self.sweeps[currency] = self.sweeps.get(currency, 0) + 1

    def snapshot(self) -> dict[str, float]:
        """The dust per currency for `/readyz` (amounts of float noise left out)."""
        return {c: a for c, a in sorted(self.amounts.items()) if abs(a) >= NOISE}

    def _publish(self, amounts: Mapping[str, float]) -> None:
        if self.gauge is not None:
            for currency, amount in amounts.items():
                self.gauge.labels(currency).set(amount)
