"""Closed candles of one market, checked on construction, and `fill_gaps`.

Features need candles on a regular time grid: `fill_gaps` puts a market's candles on it
first (a missing candle becomes a flat, zero-volume candle at the previous close).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.errors import DataValidationError

COLUMNS = ("ts", "open", "high", "low", "close", "volume")


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
        columns = {name: getattr(self, name) for name in COLUMNS}
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
        return all(np.array_equal(getattr(self, name), getattr(other, name)) for name in COLUMNS)

    def slice(self, start: int, stop: int) -> Candles:
        """Rows [start, stop)."""
        return Candles(*(getattr(self, name)[start:stop] for name in COLUMNS))

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
