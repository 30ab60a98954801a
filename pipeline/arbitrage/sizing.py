"""How much of a cycle the order books carry: walk every leg's levels, round, keep minimums.

Each leg is a piecewise-linear curve from what it pays to what it receives, built from the
levels of its side of the book (asks for a buy, bids for a sell, ccxt's `fetch_order_book`
format) and its taker fee, taken from what the leg receives as the graph's weights assume.
Chained, the legs give home out as a function of home in. Before rounding that function is
concave (every level is worse than the one before), so the best size sits at a level
boundary of some leg mapped back to home, at the smallest size the minimums allow, or at
the cap. `size_cycle` fills the best of those sizes for real: each leg's amount rounded down
to the market's amount step, each leg at or above its minimum amount and minimum cost. The
rounding can move the true optimum by up to one amount step per leg; that is not chased.

Profit counts home only: what rounding leaves behind in the middle currencies is dust,
valued at zero.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

from pipeline.arbitrage.graph import Cycle, Leg

OrderBook = Mapping[str, Sequence[Sequence[float]]]
# Each size is also filled a hair above the boundary it was computed at, so that float
# noise in the mapping back to home does not cost a whole amount step when rounding down.
_NUDGE = 1e-9
# An amount this close above a level's end is still priced at that level, not the next.
_LEVEL_TOLERANCE = 1e-12
_SHORTLIST = 4


class AmountRules(Protocol):
    """A market's amount rounding and minimums, e.g.
    `serving.kernel.market_rules.MarketRules.from_ccxt`."""

    @property
    def min_amount(self) -> float | None: ...

    @property
    def min_cost(self) -> float | None: ...

    def round_amount(self, amount: float) -> float:
        """Round a base amount down to the market's amount step."""
        ...


@dataclass(frozen=True)
class LegFill:
    """One leg as it would be sent: a limit IOC order of `amount` base at `price`."""

    symbol: str
    side: Literal["buy", "sell"]
    amount: float  # base, rounded down to the amount step
    price: float  # price of the worst level reached: the limit price
    average_price: float  # quote cost / amount over the levels walked
    spent: float  # in the leg's source currency
    received: float  # in the leg's target currency, after the taker fee


@dataclass(frozen=True)
class CycleSize:
    """The most profitable fill of a cycle found against the books."""

    legs: tuple[LegFill, ...]
    start: float  # home spent by the first leg
    end: float  # home received from the last leg, after fees

    @property
    def profit(self) -> float:
        """Home gained, after fees and rounding."""
        return self.end - self.start

    @property
    def profit_bps(self) -> float:
        """Profit in basis points of the home spent."""
        return self.profit / self.start * 1e4


@dataclass(frozen=True)
class _Curve:
    """One leg's book side as cumulative amounts from the best level on (leading 0)."""

    leg: Leg
    prices: np.ndarray  # level prices, best first
    base: np.ndarray  # base amount through each level
    quote: np.ndarray  # quote amount through each level
    pay: np.ndarray  # source currency paid through each level
    get: np.ndarray  # target currency received through each level, after the fee

    @classmethod
    def of(cls, leg: Leg, book: OrderBook) -> _Curve:
        side = "asks" if leg.side == "buy" else "bids"
        levels = np.array(
            [(float(lv[0]), float(lv[1])) for lv in book.get(side) or () if lv[0] > 0 and lv[1] > 0]
        ).reshape(-1, 2)
        order = np.argsort(levels[:, 0], kind="stable")
        if leg.side == "sell":
            order = order[::-1]
        prices, amounts = levels[order, 0], levels[order, 1]
        base = np.concatenate(([0.0], np.cumsum(amounts)))
        quote = np.concatenate(([0.0], np.cumsum(prices * amounts)))
        keep = 1.0 - leg.taker_fee
        pay, get = (quote, base * keep) if leg.side == "buy" else (base, quote * keep)
        return cls(leg, prices, base, quote, pay, get)

    def forward(self, paid: np.ndarray | float) -> np.ndarray:
        """Received for `paid`, before rounding (clamped at the depth of the book)."""
        return np.interp(paid, self.pay, self.get)

    def backward(self, received: np.ndarray | float) -> np.ndarray:
        """What must be paid to receive `received`, before rounding."""
        return np.interp(received, self.get, self.pay)

    def min_pay(self, rules: AmountRules) -> float:
        """The smallest payment whose order meets the minimum amount and minimum cost."""
        amount = max(
            rules.min_amount or 0.0, float(np.interp(rules.min_cost or 0.0, self.quote, self.base))
        )
        return float(np.interp(amount, self.base, self.quote)) if self.leg.side == "buy" else amount

    def fill(self, paid: float, rules: AmountRules | None) -> LegFill | None:
        """The order that spends at most `paid`, rounded; None below a minimum."""
        buy = self.leg.side == "buy"
        raw = float(np.interp(paid, self.quote, self.base)) if buy else min(paid, self.base[-1])
        amount = rules.round_amount(raw) if rules is not None else float(raw)
        if amount <= 0.0:
            return None
        cost = float(np.interp(amount, self.base, self.quote))
        if rules is not None and (
            amount < (rules.min_amount or 0.0) or cost < (rules.min_cost or 0.0)
        ):
            return None
        level = int(np.searchsorted(self.base, amount * (1.0 - _LEVEL_TOLERANCE)))
        keep = 1.0 - self.leg.taker_fee
        return LegFill(
            symbol=self.leg.symbol,
            side=self.leg.side,
            amount=amount,
            price=float(self.prices[level - 1]),
            average_price=cost / amount,
            spent=cost if buy else amount,
            received=amount * keep if buy else cost * keep,
        )


def leg_receives(leg: Leg, book: OrderBook, paid: float) -> float:
    """What a leg receives for `paid` of its source currency at market, walking its side of
    `book` with its taker fee, before rounding (at most what the book's depth carries)."""
    curve = _Curve.of(leg, book)
    return float(curve.forward(paid)) if curve.prices.size else 0.0


def size_cycle(
    cycle: Cycle,
    books: Mapping[str, OrderBook],
    rules: Mapping[str, AmountRules] | None = None,
    *,
    max_start: float | None = None,
) -> CycleSize | None:
    """The most profitable fill of `cycle` against `books`, or None if no size pays.

    `books` and `rules` are keyed by symbol (a symbol missing from `rules` has no rounding
    and no minimums); `max_start` caps the home currency put in.
    """
    curves = [_Curve.of(leg, books[leg.symbol]) for leg in cycle.legs]
    if any(curve.prices.size == 0 for curve in curves):
        return None
    leg_rules = [(rules or {}).get(leg.symbol) for leg in cycle.legs]

    def to_home(j: int, paid: np.ndarray | float) -> np.ndarray:
        """The home amount that makes leg j pay `paid`, before rounding."""
        amount = np.asarray(paid, dtype=float)
        for curve in reversed(curves[:j]):
            amount = curve.backward(amount)
        return amount

    high = min(float(to_home(j, curve.pay[-1])) for j, curve in enumerate(curves))
    if max_start is not None:
        high = min(high, max_start)
    low = max(
        (
            float(to_home(j, c.min_pay(r)))
            for j, (c, r) in enumerate(zip(curves, leg_rules, strict=True))
            if r is not None
        ),
        default=0.0,
    )
    if low > high:
        return None
    breaks = np.concatenate([to_home(j, curve.pay[1:]) for j, curve in enumerate(curves)])
    sizes = np.unique(np.concatenate((breaks[(breaks > low) & (breaks < high)], [high])))
    received = sizes
    for curve in curves:
        received = curve.forward(received)
    shortlist = sizes[np.argsort(sizes - received, kind="stable")[:_SHORTLIST]].tolist()
    if low > 0.0:
        shortlist.append(low)
    best: CycleSize | None = None
    for size in shortlist:
        nudged = size * (1.0 + _NUDGE)
        for start in (size, nudged if max_start is None else min(nudged, max_start)):
            filled = _fill(curves, leg_rules, start)
            if filled is not None and (best is None or filled.profit > best.profit):
                best = filled
    return best if best is not None and best.profit > 0.0 else None


def _fill(
    curves: Sequence[_Curve], rules: Sequence[AmountRules | None], start: float
) -> CycleSize | None:
    """Every leg filled in turn from `start` home; None if a leg misses a minimum."""
    fills: list[LegFill] = []
    amount = start
    for curve, leg_rules in zip(curves, rules, strict=True):
        fill = curve.fill(amount, leg_rules)
        if fill is None:
            return None
        fills.append(fill)
        amount = fill.received
    return CycleSize(tuple(fills), start=fills[0].spent, end=fills[-1].received)
