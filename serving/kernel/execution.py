"""What a broker (or the exchange) says about an order: its fills and its cumulative
execution, and the fill rows both strategies' stores write."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(frozen=True)
class Fill:
    """One execution of an order."""

    trade_id: str
    ts: int
    price: float
    amount: float
    fee: float
    fee_currency: str | None


@dataclass(frozen=True)
class Execution:
    """What the broker (or the exchange) says about an order, cumulatively: amounts
    filled, their quote cost and the fee, charged in the base or the quote asset."""

    status: str
    filled: float
    cost: float
    fee: float = 0.0
    fee_asset: Literal["base", "quote"] | None = None
    exchange_order_id: str | None = None
    fills: tuple[Fill, ...] = field(default_factory=tuple)
    error: str | None = None

    @property
    def average(self) -> float | None:
        """Average fill price, None when nothing filled."""
        return self.cost / self.filled if self.filled else None


def fill_rows(client_order_id: str, new: Iterable[Fill]) -> list[dict[str, Any]]:
    """The rows of `new` fills of an order (the `fills` and `arb_fills` tables alike)."""
    return [
        {
            "client_order_id": client_order_id,
            "trade_id": f.trade_id,
            "ts": f.ts,
            "price": f.price,
            "amount": f.amount,
            "fee": f.fee,
            "fee_currency": f.fee_currency,
        }
        for f in new
    ]
