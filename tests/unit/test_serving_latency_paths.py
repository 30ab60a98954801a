"""The serving features computed on unchecked tails of an already checked window are the
same bytes as the long way."""

from __future__ import annotations

import gzip
import itertools
from pathlib import Path

import numpy as np
import pytest

from pipeline.learn.features import (
    KNOWN_FEATURES,
    Candles,
    FeatureSpec,
    compute_features,
    fill_gaps,
    latest_features,
)
from pipeline.learn.features import compute as features_compute
from pipeline.settings import TrainingSettings

H = 3_600_000


def recorded_hours(data_dir: Path, rows: int) -> Candles:
    with gzip.open(data_dir / "binance_BTC-USDT_1h.csv.gz", "rt") as file:
        next(file)
        table = [[float(v) for v in line.split(",")] for line in itertools.islice(file, rows)]
    return fill_gaps(Candles.from_rows(table), H)[0]


def checked_tail(candles: Candles, size: int) -> Candles:
    """The tail as it was taken before: a slice, every row checked again."""
    return candles.slice(len(candles) - size, len(candles))


@pytest.mark.parametrize(
    "spec",
    [FeatureSpec(features=TrainingSettings().features), FeatureSpec(features=KNOWN_FEATURES)],
    ids=["training", "every-known"],
)
def test_serving_features_are_the_same_bytes_as_with_checked_tails(
    data_dir: Path, spec: FeatureSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    candles = recorded_hours(data_dir, spec.window + 60)
    windows = [
        candles.slice(t - spec.window + 1, t + 1) for t in range(spec.window - 1, len(candles))
    ]
    fast = [latest_features(window, spec).tobytes() for window in windows]
    monkeypatch.setattr(features_compute, "_tail", checked_tail)
    checked = [latest_features(window, spec).tobytes() for window in windows]
    assert fast == checked
    matrix = compute_features(candles, spec)
    served = np.array([np.frombuffer(row) for row in fast])
    np.testing.assert_allclose(served, matrix[spec.window - 1 :], rtol=1e-10, atol=1e-12)
