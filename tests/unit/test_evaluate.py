"""Backtests: the fill rule and costs, the metrics, the greedy walk and the baselines.

Numbers are small enough to check by hand; the default cost rate is 10 + 5 bps.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import given, settings

from pipeline.errors import DataValidationError
from pipeline.learn.evaluate import (
    BASELINES,
    CostModel,
    backtest_positions,
    baseline_positions,
    compute_metrics,
    evaluate_policy,
    expected_positions,
    greedy_positions,
    metrics_table,
    plot_equity,
    step_growth,
)
from pipeline.timeutil import YEAR_MS

H = 3_600_000
D = 24 * H
RATE = 0.0015  # CostModel(): 10 bps fee + 5 bps slippage
FAST = settings(max_examples=40, deadline=None)


def flat_prices(n: int, price: float = 100.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ts, open, close of n candles that never move."""
    return np.arange(n, dtype=np.int64) * H, np.full(n, price), np.full(n, price)


def metrics(returns: list[float], positions: list[float] | None = None, tf: int = D) -> dict:
    pos = np.ones(len(returns)) if positions is None else np.asarray(positions, dtype=float)
    return compute_metrics(np.asarray(returns, dtype=float), pos, tf)


def hysteresis_policy(obs: np.ndarray) -> np.ndarray:
    """Action map (0, 1): go long when feature 0 + 0.5 * current position > 0."""
    return np.stack([np.zeros(len(obs)), obs[:, 0] + 0.5 * obs[:, -1]], axis=1)


def naive_greedy(policy, features: np.ndarray, action_map, start: float) -> np.ndarray:
    """The obvious loop: one policy call per step."""
    position, out = start, []
    for row in features:
        obs = np.append(row, position).astype(np.float32)[None, :]
        position = action_map[int(np.argmax(policy(obs)[0]))]
        out.append(position)
    return np.asarray(out, dtype=float)


def test_cost_rate_is_fee_plus_slippage_in_bps() -> None:
    assert CostModel().rate == pytest.approx(RATE)
    assert CostModel(fee_bps=4.0, slippage_bps=1.0).rate == pytest.approx(0.0005)


def test_step_growth_multiplies_gap_cost_and_bar_legs() -> None:
    # Half long -> short; gap 100 -> 110 (+10%), bar 110 -> 99 (-10%), turnover 1.5.
    growth = step_growth(110.0, 100.0, 99.0, 0.5, -1.0, CostModel())
    assert float(growth) == pytest.approx(1.05 * (1 - RATE * 1.5) * 1.1)


def test_step_growth_broadcasts_over_arrays() -> None:
    open_next, close_next = np.array([110.0, 100.0]), np.array([99.0, 100.0])
    growth = step_growth(open_next, 100.0, close_next, 0.0, 1.0, CostModel())
    assert growth == pytest.approx([(1 - RATE) * 0.9, 1 - RATE])


def test_growth_floor_keeps_the_log_finite_after_a_total_loss() -> None:
    growth = step_growth(100.0, 100.0, 300.0, 0.0, -1.0, CostModel())  # short into a tripling
    assert float(growth) == 1e-9
    assert math.isfinite(math.log(float(growth)))


def test_backtest_fills_at_next_open_and_gap_uses_old_position() -> None:
    # Candle 1: 100 -> 110; gap 110 -> 121 before candle 2; candle 2: 121 -> 108.9.
    ts = np.array([0, H, 2 * H])
    bt = backtest_positions(
        "x", ts, [100.0, 100.0, 121.0], [100.0, 110.0, 121.0 * 0.9], [1.0, -1.0], H
    )
    step0 = (1 - RATE) * 1.1  # flat -> long at open 100, long over +10%
    step1 = 1.1 * (1 - RATE * 2) * 1.1  # long over the gap, flip costs 2 units, short over -10%
    assert bt.returns == pytest.approx([step0 - 1, step1 - 1])
    assert bt.equity == pytest.approx([step0, step0 * step1])
    assert bt.ts.tolist() == [H, 2 * H]
    assert bt.positions.tolist() == [1.0, -1.0]


def test_flat_policy_keeps_equity_at_one_with_no_turnover() -> None:
    ts, open_, _ = flat_prices(6)
    close = np.array([100.0, 90.0, 120.0, 80.0, 100.0, 130.0])
    bt = backtest_positions("flat", ts, open_, close, np.zeros(5), H)
    assert bt.equity.tolist() == [1.0] * 5
    assert bt.metrics["turnover"] == 0.0
    assert bt.metrics["trades"] == 0.0
    assert bt.metrics["exposure"] == 0.0


def test_buy_and_hold_pays_the_entry_cost_exactly_once() -> None:
    ts, open_, close = flat_prices(6)
    bt = backtest_positions("bh", ts, open_, close, np.ones(5), H)
    assert bt.equity == pytest.approx([1 - RATE] * 5)
    assert bt.metrics["trades"] == 1.0


def test_short_position_gains_when_price_falls() -> None:
    bt = backtest_positions("short", [0, H], [100.0, 100.0], [100.0, 90.0], [-1.0], H)
    assert bt.equity[-1] == pytest.approx((1 - RATE) * 1.1)


def test_start_position_is_held_over_the_first_gap_and_charged_on_change() -> None:
    # Long before the window; goes flat at an open 10% above the last close.
    bt = backtest_positions("x", [0, H], [100.0, 110.0], [100.0, 110.0], [0.0], H, start_position=1)
    assert bt.equity[-1] == pytest.approx(1.1 * (1 - RATE))


def test_bad_price_raises_data_validation_error_naming_the_row() -> None:
    with pytest.raises(DataValidationError, match="row 2"):
        backtest_positions("x", [0, H, 2 * H], [1.0, 1.0, 1.0], [1.0, 1.0, np.nan], [1.0, 1.0], H)


@pytest.mark.parametrize(
    ("returns", "drawdown"),
    [([0.5, -0.5, 1.0], 0.5), ([-0.2, 0.25], 0.2), ([0.1, 0.1], 0.0)],
    ids=["after-a-peak", "from-the-start", "none"],
)
def test_max_drawdown_is_the_largest_fall_from_a_peak(returns, drawdown) -> None:
    assert metrics(returns)["max_drawdown"] == pytest.approx(drawdown)


def test_sharpe_is_mean_over_std_annualized() -> None:
    # mean 0.01, population std 0.01
    assert metrics([0.02, 0.0])["sharpe"] == pytest.approx(math.sqrt(365.25))


def test_sharpe_annualization_uses_the_timeframe() -> None:
    hourly, daily = metrics([0.02, 0.0], tf=H)["sharpe"], metrics([0.02, 0.0], tf=D)["sharpe"]
    assert hourly / daily == pytest.approx(math.sqrt(24))


def test_sharpe_and_sortino_are_zero_without_variation() -> None:
    result = metrics([0.01, 0.01, 0.01])
    assert (result["sharpe"], result["sortino"]) == (0.0, 0.0)


def test_sortino_divides_by_the_downside_deviation() -> None:
    # mean 0.01; downside deviation sqrt((0 + 0.01^2) / 2) = 0.01 / sqrt(2)
    assert metrics([0.03, -0.01])["sortino"] == pytest.approx(math.sqrt(2 * 365.25))


def test_calmar_is_annual_return_over_max_drawdown() -> None:
    # Two steps of half a year: annual return = total return = 0.8 * 1.5 - 1 = 0.2.
    result = metrics([-0.2, 0.5], tf=int(YEAR_MS / 2))
    assert result["annual_return"] == pytest.approx(0.2)
    assert result["max_drawdown"] == pytest.approx(0.2)
    assert result["calmar"] == pytest.approx(1.0)


def test_turnover_counts_the_first_change_from_the_start_position() -> None:
    result = metrics([0.0, 0.0, 0.0], positions=[1.0, 1.0, 0.0])
    assert result["turnover"] == pytest.approx(2 * 365.25 / 3)
    assert result["trades"] == 2.0
    assert result["exposure"] == pytest.approx(2 / 3)


def test_win_rate_counts_closed_round_trips_including_their_exit_step() -> None:
    positions = [1, 1, 0, -1, 0, 1, 0, 1]  # long (win), short (loss), long (win), open long
    returns = [0.1, 0.1, -0.001, -0.05, 0.0, 0.02, -0.001, -0.5]
    assert metrics(returns, positions)["win_rate"] == pytest.approx(2 / 3)


def test_win_rate_exit_step_decides_a_marginal_trade() -> None:
    # +0.1% while held, -0.2% on the exit step (gap and exit cost): a loss.
    assert metrics([0.001, -0.002], positions=[1, 0])["win_rate"] == 0.0


def test_win_rate_counts_a_trade_held_into_the_window_from_step_zero() -> None:
    result = compute_metrics(np.array([0.05, -0.001]), np.array([1.0, 0.0]), D, prev_start=1.0)
    assert result["win_rate"] == 1.0
    assert result["trades"] == 1.0


def test_win_rate_is_zero_without_a_closed_round_trip() -> None:
    assert metrics([0.1, 0.1], positions=[1, 1])["win_rate"] == 0.0


def test_greedy_positions_follow_the_policy_with_position_dependent_choices() -> None:
    features = np.array([[1.0], [-0.2], [-1.0], [0.3], [-0.2]])
    calls: list[tuple[int, ...]] = []

    def policy(obs: np.ndarray) -> np.ndarray:
        calls.append(obs.shape)
        return hysteresis_policy(obs)

    positions = greedy_positions(policy, features, (0.0, 1.0))
    assert positions.tolist() == [1.0, 1.0, 0.0, 1.0, 1.0]  # -0.2 stays long only when long
    assert calls == [(5 * 2, 2)]  # once, on every (t, possible position)


@FAST
@given(
    features=st.lists(
        st.lists(st.floats(-2, 2, width=32), min_size=2, max_size=2), min_size=1, max_size=30
    ),
    action_map=st.sampled_from([(0.0, 1.0), (-1.0, 0.0, 1.0), (0.0, 0.5, 1.0)]),
    start=st.sampled_from([0.0, 1.0, -1.0, 0.25]),
    seed=st.integers(0, 2**16),
)
def test_greedy_positions_equal_a_per_step_loop(features, action_map, start, seed) -> None:
    weights = np.random.default_rng(seed).normal(size=(3, len(action_map)))

    def policy(obs: np.ndarray) -> np.ndarray:
        return obs.astype(np.float64) @ weights

    feats = np.asarray(features, dtype=np.float32)
    expected = naive_greedy(policy, feats, action_map, start)
    assert greedy_positions(policy, feats, action_map, start).tolist() == expected.tolist()


def naive_expected(policy, features: np.ndarray, action_map, start: float) -> np.ndarray:
    """The trader's loop: hold the mean position under the softmax, observe the nearest
    action (the first on a tie)."""
    observed, out = start, []
    for row in features:
        obs = np.append(row, observed).astype(np.float32)[None, :]
        logits = policy(obs)[0].astype(np.float64)
        p = np.exp(logits - logits.max())
        held = float(p @ np.asarray(action_map) / p.sum())
        observed = min(action_map, key=lambda a: abs(a - held))
        out.append(held)
    return np.asarray(out, dtype=float)


@FAST
@given(
    features=st.lists(
        st.lists(st.floats(-2, 2, width=32), min_size=2, max_size=2), min_size=1, max_size=30
    ),
    action_map=st.sampled_from([(0.0, 1.0), (-1.0, 0.0, 1.0), (0.0, 0.5, 1.0)]),
    start=st.sampled_from([0.0, 1.0, -1.0, 0.25]),
    seed=st.integers(0, 2**16),
)
def test_expected_positions_equal_the_traders_per_step_loop(
    features, action_map, start, seed
) -> None:
    weights = np.random.default_rng(seed).normal(size=(3, len(action_map)))

    def policy(obs: np.ndarray) -> np.ndarray:
        return obs.astype(np.float64) @ weights

    feats = np.asarray(features, dtype=np.float32)
    walked = greedy_positions(policy, feats, action_map, start, rule="expected")
    assert walked == pytest.approx(naive_expected(policy, feats, action_map, start), abs=1e-12)


def test_an_even_split_of_probability_holds_half_the_position() -> None:
    logits = np.log([[0.5, 0.5], [0.9, 0.1], [0.2, 0.8]])
    assert expected_positions(logits, (0.0, 1.0)) == pytest.approx([0.5, 0.1, 0.8])


def test_a_confident_policy_holds_the_same_positions_under_either_rule() -> None:
    features = np.array([[1.0], [-0.2], [-1.0], [0.3], [-0.2]])

    def sharp(obs: np.ndarray) -> np.ndarray:
        return 200.0 * hysteresis_policy(obs)

    argmax = greedy_positions(sharp, features, (0.0, 1.0))
    assert greedy_positions(sharp, features, (0.0, 1.0), rule="expected") == pytest.approx(argmax)


def test_an_unknown_position_rule_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(ValueError, match="argmax, expected"):
        greedy_positions(hysteresis_policy, np.zeros((2, 1)), (0.0, 1.0), rule="mean")


def test_nan_features_raise_data_validation_error_naming_the_first_bad_row() -> None:
    features = np.zeros((6, 2))
    features[3, 1] = np.nan
    features[5, 0] = np.nan
    with pytest.raises(DataValidationError, match="row 3"):
        greedy_positions(hysteresis_policy, features, (0.0, 1.0))


@pytest.mark.parametrize(
    ("action_map", "expected"),
    [((0.0, 1.0), [0.0, 1.0, 0.0, 1.0]), ((-1.0, 0.0, 1.0), [0.0, 1.0, -1.0, 1.0])],
    ids=["long-only", "with-shorts"],
)
def test_momentum_goes_long_on_a_rise_and_short_only_when_allowed(action_map, expected) -> None:
    close = np.array([100.0, 101.0, 99.0, 102.0])
    assert baseline_positions("momentum", close, action_map, lookback=1).tolist() == expected


@FAST
@given(
    close=st.lists(st.floats(1, 1000), min_size=2, max_size=60),
    future=st.lists(st.floats(1, 1000), min_size=60, max_size=60),
    cut=st.integers(0, 58),
    lookback=st.integers(1, 10),
)
def test_momentum_has_no_look_ahead(close, future, cut, lookback) -> None:
    cut = min(cut, len(close) - 2)
    changed = close[: cut + 1] + future[: len(close) - cut - 1]
    original = baseline_positions("momentum", np.array(close), (-1.0, 0.0, 1.0), lookback)
    altered = baseline_positions("momentum", np.array(changed), (-1.0, 0.0, 1.0), lookback)
    assert altered[: cut + 1].tolist() == original[: cut + 1].tolist()


def test_unknown_baseline_lists_the_known_names() -> None:
    with pytest.raises(ValueError, match="buy_and_hold, flat, momentum"):
        baseline_positions("random", np.ones(3), (0.0, 1.0))


def small_evaluation() -> dict:
    n = 30
    close = 100.0 * np.exp(np.cumsum(np.sin(np.arange(n + 1) / 3.0)) / 50)
    open_ = np.concatenate(([close[0]], close[:-1]))
    log_returns = np.diff(np.log(close[:n]), prepend=np.log(close[0]))
    features = log_returns[:, None] * 50  # row t: the return into candle t, known at its close
    ts = np.arange(n + 1, dtype=np.int64) * H
    return evaluate_policy(hysteresis_policy, features, ts, open_, close, (0.0, 1.0), H)


def test_evaluate_policy_backtests_the_policy_and_every_baseline_on_one_window() -> None:
    backtests = small_evaluation()
    assert list(backtests) == ["policy", *BASELINES]
    assert all(bt.ts.tolist() == backtests["policy"].ts.tolist() for bt in backtests.values())
    assert backtests["flat"].equity[-1] == 1.0


def test_metrics_table_has_a_row_per_backtest() -> None:
    table = metrics_table(small_evaluation())
    lines = table.splitlines()
    assert len(lines) == 2 + 4
    assert len({len(line) for line in lines}) == 1  # fixed width
    for name in ("policy", *BASELINES):
        assert any(line.startswith(name) for line in lines)
    assert "%" in lines[2]


def test_plot_equity_writes_a_png(tmp_path: Path) -> None:
    path = plot_equity(small_evaluation(), tmp_path / "plots" / "equity.png", "test window")
    data = path.read_bytes()
    assert path == tmp_path / "plots" / "equity.png"
    assert data.startswith(b"\x89PNG")
    assert len(data) > 1000


def test_importing_the_module_does_not_load_matplotlib() -> None:
    code = "import sys, pipeline.learn.evaluate; assert 'matplotlib' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])


def test_volatility_target_scales_down_to_the_target_and_never_levers_up() -> None:
    from pipeline.learn.evaluate import VolatilityTarget

    hourly = np.array([[0.02 / np.sqrt(YEAR_MS / H)], [0.9 / np.sqrt(YEAR_MS / H)]])
    scale = VolatilityTarget(target=0.3, features=("vol_168",)).scale(hourly, ["vol_168"], H)
    np.testing.assert_allclose(scale, [1.0, 0.3 / 0.9])


def test_volatility_target_sizes_by_the_largest_of_its_volatilities() -> None:
    from pipeline.learn.evaluate import VolatilityTarget

    annual = np.sqrt(YEAR_MS / H)
    calm_week_wild_month = np.array([[0.3 / annual, 0.6 / annual], [0.8 / annual, 0.4 / annual]])
    sizing = VolatilityTarget(target=0.2, features=("vol_168", "vol_720"))
    scale = sizing.scale(calm_week_wild_month, ["vol_168", "vol_720"], H)
    np.testing.assert_allclose(scale, [0.2 / 0.6, 0.2 / 0.8])


def test_a_model_sized_by_one_volatility_feature_loads_as_before() -> None:
    from pipeline.learn.evaluate import VolatilityTarget

    old = {"target": 0.3, "feature": "vol_168", "max_scale": 1.0}
    assert VolatilityTarget.from_dict(old) == VolatilityTarget(0.3, ("vol_168",), 1.0)
    new = VolatilityTarget().to_dict()
    assert VolatilityTarget.from_dict(new) == VolatilityTarget()


def test_volatility_target_needs_its_feature_and_names_the_setting() -> None:
    from pipeline.learn.evaluate import VolatilityTarget

    with pytest.raises(DataValidationError, match=r"training\.volatility_features"):
        VolatilityTarget(features=("vol_168", "vol_720")).scale(
            np.ones((2, 2)), ["vol_24", "vol_168"], H
        )


def test_a_scaled_policy_is_backtested_at_its_scaled_positions() -> None:
    n = 6
    closes = np.linspace(100, 110, n + 1)
    always_long = lambda obs: np.tile([0.0, 1.0], (len(obs), 1))  # noqa: E731
    scale = np.full(n, 0.5)
    sized = evaluate_policy(
        always_long, np.zeros((n, 1)), np.arange(n + 1), closes, closes, (0.0, 1.0), H,
        scale=scale,
    )  # fmt: skip
    np.testing.assert_array_equal(sized["policy"].positions, scale)
    np.testing.assert_array_equal(sized["buy_and_hold"].positions, np.ones(n))
