"""Features: hand-computed values, training rows equal serving rows, no look-ahead."""

from __future__ import annotations

import csv
import gzip
import itertools
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.errors import DataValidationError
from pipeline.learn.features import (
    DEFAULT_FEATURES,
    KNOWN_FEATURES,
    Candles,
    FeatureSpec,
    FeatureSpecError,
    compute_features,
    fill_gaps,
    fit_normalization,
    latest_features,
)

H = 3_600_000
MONDAY = 4 * 86_400_000  # 1970-01-05T00:00Z, a Monday
REAL_ROWS = 2000  # 2017-08-17..2017-11-09: before the file's duplicated stretch
FAST = settings(max_examples=40, deadline=None)
PRICES = ("open", "high", "low", "close")


def candles_of(close: list[float], volume: list[float] | None = None) -> Candles:
    """Hourly candles with the given closes: open at the previous close, a 1% range."""
    close_array = np.asarray(close, dtype=np.float64)
    open_array = np.concatenate([close_array[:1], close_array[:-1]])
    return Candles(
        ts=MONDAY + H * np.arange(len(close)),
        open=open_array,
        high=np.maximum(open_array, close_array) * 1.01,
        low=np.minimum(open_array, close_array) / 1.01,
        close=close_array,
        volume=np.ones(len(close)) if volume is None else np.asarray(volume, dtype=np.float64),
    )


def last_row(candles: Candles, *features: str) -> dict[str, float]:
    spec = FeatureSpec(features=features)
    return dict(zip(features, compute_features(candles, spec)[-1], strict=True))


def first_hours(data_dir: Path, file_name: str) -> Candles:
    """The first REAL_ROWS recorded candles of a binance 1h file (one 4-hour hole)."""
    with gzip.open(data_dir / file_name, "rt", newline="") as file:
        reader = csv.reader(file)
        next(reader)
        rows = [[float(value) for value in row] for row in itertools.islice(reader, REAL_ROWS)]
    return Candles.from_rows(rows)


@pytest.fixture(scope="module")
def recorded(data_dir: Path) -> Candles:
    """The first 2000 recorded hours of binance BTC/USDT."""
    return first_hours(data_dir, "binance_BTC-USDT_1h.csv.gz")


@pytest.fixture(scope="module")
def eth(data_dir: Path) -> Candles:
    """The first 2000 recorded hours of binance ETH/USDT, gap-filled."""
    return fill_gaps(first_hours(data_dir, "binance_ETH-USDT_1h.csv.gz"), H)[0]


@pytest.fixture(scope="module")
def real(recorded: Candles) -> Candles:
    """`recorded`, gap-filled."""
    return fill_gaps(recorded, H)[0]


@pytest.fixture(scope="module")
def real_matrix(real: Candles) -> np.ndarray:
    return compute_features(real, FeatureSpec())


# Default spec


def test_default_spec_has_eleven_features_and_a_49_candle_window() -> None:
    spec = FeatureSpec()
    assert spec.features == DEFAULT_FEATURES
    assert spec.dim == 11
    assert spec.window == 49


def test_window_is_longest_lookback_plus_one() -> None:
    assert FeatureSpec(features=("range_1", "close_pos")).window == 1
    assert FeatureSpec(features=("ret_4", "rsi_14")).window == 15
    assert FeatureSpec(features=("vol_24",)).window == 25
    assert FeatureSpec(features=("range_24", "volume_z_24")).window == 24


# Hand-computed values


@pytest.mark.parametrize("horizon", [1, 4, 12, 24, 48])
def test_log_return_over_h_candles(horizon: int) -> None:
    growth = 0.01
    candles = candles_of([100 * math.exp(growth * t) for t in range(60)])
    assert last_row(candles, f"ret_{horizon}")[f"ret_{horizon}"] == pytest.approx(growth * horizon)


def test_vol_24_is_population_std_of_the_last_24_log_returns() -> None:
    moves = [0.5] * 30 + [0.02, -0.02] * 12
    candles = candles_of(list(100 * np.exp(np.cumsum([0.0, *moves]))))
    assert last_row(candles, "vol_24")["vol_24"] == pytest.approx(0.02)


def test_range_1_is_log_high_over_low_and_range_24_its_mean() -> None:
    ranges = [0.01, 0.03] * 12
    low = np.full(24, 100.0)
    high = low * np.exp(ranges)
    candles = Candles(H * np.arange(24), low, high, low, low, np.ones(24))
    values = last_row(candles, "range_1", "range_24")
    assert values["range_1"] == pytest.approx(0.03)
    assert values["range_24"] == pytest.approx(0.02)


@pytest.mark.parametrize(
    ("high", "low", "close", "expected"),
    [(110.0, 100.0, 104.0, 0.4), (110.0, 100.0, 110.0, 1.0), (100.0, 100.0, 100.0, 0.5)],
)
def test_close_pos_is_where_the_close_sits_in_the_range(
    high: float, low: float, close: float, expected: float
) -> None:
    candles = Candles([0], [close], [high], [low], [close], [1.0])
    assert last_row(candles, "close_pos")["close_pos"] == pytest.approx(expected)


def test_close_pos_stays_in_unit_interval_when_high_is_a_hair_below_close() -> None:
    candles = Candles([0], [19159.0], [19158.999999999996], [19000.0], [19159.000000000004], [1])
    assert last_row(candles, "close_pos")["close_pos"] == 1.0


def test_volume_spike_after_steady_volume_scores_sqrt_23() -> None:
    candles = candles_of([100.0] * 24, volume=[3.0] * 23 + [40.0])
    assert last_row(candles, "volume_z_24")["volume_z_24"] == pytest.approx(math.sqrt(23))


@pytest.mark.parametrize("volume", [0.0, 7.5])
def test_constant_volume_scores_zero(volume: float) -> None:
    candles = candles_of([100.0] * 24, volume=[volume] * 24)
    assert last_row(candles, "volume_z_24")["volume_z_24"] == 0.0


def test_rsi_14_is_gains_minus_losses_over_their_sum() -> None:
    changes = [5.0] * 10 + [+1.0] * 10 + [-1.0] * 4
    candles = candles_of(list(100 + np.cumsum([0.0, *changes])))
    assert last_row(candles, "rsi_14")["rsi_14"] == pytest.approx((10 - 4) / 14)


@pytest.mark.parametrize(("step", "expected"), [(1.0, 1.0), (-1.0, -1.0), (0.0, 0.0)])
def test_rsi_14_is_one_when_rising_minus_one_when_falling_zero_when_flat(
    step: float, expected: float
) -> None:
    candles = candles_of([100 + step * t for t in range(15)])
    assert last_row(candles, "rsi_14")["rsi_14"] == pytest.approx(expected)


def test_time_features_place_monday_six_utc_on_the_circles() -> None:
    six = MONDAY + 6 * H
    candles = Candles([six], [1.0], [1.0], [1.0], [1.0], [0.0])
    values = last_row(candles, "hour_sin", "hour_cos", "dow_sin", "dow_cos")
    assert values["hour_sin"] == pytest.approx(1.0)
    assert values["hour_cos"] == pytest.approx(0.0, abs=1e-12)
    week_phase = 2 * math.pi * 6 / (7 * 24)
    assert values["dow_sin"] == pytest.approx(math.sin(week_phase))
    assert values["dow_cos"] == pytest.approx(math.cos(week_phase))


# Training rows, serving rows, no look-ahead


def test_rows_before_the_window_are_nan_and_the_rest_finite(real_matrix: np.ndarray) -> None:
    assert np.isnan(real_matrix[:48]).all()
    assert np.isfinite(real_matrix[48:]).all()


def test_every_training_row_equals_the_serving_row_of_its_window(
    real: Candles, real_matrix: np.ndarray
) -> None:
    spec = FeatureSpec()
    served = np.array(
        [
            latest_features(real.slice(t - spec.window + 1, t + 1), spec)
            for t in range(spec.window - 1, len(real))
        ]
    )
    np.testing.assert_allclose(served, real_matrix[spec.window - 1 :], rtol=1e-12, atol=1e-12)


def test_latest_features_reads_only_the_last_window(real: Candles) -> None:
    spec = FeatureSpec()
    np.testing.assert_array_equal(
        latest_features(real, spec), latest_features(real.slice(len(real) - 49, len(real)), spec)
    )


@FAST
@given(cut=st.integers(min_value=1, max_value=REAL_ROWS))
def test_truncating_the_series_never_changes_past_rows(
    real: Candles, real_matrix: np.ndarray, cut: int
) -> None:
    truncated = compute_features(real.slice(0, cut), FeatureSpec())
    np.testing.assert_array_equal(truncated, real_matrix[:cut])


@FAST
@given(factor=st.sampled_from([1e-4, 1e-3, 0.5, 3.0, 1e4, 6e4]))
def test_volume_units_do_not_change_any_feature(
    real: Candles, real_matrix: np.ndarray, factor: float
) -> None:
    rescaled = Candles(real.ts, real.open, real.high, real.low, real.close, real.volume * factor)
    np.testing.assert_allclose(
        compute_features(rescaled, FeatureSpec()), real_matrix, rtol=0, atol=1e-9
    )


# Degenerate candles


def test_flat_zero_volume_candles_give_finite_neutral_features() -> None:
    price = np.full(60, 250.0)
    candles = Candles(H * np.arange(60), price, price, price, price, np.zeros(60))
    row = dict(zip(DEFAULT_FEATURES, compute_features(candles, FeatureSpec())[-1], strict=True))
    assert row == {**dict.fromkeys(DEFAULT_FEATURES, 0.0), "close_pos": 0.5}


@st.composite
def valid_candles(draw: st.DrawFn) -> Candles:
    n = draw(st.integers(min_value=49, max_value=120))
    prices = st.floats(min_value=1e-6, max_value=1e6)
    rows = []
    for t in range(n):
        open_, close = draw(prices), draw(prices)
        high = max(open_, close) * draw(st.sampled_from([1.0, 1.0001, 1.5]))
        low = min(open_, close) / draw(st.sampled_from([1.0, 1.0001, 1.5]))
        volume = draw(st.sampled_from([0.0, 0.0, 1e-8, 3.0, 1e9]))
        rows.append((t * H, open_, high, low, close, volume))
    return Candles.from_rows(rows)


@FAST
@given(candles=valid_candles())
def test_valid_candles_give_finite_rows_after_the_window(candles: Candles) -> None:
    assert np.isfinite(compute_features(candles, FeatureSpec())[48:]).all()


# Gaps


def test_fill_gaps_inserts_flat_zero_volume_candles_at_the_previous_close() -> None:
    candles = Candles.from_rows(
        [(0, 10, 12, 9, 11, 5), (H, 11, 13, 10, 12, 6), (4 * H, 12, 14, 11, 13, 7)]
    )
    filled, mask = fill_gaps(candles, H)
    assert filled.ts.tolist() == [0, H, 2 * H, 3 * H, 4 * H]
    assert mask.tolist() == [False, False, True, True, False]
    assert filled.open.tolist() == [10, 11, 12, 12, 12]
    assert filled.high.tolist() == [12, 13, 12, 12, 14]
    assert filled.low.tolist() == [9, 10, 12, 12, 11]
    assert filled.close.tolist() == [11, 12, 12, 12, 13]
    assert filled.volume.tolist() == [5, 6, 0, 0, 7]


def test_fill_gaps_fills_and_marks_the_recorded_four_hour_hole(recorded: Candles) -> None:
    hole_start = 1506110400000  # 2017-09-22T20:00Z
    filled, mask = fill_gaps(recorded, H)
    assert filled.ts[mask].tolist() == [hole_start + k * H for k in range(4)]
    assert (filled.volume[mask] == 0).all()
    assert (filled.close[mask] == recorded.close[recorded.ts < hole_start][-1]).all()
    assert filled.slice(0, 10) == recorded.slice(0, 10)


def test_fill_gaps_leaves_a_full_grid_unchanged(real: Candles) -> None:
    filled, mask = fill_gaps(real, H)
    assert filled == real
    assert not mask.any()


def test_fill_gaps_refuses_open_times_off_the_grid() -> None:
    candles = Candles.from_rows([(0, 1, 1, 1, 1, 1), (H + 1, 1, 1, 1, 1, 1)])
    with pytest.raises(DataValidationError, match="grid"):
        fill_gaps(candles, H)


def test_features_refuse_candles_with_a_gap() -> None:
    candles = Candles.from_rows([(0, 1, 1, 1, 1, 1), (H, 1, 1, 1, 1, 1), (3 * H, 1, 1, 1, 1, 1)])
    with pytest.raises(DataValidationError, match="fill_gaps"):
        compute_features(candles, FeatureSpec(features=("range_1",)))


# Candles


def test_candles_from_ccxt_rows_keep_integer_open_times() -> None:
    candles = Candles.from_rows([[1_700_000_000_000, 1.5, 2, 1, 1.75, 10]])
    assert candles.ts.dtype == np.int64
    assert candles.ts.tolist() == [1_700_000_000_000]
    assert candles.close.tolist() == [1.75]
    assert len(candles) == 1


def test_candles_from_no_rows_are_empty() -> None:
    candles = Candles.from_rows([])
    assert len(candles) == 0
    assert compute_features(candles, FeatureSpec()).shape == (0, 11)


@pytest.mark.parametrize(
    ("rows", "reason"),
    [
        ([(0, 1, 1, 1, 1, 1), (0, 1, 1, 1, 1, 1)], "strictly increasing"),
        ([(0, 0, 1, 1, 1, 1)], "open not finite > 0"),
        ([(0, 1, 1, 1, math.nan, 1)], "close not finite > 0"),
        ([(0, 1, 1, 1, 1, -1)], "volume"),
        ([(0, 1, 1, 1, 1)], r"\(ts, open, high, low, close, volume\)"),
    ],
)
def test_invalid_candles_are_refused_with_the_reason(rows: list, reason: str) -> None:
    with pytest.raises(DataValidationError, match=reason):
        Candles.from_rows(rows)


# Spec


def test_unknown_feature_is_refused_listing_the_known_ones() -> None:
    with pytest.raises(FeatureSpecError, match="ret_2") as raised:
        FeatureSpec(features=("ret_1", "ret_2"))
    assert all(name in str(raised.value) for name in KNOWN_FEATURES)


def test_spec_of_another_feature_version_is_refused() -> None:
    with pytest.raises(FeatureSpecError, match="version 2"):
        FeatureSpec(version=2)


def test_repeated_feature_is_refused() -> None:
    with pytest.raises(FeatureSpecError, match="twice"):
        FeatureSpec(features=("ret_1", "ret_1"))


@FAST
@given(
    features=st.lists(st.sampled_from(KNOWN_FEATURES), min_size=1, unique=True),
    fitted=st.booleans(),
    data=st.data(),
)
def test_spec_round_trips_through_json(
    features: list[str], fitted: bool, data: st.DataObject
) -> None:
    spec = FeatureSpec(name="round trip", features=tuple(features))
    if fitted:
        size = len(features)
        finite = st.floats(allow_nan=False, allow_infinity=False)
        positive = st.floats(min_value=0.0, exclude_min=True, allow_infinity=False)
        mean = data.draw(st.lists(finite, min_size=size, max_size=size))
        std = data.draw(st.lists(positive, min_size=size, max_size=size))
        spec = replace(spec, mean=tuple(mean), std=tuple(std))
    assert FeatureSpec.from_json(spec.to_json()) == spec


def test_spec_with_a_window_its_features_disagree_with_is_refused() -> None:
    data = FeatureSpec().to_dict()
    data["window"] = 50
    with pytest.raises(FeatureSpecError, match="window 50"):
        FeatureSpec.from_dict(data)


def test_spec_with_an_unknown_key_is_refused() -> None:
    with pytest.raises(FeatureSpecError, match="lookahead"):
        FeatureSpec.from_dict({**FeatureSpec().to_dict(), "lookahead": 1})


# Normalization


def test_normalize_without_fitted_statistics_names_the_spec() -> None:
    with pytest.raises(FeatureSpecError, match="'ohlcv_core' v1 has no normalization"):
        FeatureSpec().normalize(np.zeros((3, 11)))


def test_fitted_normalization_centers_and_scales_the_valid_rows(real_matrix: np.ndarray) -> None:
    spec = fit_normalization(FeatureSpec(), real_matrix)
    normalized = spec.normalize(real_matrix[48:])
    np.testing.assert_allclose(normalized.mean(axis=0), 0.0, atol=1e-9)
    np.testing.assert_allclose(normalized.std(axis=0), 1.0, atol=1e-9)
    np.testing.assert_allclose(spec.normalize(real_matrix[-1]), normalized[-1])


def test_fitted_std_is_floored_for_a_constant_column() -> None:
    spec = fit_normalization(FeatureSpec(features=("ret_1",)), np.ones((5, 1)))
    assert spec.mean == (1.0,)
    assert spec.std == (1e-8,)


def test_fitting_on_no_finite_row_is_refused() -> None:
    with pytest.raises(DataValidationError, match="no finite row"):
        fit_normalization(FeatureSpec(), np.full((48, 11), np.nan))


# Serving


def test_latest_features_with_too_few_candles_names_the_count_needed(real: Candles) -> None:
    with pytest.raises(DataValidationError, match="needs 49 candles") as raised:
        latest_features(real.slice(0, 48), FeatureSpec())
    assert "got 48" in str(raised.value)


# Context markets


ETH_SPEC = FeatureSpec(features=("ret_1", "ctx:ETH/USDT:ret_1", "ctx:ETH/USDT:volume_z_24"))


def test_context_feature_equals_the_feature_of_the_context_market(
    real: Candles, eth: Candles
) -> None:
    matrix = compute_features(real, ETH_SPEC, context={"ETH/USDT": eth})
    own = compute_features(eth, FeatureSpec(features=("ret_1", "volume_z_24")))
    np.testing.assert_array_equal(matrix[:, 1:], own)


def test_context_training_rows_equal_serving_rows(real: Candles, eth: Candles) -> None:
    context = {"ETH/USDT": eth}
    matrix = compute_features(real, ETH_SPEC, context=context)
    for t in range(ETH_SPEC.window - 1, len(real), 97):
        served = latest_features(real.slice(0, t + 1), ETH_SPEC, context=context)
        np.testing.assert_allclose(served, matrix[t], rtol=1e-12, atol=1e-12)


def test_context_names_may_hold_colons() -> None:
    spec = FeatureSpec(features=("ctx:binance:ETH/BTC:1h:rsi_14",))
    assert spec.window == 15


@pytest.mark.parametrize("name", ["ctx:ETH/USDT:ret_2", "ctx::ret_1", "ctx:ret_1"])
def test_malformed_context_feature_is_refused(name: str) -> None:
    with pytest.raises(FeatureSpecError, match="unknown feature"):
        FeatureSpec(features=(name,))


def test_missing_context_market_is_named(real: Candles) -> None:
    with pytest.raises(DataValidationError, match="'ETH/USDT'"):
        compute_features(real, ETH_SPEC, context={"ETH/BTC": real})


def test_context_without_a_candle_at_an_open_time_is_refused(real: Candles, eth: Candles) -> None:
    holed = Candles(*(np.delete(getattr(eth, name), 100) for name in ("ts", *PRICES, "volume")))
    with pytest.raises(DataValidationError, match=f"first {eth.ts[100]}"):
        compute_features(real, ETH_SPEC, context={"ETH/USDT": holed})


ALL = FeatureSpec(features=KNOWN_FEATURES)


def test_every_known_feature_serves_the_training_row_of_its_window(real: Candles) -> None:
    matrix = compute_features(real, ALL)
    for t in range(ALL.window - 1, len(real), 97):
        served = latest_features(real.slice(t - ALL.window + 1, t + 1), ALL)
        np.testing.assert_allclose(served, matrix[t], rtol=1e-10, atol=1e-12)


@FAST
@given(cut=st.integers(min_value=1, max_value=REAL_ROWS))
def test_no_known_feature_looks_ahead(real: Candles, cut: int) -> None:
    full = compute_features(real, ALL)
    np.testing.assert_array_equal(compute_features(real.slice(0, cut), ALL), full[:cut])


def test_long_horizon_features_by_hand() -> None:
    n = 800
    close = np.exp(0.001 * np.arange(n))
    candles = Candles(
        np.arange(n, dtype=np.int64) * 3_600_000, close, close, close, close, np.ones(n)
    )
    spec = FeatureSpec(features=("ret_720", "trend_168", "drawdown_720", "vol_168"))
    row = compute_features(candles, spec)[-1]
    np.testing.assert_allclose(row, [0.72, 0.001 * 83.5, 0.0, 0.0], atol=1e-12)
