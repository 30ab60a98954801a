"""Versioned features of closed candles, one code path for training and serving.

RL training computes the whole feature matrix of a market's history at once
(`compute_features`); serving computes the row of the latest closed candle from
only the last `spec.window` candles (`latest_features`). Both run the same
vectorized code, and every feature has a finite lookback, so row t of the matrix
equals the serving row computed on the window ending at t: a policy sees at serving
time exactly what it saw in training, and row t never reads a candle after t.

This module is the package's face: every name the rest of the code imports from
`pipeline.learn.features`. The parts live beside it, one job each: `candles` (checked
candles on a time grid), `definitions` (each feature by name), `spec` (the versioned,
normalized `FeatureSpec` saved with a model), `compute` (the matrix, the latest row,
the normalization fit).
"""

from __future__ import annotations

from pipeline.learn.features.candles import Candles, fill_gaps
from pipeline.learn.features.compute import (
    STD_FLOOR,
    compute_features,
    fit_normalization,
    latest_features,
)
from pipeline.learn.features.definitions import (
    CONTEXT_PREFIX,
    KNOWN_FEATURES,
    MONDAY_OFFSET_MS,
    VOLUME_Z_STD_FLOOR,
    WEEK_MS,
)
from pipeline.learn.features.spec import (
    DEFAULT_FEATURES,
    FEATURE_VERSION,
    SUPPORTED_VERSIONS,
    FeatureSpec,
    FeatureSpecError,
)

__all__ = [
    "CONTEXT_PREFIX",
    "DEFAULT_FEATURES",
    "FEATURE_VERSION",
    "KNOWN_FEATURES",
    "MONDAY_OFFSET_MS",
    "STD_FLOOR",
    "SUPPORTED_VERSIONS",
    "VOLUME_Z_STD_FLOOR",
    "WEEK_MS",
    "Candles",
    "FeatureSpec",
    "FeatureSpecError",
    "compute_features",
    "fill_gaps",
    "fit_normalization",
    "latest_features",
]
