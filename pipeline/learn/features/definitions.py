"""The features by name: what row t of each reads, and how far back.

Every feature has a finite lookback (rolling windows, no exponential smoothing) and
row t never reads a candle after t. Definitions, with log returns
r_t = log(close_t / close_{t-1}):

- `ret_h` (h = 1, 4, 12, 24, 48, 168, 720): log(close_t / close_{t-h}).
- `vol_w` (w = 24, 168): population standard deviation of r over the last w candles.
- `trend_w` (w = 168, 720): log close_t minus the mean log close of the last w candles.
- `drawdown_720`: log close_t minus the highest log close of the last 720 candles.
- `range_1`: log(high_t / low_t); `range_24`: its mean over the last 24 candles.
- `close_pos`: (close - low) / (high - low) clipped to [0, 1]; 0.5 when high == low.
- `volume_z_24`: z-score (population std, floored) of log1p(volume_t / m) among
  the last 24 candles' log1p(volume / m), m = their mean volume. Dividing by m makes
  it free of volume units (a source that reports quote instead of base volume, or
  changes units mid-series, gives the same value); a window of zero volume gives 0.
- `rsi_14`: Cutler's RSI (simple sums of gains G and losses L of close over the
  last 14 candles) mapped to [-1, 1]: (G - L) / (G + L), 0 when the close did not move.
- `hour_sin`, `hour_cos`, `dow_sin`, `dow_cos` (optional): time of day and day of
  week (Monday 00:00 UTC = phase 0) of the candle's open time, on the unit circle.
- `ctx:<market>:<feature>` (optional): any of the above computed on another market
  (e.g. another leg of a triangle), passed as `context`, aligned by open time.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from pipeline.learn.features.candles import Candles
from pipeline.timeutil import DAY_MS

VOLUME_Z_STD_FLOOR = 1e-6
WEEK_MS = 7 * DAY_MS
MONDAY_OFFSET_MS = 3 * DAY_MS  # 1970-01-01 was a Thursday

# Set by latest_features: rolling windows are then built for the last row only. Every
# feature reduces its windows row by row and combines them elementwise, so the last
# element of its output is the same either way (tests compare both paths).
LAST_ROW_ONLY: ContextVar[bool] = ContextVar("last_row_only", default=False)


def _rolling(values: np.ndarray, width: int) -> np.ndarray:
    """[n, width] view: row t holds values[t-width+1 .. t], NaN before the series starts
    ([1, width], the last row, while serving computes one row)."""
    if len(values) == 0:
        return np.empty((0, width))
    if LAST_ROW_ONLY.get():
        tail = values[-width:]
        if len(tail) < width:
            tail = np.concatenate([np.full(width - len(tail), np.nan), tail])
        return tail[None, :]
    padded = np.concatenate([np.full(width - 1, np.nan), values])
    return sliding_window_view(padded, width)


def _lagged(values: np.ndarray, lag: int) -> np.ndarray:
    """values[t - lag] at t, NaN where t < lag."""
    if lag >= len(values):
        return np.full(len(values), np.nan)
    return np.concatenate([np.full(lag, np.nan), values[: len(values) - lag]])


def _log_return(horizon: int) -> Callable[[Candles], np.ndarray]:
    def compute(candles: Candles) -> np.ndarray:
        log_close = np.log(candles.close)
        return log_close - _lagged(log_close, horizon)

    return compute


def _volatility(width: int) -> Callable[[Candles], np.ndarray]:
    def compute(candles: Candles) -> np.ndarray:
        return _rolling(_log_return(1)(candles), width).std(axis=1)

    return compute


def _range(candles: Candles) -> np.ndarray:
    return np.log(candles.high / candles.low)


def _mean_range(width: int) -> Callable[[Candles], np.ndarray]:
    def compute(candles: Candles) -> np.ndarray:
        return _rolling(_range(candles), width).mean(axis=1)

    return compute


def _close_position(candles: Candles) -> np.ndarray:
    span = candles.high - candles.low
    position = np.divide(
        candles.close - candles.low, span, out=np.full(span.shape, 0.5), where=span > 0
    )
    return np.clip(position, 0.0, 1.0)


def _volume_z(width: int) -> Callable[[Candles], np.ndarray]:
    def compute(candles: Candles) -> np.ndarray:
        window = _rolling(candles.volume, width)
        mean = window.mean(axis=1, keepdims=True)
        relative = np.divide(window, mean, out=np.zeros(window.shape), where=mean > 0)
        level = np.log1p(relative)
        spread = np.maximum(level.std(axis=1), VOLUME_Z_STD_FLOOR)
        return (level[:, -1] - level.mean(axis=1)) / spread

    return compute


def _rsi(width: int) -> Callable[[Candles], np.ndarray]:
    def compute(candles: Candles) -> np.ndarray:
        change = candles.close - _lagged(candles.close, 1)
        gains = _rolling(np.maximum(change, 0.0), width).sum(axis=1)
        losses = _rolling(np.maximum(-change, 0.0), width).sum(axis=1)
        total = gains + losses
        return np.divide(gains - losses, total, out=np.zeros(total.shape), where=total > 0)

    return compute


def _trend(width: int) -> Callable[[Candles], np.ndarray]:
    def compute(candles: Candles) -> np.ndarray:
        log_close = np.log(candles.close)
        return log_close - _rolling(log_close, width).mean(axis=1)

    return compute


def _drawdown(width: int) -> Callable[[Candles], np.ndarray]:
    def compute(candles: Candles) -> np.ndarray:
        log_close = np.log(candles.close)
        return log_close - _rolling(log_close, width).max(axis=1)

    return compute


def _cycle(
    period_ms: int, offset_ms: int, trig: Callable[[np.ndarray], np.ndarray]
) -> Callable[[Candles], np.ndarray]:
    def compute(candles: Candles) -> np.ndarray:
        phase = ((candles.ts + offset_ms) % period_ms) / period_ms
        return trig(2 * np.pi * phase)

    return compute


@dataclass(frozen=True)
class Definition:
    """How one feature is computed, and how many candles before t its row t reads."""

    lookback: int  # candles before t that row t reads
    compute: Callable[[Candles], np.ndarray]


DEFINITIONS: dict[str, Definition] = {
    **{f"ret_{h}": Definition(h, _log_return(h)) for h in (1, 4, 12, 24, 48, 168, 720)},
    "vol_24": Definition(24, _volatility(24)),
    "vol_168": Definition(168, _volatility(168)),
    "vol_720": Definition(720, _volatility(720)),
    "trend_168": Definition(167, _trend(168)),
    "trend_720": Definition(719, _trend(720)),
    "drawdown_720": Definition(719, _drawdown(720)),
    "range_1": Definition(0, _range),
    "range_24": Definition(23, _mean_range(24)),
    "close_pos": Definition(0, _close_position),
    "volume_z_24": Definition(23, _volume_z(24)),
    "rsi_14": Definition(14, _rsi(14)),
    "hour_sin": Definition(0, _cycle(DAY_MS, 0, np.sin)),
    "hour_cos": Definition(0, _cycle(DAY_MS, 0, np.cos)),
    "dow_sin": Definition(0, _cycle(WEEK_MS, MONDAY_OFFSET_MS, np.sin)),
    "dow_cos": Definition(0, _cycle(WEEK_MS, MONDAY_OFFSET_MS, np.cos)),
}
KNOWN_FEATURES = tuple(DEFINITIONS)
CONTEXT_PREFIX = "ctx:"


def parse_name(name: str) -> tuple[str | None, str]:
    """(context market or None, feature): "ctx:ETH/USDT:ret_1" -> ("ETH/USDT", "ret_1")."""
    if not name.startswith(CONTEXT_PREFIX):
        return None, name
    market, _, feature = name.removeprefix(CONTEXT_PREFIX).rpartition(":")
    return market, feature


def is_known(name: str) -> bool:
    """Whether `name` is a feature of the market itself or of a context market."""
    market, feature = parse_name(name)
    return market != "" and feature in DEFINITIONS
