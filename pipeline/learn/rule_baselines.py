"""The plain rules every learned policy is compared with, on the same windows and costs.

Buy-and-hold, flat and 24h/168h momentum; with a volatility target, buy-and-hold and
168h momentum sized by it too (`sized_hold`, `sized_momentum_168h`: what the rule earns
under the models' own sizing). Momentum reads the closes before the window as its
look-back, as a trader running the rule would: at the window's first decision it
already knows last week's price. A momentum rule registered as an ONNX model
(`pipeline.models.rules`) reads the same look-back through its `ret_168` feature, so the
two agree to the cent on the same windows.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sqlalchemy.engine import Engine

from pipeline.errors import DataValidationError
from pipeline.learn.evaluate import (
    Backtest,
    CostModel,
    VolatilityTarget,
    backtest_positions,
    baseline_positions,
)
from pipeline.learn.prepare import window_steps
from pipeline.learn.windows import Window
from pipeline.settings import Market, Settings
from pipeline.timeutil import HOUR_MS

MOMENTUM_HOURS = (24, 168)
SIZED_MOMENTUM_HOURS = 168
LONG_FLAT = (0.0, 1.0)


def with_lookback(
    engine: Engine, market: Market, window: Window, closes: np.ndarray, lookback: int, every: int
) -> np.ndarray:
    """The window's decision closes (`closes`) preceded by up to `lookback` decision
    closes read from the stored candles before it; just `closes` where those are not
    stored (a rule then stays flat until the window itself reaches back far enough)."""
    step_ms = market.timeframe_ms * every
    reaching = Window(window.start - lookback * step_ms, window.end)
    try:
        _, _, history, _ = window_steps(engine, market, reaching, ("ret_1",), every)
    except DataValidationError:
        return closes
    if len(history) < len(closes) or not np.array_equal(history[-len(closes) :], closes):
        return closes
    return history


def baselines(
    settings: Settings, engine: Engine, market: Market, windows: Sequence[Window], every: int
) -> dict[str, list[Backtest]]:
    """Every rule's backtest on each window (same costs as the models), in window order."""
    t = settings.training
    step_ms = market.timeframe_ms * every
    cost = CostModel.per_step(t.fee_bps, t.slippage_bps, t.borrow_bps_per_hour, step_ms)
    lookbacks = {hours: max(1, round(hours * HOUR_MS / step_ms)) for hours in MOMENTUM_HOURS}
    sizing = VolatilityTarget.targeting(t.target_volatility, t.volatility_features)
    result: dict[str, list[Backtest]] = {"buy_and_hold": [], "flat": []}
    result |= {f"momentum_{hours}h": [] for hours in MOMENTUM_HOURS}
    if sizing is not None:
        result |= {"sized_hold": [], f"sized_momentum_{SIZED_MOMENTUM_HOURS}h": []}
    for window in windows:
        ts, opens, closes, rows = window_steps(engine, market, window, t.features, every)
        positions = {
            "buy_and_hold": baseline_positions("buy_and_hold", closes, LONG_FLAT)[:-1],
            "flat": baseline_positions("flat", closes, LONG_FLAT)[:-1],
        }
        history = with_lookback(engine, market, window, closes, max(lookbacks.values()), every)
        for hours, lookback in lookbacks.items():
            momentum = baseline_positions("momentum", history, LONG_FLAT, lookback)
            positions[f"momentum_{hours}h"] = momentum[-len(closes) : -1]
        if sizing is not None:
            scale = sizing.scale(rows[:-1], t.features, market.timeframe_ms)
            positions["sized_hold"] = scale
            momentum = positions[f"momentum_{SIZED_MOMENTUM_HOURS}h"]
            positions[f"sized_momentum_{SIZED_MOMENTUM_HOURS}h"] = momentum * scale
        for name, held in positions.items():
            result[name].append(backtest_positions(name, ts, opens, closes, held, step_ms, cost))
    return result
