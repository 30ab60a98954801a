"""The pure statistics of a study: stored candles as series, their legs aligned into
observations (what was dropped and why), and per series of edges the distribution, the share
above the threshold, the runs of consecutive candles above it and the hypothetical profit.
numpy only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.timeutil import DAY_MS, iso

PERCENTILES = (1, 5, 25, 50, 75, 95, 99)
HISTOGRAM_BINS = 40


@dataclass(frozen=True)
class Series:
    """One market's stored candles in a window, and the open times it has quarantined."""

    ts: np.ndarray  # int64 open times, ascending
    close: np.ndarray
    volume: np.ndarray  # base units
    quarantined: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))

    @classmethod
    def of(
        cls,
        ts: Sequence[int],
        close: Sequence[float],
        volume: Sequence[float] | None = None,
        quarantined: Sequence[int] = (),
    ) -> Series:
        """From plain lists (volume defaults to ones)."""
        return cls(
            np.asarray(ts, dtype=np.int64),
            np.asarray(close, dtype=np.float64),
            np.ones(len(ts)) if volume is None else np.asarray(volume, dtype=np.float64),
            np.asarray(quarantined, dtype=np.int64),
        )


@dataclass(frozen=True)
class Aligned:
    """The legs on their common open times; what was dropped and why."""

    ts: np.ndarray  # observations: every leg stored and none quarantined
    close: np.ndarray  # (legs, observations)
    volume: np.ndarray  # (legs, observations)
    slots: int  # candle slots in the window
    missing: int  # slots dropped: some leg has no stored candle (none quarantined)
    quarantined: int  # slots dropped: some leg's candle is quarantined
    by_market: dict[str, dict[str, int]]


def align(series: Sequence[Series], names: Sequence[str], start: int, end: int, tf: int) -> Aligned:
    """Common observations of `series` on the timeframe grid of [start, end)."""
    grid = np.arange(-(-start // tf) * tf, end, tf, dtype=np.int64)
    present = np.array([np.isin(grid, s.ts) for s in series]).reshape(len(series), grid.size)
    bad = np.array([np.isin(grid, s.quarantined) for s in series]).reshape(present.shape)
    usable = present & ~bad
    observed = usable.all(axis=0)
    any_bad = bad.any(axis=0)
    close = np.empty((len(series), int(observed.sum())))
    volume = np.empty_like(close)
    times = grid[observed]
    for k, s in enumerate(series):
        at = np.searchsorted(s.ts, times)
        close[k], volume[k] = s.close[at], s.volume[at]
    by_market = {
        name: {"missing": int((~present[k]).sum()), "quarantined": int(bad[k].sum())}
        for k, name in enumerate(names)
    }
    return Aligned(
        ts=times,
        close=close,
        volume=volume,
        slots=int(grid.size),
        missing=int((~observed & ~any_bad).sum()),
        quarantined=int(any_bad.sum()),
        by_market=by_market,
    )


def runs(above: np.ndarray, ts: np.ndarray, tf: int) -> tuple[np.ndarray, np.ndarray]:
    """(first open time, length in candles) of every run of consecutive candles above.

    Consecutive means one timeframe apart: a dropped slot ends a run.
    """
    at = np.flatnonzero(above)
    if at.size == 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    times = ts[at]
    breaks = np.flatnonzero(np.diff(times) != tf)
    first = np.r_[0, breaks + 1]
    last = np.r_[breaks, times.size - 1]
    return times[first], last - first + 1


def distribution(values: np.ndarray) -> dict[str, Any]:
    """Count, mean, extremes, percentiles and a histogram of `values` (bps)."""
    values = values[np.isfinite(values)]
    if values.size == 0:
        return {"count": 0}
    counts, edges = np.histogram(values, bins=HISTOGRAM_BINS)
    return {
        "count": int(values.size),
        "mean": float(values.mean()),
        "min": float(values.min()),
        "max": float(values.max()),
        "percentiles": {
            f"p{p}": float(v)
            for p, v in zip(PERCENTILES, np.percentile(values, PERCENTILES), strict=True)
        },
        "histogram": {"edges": edges.tolist(), "counts": counts.tolist()},
    }


def series_stats(
    edge_bps: np.ndarray,
    profit: np.ndarray,
    size: np.ndarray,
    ts: np.ndarray,
    tf: int,
    threshold_bps: float,
) -> dict[str, Any]:
    """Distribution, share above the threshold, runs and hypothetical profit of one series."""
    above = np.isfinite(edge_bps) & (edge_bps > threshold_bps)
    starts, lengths = runs(above, ts, tf)
    minutes = lengths * (tf / 60_000)
    traded = above & (profit > 0)
    longest = int(np.argmax(lengths)) if lengths.size else None
    return {
        "distribution": distribution(edge_bps),
        "above": {
            "count": int(above.sum()),
            "share": float(above.mean()) if above.size else 0.0,
        },
        "runs": {
            "count": int(lengths.size),
            "mean_minutes": float(minutes.mean()) if minutes.size else 0.0,
            "median_minutes": float(np.median(minutes)) if minutes.size else 0.0,
            "max_minutes": float(minutes.max()) if minutes.size else 0.0,
            "longest_start": None if longest is None else iso(int(starts[longest])),
        },
        "profit": {
            "total": float(profit[traded].sum()),
            "trades": int(traded.sum()),
            "mean_size": float(size[traded].mean()) if traded.any() else 0.0,
        },
    }


def last_days(first: int, end: int, days: int, tf: int) -> tuple[int, int] | None:
    """The last `days` of [first, end) on the timeframe grid, None when nothing is left."""
    end -= end % tf
    start = max(first, end - days * DAY_MS)
    return (start, end) if end > start else None
