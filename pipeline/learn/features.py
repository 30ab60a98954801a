"""Versioned features of closed candles, one code path for training and serving.

RL training computes the whole feature matrix of a market's history at once
(`compute_features`); serving computes the row of the latest closed candle from
only the last `spec.window` candles (`latest_features`). Both run the same
vectorized code, and every feature has a finite lookback (rolling windows, no
exponential smoothing), so row t of the matrix equals the serving row computed on
the window ending at t: a policy sees at serving time exactly what it saw in
training, and row t never reads a candle after t (no look-ahead).

A `FeatureSpec` names the features, their code version and the normalization
statistics fitted on the training window; it is saved beside the model as JSON
and loaded back unchanged. A change to a feature's definition is a new
`FEATURE_VERSION`; a spec of another version is refused rather than served with
features it was not trained on.

Features need candles on a regular time grid: `fill_gaps` puts a market's candles
on it first (a missing candle becomes a flat, zero-volume candle at the previous
close). Definitions, with log returns r_t = log(close_t / close_{t-1}):

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

import json
import math
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from pipeline.errors import ConfigurationError, DataValidationError
from pipeline.timeutil import DAY_MS

FEATURE_VERSION = 1
SUPPORTED_VERSIONS = (FEATURE_VERSION,)
DEFAULT_FEATURES = (
    "ret_1",
    "ret_4",
    "ret_12",
    "ret_24",
    "ret_48",
    "vol_24",
    "range_1",
    "range_24",
    "close_pos",
    "volume_z_24",
    "rsi_14",
)
STD_FLOOR = 1e-8
VOLUME_Z_STD_FLOOR = 1e-6
WEEK_MS = 7 * DAY_MS
MONDAY_OFFSET_MS = 3 * DAY_MS  # 1970-01-01 was a Thursday


class FeatureSpecError(ConfigurationError, ValueError):
    """A feature spec is invalid, or not usable as asked (unknown feature, not fitted)."""


_COLUMNS = ("ts", "open", "high", "low", "close", "volume")


def _check_rows(ts: np.ndarray, ok: np.ndarray, what: str, offset: int = 0) -> None:
    """Raise DataValidationError naming the first row where `ok` is False."""
    if not ok.all():
        bad = int(np.argmin(ok)) + offset
        raise DataValidationError(f"candle {bad} (ts {int(ts[bad])}): {what}")


@dataclass(frozen=True)
class Candles:
    """Closed candles of one market, ascending by ts, as float64/int64 numpy arrays.

    Construction converts the arrays and checks them: equal lengths, strictly
    increasing open times, finite positive prices, finite non-negative volume.
    """

    ts: np.ndarray  # int64 ms, candle open time, UTC
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray

    def __post_init__(self) -> None:
        object.__setattr__(self, "ts", np.asarray(self.ts, dtype=np.int64))
        for name in ("open", "high", "low", "close", "volume"):
            object.__setattr__(self, name, np.asarray(getattr(self, name), dtype=np.float64))
        columns = {name: getattr(self, name) for name in _COLUMNS}
        if any(values.ndim != 1 for values in columns.values()):
            raise DataValidationError("candle columns must be one-dimensional arrays")
        lengths = {name: len(values) for name, values in columns.items()}
        if len(set(lengths.values())) > 1:
            raise DataValidationError(f"candle columns differ in length: {lengths}")
        _check_rows(self.ts, np.diff(self.ts) > 0, "open times not strictly increasing", 1)
        for name in ("open", "high", "low", "close"):
            prices = columns[name]
            _check_rows(self.ts, np.isfinite(prices) & (prices > 0), f"{name} not finite > 0")
        volume = self.volume
        _check_rows(self.ts, np.isfinite(volume) & (volume >= 0), "volume not finite >= 0")

    def __len__(self) -> int:
        return len(self.ts)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Candles):
            return NotImplemented
        return all(np.array_equal(getattr(self, name), getattr(other, name)) for name in _COLUMNS)

    def slice(self, start: int, stop: int) -> Candles:
        """Rows [start, stop)."""
        return Candles(*(getattr(self, name)[start:stop] for name in _COLUMNS))

    @classmethod
    def from_rows(cls, rows: Sequence[Sequence[float]]) -> Candles:
        """Candles from rows of (ts, open, high, low, close, volume): ccxt OHLCV or DB rows."""
        try:
            table = np.asarray(rows, dtype=np.float64).reshape(len(rows), -1 if len(rows) else 6)
        except (TypeError, ValueError) as error:
            raise DataValidationError(f"candle rows are not a numeric table: {error}") from error
        if table.shape[1] != 6:
            raise DataValidationError("candle rows must be (ts, open, high, low, close, volume)")
        ts = table[:, 0]
        if not np.array_equal(ts, np.round(ts)):
            raise DataValidationError("candle open times must be integer milliseconds")
        return cls(ts.astype(np.int64), *table[:, 1:].T)


def fill_gaps(candles: Candles, timeframe_ms: int) -> tuple[Candles, np.ndarray]:
    """Put candles on the full time grid: a missing candle becomes a flat candle at the
    previous close with zero volume; returns (filled candles, bool mask True where filled).

    The grid runs from the first to the last candle; every open time must lie on it.
    """
    if timeframe_ms <= 0:
        raise DataValidationError(f"timeframe_ms must be positive, got {timeframe_ms}")
    if len(candles) == 0:
        return candles, np.zeros(0, dtype=bool)
    offsets = candles.ts - candles.ts[0]
    _check_rows(candles.ts, offsets % timeframe_ms == 0, f"not on the {timeframe_ms} ms grid")
    slots = offsets // timeframe_ms
    size = int(slots[-1]) + 1
    source = np.zeros(size, dtype=np.int64)
    source[slots] = np.arange(len(candles))
    source = np.maximum.accumulate(source)
    filled = np.ones(size, dtype=bool)
    filled[slots] = False
    previous_close = candles.close[source]
    columns = {
        name: np.where(filled, previous_close, getattr(candles, name)[source])
        for name in ("open", "high", "low", "close")
    }
    volume = np.where(filled, 0.0, candles.volume[source])
    ts = candles.ts[0] + np.arange(size, dtype=np.int64) * timeframe_ms
    return Candles(ts=ts, volume=volume, **columns), filled


# Set by latest_features: rolling windows are then built for the last row only. Every
# feature reduces its windows row by row and combines them elementwise, so the last
# element of its output is the same either way (tests compare both paths).
_LAST_ROW_ONLY: ContextVar[bool] = ContextVar("last_row_only", default=False)


def _rolling(values: np.ndarray, width: int) -> np.ndarray:
    """[n, width] view: row t holds values[t-width+1 .. t], NaN before the series starts
    ([1, width], the last row, while serving computes one row)."""
    if len(values) == 0:
        return np.empty((0, width))
    if _LAST_ROW_ONLY.get():
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
class _Definition:
    lookback: int  # candles before t that row t reads
    compute: Callable[[Candles], np.ndarray]


_DEFINITIONS: dict[str, _Definition] = {
    **{f"ret_{h}": _Definition(h, _log_return(h)) for h in (1, 4, 12, 24, 48, 168, 720)},
    "vol_24": _Definition(24, _volatility(24)),
    "vol_168": _Definition(168, _volatility(168)),
    "vol_720": _Definition(720, _volatility(720)),
    "trend_168": _Definition(167, _trend(168)),
    "trend_720": _Definition(719, _trend(720)),
    "drawdown_720": _Definition(719, _drawdown(720)),
    "range_1": _Definition(0, _range),
    "range_24": _Definition(23, _mean_range(24)),
    "close_pos": _Definition(0, _close_position),
    "volume_z_24": _Definition(23, _volume_z(24)),
    "rsi_14": _Definition(14, _rsi(14)),
    "hour_sin": _Definition(0, _cycle(DAY_MS, 0, np.sin)),
    "hour_cos": _Definition(0, _cycle(DAY_MS, 0, np.cos)),
    "dow_sin": _Definition(0, _cycle(WEEK_MS, MONDAY_OFFSET_MS, np.sin)),
    "dow_cos": _Definition(0, _cycle(WEEK_MS, MONDAY_OFFSET_MS, np.cos)),
}
KNOWN_FEATURES = tuple(_DEFINITIONS)
CONTEXT_PREFIX = "ctx:"


def _parse(name: str) -> tuple[str | None, str]:
    """(context market or None, feature): "ctx:ETH/USDT:ret_1" -> ("ETH/USDT", "ret_1")."""
    if not name.startswith(CONTEXT_PREFIX):
        return None, name
    market, _, feature = name.removeprefix(CONTEXT_PREFIX).rpartition(":")
    return market, feature


def _is_known(name: str) -> bool:
    market, feature = _parse(name)
    return market != "" and feature in _DEFINITIONS


@dataclass(frozen=True)
class FeatureSpec:
    """Which features, of which code version, normalized with which statistics."""

    name: str = "ohlcv_core"
    """Label of the feature set, saved with the model."""
    version: int = FEATURE_VERSION
    """Version of the feature definitions; only SUPPORTED_VERSIONS can be computed."""
    features: tuple[str, ...] = DEFAULT_FEATURES
    """Column names, in column order: KNOWN_FEATURES of the market itself, or of a context
    market as "ctx:<market>:<feature>" (e.g. "ctx:ETH/USDT:ret_1")."""
    mean: tuple[float, ...] | None = None
    """Per-column mean fitted on the training window (None until fitted)."""
    std: tuple[float, ...] | None = None
    """Per-column standard deviation fitted on the training window, floored."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "features", tuple(self.features))
        label = f"feature spec {self.name!r}"
        if self.version not in SUPPORTED_VERSIONS:
            raise FeatureSpecError(
                f"{label} has version {self.version!r}; this code computes version "
                f"{FEATURE_VERSION} only (retrain the model, or serve it with the code it used)"
            )
        if not self.features:
            raise FeatureSpecError(f"{label} lists no features")
        unknown = [name for name in self.features if not _is_known(name)]
        if unknown:
            raise FeatureSpecError(
                f"{label}: unknown feature(s) {unknown}; known: {', '.join(KNOWN_FEATURES)}, "
                f"each also as {CONTEXT_PREFIX}<market>:<feature> for another market"
            )
        if len(set(self.features)) != len(self.features):
            raise FeatureSpecError(f"{label} lists a feature twice: {list(self.features)}")
        if (self.mean is None) != (self.std is None):
            raise FeatureSpecError(f"{label}: mean and std must be set together")
        for stat in ("mean", "std"):
            values = getattr(self, stat)
            if values is None:
                continue
            values = tuple(float(value) for value in values)
            object.__setattr__(self, stat, values)
            if len(values) != self.dim or not all(math.isfinite(value) for value in values):
                raise FeatureSpecError(f"{label}: {stat} must be {self.dim} finite numbers")
        if self.std is not None and min(self.std) <= 0:
            raise FeatureSpecError(f"{label}: std must be positive")

    @property
    def dim(self) -> int:
        """Number of feature columns."""
        return len(self.features)

    @property
    def window(self) -> int:
        """Number of candles one row needs: the longest lookback plus the candle itself."""
        return max(_DEFINITIONS[_parse(name)[1]].lookback for name in self.features) + 1

    @property
    def fitted(self) -> bool:
        """Whether normalization statistics are set."""
        return self.mean is not None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict; `window` is included for readers and checked on load."""
        data = asdict(self)
        data["features"] = list(self.features)
        for stat in ("mean", "std"):
            data[stat] = None if data[stat] is None else list(data[stat])
        data["window"] = self.window
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureSpec:
        """The spec `to_dict` wrote; unknown keys and a disagreeing window are refused."""
        allowed = {"name", "version", "features", "mean", "std", "window"}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise FeatureSpecError(f"feature spec has unknown key(s) {unknown}")
        values = {key: value for key, value in data.items() if key != "window"}
        for stat in ("mean", "std"):
            if values.get(stat) is not None:
                values[stat] = tuple(values[stat])
        spec = cls(**values)
        if "window" in data and data["window"] != spec.window:
            raise FeatureSpecError(
                f"feature spec {spec.name!r} says window {data['window']}, but its features "
                f"need {spec.window} candles in feature version {spec.version}"
            )
        return spec

    def to_json(self) -> str:
        """`to_dict` as JSON text."""
        return json.dumps(self.to_dict(), allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> FeatureSpec:
        """The spec `to_json` wrote."""
        return cls.from_dict(json.loads(text))

    def normalize(self, matrix: np.ndarray) -> np.ndarray:
        """(matrix - mean) / std, column-wise; matrix is [..., dim]."""
        if self.mean is None or self.std is None:
            raise FeatureSpecError(
                f"feature spec {self.name!r} v{self.version} has no normalization statistics; "
                "fit them on the training window with fit_normalization"
            )
        matrix = np.asarray(matrix, dtype=np.float64)
        if matrix.shape[-1:] != (self.dim,):
            raise DataValidationError(
                f"feature spec {self.name!r} normalizes {self.dim} columns, "
                f"got shape {matrix.shape}"
            )
        return (matrix - np.asarray(self.mean)) / np.asarray(self.std)


def compute_features(
    candles: Candles, spec: FeatureSpec, *, context: Mapping[str, Candles] | None = None
) -> np.ndarray:
    """[len(candles), spec.dim] float64; row t uses only candles[:t+1];
    rows t < spec.window - 1 are NaN.

    The candles must be on a regular time grid (see `fill_gaps`). `context` holds the
    other markets that "ctx:<market>:..." features read, by market name; each must have
    a candle at every open time of `candles` (its other candles are ignored).
    """
    steps = np.unique(np.diff(candles.ts))
    if len(steps) > 1:
        raise DataValidationError(
            f"candles are not evenly spaced (steps {steps[:5].tolist()} ms); fill_gaps first"
        )
    sources: dict[str | None, Candles] = {None: candles}
    matrix = np.empty((len(candles), spec.dim))
    for column, name in enumerate(spec.features):
        market, feature = _parse(name)
        if market not in sources:
            sources[market] = _aligned(context or {}, market, candles.ts)
        matrix[:, column] = _DEFINITIONS[feature].compute(sources[market])
    matrix[: spec.window - 1] = np.nan
    return matrix


def _aligned(context: Mapping[str, Candles], market: str, ts: np.ndarray) -> Candles:
    """The candles of context market `market` at open times `ts`."""
    if market not in context:
        raise DataValidationError(
            f"features need context market {market!r}; context has {sorted(context)}"
        )
    other = context[market]
    rows = np.minimum(np.searchsorted(other.ts, ts), max(len(other) - 1, 0))
    found = other.ts[rows] == ts if len(other) else np.zeros(len(ts), dtype=bool)
    if not found.all():
        raise DataValidationError(
            f"context market {market!r} lacks candles at {int((~found).sum())} open time(s), "
            f"first {int(ts[~found][0])}; fill_gaps it on the same grid"
        )
    return Candles(*(getattr(other, name)[rows] for name in _COLUMNS))


def latest_features(
    candles: Candles, spec: FeatureSpec, *, context: Mapping[str, Candles] | None = None
) -> np.ndarray:
    """[spec.dim] the row of the last candle, computed from only the last spec.window
    candles (serving), and the context candles at their open times.
    """
    window = spec.window
    if len(candles) < window:
        raise DataValidationError(
            f"feature spec {spec.name!r} v{spec.version} needs {window} candles for one "
            f"row, got {len(candles)}"
        )
    steps = np.diff(candles.ts[-window:])
    if len(steps) and (steps != steps[0]).any():  # sorting them is for the message only
        steps = np.unique(steps)
        raise DataValidationError(
            f"candles are not evenly spaced (steps {steps[:5].tolist()} ms); fill_gaps first"
        )
    # each feature reads only its own lookback: a 1-candle return needs 2 candles, not 721
    row = np.empty(spec.dim)
    sources: dict[tuple[str | None, int], Candles] = {}
    token = _LAST_ROW_ONLY.set(True)
    try:
        for column, name in enumerate(spec.features):
            market, feature = _parse(name)
            size = _DEFINITIONS[feature].lookback + 1
            if (market, size) not in sources:
                tail = _tail(candles, size)
                sources[(market, size)] = (
                    tail if market is None else _aligned(context or {}, market, tail.ts)
                )
            row[column] = _DEFINITIONS[feature].compute(sources[(market, size)])[-1]
    finally:
        _LAST_ROW_ONLY.reset(token)
    return row


def _tail(candles: Candles, size: int) -> Candles:
    """`candles.slice(len(candles) - size, len(candles))` without checking the rows again:
    every row of a slice was checked when `candles` was made (one decision takes a dozen
    tails of its window, and checking them took more time than the features)."""
    tail = object.__new__(Candles)
    for name in _COLUMNS:
        object.__setattr__(tail, name, getattr(candles, name)[len(candles) - size :])
    return tail


def fit_normalization(spec: FeatureSpec, matrix: np.ndarray) -> FeatureSpec:
    """spec with mean/std fitted on the finite rows of matrix (std floored at STD_FLOOR)."""
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[1] != spec.dim:
        raise DataValidationError(
            f"feature spec {spec.name!r} fits {spec.dim} columns, got shape {matrix.shape}"
        )
    rows = matrix[np.isfinite(matrix).all(axis=1)]
    if len(rows) == 0:
        raise DataValidationError(
            f"feature spec {spec.name!r}: no finite row to fit normalization on "
            f"(a row needs {spec.window} candles)"
        )
    std = np.maximum(rows.std(axis=0), STD_FLOOR)
    return replace(spec, mean=tuple(rows.mean(axis=0).tolist()), std=tuple(std.tolist()))
