"""Candles cut into decision steps: the arrays an agent trains on and is backtested on.

Normalization statistics are fitted on the training window only; features of the
validation window use earlier candles as their look-back, never later ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy.engine import Engine

from pipeline.errors import DataValidationError
from pipeline.learn.evaluate import VolatilityTarget
from pipeline.learn.features import (
    Candles,
    FeatureSpec,
    compute_features,
    fill_gaps,
    fit_normalization,
)
from pipeline.learn.snapshot import Snapshot, load_candles
from pipeline.learn.train_request import DEFAULT_SPEC
from pipeline.learn.windows import Window
from pipeline.settings import Market
from pipeline.timeutil import iso


@dataclass(frozen=True)
class Prepared:
    """Features and price arrays of both windows, normalization fitted on training.

    Decisions fall every `decision_every` candles; the validation arrays hold one row
    per decision plus the candle that closes the last step.
    """

    spec: FeatureSpec
    train: Any
    valid_features: np.ndarray
    valid_ts: np.ndarray
    valid_open: np.ndarray
    valid_close: np.ndarray
    decision_every: int = 1
    valid_scale: np.ndarray | None = None
    """Position size of each validation decision (None: unscaled)."""
    parity_features: np.ndarray | None = None
    """Hourly feature rows for the ONNX parity check: the validation window's first,
    then the training window's (so short windows still give enough)."""


def decision_steps(
    candles: Candles, features: np.ndarray, window: Window, timeframe_ms: int, every: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(ts, open, close, features) of the decision candles of `window`, as one step each.

    A decision is taken at the close of every candle whose close time is a multiple of
    `every` candles since the epoch (1h x 24: daily at 00:00 UTC), so training,
    evaluation and serving decide at the same moments. The open of step i is the open
    of the candle after decision i-1 (the fill of the previous decision) and its close
    the close at decision i: the backtest's fill-at-next-open rule, on coarser steps.
    """
    inside = np.flatnonzero((candles.ts >= window.start) & (candles.ts < window.end))
    closes_at = candles.ts[inside] // timeframe_ms + 1
    rows = inside[closes_at % every == 0]
    if len(rows) < 2:
        raise DataValidationError(
            f"window {window} holds {len(rows)} decision candles (one every {every}): "
            "widen the window or decide more often"
        )
    opens = np.r_[candles.open[rows[0]], candles.open[rows[:-1] + 1]]
    return candles.ts[rows], opens, candles.close[rows], features[rows]


def prepare(
    snapshot: Snapshot,
    spec: FeatureSpec = DEFAULT_SPEC,
    decision_every: int = 1,
    sizing: VolatilityTarget | None = None,
) -> Prepared:
    """Compute features once, cut both windows into decision steps, fit normalization on
    the training window's candles, size positions by `sizing` when given."""
    from pipeline.learn.rl.arrays import MarketArrays

    candles, tf_ms = snapshot.candles, snapshot.market.timeframe_ms
    matrix = compute_features(candles, spec)
    train_rows = (candles.ts >= snapshot.train.start) & (candles.ts < snapshot.train.end)
    valid_rows = (candles.ts >= snapshot.valid.start) & (candles.ts < snapshot.valid.end)
    fitted = fit_normalization(spec, matrix[train_rows])

    def sizes(rows: np.ndarray) -> np.ndarray | None:
        return None if sizing is None else sizing.scale(rows, spec.features, tf_ms)

    steps = decision_steps(candles, matrix, snapshot.train, tf_ms, decision_every)
    train = MarketArrays.from_candles(*steps, scale=sizes(steps[3]))
    ts, opens, closes, features = decision_steps(
        candles, matrix, snapshot.valid, tf_ms, decision_every
    )
    return Prepared(
        spec=fitted,
        train=train,
        valid_features=features[:-1],
        valid_ts=ts,
        valid_open=opens,
        valid_close=closes,
        decision_every=decision_every,
        valid_scale=sizes(features[:-1]),
        parity_features=np.concatenate([matrix[valid_rows], matrix[train_rows]]),
    )


def window_steps(
    engine: Engine,
    market: Market,
    window: Window,
    features: tuple[str, ...],
    every: int,
    what: str = "the model",
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(ts, open, close, features) of the decision steps of a window of stored candles
    (see `decision_steps`), the features' look-back read from before the window."""
    tf_ms = market.timeframe_ms
    spec = FeatureSpec(features=features)
    start = window.start - (spec.window - 1) * tf_ms
    candles = load_candles(engine, market, start, window.end)
    if len(candles) == 0 or candles.ts[0] > start:
        raise DataValidationError(
            f"{what}: the stored candles of {market} do not cover {window} and its feature "
            f"look-back: backfill it (python -m pipeline backfill --market {market} "
            f"--start {iso(start)} --end {iso(window.end)})"
        )
    candles, _ = fill_gaps(candles, tf_ms)
    return decision_steps(candles, compute_features(candles, spec), window, tf_ms, every)
