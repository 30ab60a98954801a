"""Backtest trading policies and baselines with one cost model; the numpy reference.

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
    growth = max(m_gap * m_cost * m_bar, 1e-9)

with rate = (fee_bps + slippage_bps) / 1e4 (defaults 10 + 5 bps). The step return
is r = growth - 1, the RL reward is log(growth) and equity[t+1] = equity[t] * growth.
Positions are fractions of equity re-set at each fill: the drift of the weight
between fills is not charged. The floor keeps log(growth) finite when a leveraged
or short position loses everything.

Only numpy and the standard library are imported at module level (the serving side
imports this module); matplotlib is imported inside `plot_equity`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from pipeline.errors import DataValidationError
from pipeline.timeutil import YEAR_MS

GROWTH_FLOOR = 1e-9
BASELINES = ("buy_and_hold", "flat", "momentum")
POSITION_RULES = ("argmax", "expected")
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
class CostModel:
    """Costs charged on turnover at each fill, in basis points of the traded notional."""

    fee_bps: float = 10.0  # exchange taker fee
    slippage_bps: float = 5.0  # expected distance between the open and the actual fill

    def __post_init__(self) -> None:
        for key in ("fee_bps", "slippage_bps"):
            value = getattr(self, key)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"CostModel.{key} must be a finite number >= 0, got {value!r}")

    @property
    def rate(self) -> float:
        """Cost per unit of turnover (a fraction: 15 bps -> 0.0015)."""
        return (self.fee_bps + self.slippage_bps) / 1e4


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
    return np.maximum(m_gap * m_cost * m_bar, GROWTH_FLOOR)


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
    open_arr = _prices("open", open)
    close_arr = _prices("close", close)
    pos = np.asarray(positions, dtype=np.float64)
    n = pos.shape[0] if pos.ndim == 1 else -1
    if n < 1 or not ts_arr.shape == open_arr.shape == close_arr.shape == (n + 1,):
        raise ValueError(
            "backtest_positions needs 1-d positions of length n >= 1 and ts/open/close of "
            f"length n + 1; got positions {pos.shape}, ts {ts_arr.shape}, "
            f"open {open_arr.shape}, close {close_arr.shape}"
        )
    _require_finite("positions", pos)
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


def greedy_positions(
    policy: Callable[[np.ndarray], np.ndarray],
    features: np.ndarray,
    action_map: Sequence[float],
    start_position: float = 0.0,
    rule: str = "argmax",
) -> np.ndarray:
    """Positions [T] that `policy` takes at each row, by `rule` (see POSITION_RULES).

    `policy` maps observations [B, F+1] float32 (the features, then the current
    position) to scores [B, A]. "argmax" holds the action with the highest score;
    "expected" holds the mean position under the softmax of the scores (a policy's
    logits), and observes the action nearest to it, as the trader does. The observed
    position can only be a value of the action map or the start position, so the
    policy runs ONCE on every (t, possible position) pair and the sequential walk only
    reads that table: one call, not T (STYLE.md 16).
    """
    if rule not in POSITION_RULES:
        raise ValueError(f"unknown position rule {rule!r}; known: {', '.join(POSITION_RULES)}")
    feats = np.asarray(features, dtype=np.float32)
    if feats.ndim != 2:
        raise ValueError(f"features must be 2-d [T, F], got shape {feats.shape}")
    _require_finite("features", feats)
    actions = np.asarray(action_map, dtype=np.float64)
    if actions.ndim != 1 or actions.shape[0] == 0:
        raise ValueError(f"action_map must be a non-empty sequence, got {action_map!r}")
    # The distinct positions, keyed by their float32 value (what the policy sees).
    start_key = float(np.float32(start_position))
    states = list(dict.fromkeys([*actions.astype(np.float32).tolist(), start_key]))
    state_of_action = [states.index(float(np.float32(a))) for a in actions]
    n_rows, n_states = feats.shape[0], len(states)
    if n_rows == 0:
        return np.zeros(0, dtype=np.float64)

    obs = np.empty((n_rows, n_states, feats.shape[1] + 1), dtype=np.float32)
    obs[:, :, :-1] = feats[:, None, :]
    obs[:, :, -1] = np.asarray(states, dtype=np.float32)
    scores = np.asarray(policy(obs.reshape(n_rows * n_states, -1)))
    if scores.shape != (n_rows * n_states, actions.shape[0]):
        raise ValueError(
            f"policy returned scores of shape {scores.shape}, expected "
            f"{(n_rows * n_states, actions.shape[0])} (one score per action of the map)"
        )
    if rule == "argmax":
        observed = scores.argmax(axis=1)
        held = actions[observed]
    else:
        held = expected_positions(scores, actions)
        observed = nearest_actions(held, actions)
    held_table = held.reshape(n_rows, n_states)
    next_state = np.asarray(state_of_action)[observed].reshape(n_rows, n_states).tolist()

    positions = np.empty(n_rows, dtype=np.float64)
    state = states.index(start_key)
    for t, row in enumerate(next_state):
        positions[t] = held_table[t, state]
        state = row[state]
    return positions


def expected_positions(logits: npt.ArrayLike, action_map: Sequence[float]) -> np.ndarray:
    """The mean position under the softmax of each row of `logits` [B, A]: the sum of
    p(action) * position(action). An ensemble whose members disagree holds part of the
    position instead of flipping between all and nothing on a near tie."""
    scores = np.asarray(logits, dtype=np.float64)
    _require_finite("logits", scores)
    weights = np.exp(scores - scores.max(axis=-1, keepdims=True))
    weights /= weights.sum(axis=-1, keepdims=True)
    return weights @ np.asarray(action_map, dtype=np.float64)


def nearest_actions(positions: npt.ArrayLike, action_map: Sequence[float]) -> np.ndarray:
    """Index of the action of the map nearest to each position (the first on a tie):
    what a policy observes of a position between its actions."""
    held = np.asarray(positions, dtype=np.float64)
    actions = np.asarray(action_map, dtype=np.float64)
    return np.abs(held[..., None] - actions).argmin(axis=-1)


def baseline_positions(
    name: str, close: np.ndarray, action_map: Sequence[float], lookback: int = 24
) -> np.ndarray:
    """Positions of a simple rule, one per element of `close` (decided at its close).

    - buy_and_hold: always the largest position of the action map;
    - flat: always 0;
    - momentum: long (max of the map) when close[t] / close[t - lookback] > 1, else
      short (min of the map) when the map allows shorting, else flat; flat while
      t < lookback. It reads only closes up to t, so it has no look-ahead.
    """
    closes = _prices("close", close)
    actions = [float(a) for a in action_map]
    if not actions:
        raise ValueError("action_map must not be empty")
    long, short = max(actions), min(min(actions), 0.0)
    if name == "buy_and_hold":
        return np.full(closes.shape[0], long)
    if name == "flat":
        return np.zeros(closes.shape[0])
    if name == "momentum":
        if lookback < 1:
            raise ValueError(f"momentum lookback must be >= 1, got {lookback}")
        positions = np.zeros(closes.shape[0])
        if closes.shape[0] > lookback:
            rising = closes[lookback:] / closes[:-lookback] > 1.0
            positions[lookback:] = np.where(rising, long, short)
        return positions
    raise ValueError(f"unknown baseline {name!r}; known baselines: {', '.join(BASELINES)}")


def evaluate_policy(
    policy: Callable[[np.ndarray], np.ndarray],
    features: np.ndarray,
    ts: npt.ArrayLike,
    open: npt.ArrayLike,
    close: npt.ArrayLike,
    action_map: Sequence[float],
    timeframe_ms: int,
    cost: CostModel = CostModel(),
    name: str = "policy",
    scale: npt.ArrayLike | None = None,
    rule: str = "argmax",
) -> dict[str, Backtest]:
    """Backtest the policy (positions by `rule`, see `greedy_positions`) and every
    baseline on the same window and costs.

    `features` has one row per decision index (n rows); ts/open/close have n + 1.
    `scale` (n values, see `VolatilityTarget`) sizes the policy's positions; the walk
    itself runs on the unscaled positions the policy observes. All start flat.
    Returns {name: policy backtest, then one entry per baseline}.
    """
    if name in BASELINES:
        raise ValueError(f"policy name {name!r} collides with a baseline {BASELINES}")
    feats = np.asarray(features)
    closes = np.asarray(close, dtype=np.float64)
    if feats.ndim != 2 or closes.shape != (feats.shape[0] + 1,):
        raise ValueError(
            f"features [n, F] need n + 1 candles; got features {feats.shape}, close {closes.shape}"
        )
    runs = {name: greedy_positions(policy, feats, action_map, rule=rule)}
    if scale is not None:
        sizes = np.asarray(scale, dtype=np.float64)
        if sizes.shape != (feats.shape[0],):
            raise ValueError(f"scale {sizes.shape} must have one value per row {feats.shape[0]}")
        _require_finite("scale", sizes)
        runs[name] = runs[name] * sizes
    for baseline in BASELINES:
        runs[baseline] = baseline_positions(baseline, closes, action_map)[:-1]
    return {
        key: backtest_positions(key, ts, open, closes, positions, timeframe_ms, cost)
        for key, positions in runs.items()
    }


_TABLE_COLUMNS = (  # (metric, header, format); "%" formats a fraction as a percentage
    ("total_return", "total", "%"),
    ("annual_return", "annual", "%"),
    ("sharpe", "sharpe", ".2f"),
    ("sortino", "sortino", ".2f"),
    ("max_drawdown", "max dd", "%"),
    ("calmar", "calmar", ".2f"),
    ("turnover", "turn/yr", ".1f"),
    ("exposure", "exposure", "%"),
    ("trades", "trades", ".0f"),
    ("win_rate", "win rate", "%"),
)


def metrics_table(backtests: Mapping[str, Backtest]) -> str:
    """A fixed-width text table: one row per backtest, the key metrics as columns."""
    header = ["name"] + [title for _, title, _ in _TABLE_COLUMNS]
    rows = [header]
    for key, bt in backtests.items():
        cells = [key]
        for metric, _, fmt in _TABLE_COLUMNS:
            cells.append(_format_cell(bt.metrics[metric], fmt))
        rows.append(cells)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def _format_cell(value: float, fmt: str) -> str:
    """Format one metric; huge values (the CAGR of a few hours' gain) in scientific notation."""
    if fmt == "%":
        value *= 100
    text = f"{value:.2e}" if abs(value) >= 1e6 else f"{value:{'.1f' if fmt == '%' else fmt}}"
    return f"{text}%" if fmt == "%" else text


def plot_equity(backtests: Mapping[str, Backtest], path: Path | str, title: str) -> Path:
    """Save the equity curves (x = UTC time) as a PNG; creates parent directories.

    Uses matplotlib's object API with the Agg canvas (no pyplot, no global backend
    switch), imported here so that importing this module stays light.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(10, 5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for key, bt in backtests.items():
        times = np.asarray(bt.ts, dtype=np.int64).astype("datetime64[ms]")
        ax.plot(times, bt.equity, label=key, linewidth=1.2)
    ax.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
    ax.set_title(title)
    ax.set_xlabel("time (UTC)")
    ax.set_ylabel("equity (start = 1.0)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best")
    fig.autofmt_xdate()
    fig.savefig(path, format="png")
    return path


def _prices(field: str, values: npt.ArrayLike) -> np.ndarray:
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


def _require_finite(field: str, values: np.ndarray) -> None:
    """Raise a DataValidationError naming the first row of `values` with NaN or inf."""
    rows = values.reshape(values.shape[0], -1) if values.ndim else values.reshape(1, 1)
    bad = np.flatnonzero(~np.isfinite(rows).all(axis=1))
    if bad.size:
        raise DataValidationError(
            f"{field} row {int(bad[0])} has NaN or infinite values ({bad.size} bad rows "
            "in all); fill or drop them before evaluating"
        )
