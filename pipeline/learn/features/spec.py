"""`FeatureSpec`: which features, of which code version, normalized with which statistics.

The spec names the features, their code version and the normalization statistics
fitted on the training window; it is saved beside the model as JSON and loaded back
unchanged. A change to a feature's definition is a new `FEATURE_VERSION`; a spec of
another version is refused rather than served with features it was not trained on.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from pipeline.errors import ConfigurationError, DataValidationError
from pipeline.learn.features.definitions import (
    CONTEXT_PREFIX,
    DEFINITIONS,
    KNOWN_FEATURES,
    is_known,
    parse_name,
)

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


class FeatureSpecError(ConfigurationError, ValueError):
    """A feature spec is invalid, or not usable as asked (unknown feature, not fitted)."""


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
        unknown = [name for name in self.features if not is_known(name)]
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
        return max(DEFINITIONS[parse_name(name)[1]].lookback for name in self.features) + 1

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
