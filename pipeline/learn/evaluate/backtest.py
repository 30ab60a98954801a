"""Backtest a sequence of positions and measure it: equity, returns and metrics."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from pipeline.errors import DataValidationError
from pipeline.learn.evaluate.costs import CostModel, step_growth
from pipeline.timeutil import YEAR_MS

METRICS = (
    "total_return",
    "annual_return",
    "sharpe",
    "sortino",
    "max_drawdown",
    "calmar",
    "turnover",
    "exposure",
    "trades",
    "win_rate",
    "steps",
)
_STD_EPS = 1e-12  # a standard deviation below this is float noise of constant returns


@dataclass(frozen=True)
class Backtest:
    """The result of backtesting one sequence of positions over a window of n steps."""

    name: str
    ts: np.ndarray  # int64 ms: open time of candle t+1, when each equity point is known
    positions: np.ndarray  # position held after each step's fill
    returns: np.ndarray  # simple step returns r = growth - 1
    equity: np.ndarray  # equity after each step; it is 1.0 before the first step
    metrics: dict[str, float]


def backtest_positions(
    name: str,
    ts: npt.ArrayLike,
    open: npt.ArrayLike,
    close: npt.ArrayLike,
    positions: npt.ArrayLike,
    timeframe_ms: int,
    cost: CostModel = CostModel(),
    start_position: float = 0.0,
) -> Backtest:
    """Backtest `positions` (n targets, decided at indices 0..n-1) on n+1 candles.

    `ts`, `open`, `close` have length n+1: candle n only supplies the fill (open) and
    the close of the last step. `start_position` is held before the first fill.
    """
    ts_arr = np.asarray(ts, dtype=np.int64)
    open_arr = checked_prices("open", open)
    close_arr = checked_prices("close", close)
    pos = np.asarray(positions, dtype=np.float64)
    n = pos.shape[0] if pos.ndim == 1 else -1
    if n < 1 or not ts_arr.shape == open_arr.shape == close_arr.shape == (n + 1,):
        raise ValueError(
            "backtest_positions needs 1-d positions of length n >= 1 and ts/open/close of "
            f"length n + 1; got positions {pos.shape}, ts {ts_arr.shape}, "
            f"open {open_arr.shape}, close {close_arr.shape}"
        )
    require_finite("positions", pos)
    prev = np.concatenate(([float(start_position)], pos[:-1]))
    growth = step_growth(open_arr[1:], close_arr[:-1], close_arr[1:], prev, pos, cost)
    returns = growth - 1.0
    return Backtest(
        name=name,
        ts=ts_arr[1:],
        positions=pos,
        returns=returns,
        equity=np.cumprod(growth),
        metrics=compute_metrics(returns, pos, timeframe_ms, prev_start=float(start_position)),
    )


def compute_metrics(
    returns: np.ndarray, positions: np.ndarray, timeframe_ms: int, prev_start: float = 0.0
) -> dict[str, float]:
    """Performance metrics of one backtest, annualized with the candle timeframe.

    - total_return: compounded return of the window; annual_return: its CAGR over
      steps * timeframe (may be inf for a huge gain over a very short window).
    - sharpe: mean / std (population, ddof 0) of the step returns * sqrt(periods per
      year); sortino: mean / downside deviation sqrt(mean(min(r, 0)^2)) * the same
      factor. Both 0.0 when their denominator is 0.
    - max_drawdown: largest fall from a running peak of equity (which starts at 1.0),
      as a positive fraction; calmar: annual_return / max_drawdown, 0.0 without one.
    - turnover: sum of |position change| (the first one from `prev_start`) per year;
      trades: number of position changes; exposure: share of steps with a position.
    - win_rate: share of closed round trips with a positive compounded return. A round
      trip opens when the position's sign becomes non-zero (from flat or the opposite
      sign) and closes at the first step whose sign differs; it compounds the returns
      of its steps including that exit step, which carries its gap leg and exit cost
      (on a direct flip, that step also opens the next round trip). A trade already
      open at the start counts from step 0. 0.0 when no round trip closed.
    """
    r = np.asarray(returns, dtype=np.float64)
    pos = np.asarray(positions, dtype=np.float64)
    if r.shape != pos.shape or r.ndim != 1:
        raise ValueError(f"returns {r.shape} and positions {pos.shape} must be equal 1-d shapes")
    if timeframe_ms <= 0:
        raise ValueError(f"timeframe_ms must be > 0, got {timeframe_ms}")
    steps = r.shape[0]
    if steps == 0:
        return dict.fromkeys(METRICS, 0.0)
    periods_per_year = YEAR_MS / timeframe_ms
    log_growth = np.log1p(r)
    total_log = float(log_growth.sum())
    with np.errstate(over="ignore"):
        annual_return = float(np.expm1(total_log * periods_per_year / steps))
    total_return = float(np.expm1(total_log))

    mean = float(r.mean())
    std = float(r.std())
    downside = float(np.sqrt(np.mean(np.minimum(r, 0.0) ** 2)))
    scale = math.sqrt(periods_per_year)
    sharpe = mean / std * scale if std > _STD_EPS else 0.0
    sortino = mean / downside * scale if downside > _STD_EPS else 0.0

    equity = np.exp(np.cumsum(log_growth))
    peak = np.maximum.accumulate(np.concatenate(([1.0], equity)))[1:]
    max_drawdown = float(np.max(1.0 - equity / peak))
    calmar = annual_return / max_drawdown if max_drawdown > 0 else 0.0

    changes = np.abs(np.diff(np.concatenate(([prev_start], pos))))
    return {
        "total_return": total_return,
        "annual_return": annual_return,
        "sharpe": sharpe,
        "sortino": sortino,
        "max_drawdown": max_drawdown,
        "calmar": calmar,
        "turnover": float(changes.sum()) * periods_per_year / steps,
        "exposure": float(np.mean(pos != 0)),
        "trades": float(np.count_nonzero(changes)),
        "win_rate": _win_rate(log_growth, pos, prev_start),
        "steps": float(steps),
    }


def _win_rate(log_growth: np.ndarray, positions: np.ndarray, prev_start: float) -> float:
    """Share of closed round trips (see `compute_metrics`) with a positive return."""
    signs = np.sign(positions)
    sign_before = np.concatenate(([np.sign(prev_start)], signs[:-1]))
    open_at: int | None = 0 if prev_start != 0 else None  # a trade held into the window
    wins = closed = 0
    for i in range(signs.shape[0]):
        if signs[i] == sign_before[i]:
            continue
        if open_at is not None:  # the sign changed: step i closes the open round trip
            closed += 1
            wins += float(log_growth[open_at : i + 1].sum()) > 0
            open_at = None
        if signs[i] != 0:
            open_at = i
    return wins / closed if closed else 0.0


def checked_prices(field: str, values: npt.ArrayLike) -> np.ndarray:
    """Prices as float64, every one finite and > 0, else a DataValidationError."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{field} prices must be 1-d, got shape {arr.shape}")
    bad = np.flatnonzero(~(np.isfinite(arr) & (arr > 0)))
    if bad.size:
        raise DataValidationError(
            f"{field} price at row {int(bad[0])} is {arr[bad[0]]!r}: prices must be finite "
            f"and > 0 ({bad.size} bad rows)"
        )
    return arr


def require_finite(field: str, values: np.ndarray) -> None:
    """Raise a DataValidationError naming the first row of `values` with NaN or inf."""
    rows = values.reshape(values.shape[0], -1) if values.ndim else values.reshape(1, 1)
    bad = np.flatnonzero(~np.isfinite(rows).all(axis=1))
    if bad.size:
        raise DataValidationError(
            f"{field} row {int(bad[0])} has NaN or infinite values ({bad.size} bad rows "
            "in all); fill or drop them before evaluating"
        )
