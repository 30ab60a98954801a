"""The model trader's risk gate, per order: what an order is (`OrderIntent`), the gate's
answer (`Verdict`), and the rules that cap or deny it, each a function on the order
under judgement (`Draft`). `serving.model.risk.RiskGate.check` applies them in order;
the reasons they write name the limit and the numbers. Stdlib only.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from serving.kernel.market_rules import MarketRules, dec
from serving.kernel.risk_state import RiskState

if TYPE_CHECKING:
    from pipeline.settings import RiskSettings


def base_text(x: float) -> str:
    """A base amount for a reason: enough digits for 1e-8 steps, no float noise."""
    return f"{x:.10g}"


def quote_text(x: float) -> str:
    return f"{x:.2f}"


@dataclass(frozen=True)
class OrderIntent:
    """An order the trader wants to send, with what the gate needs to judge it."""

    market: str
    side: Literal["buy", "sell"]
    amount: float  # base amount, > 0, not yet rounded
    price: float  # reference price in quote
    position: float  # base held now (signed; negative = short)
    equity: float  # equity of this market's account in quote
    flatten: bool = False

    @property
    def reduces(self) -> bool:
        """The order goes against the position (it reduces it, or flips it if too large)."""
        if self.side == "buy":
            return self.position < 0
        return self.position > 0


@dataclass(frozen=True)
class Verdict:
    """The gate's answer: the amount to send (rounded, maybe capped), or a denial."""

    allowed: bool
    amount: float  # 0 when denied
    reason: str  # "ok", or which limit denied or capped the order and with which numbers


@dataclass
class Draft:
    """An order under judgement: its amount so far and the notes of the caps applied."""

    amount: float
    notes: list[str] = field(default_factory=list)

    def cap(self, amount: float, note: str) -> None:
        self.notes.append(note)
        self.amount = amount

    def deny(self, why: str) -> Verdict:
        """A denial whose reason lists the caps applied before it, then `why`."""
        return Verdict(False, 0.0, "; ".join([*self.notes, why]))


def invalid_order(intent: OrderIntent) -> str | None:
    """Why the order's numbers make no order at all, or None when they are sound."""
    numbers = (intent.amount, intent.price, intent.position, intent.equity)
    if not all(math.isfinite(x) for x in numbers):
        return f"invalid order {intent}: amount, price, position, equity must be finite"
    if intent.amount <= 0 or intent.price <= 0:
        return (
            f"invalid order: amount {base_text(intent.amount)} and price "
            f"{base_text(intent.price)} must be > 0"
        )
    return None


def state_denial(intent: OrderIntent, state: RiskState, reason: Callable[[str], str]) -> str | None:
    """Rule 1: why the market's state refuses the order, or None when it may pass;
    `reason(market)` says why the market is in that state."""
    market, pos, reduces = intent.market, intent.position, intent.reduces
    base, _ = currencies(market)
    if state is RiskState.HALTED and not (intent.flatten and reduces):
        return (
            f"{market} is HALTED ({reason(market)}): only flatten orders "
            f"that reduce the position pass; {intent.side} {base_text(intent.amount)} "
            f"{base} with position {base_text(pos)}"
        )
    if state is RiskState.REDUCING and not reduces:
        return (
            f"{market} is REDUCING ({reason(market)}): only orders that "
            f"reduce the position pass; {intent.side} {base_text(intent.amount)} {base} "
            f"with position {base_text(pos)}"
        )
    if intent.flatten and not reduces:
        return (
            f"flatten order must reduce the position: {intent.side} with position "
            f"{base_text(pos)} {base}"
        )
    return None


def limits_denial(
    s: RiskSettings, intent: OrderIntent, draft: Draft, rate: Callable[[], str | None]
) -> str | None:
    """Rules 3-6, for an order that does not only reduce: cap the draft, or deny; `rate()`
    is rule 6 (the gate counts the orders sent), asked only when 3-5 leave room."""
    cap_order_notional(s, intent, draft)
    why = cap_position_notional(s, intent, draft)
    if why is None:
        why = cap_leverage(s, intent, draft)
    if why is None:
        why = rate()
    return why


def cap_reduce_only(intent: OrderIntent, state: RiskState, draft: Draft) -> None:
    """Rule 2: a reduce-only order (REDUCING, HALTED, flatten) goes no further than zero."""
    pos = abs(intent.position)
    if (state is not RiskState.ACTIVE or intent.flatten) and draft.amount > pos:
        base, _ = currencies(intent.market)
        draft.cap(
            pos,
            f"reduce-only ({state}{', flatten' if intent.flatten else ''}): "
            f"{base_text(draft.amount)} capped to |position| {base_text(pos)} {base}",
        )


def cap_order_notional(s: RiskSettings, intent: OrderIntent, draft: Draft) -> None:
    """Rule 3: max_order_notional caps the order's own notional."""
    cap = _headroom(s.max_order_notional, intent.price, 0, intent.position)
    if draft.amount > cap:
        base, quote = currencies(intent.market)
        draft.cap(
            cap,
            f"max_order_notional {quote_text(s.max_order_notional)} {quote}: order "
            f"{quote_text(draft.amount * intent.price)} {quote} capped to {base_text(cap)} {base}",
        )


def cap_position_notional(s: RiskSettings, intent: OrderIntent, draft: Draft) -> str | None:
    """Rule 4: max_position_notional caps the position after the order; no room denies."""
    pos, price = intent.position, intent.price
    base, quote = currencies(intent.market)
    cap = _headroom(s.max_position_notional, price, _sign(intent), pos)
    if cap <= 0:
        return (
            f"max_position_notional {quote_text(s.max_position_notional)} {quote}: "
            f"position {base_text(pos)} {base} ({quote_text(abs(pos) * price)} {quote}) "
            f"leaves no room to {intent.side}"
        )
    if draft.amount > cap:
        draft.cap(
            cap,
            f"max_position_notional {quote_text(s.max_position_notional)} {quote}: "
            f"{intent.side} {base_text(draft.amount)} from position {base_text(pos)} {base} "
            f"capped to {base_text(cap)}",
        )
    return None


def cap_leverage(s: RiskSettings, intent: OrderIntent, draft: Draft) -> str | None:
    """Rule 5: max_leverage times equity caps the position after the order; no room denies."""
    pos, price = intent.position, intent.price
    base, quote = currencies(intent.market)
    limit = float(dec(s.max_leverage) * dec(intent.equity))
    cap = _headroom(limit, price, _sign(intent), pos)
    if cap <= 0:
        return (
            f"max_leverage {s.max_leverage:g}x of equity {quote_text(intent.equity)} "
            f"{quote} = {quote_text(limit)} {quote}: position {base_text(pos)} {base} "
            f"({quote_text(abs(pos) * price)} {quote}) leaves no room to {intent.side}"
        )
    if draft.amount > cap:
        draft.cap(
            cap,
            f"max_leverage {s.max_leverage:g}x of equity {quote_text(intent.equity)} "
            f"{quote}: {intent.side} {base_text(draft.amount)} from position {base_text(pos)} "
            f"{base} capped to {base_text(cap)}",
        )
    return None


def rounded_verdict(intent: OrderIntent, rules: MarketRules, draft: Draft) -> Verdict:
    """Rule 7: round down to the amount step; the min amount and min cost deny."""
    amount, price = draft.amount, intent.price
    base, quote = currencies(intent.market)
    rounded = rules.round_amount(amount)
    if rounded <= 0:
        return draft.deny(
            f"amount {base_text(amount)} {base} rounds down to 0 at step "
            f"{base_text(rules.amount_step or 0.0)}"
        )
    if rules.min_amount is not None and rounded < rules.min_amount:
        return draft.deny(
            f"min amount {base_text(rules.min_amount)} {base}: order rounds to {base_text(rounded)}"
        )
    if rules.min_cost is not None and dec(rounded) * dec(price) < dec(rules.min_cost):
        return draft.deny(
            f"min cost {quote_text(rules.min_cost)} {quote}: {base_text(rounded)} {base} at "
            f"{base_text(price)} is {quote_text(rounded * price)} {quote}"
        )
    if rounded != amount and draft.notes:
        draft.notes.append(f"rounded down to {base_text(rounded)} {base}")
    return Verdict(True, rounded, "; ".join(draft.notes) or "ok")


def _sign(intent: OrderIntent) -> int:
    """+1 for a buy, -1 for a sell: the order's direction on the position."""
    return 1 if intent.side == "buy" else -1


def _headroom(limit_quote: float, price: float, sign: int, position: float) -> float:
    """The largest amount keeping |position + sign * amount| * price <= limit_quote.

    That is limit / price - sign * position, computed in decimal: in floats 3000 / 50000 -
    0.05 is 0.009999999999999995, which the step rounding would turn into 0.00999.
    """
    return float(dec(limit_quote) / dec(price) - sign * dec(position))


def currencies(market: str) -> tuple[str, str]:
    """(base, quote) of `exchange:BASE/QUOTE:timeframe`, for reasons; generic when unparsable."""
    parts = market.split(":")
    symbol = parts[1] if len(parts) >= 2 else ""
    base, _, quote = symbol.partition("/")
    return (base or "base", quote or "quote")
