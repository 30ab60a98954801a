"""The decision rows an environment steps through, as numpy arrays.

Apart from `env` so that what only cuts candles into decision rows (`learn.prepare`,
hence evaluation) never imports TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.errors import DataValidationError


@dataclass(frozen=True)
class MarketArrays:
    """What an environment steps through: one row per decision index of a window.

    `features[t]` is known at the close of candle t; `gap[t] = open[t+1]/close[t] - 1`
    and `bar[t] = close[t+1]/open[t+1] - 1` are what the step after deciding at t earns.
    """

    ts: np.ndarray
    features: np.ndarray
    gap: np.ndarray
    bar: np.ndarray
    scale: np.ndarray | None = None
    """Position size of each decision row (`evaluate.VolatilityTarget`); None: 1."""

    @classmethod
    def from_candles(
        cls,
        ts: np.ndarray,
        open_: np.ndarray,
        close: np.ndarray,
        features: np.ndarray,
        scale: np.ndarray | None = None,
    ) -> MarketArrays:
        """Decision rows for candles 0..n-2 (candle n-1 only supplies the last fill);
        `scale`, when given, has one value per candle like `features`."""
        if len(ts) < 2 or not len(ts) == len(open_) == len(close) == len(features):
            raise DataValidationError(
                f"market arrays need at least 2 candles of equal length; got ts {len(ts)}, "
                f"open {len(open_)}, close {len(close)}, features {len(features)}"
            )
        open_ = np.asarray(open_, dtype=np.float64)
        close = np.asarray(close, dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(features[:-1]).all(axis=1))
        if len(bad):
            raise DataValidationError(
                f"features are not finite at {len(bad)} decision row(s), first at ts "
                f"{int(ts[bad[0]])}: start the window at least one feature window after the "
                "first candle loaded"
            )
        return cls(
            ts=np.asarray(ts[:-1], dtype=np.int64),
            features=np.asarray(features[:-1], dtype=np.float32),
            gap=(open_[1:] / close[:-1] - 1.0).astype(np.float32),
            bar=(close[1:] / open_[1:] - 1.0).astype(np.float32),
            scale=None if scale is None else np.asarray(scale[:-1], dtype=np.float32),
        )

    @property
    def sizes(self) -> np.ndarray:
        """The scale of every decision row (ones without position sizing)."""
        return np.ones(len(self.ts), np.float32) if self.scale is None else self.scale

    def __len__(self) -> int:
        return len(self.ts)
