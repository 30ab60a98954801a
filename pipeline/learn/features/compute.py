"""Features of candles for a spec: the whole matrix (training), the latest row
(serving), and the normalization fitted on a matrix."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import numpy as np

from pipeline.errors import DataValidationError
from pipeline.learn.features.candles import COLUMNS, Candles
from pipeline.learn.features.definitions import DEFINITIONS, LAST_ROW_ONLY, parse_name
from pipeline.learn.features.spec import FeatureSpec

STD_FLOOR = 1e-8


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
        market, feature = parse_name(name)
        if market not in sources:
            sources[market] = _aligned(context or {}, market, candles.ts)
        matrix[:, column] = DEFINITIONS[feature].compute(sources[market])
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
    return Candles(*(getattr(other, name)[rows] for name in COLUMNS))


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
    token = LAST_ROW_ONLY.set(True)
    try:
        for column, name in enumerate(spec.features):
            market, feature = parse_name(name)
            size = DEFINITIONS[feature].lookback + 1
            if (market, size) not in sources:
                tail = _tail(candles, size)
                sources[(market, size)] = (
                    tail if market is None else _aligned(context or {}, market, tail.ts)
                )
            row[column] = DEFINITIONS[feature].compute(sources[(market, size)])[-1]
    finally:
        LAST_ROW_ONLY.reset(token)
    return row


def _tail(candles: Candles, size: int) -> Candles:
    """`candles.slice(len(candles) - size, len(candles))` without checking the rows again:
    every row of a slice was checked when `candles` was made (one decision takes a dozen
    tails of its window, and checking them took more time than the features)."""
    tail = object.__new__(Candles)
    for name in COLUMNS:
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
