"""What one step earns: the cost model, volatility sizing and `step_growth`.

The RL environment (`pipeline.learn.rl.env`) and its gymnasium wrapper are tested against
`step_growth` here, so this formula is the single definition of what a step earns.

Fill rule and costs
-------------------
A decision taken at index t uses data up to the close of candle t and is filled at
the OPEN of candle t+1. With the previous position p (a fraction of equity, held
since the previous fill) and the new target a:

    m_gap  = 1 + p * (open[t+1] / close[t] - 1)     # old position, close t -> open t+1
    m_cost = 1 - rate * |a - p|                      # fee + slippage on turnover
    m_bar  = 1 + a * (close[t+1] / open[t+1] - 1)   # new position over candle t+1
    m_loan = 1 - borrow * max(-a, 0)                 # a short's borrow interest
    growth = max(m_gap * m_cost * m_bar * m_loan, 1e-9)

with rate = (fee_bps + slippage_bps) / 1e4 (defaults 10 + 5 bps) and borrow the interest
a short pays per step on its notional (`borrow_bps_per_hour` times the step's hours:
the paper trader's and the exchange's margin charge the same). The step return
is r = growth - 1, the RL reward is log(growth) and equity[t+1] = equity[t] * growth.
Positions are fractions of equity re-set at each fill: the drift of the weight
between fills is not charged. The floor keeps log(growth) finite when a leveraged
or short position loses everything.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from pipeline.errors import DataValidationError
from pipeline.timeutil import YEAR_MS

GROWTH_FLOOR = 1e-9


@dataclass(frozen=True)
class CostModel:
    """Costs charged on turnover at each fill, in basis points of the traded notional."""

    fee_bps: float = 10.0  # exchange taker fee
    slippage_bps: float = 5.0  # expected distance between the open and the actual fill
    borrow_per_step: float = 0.0  # a short's interest per step, a fraction of its notional

    def __post_init__(self) -> None:
        for key in ("fee_bps", "slippage_bps", "borrow_per_step"):
            value = getattr(self, key)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"CostModel.{key} must be a finite number >= 0, got {value!r}")

    @property
    def rate(self) -> float:
        """Cost per unit of turnover (a fraction: 15 bps -> 0.0015)."""
        return (self.fee_bps + self.slippage_bps) / 1e4

    @classmethod
    def per_step(
        cls, fee_bps: float, slippage_bps: float, borrow_bps_per_hour: float, step_ms: int
    ) -> CostModel:
        """The costs of steps `step_ms` long: a short's interest for the step's hours."""
        hours = step_ms / 3_600_000
        return cls(fee_bps, slippage_bps, borrow_bps_per_hour / 1e4 * hours)


@dataclass(frozen=True)
class VolatilityTarget:
    """Position sizing shared by the environment, the backtests and the trader: each
    action's target position is scaled by target / realized annualized volatility,
    capped at `max_scale`, so a long position carries about the same risk in calm and
    wild markets.

    The realized volatility is the largest of the features `features` (standard
    deviations of candle log returns, e.g. `vol_168` over a week or `vol_720` over a
    month of hourly candles) times the square root of candles per year. The policy's
    observation keeps the unscaled position, so the sizing changes what a decision
    earns, not what the policy sees.
    """

    target: float = 0.2
    features: tuple[str, ...] = ("vol_168",)
    max_scale: float = 1.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.target) and self.target > 0):
            raise ValueError(f"VolatilityTarget.target must be > 0, got {self.target!r}")
        if not (math.isfinite(self.max_scale) and self.max_scale > 0):
            raise ValueError(f"VolatilityTarget.max_scale must be > 0, got {self.max_scale!r}")
        if not self.features:
            raise ValueError("VolatilityTarget.features must name at least one volatility")

    def scale(self, features: npt.ArrayLike, names: Sequence[str], timeframe_ms: int) -> np.ndarray:
        """Scale of every row of a raw (unnormalized) feature matrix [n, F]."""
        missing = [f for f in self.features if f not in names]
        if missing:
            raise DataValidationError(
                f"volatility targeting reads the features {missing}, which the model's "
                f"features {list(names)} lack: add them to training.features, or set "
                "training.volatility_features to features it has, or "
                "training.target_volatility to null"
            )
        matrix = np.asarray(features, dtype=np.float64)
        columns = [list(names).index(f) for f in self.features]
        annual = matrix[:, columns].max(axis=1) * math.sqrt(YEAR_MS / timeframe_ms)
        return np.minimum(self.max_scale, self.target / np.maximum(annual, 1e-12))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able, for the model's metadata."""
        return {"target": self.target, "features": list(self.features), "max_scale": self.max_scale}

    @classmethod
    def targeting(cls, target: float | None, features: Sequence[str]) -> VolatilityTarget | None:
        """The sizing of `training.target_volatility` and `training.volatility_features`:
        None (the action map's positions) when the target is null."""
        return None if target is None else cls(target=target, features=tuple(features))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> VolatilityTarget | None:
        """The sizing a model was trained with, or None for unscaled positions (models
        made before sizing read several volatilities name one `feature`)."""
        if not data:
            return None
        names = data["features"] if "features" in data else [data["feature"]]
        return cls(
            target=float(data["target"]),
            features=tuple(str(name) for name in names),
            max_scale=float(data["max_scale"]),
        )


def step_growth(
    open_next: npt.ArrayLike,
    close_now: npt.ArrayLike,
    close_next: npt.ArrayLike,
    prev_position: npt.ArrayLike,
    position: npt.ArrayLike,
    cost: CostModel,
) -> np.ndarray:
    """Growth factor of one step (see the module docstring); broadcasts like numpy."""
    open_next = np.asarray(open_next, dtype=np.float64)
    close_now = np.asarray(close_now, dtype=np.float64)
    close_next = np.asarray(close_next, dtype=np.float64)
    prev_position = np.asarray(prev_position, dtype=np.float64)
    position = np.asarray(position, dtype=np.float64)
    m_gap = 1.0 + prev_position * (open_next / close_now - 1.0)
    m_cost = 1.0 - cost.rate * np.abs(position - prev_position)
    m_bar = 1.0 + position * (close_next / open_next - 1.0)
    m_loan = 1.0 - cost.borrow_per_step * np.maximum(-position, 0.0)
    return np.maximum(m_gap * m_cost * m_bar * m_loan, GROWTH_FLOOR)
