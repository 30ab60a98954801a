"""An exchange's precision and minimums for one market, read from ccxt's market dict:
how both strategies round an amount or a price before it becomes an order.

Stdlib only (decimal arithmetic, so no float dust is left after a rounding)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_DOWN, ROUND_HALF_UP, Decimal
from typing import Any

# ccxt's precision modes (ccxt.base.decimal_to_precision): what market["precision"] holds.
DECIMAL_PLACES = 2
TICK_SIZE = 4


def dec(value: float) -> Decimal:
    """The shortest decimal that reads back as `value` (0.1 is 0.1, not 0.1000000000000000055)."""
    return Decimal(repr(float(value)))


def _step_from_precision(value: Any, precision_mode: int) -> float | None:
    if value is None:
        return None
    if precision_mode == TICK_SIZE:
        return float(value)
    if precision_mode == DECIMAL_PLACES:
        return float(Decimal(1).scaleb(-int(value)))
    raise ValueError(
        f"ccxt precision mode {precision_mode} is not supported: use TICK_SIZE ({TICK_SIZE}) "
        f"or DECIMAL_PLACES ({DECIMAL_PLACES})"
    )


@dataclass(frozen=True)
class MarketRules:
    """An exchange's precision and minimums for one market, from ccxt's market dict."""

    amount_step: float | None
    price_step: float | None
    min_amount: float | None
    min_cost: float | None

    @classmethod
    def from_ccxt(cls, market: Mapping[str, Any], precision_mode: int = TICK_SIZE) -> MarketRules:
        """Read `precision` and `limits` of a ccxt market; missing entries mean no rule.

        ccxt 4 loads binance (and most exchanges) with `precisionMode == TICK_SIZE`, where
        `precision["amount"]` is the step itself (1e-05). Pass `precision_mode=DECIMAL_PLACES`
        for an exchange whose precision is a number of decimals (5 -> step 1e-05).
        """
        precision = market.get("precision") or {}
        limits = market.get("limits") or {}

        def limit(kind: str) -> float | None:
            value = (limits.get(kind) or {}).get("min")
            return None if value is None else float(value)

        return cls(
            amount_step=_step_from_precision(precision.get("amount"), precision_mode),
            price_step=_step_from_precision(precision.get("price"), precision_mode),
            min_amount=limit("amount"),
            min_cost=limit("cost"),
        )

    def round_amount(self, amount: float) -> float:
        """Round down (toward zero) to the amount step, in decimal so no float dust is left.

        Down, never up: a capped or reduce-only amount stays within its cap.
        """
        if not self.amount_step:
            return float(amount)
        step = dec(self.amount_step)
        steps = (dec(amount) / step).to_integral_value(rounding=ROUND_DOWN)
        return float(steps * step)

    def round_price(self, price: float) -> float:
        """Round to the nearest price tick (half up)."""
        if not self.price_step:
            return float(price)
        step = dec(self.price_step)
        ticks = (dec(price) / step).to_integral_value(rounding=ROUND_HALF_UP)
        return float(ticks * step)
